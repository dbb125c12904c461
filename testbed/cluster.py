"""A whole icecream cluster on a namespace bed, and a real project built through it.

Owns ``Cluster``: on the hosts of a ``NetnsBed`` it starts one scheduler
(the real ``icecc-scheduler`` or ours, on port 8765 of its host) and per
host a daemon (real ``iceccd`` or ours, or none) that finds the scheduler by
UDP broadcast across the bed's bridge (no ``-s``; the netname is unique per
run), a ``SchedulerMonitor`` that records everything from the start, and
waits until the scheduler lists every daemon with its first STATS.
``Cluster.build`` then runs ``make -jN`` of a ``project.Project`` on one
host with a chosen client (``ClientPlan``: the real ``/usr/bin/icecc`` or
ours, directly as ``CC="icecc gcc"`` or through ccache with
``CCACHE_PREFIX``), pointed at that host's daemon with
``ICECC_TEST_SOCKET`` (every daemon has its own socket: all hosts share one
filesystem), and returns a ``BuildResult``: make's status and output, the
objects compared byte for byte with a reference build, and where each job
ran according to the monitor (``monitor.Placement``).  ``Cluster.start_build``
returns a ``RunningBuild`` instead, so a fault can be injected while make runs
(``Cluster.daemons``, ``Cluster.scheduler`` are the programs; note that the
monitor stops recording, and ``placement`` raises, once the scheduler is gone).

How to make jobs land on several hosts: give the client's host a small
``DaemonPlan.max_jobs`` (its slots take "compile it yourself" jobs) and the
others more.  Names are ``<label>-<kind>`` (``h1-real``, ``h2-ours``).
Typical use (``tests/integration/test_e2e_builds.py``)::

    with NetnsBed(2) as bed, Cluster(bed, "ours", [DaemonPlan("real", max_jobs=1),
                                                   DaemonPlan("ours")]) as cluster:
        result = cluster.build(project, reference, ClientPlan("real"), on=0, jobs=4)
        result.check(on=["h1-real", "h2-ours"])   # or inspect result.placement

It must not decide what a test expects (``BuildResult.check`` only applies
what the caller asks for) and must not import iceserv: our programs run as
subprocesses, and our client through a launcher script.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, Self

from testbed.daemon import RealDaemon
from testbed.errors import TestbedError, WaitTimeoutError
from testbed.idlecpu import IdleCpuHost, freeze_proc_stat
from testbed.monitor import SchedulerMonitor
from testbed.ours import OurDaemon, OurScheduler
from testbed.procs import log_tail, make_workdir, stop_process
from testbed.project import build_env
from testbed.real import RealScheduler

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from types import TracebackType

    from testbed.hosts import Host
    from testbed.monitor import Placement
    from testbed.netns import NetnsBed
    from testbed.project import Project

Kind = Literal["real", "ours"]
SCHEDULER_PORT: Final = 8765
REAL_CLIENT: Final = "/usr/bin/icecc"
_LOGIN_TIMEOUT: Final = 60.0
_SETTLE_TIMEOUT: Final = 20.0
#: How long a successful build waits for events of units it has not heard of yet.
_TRAILING_TIMEOUT: Final = 5.0
_REPO: Final = Path(__file__).resolve().parents[1]
#: Our ``icecc`` console script, importing iceserv from this checkout (as ``OurDaemon`` does).
_OUR_CLIENT_LAUNCHER: Final = (
    "#!{python}\nimport sys\nsys.path.insert(0, {repo!r})\n"
    "from iceserv.client.main import main\nsys.exit(main())\n"
)


@dataclass(frozen=True)
class DaemonPlan:
    """The daemon of one host: which program, how many slots, whether it takes remote jobs.

    ``extra_args`` and ``extra_env`` are passed to the program as they are
    (e.g. ``-b DIR`` for another env directory, ``DBUS_SYSTEM_BUS_ADDRESS``
    for a private bus).
    """

    kind: Kind
    max_jobs: int = 2
    no_remote: bool = False
    extra_args: Sequence[str] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientPlan:
    """Which ``icecc`` compiles, and whether ccache calls it (``CCACHE_PREFIX``)."""

    kind: Kind = "real"
    ccache: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        """E.g. ``ours via ccache``."""
        return self.kind + (" via ccache" if self.ccache else "")


@dataclass(frozen=True)
class BuildResult:
    """What one ``make`` through the cluster did."""

    host: str
    client: str
    returncode: int
    seconds: float
    output: str
    units: int
    different: tuple[str, ...]
    missing: tuple[str, ...]
    placement: Placement

    def summary(self) -> str:
        """A short human account: status, objects, placement, time."""
        identical = self.units - len(self.different) - len(self.missing)
        return (f"make on {self.host} with the {self.client} client: exit {self.returncode} "
                f"in {self.seconds:.1f} s; {identical}/{self.units} objects identical "
                f"(different {list(self.different)}, missing {list(self.missing)}); "
                f"{self.placement}")  # fmt: skip

    def problems(self, *, on: Iterable[str] = ()) -> list[str]:
        """What is wrong with this build, given the hosts that must have compiled something."""
        found = []
        if self.returncode != 0:
            found.append(f"make failed:\n{self.output[-3000:]}")
        if self.different or self.missing:
            found.append("objects differ from the local build or are missing")
        if self.placement.requested != self.units or self.placement.total != self.units:
            found.append(f"expected {self.units} jobs through the scheduler")
        if self.placement.failed:
            found.append("jobs failed in the cluster")
        if self.placement.local:
            found.append("jobs fell back to local-only builds")
        found += [f"no job ran on {name}" for name in on if not self.placement.began[name]]
        return found

    def check(self, *, on: Iterable[str] = ()) -> None:
        """Raise ``AssertionError`` (with the summary) unless the build was right.

        Right means: make succeeded, every object is byte-identical to the
        reference, every unit went through the scheduler exactly once with
        exit 0 and no local-only fallback, and every host in ``on`` ran at
        least one job.
        """
        found = self.problems(on=on)
        if found:
            raise AssertionError(self.summary() + "\n- " + "\n- ".join(found))


@dataclass(eq=False)
class RunningBuild:
    """A ``make`` started by ``Cluster.start_build``; ``finish`` waits and reports."""

    cluster: Cluster
    project: Project
    reference: Mapping[str, bytes]
    client: ClientPlan
    on: int
    proc: subprocess.Popen[bytes]
    output_path: Path
    mark: int
    started: float = field(default_factory=time.monotonic)

    def running(self) -> bool:
        """True while make has not exited."""
        return self.proc.poll() is None

    def finish(self, timeout: float = 300.0) -> BuildResult:
        """Wait for make (killing it and its compilers after ``timeout``) and report."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            msg = f"make did not finish within {timeout} s\n{self.cluster.log_tails()}"
            raise WaitTimeoutError(msg) from None
        seconds = time.monotonic() - self.started
        monitor = self.cluster.monitor
        assert monitor is not None
        if self.proc.returncode == 0:
            # The scheduler may forward the last jobs' events after make exited:
            # wait a little for every unit's, as most builds send them all.
            with contextlib.suppress(TestbedError):
                monitor.wait_settled(self.mark, _TRAILING_TIMEOUT, jobs=len(self.project.sources))
        with contextlib.suppress(TestbedError):  # a failed build may leave jobs unfinished
            monitor.wait_settled(self.mark, _SETTLE_TIMEOUT)
        different, missing = self.project.compare(self.reference)
        return BuildResult(
            host=self.cluster.name(self.on),
            client=str(self.client),
            returncode=self.proc.returncode,
            seconds=seconds,
            output=self.output_path.read_text(errors="replace"),
            units=len(self.project.sources),
            different=tuple(different),
            missing=tuple(missing),
            placement=monitor.placement(since=self.mark),
        )


@dataclass(eq=False)
class Cluster:
    """A scheduler and daemons on ``bed``; ``daemons[i]`` runs on ``bed[i]`` (None: nothing).

    Use as a context manager or call ``start``/``stop``.  ``workdir`` holds
    the client launcher, client logs and ccache directories.  With
    ``idle_cpu`` (the default) each daemon sees a frozen ``/proc/stat``
    (``idlecpu.IdleCpuHost``): the bed's hosts share the machine's CPUs, and
    without it every host but the busy one reports load 1000 and gets no job.
    ``scheduler_env`` is added to our scheduler's environment (e.g.
    ``ICECC_SCHEDULER_HTTP``, ``DBUS_SYSTEM_BUS_ADDRESS``).
    """

    bed: NetnsBed
    scheduler_kind: Kind
    daemon_plans: Sequence[DaemonPlan | None]
    scheduler_host: int = 0
    idle_cpu: bool = True
    login_timeout: float = _LOGIN_TIMEOUT
    scheduler_env: Mapping[str, str] = field(default_factory=dict)
    scheduler: RealScheduler | OurScheduler | None = field(default=None, init=False)
    daemons: dict[int, RealDaemon | OurDaemon] = field(default_factory=dict, init=False)
    monitor: SchedulerMonitor | None = field(default=None, init=False)
    workdir: Path | None = field(default=None, init=False)
    exit_codes: dict[str, int | None] = field(default_factory=dict, init=False)
    _builds: int = field(default=0, init=False)

    def name(self, index: int) -> str:
        """Node name of the daemon on host ``index``."""
        plan = self.daemon_plans[index]
        if plan is None:
            msg = f"no daemon on host {index}"
            raise TestbedError(msg)
        return f"{self.bed[index].label}-{plan.kind}"

    @property
    def netname(self) -> str:
        """The scheduler's netname (unique per run; every daemon asks for it)."""
        if self.scheduler is None or self.scheduler.netname is None:
            msg = "cluster not started"
            raise TestbedError(msg)
        return self.scheduler.netname

    def start(self) -> Self:
        """Start everything and wait until the scheduler lists every daemon with its STATS."""
        if len(self.daemon_plans) > len(self.bed):
            msg = f"{len(self.daemon_plans)} daemons for {len(self.bed)} hosts"
            raise TestbedError(msg)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.workdir = make_workdir("cluster")
        host = self.bed[self.scheduler_host]
        if self.scheduler_kind == "real":
            self.scheduler = RealScheduler(host=host, port=SCHEDULER_PORT).start()
        else:
            self.scheduler = OurScheduler(host=host, port=SCHEDULER_PORT, loopback_only=False,
                                          extra_env=self.scheduler_env)  # fmt: skip
            self.scheduler.start()
        self.monitor = SchedulerMonitor(host, (host.ip, SCHEDULER_PORT), awake=self._awake)
        self.monitor.start()
        for index, plan in enumerate(self.daemon_plans):
            if plan is not None:
                self.daemons[index] = self._start_daemon(self.bed[index], self.name(index), plan)
        names = [daemon.name for daemon in self.daemons.values()]
        with self._awake():
            self.monitor.wait_online(names, self.login_timeout, between=self._poke_daemons,
                                     context=self.log_tails)  # fmt: skip

    def _start_daemon(self, host: Host, name: str, plan: DaemonPlan) -> RealDaemon | OurDaemon:
        if self.idle_cpu:
            assert self.workdir is not None
            host = IdleCpuHost(host, freeze_proc_stat(self.workdir / f"stat-{name}"))
        if plan.kind == "real":
            return RealDaemon(name, host=host, max_jobs=plan.max_jobs, no_remote=plan.no_remote,
                              netname=self.netname, extra_args=plan.extra_args,
                              extra_env=plan.extra_env).start()  # fmt: skip
        return OurDaemon(name, host=host, max_jobs=plan.max_jobs, no_remote=plan.no_remote,
                         netname=self.netname, extra_args=plan.extra_args,
                         extra_env=plan.extra_env).start()  # fmt: skip

    def restart_daemon(self, index: int, plan: DaemonPlan | None = None) -> int | None:
        """Stop the daemon on host ``index`` (if it still runs) and start it anew; return its code.

        For fault injection: after a daemon was killed, or to give it another
        ``plan`` (by default the one it had).  The new program has a fresh work
        directory (an empty environment cache) and finds the scheduler by
        itself; wait for that with ``monitor.wait_online``.
        """
        assert self.workdir is not None
        old = self.daemons.pop(index)
        code = old.stop()
        plan = plan or self.daemon_plans[index]
        assert plan is not None  # the host had a daemon: it was in self.daemons
        plans = list(self.daemon_plans)
        plans[index] = plan
        self.daemon_plans = plans
        self.daemons[index] = self._start_daemon(self.bed[index], self.name(index), plan)
        return code

    def restart_scheduler(self) -> int | None:
        """Stop the scheduler (if it still runs), start the same kind again; return its code.

        The new scheduler has the same host, port and netname, so the daemons
        come back by themselves after their reconnect delay (20-51 s in 1.4
        without ``ICECC_TESTS``).  The monitor is replaced by one logged in to
        the new scheduler: positions from ``monitor.mark()`` taken before do
        not apply to it.
        """
        assert self.scheduler is not None
        assert self.monitor is not None
        netname = self.netname
        self.monitor.close()
        code = self.scheduler.stop()
        host = self.bed[self.scheduler_host]
        if self.scheduler_kind == "real":
            self.scheduler = RealScheduler(host=host, port=SCHEDULER_PORT, netname=netname).start()
        else:
            self.scheduler = OurScheduler(host=host, port=SCHEDULER_PORT, netname=netname,
                                          loopback_only=False,
                                          extra_env=self.scheduler_env).start()  # fmt: skip
        self.monitor = SchedulerMonitor(host, (host.ip, SCHEDULER_PORT), awake=self._awake)
        self.monitor.start()
        return code

    def _awake(self) -> contextlib.AbstractContextManager[object]:
        """Keep the real scheduler accepting while we wait for connections (reference §7.9)."""
        if isinstance(self.scheduler, RealScheduler):
            return self.scheduler.awake()
        return contextlib.nullcontext()

    def _poke_daemons(self) -> None:
        for daemon in self.daemons.values():
            if isinstance(daemon, RealDaemon):
                daemon.poke()  # its main loop idles 3 s between turns; a client wakes it
            else:
                daemon.alive()

    def daemon(self, index: int) -> RealDaemon | OurDaemon:
        """The daemon on host ``index``."""
        return self.daemons[index]

    def client_command(self, client: ClientPlan, index: int) -> tuple[str, dict[str, str]]:
        """``CC`` and the environment for ``client`` on host ``index`` (using its daemon)."""
        assert self.workdir is not None
        self._builds += 1
        tag = f"{self.bed[index].label}-{self._builds}"
        icecc = REAL_CLIENT if client.kind == "real" else str(self._our_launcher())
        # ICECC_SERVER_WAIT: these builds check that every job went through the cluster,
        # and on this shared 2-core machine a job can queue behind others for longer than our
        # client's 10 s default before it falls back; wait as 1.4 does (240 s).  The bound
        # itself is tested in tests/integration/test_one_host.py and tests/client.
        env = build_env({"HOME": str(self.workdir), "ICECC_TEST_SOCKET":
                         str(self.daemon(index).socket_path), "ICECC_DEBUG": "debug",
                         "ICECC_LOGFILE": str(self.workdir / f"icecc-{tag}.log"),
                         "ICECC_SERVER_WAIT": "240"})  # fmt: skip
        if not client.ccache:
            cc = f"{icecc} gcc"
        else:
            cc = "ccache gcc"
            # One cache per host, kept across builds: a second build can be served from it.
            cache = self.workdir / f"ccache-{self.bed[index].label}"
            env.update({"CCACHE_PREFIX": icecc, "CCACHE_DIR": str(cache)})
        env.update(client.extra_env)
        return cc, env

    def _our_launcher(self) -> Path:
        """An ``icecc`` console script for our client, as pip writes one (kept in ``workdir``)."""
        assert self.workdir is not None
        launcher = self.workdir / "bin" / "icecc"
        if not launcher.exists():
            launcher.parent.mkdir(exist_ok=True)
            launcher.write_text(_OUR_CLIENT_LAUNCHER.format(python=sys.executable, repo=str(_REPO)))
            launcher.chmod(0o755)
        return launcher

    def client_log(self) -> str:
        """The tail of the newest client debug log (for failure messages)."""
        assert self.workdir is not None
        logs = sorted(self.workdir.glob("icecc-*.log"), key=lambda p: p.stat().st_mtime)
        return log_tail(logs[-1], 30) if logs else "(no client log)"

    def start_build(
        self,
        project: Project,
        reference: Mapping[str, bytes],
        client: ClientPlan,
        *,
        on: int = 0,
        jobs: int = 4,
    ) -> RunningBuild:
        """Clean ``project`` and start ``make -j<jobs>`` on host ``on``; return at once.

        For fault injection: do something to the cluster while it runs, then
        call ``RunningBuild.finish``.
        """
        assert self.monitor is not None
        assert self.workdir is not None
        project.clean()
        cc, env = self.client_command(client, on)
        output = self.workdir / f"make-{self._builds}.out"
        mark = self.monitor.mark()
        with output.open("wb") as sink:
            proc = self.bed[on].popen(project.make_argv(cc, jobs), cwd=project.root, env=env,
                                      stdin=subprocess.DEVNULL, stdout=sink,
                                      stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        return RunningBuild(self, project, reference, client, on, proc, output, mark)

    def build(  # noqa: PLR0913 - a build has this many knobs
        self,
        project: Project,
        reference: Mapping[str, bytes],
        client: ClientPlan,
        *,
        on: int = 0,
        jobs: int = 4,
        timeout: float = 300.0,
    ) -> BuildResult:
        """Clean ``project``, build it with ``make -j<jobs>`` on host ``on`` and report."""
        running = self.start_build(project, reference, client, on=on, jobs=jobs)
        return running.finish(timeout)

    def log_tails(self) -> str:
        """Log tails of every program in the cluster, for failure messages."""
        parts = []
        if self.scheduler is not None:
            parts.append(f"--- {self.scheduler_kind} scheduler\n{self.scheduler.log_tail()}")
        parts += [f"--- {d.name}\n{d.log_tail()}" for d in self.daemons.values()]
        if self.workdir is not None:
            parts.append(f"--- client\n{self.client_log()}")
        return "\n".join(parts)

    def stop(self) -> dict[str, int | None]:
        """Stop the monitor, the daemons and the scheduler; return their exit codes by name."""
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        for daemon in self.daemons.values():
            self.exit_codes[daemon.name] = daemon.stop()
        self.daemons.clear()
        if self.scheduler is not None:
            self.exit_codes["scheduler"] = self.scheduler.stop()
            self.scheduler = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return self.exit_codes

    def __enter__(self) -> Self:
        """Start the cluster."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the cluster."""
        self.stop()
