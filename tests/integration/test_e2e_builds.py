"""A real C project built through whole clusters of real 1.4 and iceserv programs.

Every build test starts a two-host ``NetnsBed``, a scheduler on h1 (port
8765) and a daemon per host that finds it by UDP broadcast (no ``-s``), and
runs ``make -j4`` of zstd's C library (33 units, ``testbed.project``) on h1
through an ``icecc`` client pointed at h1's daemon.  Each build must succeed
with every object byte-identical to a local gcc build, every unit must go
through the scheduler exactly once with exit 0 (no local-only fallback), and
the monitor (``testbed.monitor``, its own decoder) must show jobs on the hosts
the combination is about.  h1's daemon has one slot and h2's two, so the
scheduler sends work both ways.  Combinations:

* issue 4.5: our scheduler + two real ``iceccd``s + the real client; and,
  at the protocol level, our scheduler serving daemons that speak protocol 39
  and 38 (older layouts, the UnknownJobId flag and its exit-200 form);
* issue 5.5: real scheduler with (a) our daemon as the remote server of a
  real daemon and client, (b) our daemon as the real client's local daemon
  with a real remote daemon, (c) our daemons on both hosts;
* issue 6.6: our client with the real scheduler and daemons, with ours, and
  through ccache (``CCACHE_PREFIX``) where a second build comes from the cache.

Teardown checks that every program left its namespace (none killed by the
bed), our programs exited 0, and the bed's namespaces are gone.  Each build
test takes 20-30 s on two cores: the file runs in about three minutes.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self

import pytest
from testbed import (
    LOOPBACK,
    ClientPlan,
    Cluster,
    DaemonPlan,
    NetnsBed,
    Reference,
    SchedulerMonitor,
    list_netns,
    wait_for,
)
from testbed.netns import netns_pids
from testbed.project import CFLAGS, CPPFLAGS

from iceserv._version import VERSION
from iceserv.protocol import (
    ICESERV_MARK,
    CompileFile,
    CompileResult,
    ConfCS,
    EnvEntry,
    EnvTransfer,
    GetCS,
    JobBegin,
    JobDone,
    JobDoneFlag,
    Login,
    NoCS,
    Stats,
    UseCS,
    VerifyEnv,
    VerifyEnvResult,
)
from iceserv.testing import BlockingChannel

#: CS_CONF's bench_source from our scheduler (1.4 sends "").
ICESERV_CONF = ICESERV_MARK + VERSION

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from testbed import BuildResult, MonitorEvent, Project
    from testbed.cluster import Kind

pytestmark = pytest.mark.live
log = logging.getLogger(__name__)

REAL = ClientPlan("real")
OURS = ClientPlan("ours")
OURS_VIA_CCACHE = ClientPlan("ours", ccache=True)


def _stop_and_check(bed: NetnsBed, cluster: Cluster) -> None:
    tails = cluster.log_tails()
    codes = cluster.stop()
    left = {name: pids for name in bed.netns_names if (pids := netns_pids(name))}
    assert not left, f"processes left in the bed after the cluster stopped: {left}\n{tails}"
    ours_scheduler = cluster.scheduler_kind == "ours"
    ours = {name: code for name, code in codes.items()
            if name.endswith("-ours") or (name == "scheduler" and ours_scheduler)}  # fmt: skip
    assert all(code == 0 for code in ours.values()), f"our programs' exit codes {ours}\n{tails}"


@pytest.fixture
def cluster_of() -> Iterator[Callable[..., Cluster]]:
    """``make(scheduler_kind, *daemon_plans)`` -> a started Cluster on a fresh bed."""
    beds: list[NetnsBed] = []
    with contextlib.ExitStack() as stack:

        def make(scheduler: Kind, *plans: DaemonPlan) -> Cluster:
            bed = stack.enter_context(NetnsBed(len(plans)))
            beds.append(bed)
            cluster = Cluster(bed, scheduler, plans)
            stack.callback(_stop_and_check, bed, cluster)
            return cluster.start()

        yield make
    mounts = Path("/proc/mounts").read_text()
    for bed in beds:
        assert not set(bed.netns_names) & set(list_netns())
        assert not any(name in mounts for name in bed.netns_names)


def _build(cluster: Cluster, project: Project, zstd: Reference, client: ClientPlan) -> BuildResult:
    result = cluster.build(project, zstd.reference, client, on=0, jobs=4)
    log.info("%s", result.summary())
    return result


def _check(cluster: Cluster, result: BuildResult, *hosts: str) -> None:
    """The build was right and ran jobs on every one of ``hosts`` (else show every log)."""
    problems = result.problems(on=hosts)
    assert not problems, "\n- ".join([result.summary(), *problems]) + "\n" + cluster.log_tails()


class TestOurScheduler:
    @pytest.mark.netns
    def test_real_daemons_and_client_build_through_our_scheduler(self, cluster_of, project, zstd):
        """Issue 4.5: two real iceccds find our scheduler; a real make -j4 spreads over both."""
        cluster = cluster_of("ours", DaemonPlan("real", max_jobs=1), DaemonPlan("real"))
        result = _build(cluster, project, zstd, REAL)
        _check(cluster, result, "h1-real", "h2-real")
        scheduler = cluster.scheduler
        assert scheduler is not None
        logins = {e["nodename"]: e["peer"] for e in scheduler.events("daemon_logged_in")}
        assert logins == {"h1-real": cluster.bed[0].ip, "h2-real": cluster.bed[1].ip}
        finished = scheduler.wait_events("job_finished", 33)
        assert len(finished) == 33
        assert {e["exitcode"] for e in finished} == {0}

    def test_real_client_compiles_on_a_protocol_39_daemon(
        self, our_scheduler, real_daemon_factory, project, zstd, tmp_path
    ):
        """Our scheduler sends a real client to a 39 daemon: LZO both ways, identical object."""
        local = real_daemon_factory("client-host", our_scheduler.address, no_remote=True)
        with OldCompileServer(our_scheduler.port or 0, tmp_path) as old:
            unit = "lib/compress/zstd_compress.c"  # its source spans many 100 000-byte chunks
            output = "obj/compress/zstd_compress.o"
            (project.root / output).parent.mkdir(parents=True)
            env = local.client_env({"ICECC_PREFERRED_HOST": "old39", "ICECC_TEST_REMOTEBUILD": "1",
                                    "PATH": "/usr/bin:/bin"})  # fmt: skip
            argv = ["/usr/bin/icecc", "gcc", *CPPFLAGS.split(), *CFLAGS.split(), "-c", unit,
                    "-o", output]  # fmt: skip
            done = subprocess.run(argv, cwd=project.root, env=env, capture_output=True, text=True,
                                  timeout=180, check=False)  # fmt: skip
            old.finished.wait(30)
            assert done.returncode == 0, done.stderr + old.describe() + local.log_tail()
            assert old.error is None, old.describe()
            assert old.protocol == 39
            assert old.tarball_size > 1_000_000
            assert (project.root / output).read_bytes() == zstd.reference[output]
        finished = our_scheduler.wait_events("job_finished", 1)
        assert [(e["exitcode"], e["out_bytes"] > 0) for e in finished] == [(0, True)]

    @pytest.mark.parametrize("version", [39, 38])
    def test_old_protocol_daemon(self, our_scheduler, version):
        """Daemons at 39/38 log in, serve a job, compile their own, and cancel a queued one.

        The old layouts (LOGIN without features, GET_CS without
        required_features and niceness, JOB_BEGIN/JOB_DONE with or without
        client_count) are our codec's; the cancel is the UnknownJobId flag at
        39 and exit code 200 at 38 (reference §2.2 JOB_DONE).
        """
        port = our_scheduler.port or 0
        with contextlib.ExitStack() as stack:
            monitor = stack.enter_context(SchedulerMonitor(LOOPBACK, ("127.0.0.1", port)))
            listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
            cs_port = listener.getsockname()[1]
            old = _daemon(stack, port, version, _login(f"old{version}", cs_port))
            submitter = _daemon(stack, port, 43, _login("submitter", 0, max_kids=0))
            busy = _daemon(stack, port, 43, _login("busy", cs_port, max_kids=1))
            busy.send(Stats(load=1000))
            monitor.wait_online([f"old{version}", "submitter", "busy"], 15)
            _old_daemon_serves(old, submitter, cs_port, version)
            _old_daemon_compiles_itself(old)
            _old_daemon_cancels(old, busy, monitor, version)
            names = monitor.hosts()
            began = [names[e.host_id or 0] for e in monitor.snapshot() if e.kind == "MON_JOB_BEGIN"]
            assert began == [f"old{version}", f"old{version}"]
            assert our_scheduler.alive()
        assert [e["exitcode"] for e in our_scheduler.wait_events("job_finished", 2)][:2] == [0, 0]


def _daemon(stack: contextlib.ExitStack, port: int, version: int, login: Login) -> BlockingChannel:
    """A daemon played with our codec at ``version``: logged in, CS_CONF read, STATS sent."""
    channel = BlockingChannel.connect("127.0.0.1", port, version=version, timeout=10.0)
    stack.callback(channel.close)
    assert channel.handshake.protocol == version
    channel.send(login)
    assert channel.receive() == ConfCS(3, 36, ICESERV_CONF)
    channel.send(Stats(load=0, load_avg1=100, load_avg5=100, load_avg10=100, free_mem=4096))
    return channel


def _login(name: str, cs_port: int, *, max_kids: int = 2) -> Login:
    return Login(port=cs_port, max_kids=max_kids, nodename=name, host_platform="x86_64",
                 chroot_possible=True, noremote=cs_port == 0, supported_features=3)  # fmt: skip


def _first(
    monitor: SchedulerMonitor, since: int, kind: str, job_id: int | None = None
) -> MonitorEvent | None:

    events = monitor.snapshot()[since:]
    return next((e for e in events if e.kind == kind and job_id in {None, e.job_id}), None)


def _old_daemon_serves(old: BlockingChannel, submitter: BlockingChannel, port: int,
                       version: int) -> None:  # fmt: skip
    """A job of a 43 submitter goes to the old daemon, which installs the env and reports."""
    submitter.send(GetCS(versions=(EnvEntry("x86_64", "envA"),), filename="src/lib/a.c",
                         target="x86_64", client_id=7, minimal_host_version=21))  # fmt: skip
    use = submitter.receive()
    assert use == UseCS(use.job_id, port, "localhost", "x86_64", got_env=False, client_id=7)
    # After installing, 1.4 re-announces (port 0, no platform) and the scheduler confirms.
    old.send(Login(port=0, max_kids=2, envs=(EnvEntry("x86_64", "envA"),), nodename=f"old{version}",
                   chroot_possible=True))  # fmt: skip
    assert old.receive() == ConfCS(3, 36, ICESERV_CONF)
    old.send(JobBegin(use.job_id, int(time.time()), client_count=1),
             JobDone(use.job_id, 0, real_msec=900, user_msec=800, sys_msec=50, in_compressed=9000,
                     in_uncompressed=30000, out_compressed=20000, out_uncompressed=20000,
                     flags=JobDoneFlag.FROM_SERVER))  # fmt: skip


def _old_daemon_compiles_itself(old: BlockingChannel) -> None:
    """The old daemon's own request comes back as NO_CS; it reports the job as submitter."""
    old.send(GetCS(versions=(EnvEntry("x86_64", "envA"),), filename="src/lib/b.c",
                   target="x86_64", client_id=5, minimal_host_version=21))  # fmt: skip
    answer = old.receive()
    assert isinstance(answer, NoCS)
    assert answer.client_id == 5
    old.send(JobBegin(answer.job_id, int(time.time()), client_count=1),
             JobDone(answer.job_id, 0, real_msec=700, user_msec=600, out_uncompressed=15000,
                     flags=JobDoneFlag.FROM_SUBMITTER))  # fmt: skip


def _old_daemon_cancels(old: BlockingChannel, busy: BlockingChannel, monitor: SchedulerMonitor,
                        version: int) -> None:  # fmt: skip
    """A queued job that the old daemon cancels by client id is never placed."""
    mark = monitor.mark()
    old.send(GetCS(versions=(EnvEntry("x86_64", "envA"),), filename="src/lib/c.c",
                   target="x86_64", client_id=9, preferred_host="busy",
                   minimal_host_version=21))  # fmt: skip
    queued = wait_for(lambda: _first(monitor, mark, "MON_GET_CS"), 10, "MON_GET_CS")
    if version >= 39:
        cancel = JobDone(9, -1, flags=JobDoneFlag.FROM_SUBMITTER | JobDoneFlag.UNKNOWN_JOB_ID)
    else:  # what a 1.4 peer below 39 sends: no flag, exit code 200
        cancel = JobDone(9, 200, flags=JobDoneFlag.FROM_SUBMITTER)
    old.send(cancel)
    wait_for(lambda: _first(monitor, mark, "MON_JOB_DONE", queued.job_id), 10,
             "the cancelled job's MON_JOB_DONE")  # fmt: skip
    busy.send(Stats(load=0))  # the preferred host is free now: a queued job would go out
    old.sock.settimeout(2.0)
    with pytest.raises(TimeoutError):
        old.receive()


class OldCompileServer:
    """A compile server that speaks protocol 39, played with our codec on 127.0.0.1.

    It logs in to the scheduler at ``port`` as ``old39`` (LOGIN without
    features), serves one client on its own port -- TRANFER_ENV, VERIFY_ENV,
    COMPILE_FILE with the two argument lists of protocol < 41, FILE_CHUNKs
    that are LZO at 39 -- by running local gcc as a 1.4 daemon runs it in the
    chroot, answers COMPILE_RESULT and the object (LZO), and reports
    JOB_BEGIN/JOB_DONE.  Connections that send nothing (the scheduler's
    reachability probes) are ignored.
    """

    def __init__(self, port: int, workdir: Path) -> None:
        self.workdir = workdir
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.5)
        self.scheduler = BlockingChannel.connect("127.0.0.1", port, version=39, timeout=10.0)
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.protocol = 0
        self.tarball_size = 0
        self.job: CompileFile | None = None
        self.result: CompileResult | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="old39", daemon=True)

    def __enter__(self) -> Self:
        assert self.scheduler.handshake.protocol == 39
        self.scheduler.send(_login("old39", self.listener.getsockname()[1]))
        assert self.scheduler.receive() == ConfCS(3, 36, ICESERV_CONF)
        self.scheduler.send(Stats(load=0, free_mem=4096))
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()
        self.scheduler.close()

    def describe(self) -> str:
        """What the server saw, for failure messages."""
        return f"\nold39: error={self.error!r} job={self.job!r} result={self.result!r}"

    def _serve(self) -> None:
        try:
            while not self._stop.is_set() and not self.finished.is_set():
                with contextlib.suppress(TimeoutError):
                    sock, _ = self.listener.accept()
                    with sock:
                        self._client(sock)
        except Exception as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc
            self.finished.set()

    def _client(self, sock: socket.socket) -> None:
        try:
            channel = BlockingChannel(sock, version=39, timeout=60.0)
        except (AssertionError, OSError):
            return  # a reachability probe: connect and close without a word
        self.protocol = channel.handshake.protocol
        env = channel.receive()
        assert isinstance(env, EnvTransfer), env
        tarball, _ = channel.receive_file()
        self.tarball_size = len(tarball)
        verify = channel.receive()
        assert isinstance(verify, VerifyEnv), verify
        channel.send(VerifyEnvResult(ok=True))
        job = channel.receive()
        assert isinstance(job, CompileFile), job
        self.job = job
        source, _ = channel.receive_file()
        self.scheduler.send(JobBegin(job.job_id, int(time.time()), client_count=1))
        obj = self.workdir / "old39.o"
        compiled = subprocess.run(
            [f"/usr/bin/{job.compiler_name}", "-x", "c", *job.args, "-fpreprocessed", "-",
             "-o", str(obj)], input=source, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        data = obj.read_bytes() if compiled.returncode == 0 else b""
        err, out = (text.decode(errors="replace") for text in (compiled.stderr, compiled.stdout))
        self.result = CompileResult(err, out, compiled.returncode)
        channel.send(self.result)
        if compiled.returncode == 0:
            channel.send_file(data)
        self.scheduler.send(JobDone(job.job_id, compiled.returncode, real_msec=1000,
                                    user_msec=900, in_compressed=len(source),
                                    in_uncompressed=len(source), out_compressed=len(data),
                                    out_uncompressed=len(data), flags=JobDoneFlag.FROM_SERVER,
                                    client_count=1))  # fmt: skip
        self.finished.set()


@pytest.mark.netns
class TestOurDaemon:
    def test_our_daemon_as_the_remote_server(self, cluster_of, project, zstd):
        """Issue 5.5a: real scheduler, real daemon and client on h1, our daemon serves on h2."""
        cluster = cluster_of("real", DaemonPlan("real", max_jobs=1), DaemonPlan("ours"))
        result = _build(cluster, project, zstd, REAL)
        _check(cluster, result, "h1-real", "h2-ours")
        began = result.placement.began["h2-ours"]
        served = cluster.daemon(1).wait_events("job_finished", began)  # type: ignore[union-attr]
        assert len(served) == began
        assert {e["exitcode"] for e in served} == {0}

    def test_our_daemon_as_the_local_daemon(self, cluster_of, project, zstd):
        """Issue 5.5b: real scheduler, our daemon under the real client on h1, real daemon on h2."""
        cluster = cluster_of("real", DaemonPlan("ours", max_jobs=1), DaemonPlan("real"))
        result = _build(cluster, project, zstd, REAL)
        _check(cluster, result, "h1-ours", "h2-real")

    def test_our_daemons_on_every_host(self, cluster_of, project, zstd):
        """Issue 5.5c: real scheduler and real client, our daemons on both hosts."""
        cluster = cluster_of("real", DaemonPlan("ours", max_jobs=1), DaemonPlan("ours"))
        result = _build(cluster, project, zstd, REAL)
        _check(cluster, result, "h1-ours", "h2-ours")


@pytest.mark.netns
class TestOurClient:
    def test_with_the_real_cluster(self, cluster_of, project, zstd):
        """Issue 6.6: our icecc with the real 1.4 scheduler and daemons."""
        cluster = cluster_of("real", DaemonPlan("real", max_jobs=1), DaemonPlan("real"))
        result = _build(cluster, project, zstd, OURS)
        _check(cluster, result, "h1-real", "h2-real")

    def test_with_our_cluster(self, cluster_of, project, zstd):
        """Issue 6.6: our icecc with our scheduler and our daemons (no 1.4 program at all)."""
        cluster = cluster_of("ours", DaemonPlan("ours", max_jobs=1), DaemonPlan("ours"))
        result = _build(cluster, project, zstd, OURS)
        _check(cluster, result, "h1-ours", "h2-ours")

    def test_through_ccache(self, cluster_of, project, zstd):
        """Issue 6.6: ccache with CCACHE_PREFIX=our icecc distributes; a rebuild is all hits."""
        cluster = cluster_of("real", DaemonPlan("real", max_jobs=1), DaemonPlan("real"))
        cold = _build(cluster, project, zstd, OURS_VIA_CCACHE)
        _check(cluster, cold, "h1-real", "h2-real")
        warm = _build(cluster, project, zstd, OURS_VIA_CCACHE)
        assert warm.returncode == 0, warm.output
        assert not warm.different
        assert not warm.missing
        assert warm.placement.requested == 0, warm.summary()  # every object from the cache
