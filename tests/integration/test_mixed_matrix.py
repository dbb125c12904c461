"""Every mix of real 1.4 and iceserv programs in one cluster: 16 combinations (issue 13.2).

Each combination of {client, local daemon, scheduler, remote daemon} in
{real 1.4, iceserv} builds 11 units of zstd's C library (``testbed.project``,
the fast third of its units: real code at ``-O2``) on a 3-host namespace
cluster of its own: h1 runs the client and its daemon with ``-m 0`` (so every
compile has to travel), h2 the remote daemon, h3 the scheduler.  Daemons
find the scheduler by UDP discovery when the client is the real one and with
``-s h3:8765`` when it is ours, so each daemon/scheduler mix is tried both
ways.  Nothing pokes any program: no datagram to wake the real scheduler
(which sits in its delayed-accept wait until one arrives, reference §7.9),
no client connection to wake a real daemon, no telnet session and no monitor
connection (a monitor's accept in the same second as a daemon's datagram
makes 1.4's scheduler ignore its listening socket until something else
wakes it: even the all-real cluster then took 30-40 s).  Logins are read
from the scheduler's log: 1.4's ``login <node> protocol version`` line, our
``daemon_logged_in`` record.

For each combination:

* **listed**: the time from starting the daemons until the scheduler has
  logged both in (``listcs`` shows them) must not exceed that of the same mode's
  all-real-programs combination (real client for discovery, ours for ``-s``:
  the client plays no part in logging in) by more than ``_LISTED_SLACK``
  (the combinations run four at a time on two loaded cores), and never reaches
  the 35 s stall of an ``iceccd`` the real scheduler does not hear about;
* **objects**: every object is byte-identical to the all-real combination's;
* **where**: h2's kernel counted one accepted TCP connection per unit
  (``TcpPassiveOpens`` of its network namespace: nothing else listens there,
  so this counts jobs where they ran without trusting any program's word;
  up to two more are allowed for the scheduler's reachability probes), and
  the remote daemon's own log reports every unit (1.4's ``remote compile
  for file``, our ``job_finished`` with ``where=server``);
* our programs exit 0 when stopped.

The combinations run in parallel (``_WORKERS`` at a time), each on its own
bed; the module's fixture runs them all and each test checks one.  Times
are logged (``-o log_cli=true``) for the closing note.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest
from testbed import (
    IdleCpuHost,
    NetnsBed,
    OurDaemon,
    OurScheduler,
    RealDaemon,
    RealScheduler,
    fetch_sdist,
    freeze_proc_stat,
    unpack_project,
    wait_for,
)
from testbed.procs import make_workdir
from testbed.project import build_env, library_units, restrict

if TYPE_CHECKING:
    from testbed import Host, NetnsHost, Project

pytestmark = [pytest.mark.live, pytest.mark.netns]
log = logging.getLogger(__name__)

KINDS: Final = ("real", "ours")
UNITS: Final = library_units(
        "common/debug", "common/entropy_common", "common/error_private", "common/pool",
        "common/threading", "common/xxhash", "common/zstd_common", "compress/hist",
        "compress/zstd_compress_literals", "compress/zstd_preSplit", "decompress/zstd_ddict",
)  # fmt: skip
SCHEDULER_PORT: Final = 8765
_WORKERS: Final = 4
_LISTED_SLACK: Final = 4.0
_STALL: Final = 35.0
_LOGIN_TIMEOUT: Final = 60.0
_BUILD_TIMEOUT: Final = 300.0
_PROBE_ALLOWANCE: Final = 2
_REPO: Final = Path(__file__).resolve().parents[2]
_OUR_CLIENT: Final = (
    "#!{python}\nimport sys\nsys.path.insert(0, {repo!r})\n"
    "from iceserv.client.main import main\nsys.exit(main())\n"
)
_PASSIVE_OPENS: Final = re.compile(r"^Tcp: (.*)\nTcp: (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Combo:
    """Which program plays each part; the mode follows from the client."""

    client: str
    local: str
    scheduler: str
    remote: str

    @property
    def mode(self) -> str:
        """``discovery`` (UDP broadcast) with the real client, ``-s`` with ours."""
        return "discovery" if self.client == "real" else "-s"

    @property
    def programs_real(self) -> bool:
        """Both daemons and the scheduler are 1.4's (this mode's listing baseline)."""
        return self.local == self.scheduler == self.remote == "real"

    def __str__(self) -> str:
        """E.g. ``client=real local=ours scheduler=real remote=ours (-s)``."""
        return (f"client={self.client} local={self.local} scheduler={self.scheduler} "
                f"remote={self.remote} ({self.mode})")  # fmt: skip


COMBOS: Final = [Combo(*kinds) for kinds in itertools.product(KINDS, repeat=4)]
ALL_REAL: Final = Combo("real", "real", "real", "real")


@dataclass
class Outcome:
    """What one combination did (filled in as far as it got)."""

    combo: Combo
    listed: float | None = None
    build: float | None = None
    returncode: int | None = None
    objects: dict[str, bytes] = field(default_factory=dict)
    passive_opens: int | None = None
    served: int | None = None
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    error: str = ""
    logs: str = ""

    def line(self) -> str:
        """One line for the log and failure messages."""
        listed = "-" if self.listed is None else f"{self.listed:.1f} s"
        build = "-" if self.build is None else f"{self.build:.1f} s"
        return (f"{self.combo}: listed after {listed}, build {build} (exit {self.returncode}), "
                f"h2 accepted {self.passive_opens}, h2 served {self.served}")  # fmt: skip


def _passive_opens(host: NetnsHost) -> int:
    """TCP connections accepted in *host*'s network namespace so far (``/proc/net/snmp``)."""
    text = host.run(["cat", "/proc/net/snmp"], capture_output=True, timeout=30).stdout.decode()
    match = _PASSIVE_OPENS.search(text)
    assert match is not None, text
    fields = dict(zip(match.group(1).split(), match.group(2).split(), strict=True))
    return int(fields["PassiveOpens"])


def _served(daemon: RealDaemon | OurDaemon) -> int:
    """Jobs the remote daemon says it compiled (its own log; reported, not the oracle)."""
    if isinstance(daemon, RealDaemon):
        return daemon.log_path.read_text(errors="replace").count("remote compile for file")
    return sum(1 for e in daemon.events("job_finished") if e.get("where") == "server")


def _daemon(kind: str, name: str, host: Host, *, max_jobs: int,  # noqa: PLR0913 - its options
            scheduler: str | None, netname: str | None) -> RealDaemon | OurDaemon:  # fmt: skip
    program = RealDaemon if kind == "real" else OurDaemon
    return program(name, host=host, max_jobs=max_jobs, scheduler=scheduler, netname=netname)


def _client(workdir: Path, kind: str) -> str:
    if kind == "real":
        return "/usr/bin/icecc"
    launcher = workdir / "icecc"
    launcher.write_text(_OUR_CLIENT.format(python=sys.executable, repo=str(_REPO)))
    launcher.chmod(0o755)
    return str(launcher)


def _run(combo: Combo, tarball: Path) -> Outcome:
    """Start the combination's cluster on a fresh bed, build, measure, stop."""
    outcome = Outcome(combo)
    workdir = make_workdir("matrix")
    try:
        with NetnsBed(3) as bed, contextlib.ExitStack() as stack:
            _run_on(bed, combo, workdir=workdir, tarball=tarball, outcome=outcome, stack=stack)
    except Exception as exc:  # noqa: BLE001 - reported by the combination's test
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False, timeout=60)
    return outcome


def _run_on(bed: NetnsBed, combo: Combo, *, workdir: Path, tarball: Path,  # noqa: PLR0913 - one run
            outcome: Outcome, stack: contextlib.ExitStack) -> None:  # fmt: skip
    client_host, remote_host, scheduler_host = bed
    project = restrict(unpack_project(tarball, workdir / "zstd"), UNITS)
    if combo.scheduler == "real":
        scheduler: RealScheduler | OurScheduler = RealScheduler(
            host=scheduler_host, port=SCHEDULER_PORT
        )
    else:
        scheduler = OurScheduler(host=scheduler_host, port=SCHEDULER_PORT, loopback_only=False)
    scheduler.start()
    programs: dict[str, RealScheduler | OurScheduler | RealDaemon | OurDaemon] = {
        "scheduler": scheduler}  # fmt: skip

    def stop_all() -> None:
        for name, program in reversed(programs.items()):
            outcome.exit_codes[name] = program.stop()

    def tails() -> str:
        return "\n".join(f"--- {name}\n{p.log_tail()}" for name, p in programs.items())

    stack.callback(stop_all)
    named = f"{scheduler_host.ip}:{SCHEDULER_PORT}" if combo.mode == "-s" else None
    started = time.monotonic()
    for name, kind, host, max_jobs in (("h1", combo.local, client_host, 0),
                                       ("h2", combo.remote, remote_host, 4)):  # fmt: skip
        idle = IdleCpuHost(host, freeze_proc_stat(workdir / f"stat-{name}"))
        daemon = _daemon(kind, f"{name}-{kind}", idle, max_jobs=max_jobs, scheduler=named,
                         netname=scheduler.netname)  # fmt: skip
        programs[name] = daemon.start()
    local, remote = programs["h1"], programs["h2"]
    assert isinstance(local, RealDaemon | OurDaemon)
    assert isinstance(remote, RealDaemon | OurDaemon)
    try:
        wait_for(lambda: _logged_in(scheduler, [local.name, remote.name]), _LOGIN_TIMEOUT,
                 "both daemons in the scheduler's log", interval=0.1)  # fmt: skip
    finally:
        outcome.logs = tails()
    outcome.listed = time.monotonic() - started
    outcome.returncode, outcome.build = _build(project, combo, workdir=workdir, host=client_host,
                                               local=local, remote_host=remote_host,
                                               outcome=outcome)  # fmt: skip
    outcome.objects = project.read_objects()
    wait_for(
        lambda: _served(remote) >= len(UNITS), 20.0, "the remote daemon's job records", interval=0.1
    )  # a daemon may log a job just after its client has gone
    outcome.served = _served(remote)
    outcome.logs = tails()


def _logged_in(scheduler: RealScheduler | OurScheduler, names: list[str]) -> bool:
    """Whether the scheduler's log shows every one of *names* logged in (read, not asked)."""
    scheduler.check_alive()
    if isinstance(scheduler, RealScheduler):
        text = scheduler.log_path.read_text(errors="replace")
        return all(f"login {name} protocol version" in text for name in names)
    return set(names) <= {e.get("nodename") for e in scheduler.events("daemon_logged_in")}


def _build(project: Project, combo: Combo, *, workdir: Path, host: NetnsHost,  # noqa: PLR0913
           local: RealDaemon | OurDaemon, remote_host: NetnsHost,
           outcome: Outcome) -> tuple[int, float]:  # fmt: skip
    env = build_env({"HOME": str(workdir), "ICECC_TEST_SOCKET": str(local.socket_path)})
    cc = f"{_client(workdir, combo.client)} gcc"
    before = _passive_opens(remote_host)
    started = time.monotonic()
    done = host.run(project.make_argv(cc, 4), cwd=project.root, env=env, check=False,
                    capture_output=True, timeout=_BUILD_TIMEOUT)  # fmt: skip
    took = time.monotonic() - started
    if done.returncode != 0:
        outcome.error = done.stdout.decode(errors="replace")[-3000:]
    outcome.passive_opens = _passive_opens(remote_host) - before
    return done.returncode, took


@pytest.fixture(scope="module")
def matrix() -> dict[Combo, Outcome]:
    """Run all 16 combinations, ``_WORKERS`` at a time; log each one's figures."""
    tarball = fetch_sdist()
    order = sorted(COMBOS, key=lambda combo: not combo.programs_real)  # baselines first
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="matrix") as pool:
        outcomes = dict(zip(order, pool.map(lambda combo: _run(combo, tarball), order),
                            strict=True))  # fmt: skip
    log.info("matrix of %d combinations took %.0f s", len(outcomes), time.monotonic() - started)
    for outcome in outcomes.values():
        log.info("%s", outcome.line())
    return outcomes


def _baseline(outcomes: dict[Combo, Outcome], combo: Combo) -> Outcome:
    client = "real" if combo.mode == "discovery" else "ours"
    return outcomes[Combo(client, "real", "real", "real")]


def _id(combo: Combo) -> str:
    parts = zip(("client", "local", "scheduler", "remote"), dataclasses.astuple(combo),
                strict=True)  # fmt: skip
    return "-".join(f"{part[0]}:{kind}" for part, kind in parts)


@pytest.mark.parametrize("combo", COMBOS, ids=_id)
def test_combination(matrix: dict[Combo, Outcome], combo: Combo) -> None:
    """The combination lists both daemons in time and builds the all-real objects, remotely."""
    outcome = matrix[combo]
    context = f"{outcome.line()}\n{outcome.error}\n{outcome.logs}"
    assert outcome.listed is not None, context
    baseline = _baseline(matrix, combo)
    assert baseline.listed is not None, f"the baseline failed: {baseline.line()}"
    assert outcome.listed <= baseline.listed + _LISTED_SLACK, context
    assert outcome.listed < _STALL, context
    assert outcome.returncode == 0, context
    reference = matrix[ALL_REAL].objects
    assert len(reference) == len(UNITS), f"the all-real build failed: {matrix[ALL_REAL].line()}"
    different = sorted(name for name in reference if outcome.objects.get(name) != reference[name])
    assert not different, f"objects differ from the all-real build: {different}\n{context}"
    assert outcome.passive_opens is not None, context
    assert len(UNITS) <= outcome.passive_opens <= len(UNITS) + _PROBE_ALLOWANCE, context
    assert outcome.served == len(UNITS), context
    ours = {name: code for name, code in outcome.exit_codes.items()
            if (combo.local if name == "h1" else combo.remote if name == "h2"
                else combo.scheduler) == "ours"}  # fmt: skip
    assert all(code == 0 for code in ours.values()), f"our exit codes {ours}\n{context}"
