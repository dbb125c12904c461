"""Fault injection: a real build through an iceserv cluster survives what breaks under it.

Issue 9 item 3 and issue 5 item 6.  Every case builds zstd's C library (33
units, ``testbed.project``) with ``make -j4`` through a two-host namespace
cluster of iceserv programs only -- our scheduler on h1, our daemon on h1
(one slot: the submitter, which also gets "compile it yourself" jobs) and on
h2 (two slots: the remote compile server), our ``icecc`` on h1 -- and
injects one fault while make runs:

1. the remote daemon is SIGKILLed while it has compile jobs running (seen
   on the monitor) and started again;
2. the scheduler is SIGKILLed while jobs run and started again on the same
   port and netname; the daemons look for it again within a second of the
   loss (1.4 waits 20-51 s; ``ICECC_TESTS`` is unset in the bed), make goes on locally;
3. h2's ``eth0`` goes down while h2, freshly restarted with an empty
   environment cache, receives the compiler environment, and comes back
   40 s later: longer than the client's 30 s send stall limit and than the
   keepalive (27 s + 3 x 3 s), so the client, h2 and the scheduler must each
   notice on their own;
4. ``ICECC_VERSION`` points at a broken environment tarball (cut short,
   or with 64 bytes inverted in the middle), which h2, freshly restarted,
   is the first to be sent; h2 refuses it with a reason, the client builds
   that job locally, the scheduler sends the rest to h1;
5. h2's ``-b`` environment directory is a 64 MiB tmpfs: room enough for
   the daemon to accept jobs (it reports load 1000 below 25 MiB free per
   free slot, as 1.4 does, so with 16 MiB it would never be chosen and
   nothing would be tested; one slot here, so 50 MiB) but too small for the
   78 MB environment; h2 refuses the install ("no space left"), keeps
   running, the job is built locally;
6. an ``icecc`` process is SIGKILLed while h2 compiles its unit (the
   slowest one, sent to h2 with ``ICECC_PREFERRED_HOST``): make fails, h2
   ends the job as "client killed", nobody keeps a slot, a rebuild succeeds;
7. ``ICECC_VERSION`` is an environment whose ``gcc`` dies of SIGSEGV for
   one unit (``testbed.faults.crashing_env``): h2 survives and reports the
   crash, the client compiles that unit locally.

Each case then requires: make succeeded (case 6: the rebuild), every object
is byte-identical to a local gcc build, the scheduler and every daemon still
run (the programs a case killed were started again), and no slot leaked:
once the build is over the scheduler's telnet ``listcs`` shows ``jobs=0/N``
for every daemon, and each daemon's ``org.icecream.Daemon1.SlotsUsed`` (one
private system bus per daemon, ``testbed.dbusbed``) is 0 as well.

After a refused install the scheduler keeps h2 "busy installing" (no more
jobs) and drops it after 120 s, as 1.4 does, so cases 4 and 5 start h2 anew
when they end.  One bed and one cluster serve the whole module: a case starts
from a healthy cluster (checked; it is started anew if a case before failed
or left it otherwise) and leaves it so.  Teardown stops everything, requires
exit status 0 from our programs and leaves no process, namespace or mount.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest
from testbed import (
    ClientPlan,
    Cluster,
    DaemonPlan,
    NetnsBed,
    OurDaemon,
    OurScheduler,
    Reference,
    build_real_env,
    list_netns,
    wait_for,
)
from testbed.cluster import SCHEDULER_PORT
from testbed.dbusbed import SystemBus, busctl
from testbed.faults import (
    children,
    client_connections,
    crashing_env,
    flipped_copy,
    jobs_running_on,
    kill,
    set_link,
    telnet_listcs,
    tmpfs,
    truncated_copy,
)
from testbed.netns import netns_pids

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from testbed import (
        BuildResult,
        ListedHost,
        Project,
        RealEnv,
        RunningBuild,
        SchedulerMonitor,
    )

pytestmark = [pytest.mark.live, pytest.mark.netns]
log = logging.getLogger(__name__)

OURS: Final = ClientPlan("ours")
CLIENT, SERVER = 0, 1  # host indexes: h1 submits (and compiles a little), h2 serves
SERVER_NAME: Final = "h2-ours"
NAMES: Final = ("h1-ours", SERVER_NAME)
DAEMON_PORT: Final = 10245
BUILD_TIMEOUT: Final = 240.0
JOBS_TIMEOUT: Final = 120.0
LOGIN_TIMEOUT: Final = 60.0
#: A daemon that lost its scheduler discovers it again at once (1.4: after 20-51 s).
RECONNECT_TIMEOUT: Final = 120.0
SETTLE_TIMEOUT: Final = 30.0
LINK_DOWN_SECONDS: Final = 40.0
ENV_DISK_MIB: Final = 64
#: The slowest unit (4-8 s at -O2 on a loaded machine): the client to kill in case 6.
SLOW_UNIT: Final = "lib/compress/zstd_compress.c"
#: The unit whose remote compile crashes in case 7.
CRASH_UNIT: Final = "lib/common/xxhash.c"
EXIT_CLIENT_KILLED: Final = 118  # a daemon's JOB_DONE status for a job whose client went away
EXIT_OUT_OF_MEMORY: Final = 105  # ... for a compiler killed by a signal (rebuilt by the client)
D: Final = "org.icecream.Daemon1"
DP: Final = "/org/icecream/Daemon1"


@pytest.fixture(scope="module")
def gcc_env(tmp_path_factory: pytest.TempPathFactory) -> RealEnv:
    """A gcc environment tarball (``icecc-create-env``), the raw material of broken ones."""
    return build_real_env(dest_dir=tmp_path_factory.mktemp("gcc-env"))


@dataclass(eq=False)
class Shared:
    """The module's bed, one private system bus per daemon, and the cluster on them."""

    bed: NetnsBed
    buses: dict[int, SystemBus]
    cluster: Cluster | None = None
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    mounts: list[Path] = field(default_factory=list)

    def plan(self, index: int, **changes: object) -> DaemonPlan:
        """The usual plan of host ``index`` (h1 one slot, h2 two), with ``changes``."""
        values: dict[str, object] = {
            "kind": "ours", "max_jobs": 1 if index == CLIENT else 2,
            "extra_env": {"DBUS_SYSTEM_BUS_ADDRESS": self.buses[index].address},
        } | changes  # fmt: skip
        return DaemonPlan(**values)  # type: ignore[arg-type]

    def get(self) -> Cluster:
        """The cluster, started or (if it is not healthy) started anew."""
        if self.cluster is not None:
            try:
                assert_recovered(self, timeout=10.0)
                busy = [h.name for h in listcs(self.cluster) if "busy installing" in h.extra]
                assert not busy, f"{busy} busy installing: the scheduler will drop them"
            except AssertionError as exc:
                log.warning("the shared cluster is not healthy, starting it again: %s", exc)
                self.retire()
        if self.cluster is None:
            plans = [self.plan(CLIENT), self.plan(SERVER)]
            self.cluster = Cluster(self.bed, "ours", plans, login_timeout=LOGIN_TIMEOUT).start()
        return self.cluster

    def retire(self) -> None:
        """Stop the cluster; remember our programs' exit codes for the module's teardown."""
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            self.exit_codes.update(cluster.stop())

    def bus(self, index: int) -> str:
        """The bus address the daemon of host ``index`` is on."""
        return self.buses[index].address


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    """One two-host bed and buses for the module; the cluster is started on first use."""
    with contextlib.ExitStack() as stack:
        bed = stack.enter_context(NetnsBed(2))
        buses = {}
        for index in (CLIENT, SERVER):
            buses[index] = SystemBus(user="daemon", group="staff").start()
            stack.callback(buses[index].close)
        state = Shared(bed, buses)
        yield state
        state.retire()
        left = {name: pids for name in bed.netns_names if (pids := netns_pids(name))}
        assert not left, f"processes left in the bed after the cluster stopped: {left}"
        assert all(code == 0 for code in state.exit_codes.values()), state.exit_codes
    assert not set(bed.netns_names) & set(list_netns())
    mounts = Path("/proc/mounts").read_text()
    assert not any(name in mounts for name in bed.netns_names)
    assert not [path for path in state.mounts if str(path) in mounts], "a tmpfs is still mounted"


@dataclass(eq=False)
class Case:
    """One case's view: the shared cluster and a fresh project tree to build on h1."""

    shared: Shared
    cluster: Cluster
    project: Project
    reference: Mapping[str, bytes]

    def start(self, client: ClientPlan = OURS) -> RunningBuild:
        """Start ``make -j4`` of a clean tree on h1 with ``client``."""
        return self.cluster.start_build(self.project, self.reference, client, on=CLIENT, jobs=4)

    def build(self, client: ClientPlan = OURS) -> BuildResult:
        """Build a clean tree on h1 with ``client`` and require success (see ``finish``)."""
        return self.finish(self.start(client))

    def finish(self, running: RunningBuild) -> BuildResult:
        """Wait for ``running``; require make's success and byte-identical objects."""
        result = running.finish(BUILD_TIMEOUT)
        log.info("%s", result.summary())
        assert result.returncode == 0, f"{result.summary()}\n{result.output[-3000:]}"
        assert not result.different, result.summary()
        assert not result.missing, result.summary()
        return result

    @property
    def monitor(self) -> SchedulerMonitor:
        """The monitor logged in to the current scheduler."""
        assert self.cluster.monitor is not None
        return self.cluster.monitor

    def server(self) -> OurDaemon:
        """Our daemon on h2, the compile server (the current one, after restarts)."""
        daemon = self.cluster.daemon(SERVER)
        assert isinstance(daemon, OurDaemon)
        assert daemon.name == SERVER_NAME
        return daemon

    def wait_jobs_on_server(self, since: int) -> None:
        """Wait until h2 compiles something (the monitor saw a job begin and not end there)."""
        wait_for(lambda: jobs_running_on(self.monitor, SERVER_NAME, since), JOBS_TIMEOUT,
                 "jobs running on h2", context=self.cluster.log_tails)  # fmt: skip

    def wait_online(self, names: tuple[str, ...] = NAMES, timeout: float = LOGIN_TIMEOUT) -> None:
        """Wait until the scheduler lists these daemons with their STATS."""
        self.monitor.wait_online(names, timeout, context=self.cluster.log_tails)

    def fresh_server(self, plan: DaemonPlan | None = None) -> int | None:
        """Stop h2's daemon, start it anew, return the old one's exit status (0 is right).

        The new one has an empty environment cache and ``plan`` (else the
        usual one).  Also what a case does after h2 refused an environment:
        the scheduler keeps a daemon "busy installing" after a job was sent
        to it without its environment until it re-announces, which a failed
        install never does, and drops it after 120 s (1.4's
        MAX_BUSY_INSTALLING) -- in the middle of the next case.  A new daemon
        starts clean.
        """
        code = self.cluster.restart_daemon(SERVER, plan or self.shared.plan(SERVER))
        self.wait_online((SERVER_NAME,))
        return code

    def recovered(self) -> None:
        """Everything runs; every daemon is listed with no job, no slot (``assert_recovered``)."""
        assert_recovered(self.shared)


@pytest.fixture
def case(shared: Shared, project: Project, zstd: Reference,
         request: pytest.FixtureRequest) -> Iterator[Case]:  # fmt: skip
    """The shared cluster, healthy; retired after a failed test so the next one starts clean."""
    failed_before = request.session.testsfailed
    yield Case(shared, shared.get(), project, zstd.reference)
    if request.session.testsfailed != failed_before:
        shared.retire()


# --- what every case requires -------------------------------------------------------------


def slots_used(address: str) -> int:
    """``org.icecream.Daemon1.SlotsUsed`` of the daemon on the bus at ``address``."""
    result = busctl(address, "--json=short", "get-property", D, DP, D, "SlotsUsed")
    assert result.returncode == 0, f"SlotsUsed: {result.stderr}"
    value: int = json.loads(result.stdout)["data"]
    return value


def listcs(cluster: Cluster) -> list[ListedHost]:
    """The scheduler's telnet ``listcs``, asked from its own host."""
    host = cluster.bed[cluster.scheduler_host]
    return telnet_listcs(host, (host.ip, SCHEDULER_PORT + 1))


def slot_report(shared: Shared) -> dict[str, tuple[str, int]]:
    """Per daemon: its ``listcs`` jobs (``"0/2"``, or "missing") and its D-Bus SlotsUsed."""
    cluster = shared.cluster
    assert cluster is not None
    listed = {h.name: f"{h.jobs}/{h.max_jobs}" for h in listcs(cluster)}
    return {daemon.name: (listed.get(daemon.name, "missing"), slots_used(shared.bus(index)))
            for index, daemon in cluster.daemons.items()}  # fmt: skip


def assert_recovered(shared: Shared, *, timeout: float = SETTLE_TIMEOUT) -> None:
    """Everything runs, and (within ``timeout``) every daemon is listed with no job and no slot."""
    cluster = shared.cluster
    assert cluster is not None
    assert isinstance(cluster.scheduler, OurScheduler)
    cluster.scheduler.alive()  # each raises with the log tail if the program exited
    for daemon in cluster.daemons.values():
        assert isinstance(daemon, OurDaemon)
        daemon.alive()
    wanted = {d.name: (f"0/{d.max_jobs}", 0) for d in cluster.daemons.values()}
    seen: dict[str, tuple[str, int]] = {}

    def idle() -> bool:
        seen.update(slot_report(shared))
        return seen == wanted

    try:
        wait_for(idle, timeout, "every daemon listed with jobs=0 and SlotsUsed 0", interval=0.5)
    except AssertionError as exc:  # WaitTimeoutError is one
        msg = (f"slots after the build (listcs jobs, SlotsUsed): {seen}, wanted {wanted}\n"
               f"{cluster.log_tails()}")  # fmt: skip
        raise AssertionError(msg) from exc


def refusals(daemon: OurDaemon, env: str) -> list[str]:
    """The texts with which ``daemon`` refused to install environment ``env``."""
    return [e["text"] for e in daemon.events("client_error_sent")
            if f"environment x86_64/{env} not installed" in e.get("text", "")]  # fmt: skip


# --- the cases ----------------------------------------------------------------------------


class TestDaemonKilled:
    def test_remote_daemon_killed_mid_job_and_restarted(self, case):
        """SIGKILL of h2's daemon while it compiles: its jobs are redone, it logs in again."""
        running = case.start()
        case.wait_jobs_on_server(running.mark)
        assert kill(case.server().proc) == -signal.SIGKILL
        assert case.cluster.restart_daemon(SERVER) == -signal.SIGKILL
        case.wait_online((SERVER_NAME,))
        case.finish(running)
        case.recovered()


class TestSchedulerRestart:
    def test_scheduler_killed_mid_build_and_restarted(self, case):
        """SIGKILL of the scheduler mid-build: make goes on, the daemons log in to the new one."""
        running = case.start()
        case.wait_jobs_on_server(running.mark)
        scheduler = case.cluster.scheduler
        assert scheduler is not None
        assert kill(scheduler.proc) == -signal.SIGKILL
        assert case.cluster.restart_scheduler() == -signal.SIGKILL
        case.finish(running)
        case.wait_online(timeout=RECONNECT_TIMEOUT)
        case.recovered()


class TestLinkCut:
    def test_link_down_during_environment_transfer(self, case):
        """h2's link goes down for 40 s while it receives the environment, then comes back."""
        assert case.fresh_server() == 0  # no environment installed yet
        victim = case.server()
        running = case.start()
        wait_for(lambda: victim.events("env_transfer_started"), JOBS_TIMEOUT,
                 "h2 to receive an environment", interval=0.02,
                 context=case.cluster.log_tails)  # fmt: skip
        host = case.cluster.bed[SERVER]
        set_link(host, up=False)
        try:
            assert not victim.events("env_installed"), "the transfer ended before the cut"
            time.sleep(LINK_DOWN_SECONDS)
        finally:
            set_link(host, up=True)
        case.finish(running)
        case.wait_online(timeout=RECONNECT_TIMEOUT)
        case.recovered()


class TestBrokenEnvironment:
    @pytest.mark.parametrize("damage", ["truncated", "flipped"])
    def test_corrupt_tarball_in_icecc_version(self, case, gcc_env, tmp_path, damage):
        """ICECC_VERSION names a broken tarball: h2 refuses it, those jobs are built locally."""
        name = f"broken-{damage}"
        broken = tmp_path / f"{name}.tar.gz"
        if damage == "truncated":
            truncated_copy(gcc_env.path, broken, 64 * 1024)
        else:
            flipped_copy(gcc_env.path, broken, offset=gcc_env.path.stat().st_size // 2)
        assert case.fresh_server() == 0
        try:
            case.build(ClientPlan("ours", extra_env={"ICECC_VERSION": str(broken)}))
            victim = case.server()
            assert refusals(victim, name), f"h2 never refused {name}\n{case.cluster.log_tails()}"
            assert not victim.events("env_installed")
            case.recovered()
        finally:
            code = case.fresh_server()  # see Case.fresh_server
        assert code == 0


class TestFullEnvDisk:
    def test_environment_does_not_fit_the_env_dir(self, case):
        """h2's env dir is a 64 MiB tmpfs: the 78 MB install fails, h2 runs on, make completes."""
        cluster, shared = case.cluster, case.shared
        assert cluster.workdir is not None
        shared.mounts.append(cluster.workdir / "small-envs")
        with tmpfs(shared.mounts[-1], ENV_DISK_MIB) as envs:
            try:
                # No prebuilt native environment in the small env dir: only the client's
                # transfer is to meet the full disk.
                args = ("-b", str(envs), "--native-compilers", "")
                small = shared.plan(SERVER, max_jobs=1, extra_args=args)
                assert case.fresh_server(small) == 0
                victim = case.server()
                case.build()
                texts = [e["text"] for e in victim.events("client_error_sent")]
                assert any("no space left" in text for text in texts), cluster.log_tails()
                assert not victim.events("env_installed")
                case.recovered()
            finally:
                code = case.fresh_server()  # off the tmpfs, before it is unmounted
        assert code == 0


class TestClientKilled:
    def test_client_killed_during_its_remote_compile(self, case):
        """SIGKILL of an icecc while h2 compiles its unit: h2 frees the slot, a rebuild succeeds."""
        victim = case.server()
        h1 = case.cluster.bed[CLIENT]
        address = (case.cluster.bed[SERVER].ip, DAEMON_PORT)
        running = case.start(ClientPlan("ours", extra_env={"ICECC_PREFERRED_HOST": SERVER_NAME}))

        def compiling() -> tuple[int, int] | None:
            """(pid, job id) of an icecc whose SLOW_UNIT h2 compiles now, its source all sent."""
            started = {e["peer"]: e["job_id"] for e in victim.events("compiler_started")}
            finished = {e["job_id"] for e in victim.events("job_finished")}
            for conn in client_connections(h1, address):
                job_id = started.get(f"{h1.ip}:{conn.port}")
                if (
                    job_id is not None
                    and job_id not in finished
                    and not conn.unacked
                    and SLOW_UNIT in _cmdline(conn.pid)
                    and not children(h1, conn.pid)
                ):
                    return conn.pid, job_id  # no preprocessor left, every byte acknowledged
            return None

        found = wait_for(compiling, JOBS_TIMEOUT, f"h2 to compile {SLOW_UNIT}", interval=0.05,
                         context=case.cluster.log_tails)  # fmt: skip
        assert found is not None
        pid, job_id = found
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        failed = running.finish(BUILD_TIMEOUT)
        assert failed.returncode != 0, "make succeeded although one of its compilers was killed"

        def ended() -> list[int]:
            return [e["exitcode"] for e in victim.events("job_finished") if e["job_id"] == job_id]

        assert wait_for(ended, SETTLE_TIMEOUT, "h2 to end the job") == [EXIT_CLIENT_KILLED]
        case.recovered()
        case.build()
        case.recovered()


class TestCrashingCompiler:
    def test_remote_compiler_segfaults_for_one_unit(self, case, gcc_env, tmp_path):
        """Issue 5.6: the remote gcc dies of SIGSEGV on one unit; h2 lives, the client redoes it."""
        env = crashing_env(gcc_env.path, tmp_path / "segv-xxhash.tar.gz", CRASH_UNIT)
        case.build(ClientPlan("ours", extra_env={"ICECC_VERSION": str(env),
                                                 "ICECC_PREFERRED_HOST": SERVER_NAME}))  # fmt: skip
        jobs = [e for e in case.server().events("job_finished")
                if e.get("env") == "x86_64/segv-xxhash"]  # fmt: skip
        crashed = [(e["exitcode"], e["oom"]) for e in jobs if e["exitcode"] != 0]
        assert crashed == [(EXIT_OUT_OF_MEMORY, True)], jobs
        assert len(jobs) > 1, "only the crashing unit ran in the environment"
        case.recovered()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
