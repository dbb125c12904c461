"""A hostile host on the LAN against a live scheduler (issue 20): held, dripped and flooded.

Each test starts iceserv's scheduler program (``python -m iceserv.app.scheduler``,
loopback, JSON log) and attacks its scheduler port or telnet port from this
process with plain sockets, from several loopback source addresses
(127.0.0.x) so that per-host budgets can be told from the total.  Every
test asserts bounds read from ``/proc`` (descriptors, RSS, CPU seconds in
``/proc/<pid>/stat``), the number of log records, and that the scheduler
still answers a real peer afterwards; none asserts a duration.  Where a
window of observation is needed (CPU spent while connections are held)
its length only scales the bound.  The telnet lock-out is also run
against the real icecream 1.4 scheduler, which has no session limit.

Descriptor exhaustion uses ``prlimit`` on the running scheduler (a
limit of 128) rather than a thousand sockets.  Settings are given as
``ICECC_SCHEDULER_*`` environment variables, as a service manager would.

The daemon's attacks (second part) run against one of our daemons on
loopback, each alone.  ``TestCombinedOnTheBed`` (last part) runs all of
them at once from an attacker host of a namespace bed against a whole
cluster (our scheduler, two of our daemons, a real 1.4 ``iceccd``) while
our ``icecc`` builds a real project through it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
from testbed import (
    ClientPlan,
    Cluster,
    DaemonPlan,
    NetnsBed,
    OurDaemon,
    OurScheduler,
    RealScheduler,
    build_reference,
    fetch_sdist,
    unpack_project,
)
from testbed.cluster import SCHEDULER_PORT
from testbed.faults import telnet_listcs
from testbed.netns import enter_netns
from testbed.project import library_units, restrict
from testbed.wait import wait_for

from iceserv.protocol import (
    NEED_DATA,
    CompileFile,
    Connection,
    ConnectionClosed,
    End,
    EnvTransfer,
    FileChunk,
    GetCS,
    GetNativeEnv,
    Handshake,
    JobLocalBegin,
    Login,
    MonLogin,
    MonStats,
    Stats,
    UseNativeEnv,
)
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    #: pytest's record_property: the figures go to ``--junitxml`` reports.
    Recorder = Callable[[str, object], None]

WAIT = 20.0  # bound on any single awaited event
#: Descriptors over a budget for a moment: up to one accept batch (16) of evicted or refused
#: sockets whose close completes on the next loop iteration, and a few of the program's own.
_SLACK = 16 + 8
_TICKS = os.sysconf("SC_CLK_TCK")


# --- the scheduler under attack and what /proc says about it --------------------------


@dataclass(eq=False)
class LimitedScheduler(OurScheduler):
    """Our scheduler started under ``prlimit --nofile=N:N`` (which execs it: same pid)."""

    nofile: int | None = None

    def _launch(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        if self.nofile is not None:
            argv = ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--", *argv]
        super()._launch(argv, env)


@contextlib.contextmanager
def scheduler(env: Mapping[str, str] | None = None, *, nofile_at_start: int | None = None,
              nofile_later: int | None = None) -> Iterator[OurScheduler]:  # fmt: skip
    """Our scheduler with *env* settings and, if given, a lower descriptor limit.

    *nofile_at_start* is the limit it starts with (it fits its budgets
    under it); *nofile_later* is set with ``prlimit --pid`` once it runs.
    """
    ours = LimitedScheduler(extra_env=dict(env or {}), nofile=nofile_at_start).start()
    try:
        if nofile_later is not None:
            limit = f"--nofile={nofile_later}:{nofile_later}"
            subprocess.run(["prlimit", f"--pid={_pid(ours)}", limit], check=True, timeout=30)
        yield ours
    finally:
        tail = ours.log_tail()
        code = ours.stop()
        assert code == 0, f"our scheduler did not exit cleanly: {code}\n{tail}"


def _pid(program: OurScheduler | RealScheduler | OurDaemon) -> int:
    assert program.proc is not None
    return program.proc.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_kib(pid: int) -> int:
    """Resident set size in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(pid)


def fd_count(pid: int) -> int:
    """Descriptors the process holds now."""
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def log_records(program: OurScheduler) -> int:
    """Lines in the program's JSON log."""
    return len(program.log_text().splitlines())


def connect(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None,
            timeout: float = WAIT, dest: str = "127.0.0.1") -> socket.socket:  # fmt: skip
    """A TCP connection to *dest*:*port* from *source* (any 127.0.0.0/8 address by default)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect((dest, port))
    return sock


def closed_by_peer(sock: socket.socket, timeout: float = WAIT) -> bool:
    """Read and discard until end of file or reset; False if the peer keeps it open."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


# --- protocol peers ------------------------------------------------------------------


class Peer:
    """A binary-protocol peer on a blocking socket (a fake daemon or monitor)."""

    def __init__(self, port: int, source: str = "127.0.0.1", rcvbuf: int | None = None,
                 dest: str = "127.0.0.1") -> None:  # fmt: skip
        self.sock = connect(port, source, rcvbuf, dest=dest)
        self.conn = Connection()
        self.flush()
        if not isinstance(self.next_event(), Handshake):
            self.sock.close()
            raise ConnectionResetError

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send(self, *messages: object) -> None:
        for message in messages:
            self.conn.send(message)  # type: ignore[arg-type]
        self.flush()

    def next_event(self) -> object:
        while (event := self.conn.next_event()) is NEED_DATA:
            self.conn.receive_data(self.sock.recv(65536))
            self.flush()
        return event

    def close(self) -> None:
        self.sock.close()


class FakeDaemon(Peer):
    """Logs in as a daemon; a listening socket answers the scheduler's reachability probe.

    With ``max_kids`` 0 the scheduler never places a job on it (in a cluster
    that builds for real).
    """

    def __init__(self, port: int, name: str, source: str = "127.0.0.1", *,
                 dest: str = "127.0.0.1", max_kids: int = 2) -> None:  # fmt: skip
        self.probe = socket.create_server((source, 0))
        super().__init__(port, source, dest=dest)
        self.send(Login(port=self.probe.getsockname()[1], max_kids=max_kids, nodename=name,
                        host_platform="x86_64", supported_features=3), Stats(load=0))  # fmt: skip

    def close(self) -> None:
        super().close()
        self.probe.close()


def listed(program: OurScheduler | RealScheduler, name: str) -> bool:
    """True once the scheduler's telnet ``listcs`` shows daemon *name*."""
    return any(line.split()[:1] == [name] for line in telnet(program.port, "listcs"))


def telnet(port: int | None, command: str, source: str = "127.0.0.1") -> list[str]:
    """One telnet session on port + 1: greeting, *command*, answer lines up to ``200 done``."""
    assert port is not None
    with connect(port + 1, source) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"200-")  # greeting
        assert reader.readline().startswith(b"200 ")
        sock.sendall(command.encode() + b"\n")
        lines = []
        while (line := reader.readline()) and not line.startswith(b"200 done"):
            lines.append(line.decode().rstrip("\n"))
        assert line.startswith(b"200 done"), lines
        return lines


def still_serves(program: OurScheduler, name: str) -> None:
    """A daemon can log in and telnet lists it: the scheduler is not locked out."""
    daemon = FakeDaemon(program.port, name)  # type: ignore[arg-type]
    try:
        wait_for(lambda: listed(program, name), WAIT, f"{name} in listcs")
    finally:
        daemon.close()


# --- the attacks ---------------------------------------------------------------------


def _observe(program: OurScheduler, window: float) -> tuple[float, int, float]:
    """Watch *program* for *window* seconds: (CPU seconds used, log records written, seconds).

    The window only scales the CPU bound; nothing waits for an event here.
    """
    pid = _pid(program)
    cpu, records, start = cpu_seconds(pid), log_records(program), time.monotonic()
    while time.monotonic() - start < window:
        time.sleep(0.1)
    return cpu_seconds(pid) - cpu, log_records(program) - records, time.monotonic() - start


class TestDescriptorExhaustion:
    def test_held_connections_within_a_fitted_budget(self, record_property: Recorder):
        """Started with 128 descriptors, 300 held connections: logins and telnet still work."""
        with scheduler(nofile_at_start=128) as ours:
            pid = _pid(ours)
            base_rss = rss_kib(pid)
            held = []
            try:
                for index in range(300):  # five hosts, 60 each: within the per-host budget
                    with contextlib.suppress(OSError):
                        held.append(connect(ours.port, f"127.0.1.{index % 5 + 1}"))  # type: ignore[arg-type]
                spent, logged, elapsed = _observe(ours, 3.0)
                fds = fd_count(pid)
                record_property("fds", fds)
                record_property("cpu_s", round(spent, 2))
                record_property("window_s", round(elapsed, 1))
                record_property("log_records", logged)
                record_property("rss_growth_kib", rss_kib(pid) - base_rss)
                still_serves(ours, "while-held")
            finally:
                for sock in held:
                    sock.close()
            assert fds < 128, fds
            assert spent < 0.25 * elapsed, f"{spent:.2f} CPU s in {elapsed:.1f} s"
            assert logged <= 5, ours.log_tail()
            assert ours.events("connection_budget_lowered")

    def test_running_out_of_descriptors_pauses_accepting(self, record_property: Recorder):
        """Out of descriptors (limit lowered while running) it pauses: little CPU, few records."""
        budgets = {"ICECC_SCHEDULER_MAX_CONNECTIONS": "100000",
                   "ICECC_SCHEDULER_MAX_CONNECTIONS_PER_HOST": "100000",
                   "ICECC_SCHEDULER_HANDSHAKE_TIMEOUT": "600"}  # fmt: skip
        with scheduler(budgets, nofile_later=128) as ours:
            pid = _pid(ours)
            held = [connect(ours.port) for _ in range(300)]  # type: ignore[arg-type]
            try:
                wait_for(lambda: fd_count(pid) >= 120, WAIT, "the scheduler to run out of fds")
                spent, logged, elapsed = _observe(ours, 3.0)
            finally:
                for sock in held:
                    sock.close()
            record_property("cpu_s", round(spent, 2))
            record_property("window_s", round(elapsed, 1))
            record_property("log_records", logged)
            assert spent < 0.25 * elapsed, f"{spent:.2f} CPU s in {elapsed:.1f} s"
            assert logged <= 5, ours.log_tail()
            wait_for(lambda: fd_count(pid) < 64, WAIT, "the held connections to be closed")
            still_serves(ours, "after-exhaustion")
            assert ours.events("accept_paused")
            assert ours.events("accept_resumed")

    def test_a_flooding_host_gets_only_its_share(self, record_property: Recorder):
        """500 connections from one host hold at most its per-host budget; others still get in."""
        with scheduler({"ICECC_SCHEDULER_MAX_CONNECTIONS_PER_HOST": "32"}) as ours:
            pid = _pid(ours)
            base_fds, base_rss, cpu = fd_count(pid), rss_kib(pid), cpu_seconds(pid)
            held = []
            try:
                for _ in range(500):
                    with contextlib.suppress(OSError):
                        held.append(connect(ours.port, "127.0.0.2"))  # type: ignore[arg-type]
                fds = fd_count(pid)
                spent, grown = cpu_seconds(pid) - cpu, rss_kib(pid) - base_rss
                records = len(ours.events("connection_refused") + ours.events("connection_evicted"))
                for name, value in (
                    ("fds_held", fds - base_fds),
                    ("rss_growth_kib", grown),
                    ("cpu_s", round(spent, 2)),
                    ("log_records", records),
                ):
                    record_property(name, value)
                still_serves(ours, "beside-the-flood")
                assert telnet(ours.port, "listblocks", "127.0.0.3") == []
            finally:
                for sock in held:
                    sock.close()
            assert fds <= base_fds + 32 + _SLACK, fds
            assert grown < 16 * 1024
            assert spent < 3.0
            assert records <= 4


def _login_bytes() -> bytes:
    """What a daemon sends first: its version, the confirmed version, a LOGIN frame."""
    conn = Connection()
    conn.receive_data((43).to_bytes(4, "little") * 2)  # the scheduler's side of the handshake
    assert isinstance(conn.next_event(), Handshake)
    conn.send(Login(port=1, max_kids=1, nodename="dripper", host_platform="x86_64"))
    return conn.data_to_send()


class TestDeadlines:
    def test_drip_cannot_extend_the_handshake(self, record_property: Recorder):
        """A valid handshake and LOGIN, one byte every 0.2 s: closed by the 1 s deadline."""
        with scheduler({"ICECC_SCHEDULER_HANDSHAKE_TIMEOUT": "1"}) as ours:
            sock = connect(ours.port)  # type: ignore[arg-type]
            sent = 0
            try:
                sock.settimeout(0.2)
                for byte in _login_bytes():
                    sock.send(bytes([byte]))
                    sent += 1
                    with contextlib.suppress(TimeoutError):
                        if sock.recv(4096) == b"":
                            break
            except ConnectionError:
                pass
            finally:
                sock.close()
            record_property("bytes_dripped", sent)
            assert sent <= 15, f"still open after {sent} dripped bytes"
            still_serves(ours, "after-drip")

    def test_drip_cannot_extend_a_message(self, record_property: Recorder):
        """A logged-in daemon that drips a message is dropped by the message deadline (1 s)."""
        with scheduler({"ICECC_SCHEDULER_MESSAGE_TIMEOUT": "1"}) as ours:
            daemon = FakeDaemon(ours.port, "dripper")  # type: ignore[arg-type]
            try:
                wait_for(lambda: listed(ours, "dripper"), WAIT, "the dripper to log in")
                daemon.conn.send(Stats(load=1))
                frame = daemon.conn.data_to_send()
                daemon.sock.settimeout(0.2)
                sent = 0
                with contextlib.suppress(ConnectionError):
                    for byte in frame[:-1] * 4:
                        daemon.sock.send(bytes([byte]))
                        sent += 1
                        with contextlib.suppress(TimeoutError):
                            if daemon.sock.recv(4096) == b"":
                                break
            finally:
                daemon.close()
            record_property("bytes_dripped", sent)
            assert sent <= 15, f"still open after {sent} dripped bytes"
            (record,) = ours.wait_events("daemon_logged_out", 1)
            assert record["reason"] == "message deadline passed"


class TestMonitors:
    def test_mon_login_flood_is_capped(self, record_property: Recorder):
        """300 MON_LOGINs from one host: 16 monitors stay; STATS fan-out stays cheap."""
        with scheduler() as ours:
            pid = _pid(ours)
            base_fds, base_rss = fd_count(pid), rss_kib(pid)
            monitors = []
            for _ in range(300):
                with contextlib.suppress(OSError):
                    peer = Peer(ours.port, "127.0.0.4")  # type: ignore[arg-type]
                    peer.send(MonLogin())
                    monitors.append(peer)
            daemon = FakeDaemon(ours.port, "chatty", "127.0.0.5")  # type: ignore[arg-type]
            try:
                with contextlib.suppress(AssertionError):  # main's code never gets there
                    wait_for(lambda: fd_count(pid) <= base_fds + 16 + 4, WAIT,
                             "monitors over the budget to be closed")  # fmt: skip
                cpu = cpu_seconds(pid)
                for load in range(500):
                    daemon.send(Stats(load=load % 1000))
                fds = fd_count(pid)
                still_serves(ours, "beside-the-monitors")
                spent, grown = cpu_seconds(pid) - cpu, rss_kib(pid) - base_rss
                for name, value in (
                    ("fds_held", fds - base_fds),
                    ("rss_growth_kib", grown),
                    ("cpu_s_500_stats", round(spent, 2)),
                ):
                    record_property(name, value)
            finally:
                daemon.close()
                for peer in monitors:
                    peer.close()
            assert fds <= base_fds + 16 + _SLACK, fds
            assert spent < 3.0, spent
            assert grown < 16 * 1024
            assert len(ours.events("connection_refused")) <= 3

    def test_slow_monitors_are_dropped_not_buffered(self, record_property: Recorder):
        """Monitors that never read are dropped (2 MiB queued at most); one that reads stays."""
        with scheduler() as ours:
            pid = _pid(ours)
            base_rss = rss_kib(pid)
            slow = []
            for index in range(100):  # ten hosts, ten monitors each: within the budgets
                peer = Peer(ours.port, f"127.0.0.{10 + index // 10}", rcvbuf=4096)  # type: ignore[arg-type]
                peer.send(MonLogin())
                slow.append(peer)
            reader = Peer(ours.port, "127.0.0.6")  # type: ignore[arg-type]
            reader.send(MonLogin())
            stop = threading.Event()
            seen: list[int] = []
            thread = threading.Thread(target=_count_stats, args=(reader, seen, stop), daemon=True)
            thread.start()  # reads all the time, as a real monitor does
            # The daemon's first STATS must not overtake the reading monitor's MON_LOGIN.
            wait_for(
                lambda: len(ours.events("monitor_logged_in")) >= 101,
                WAIT,
                "the monitors to be logged in",
            )
            daemon = FakeDaemon(ours.port, "chatty", "127.0.0.5")  # type: ignore[arg-type]
            try:
                for batch in range(30):  # 1,500 STATS; the reader is never 50 behind
                    for load in range(50):
                        daemon.send(Stats(load=load, free_mem=batch))
                    wait_for(
                        lambda sent=50 * (batch + 1): len(seen) >= sent,
                        WAIT,
                        "the reading monitor to keep up",
                        context=ours.log_tail,
                    )
                grown = rss_kib(pid) - base_rss
                record_property("rss_growth_kib", grown)
                wait_for(lambda: ours.events("monitor_dropped"), WAIT,
                         "slow monitors to be dropped")  # fmt: skip
            finally:
                stop.set()
                thread.join(WAIT)
                daemon.close()
                reader.close()
                for peer in slow:
                    peer.close()
            record_property("monitors_dropped", len(ours.events("monitor_dropped")))
            assert grown < 12 * 1024, grown
            dropped = {record["peer"] for record in ours.events("monitor_dropped")}
            assert "127.0.0.6" not in dropped


def _count_stats(peer: Peer, seen: list[int], stop: threading.Event) -> None:
    """Thread body: read *peer* until *stop*, appending 1 per MON_STATS with load details."""
    peer.sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data = peer.sock.recv(1 << 20)
        except TimeoutError:
            continue
        except OSError:
            return
        if not data:
            return
        peer.conn.receive_data(data)
        while (event := peer.conn.next_event()) is not NEED_DATA:
            if isinstance(event, MonStats) and "LoadAvg1:" in event.statmsg:
                seen.append(1)


class TestTelnet:
    def _lock_out(self, port: int) -> list[str]:
        """Fill 4 x 16 sessions from four hosts, each sends an empty line; then ask listcs."""
        sessions = []
        try:
            for host in range(4):
                for _ in range(16):
                    sock = connect(port + 1, f"127.0.0.{20 + host}")
                    sock.sendall(b"\n")
                    sessions.append(sock)
            for sock in sessions:  # greeting and the empty line's answer have been read
                sock.settimeout(WAIT)
                with contextlib.suppress(TimeoutError):
                    sock.recv(4096)
            return telnet(port, "listcs", "127.0.0.30")
        finally:
            for sock in sessions:
                sock.close()

    def test_full_telnet_port_still_answers(self):
        """64 idle sessions that keep pinging cannot lock the telnet port out (nor 1.4's)."""
        with scheduler() as ours:
            assert self._lock_out(ours.port) == []  # type: ignore[arg-type]
            assert ours.events("telnet_session_closed")

    def test_real_scheduler_answers_too(self, real_scheduler: RealScheduler):
        """The same against 1.4: it has no limit and answers."""
        assert self._lock_out(real_scheduler.port) == []  # type: ignore[arg-type]

    def test_one_host_cannot_take_the_port(self):
        """A host over its share loses its own oldest idle session, not another host's."""
        with scheduler({"ICECC_SCHEDULER_MAX_TELNET_SESSIONS_PER_HOST": "2"}) as ours:
            other = connect(ours.port + 1, "127.0.0.41")  # type: ignore[operator]
            first = connect(ours.port + 1, "127.0.0.40")  # type: ignore[operator]
            second = connect(ours.port + 1, "127.0.0.40")  # type: ignore[operator]
            third = connect(ours.port + 1, "127.0.0.40")  # type: ignore[operator]
            try:
                assert closed_by_peer(first)
                assert telnet(ours.port, "listcs", "127.0.0.40") == []
                other.sendall(b"listcs\n")
                data = b""
                other.settimeout(WAIT)
                while b"200 done" not in data:
                    chunk = other.recv(4096)
                    assert chunk, data
                    data += chunk
            finally:
                for sock in (other, first, second, third):
                    sock.close()


class TestCombined:
    def test_a_real_daemon_logs_in_under_every_attack(self, real_daemon_factory,
                                                      record_property: Recorder):  # fmt: skip
        """Held, monitor and telnet floods at once (256 fds): a real 1.4 iceccd still logs in."""
        env = {"ICECC_SCHEDULER_HANDSHAKE_TIMEOUT": "600"}  # held ones are evicted, not timed out
        with scheduler(env, nofile_at_start=256) as ours:
            pid = _pid(ours)
            base_rss, cpu = rss_kib(pid), cpu_seconds(pid)
            attackers: list[socket.socket] = []
            try:
                for index in range(400):  # held from five hosts: the port is full
                    with contextlib.suppress(OSError):
                        attackers.append(connect(ours.port, f"127.0.2.{index % 5 + 1}"))  # type: ignore[arg-type]
                for _ in range(100):  # MON_LOGINs that never read
                    with contextlib.suppress(OSError):
                        peer = Peer(ours.port, "127.0.3.1", rcvbuf=4096)  # type: ignore[arg-type]
                        peer.send(MonLogin())
                        attackers.append(peer.sock)
                for index in range(80):  # telnet sessions from five hosts: that port is full
                    with contextlib.suppress(OSError):
                        sock = connect(ours.port + 1, f"127.0.4.{index % 5 + 1}")  # type: ignore[operator]
                        sock.sendall(b"\n")
                        attackers.append(sock)
                daemon = real_daemon_factory(f"c{os.getpid()}", ours.address)
                wait_for(lambda: listed(ours, daemon.name), 2 * WAIT, "the real daemon in listcs")
                fds, grown = fd_count(pid), rss_kib(pid) - base_rss
                spent = cpu_seconds(pid) - cpu
                record_property("fds", fds)
                record_property("rss_growth_kib", grown)
                record_property("cpu_s", round(spent, 2))
            finally:
                for sock in attackers:
                    sock.close()
            assert fds < 256, fds
            assert grown < 32 * 1024, grown
            (login,) = ours.events("daemon_logged_in")
            assert login["nodename"] == daemon.name


# === the daemon (issue 20, daemon side) ================================================
#
# One of our daemons (``python -m iceserv.app.daemon``, 2 slots, no scheduler, jobs as the
# ``icecc`` user) is shared by these tests; each measures growth from its own start.  Its
# budgets are lowered by flags so that the floods stay small.  Peers on 127.0.0.x are
# local (loopback); a peer on this host's own LAN address is "remote".

MIB = 1 << 20
DAEMON_FLAGS = (
    "--tcp-clients", "40", "--tcp-clients-per-host", "30", "--local-clients", "64",
    "--handshake-timeout", "2", "--message-timeout", "2",
)  # fmt: skip
HELLO = "int f(int x) { return x * 3; }\nint main(void) { return f(0); }\n"


@pytest.fixture(scope="module")
def hostile_daemon() -> Iterator[OurDaemon]:
    """Our daemon with lowered budgets, for the whole module's daemon tests."""
    daemon = OurDaemon("hostiled", None, max_jobs=2, extra_args=DAEMON_FLAGS)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def _own_lan_address() -> str:
    """An address of this host that is not loopback (traffic to it stays on the host)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], check=True,
                         capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    for line in out.splitlines():
        address = line.split()[3].split("/")[0]
        if not address.startswith("127."):
            return address
    pytest.skip("this host has no non-loopback IPv4 address to play a remote peer from")
    raise AssertionError  # unreachable


def channel(daemon: OurDaemon, source: str = "127.0.0.1",
            dest: str = "127.0.0.1") -> BlockingChannel:  # fmt: skip
    """A handshaken protocol connection to *daemon*'s TCP port from *source*."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(WAIT)
    sock.connect((dest, daemon.port or 0))
    return BlockingChannel(sock, timeout=WAIT)


def unix_channel(daemon: OurDaemon) -> BlockingChannel:
    """A handshaken protocol connection on *daemon*'s Unix socket (a local client)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(str(daemon.socket_path))
    return BlockingChannel(sock, timeout=WAIT)


def real_icecc_builds(daemon: OurDaemon, workdir: Path) -> None:
    """A real 1.4 ``icecc gcc -c`` through *daemon*'s Unix socket succeeds (on its host)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "hello.c").write_text(HELLO)
    result = daemon.host.run(["/usr/bin/icecc", "gcc", "-c", "hello.c", "-o", "hello.o"],
                             cwd=workdir, env=daemon.client_env(), capture_output=True,
                             text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, f"{result.stderr}\n{daemon.log_tail()}"
    assert (workdir / "hello.o").stat().st_size > 0


def children(pid: int) -> list[int]:
    """The direct children of *pid*."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def private_kib(pid: int) -> int:
    """Memory only *pid* holds (``Private_Clean`` + ``Private_Dirty`` of smaps_rollup)."""
    total = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def unpackers(daemon_pid: int) -> list[int]:
    """The environment unpackers running now (children of the unpackers' fork server)."""
    servers = [p for p in children(daemon_pid) if "iceserv.daemon._unpack" in cmdline(p)]
    return [child for server in servers for child in children(server)]


def _exactly(items: list[int], count: int) -> list[int] | None:
    return items if len(items) == count else None


def flood_source(daemon: OurDaemon, jobs: int = 8, chunks: int = 255) -> list[BlockingChannel]:
    """The issue's attack: 2 local jobs hold both slots; *jobs* queued jobs send zeros."""
    peers = []
    for i in range(2):
        holder = channel(daemon)
        holder.send(JobLocalBegin(outfile=f"hold{i}.o"))
        assert isinstance(holder.receive(), JobLocalBegin)  # "go": it holds a slot
        peers.append(holder)
    return peers + queue_zeros(daemon, [f"127.0.1.{i + 1}" for i in range(jobs)], chunks=chunks)


def queue_zeros(daemon: OurDaemon, sources: Sequence[str], *, dest: str = "127.0.0.1",
                chunks: int = 255) -> list[BlockingChannel]:  # fmt: skip
    """One COMPILE_FILE(env=nosuchenv) per source, then *chunks* FILE_CHUNKs of zeros.

    Each FILE_CHUNK is 1 MiB of zeros, zstd-compressed to ~70 bytes on the wire.
    """
    zero = FileChunk(b"\0" * MIB)
    peers = []
    for i, source in enumerate(sources):
        peer = channel(daemon, source=source, dest=dest)
        peer.send(CompileFile(job_id=500 + i, environment="nosuchenv", target="x86_64",
                              args=("-c",), lang=0))  # fmt: skip
        for _ in range(chunks):
            peer.conn.send(zero)
        peer.sock.sendall(peer.conn.data_to_send())  # ~18 KB: the kernel takes it all
        peers.append(peer)
    return peers


def stall_transfers(daemon: OurDaemon, sources: Sequence[str], *,
                    dest: str = "127.0.0.1") -> list[BlockingChannel]:  # fmt: skip
    """One TRANSFER_ENV per source that stops after a tar header announcing 50 MiB."""
    header = tarfile.TarInfo("usr/bin/big")
    header.size = 50 * MIB
    start = gzip.compress(header.tobuf(tarfile.GNU_FORMAT) + b"\0" * 4096)
    peers = []
    for i, source in enumerate(sources):
        peer = channel(daemon, source=source, dest=dest)
        peer.send(EnvTransfer(name=f"stall{i}", target="x86_64"), FileChunk(start))
        peers.append(peer)
    return peers


#: What only a local client may ask (issue 20, item 4).
LOCAL_ONLY = (GetNativeEnv(compiler="/usr/bin/gcc"), JobLocalBegin(outfile="x.o"),
              GetCS(target="x86_64"))  # fmt: skip


def ask_local_only(daemon: OurDaemon, source: str, dest: str) -> list[object]:
    """Send each local-only request on a TCP connection of its own; the answers."""
    answers = []
    for request in LOCAL_ONLY:
        peer = channel(daemon, source=source, dest=dest)
        try:
            peer.send(request)
            answers.append(peer.receive())
        finally:
            peer.close()
    return answers


class TestDaemonMemory:
    def test_queued_source_is_bounded_and_given_back(self, hostile_daemon: OurDaemon,
                                                     record_property: Recorder):  # fmt: skip
        """8 queued jobs x 255 MiB of zeros: at most the 64 MiB budget is read, RSS goes back."""
        pid = _pid(hostile_daemon)
        base = rss_kib(pid)
        paused_before = len(hostile_daemon.events("client_read_paused"))
        peers = flood_source(hostile_daemon)
        try:
            hostile_daemon.wait_events("client_read_paused", paused_before + 8, timeout=60)
            peak = rss_kib(pid) - base
            record_property("rss_growth_kib_under_attack", peak)
            assert peak < (64 + 1 + 40) * 1024, f"RSS grew by {peak} KiB"
        finally:
            for peer in peers:
                peer.close()
        wait_for(
            lambda: rss_kib(pid) - base < 16 * 1024,
            WAIT,
            "the daemon to give the memory back",
            context=lambda: f"{rss_kib(pid) - base} KiB",
        )
        record_property("rss_growth_kib_after_close", rss_kib(pid) - base)

    def test_environment_transfers_are_capped_and_cheap(self, hostile_daemon: OurDaemon,
                                                        record_property: Recorder):  # fmt: skip
        """12 stalled TRANSFER_ENVs: 2 unpackers (forked, a few MB each), 10 wait unread."""
        pid = _pid(hostile_daemon)
        base = rss_kib(pid)
        queued_before = len(hostile_daemon.events("env_transfer_queued"))
        peers = []
        try:
            peers += stall_transfers(hostile_daemon, [f"127.0.2.{i + 1}" for i in range(12)])
            hostile_daemon.wait_events("env_transfer_queued", queued_before + 10)
            running = wait_for(lambda: _exactly(unpackers(pid), 2), WAIT, "two unpackers")
            private = max(private_kib(p) for p in running)
            record_property("unpackers", len(unpackers(pid)))
            record_property("unpacker_private_kib", private)
            record_property("rss_growth_kib", rss_kib(pid) - base)
            assert len(unpackers(pid)) == 2
            assert private < 12 * 1024, f"an unpacker holds {private} KiB of its own"
            assert rss_kib(pid) - base < 32 * 1024
        finally:
            for peer in peers:
                peer.close()
        wait_for(lambda: not unpackers(pid), WAIT, "the unpackers to be gone")


class TestDaemonLocalOnly:
    def test_remote_peer_cannot_use_local_requests(self, hostile_daemon: OurDaemon,
                                                   tmp_path: Path):  # fmt: skip
        """From a LAN address: GET_NATIVE_ENV, JOB_LOCAL_BEGIN, GET_CS end the connection."""
        lan = _own_lan_address()
        refused_before = len(hostile_daemon.events("client_request_refused"))
        answers = ask_local_only(hostile_daemon, lan, lan)
        assert all(isinstance(answer, ConnectionClosed) for answer in answers), answers
        hostile_daemon.wait_events("client_request_refused", refused_before + 3)
        real_icecc_builds(hostile_daemon, tmp_path / "build")

    def test_shipped_compiler_is_never_run(self, hostile_daemon: OurDaemon, tmp_path: Path):
        """Issue item 4: an env with an executable usr/bin/gcc, then GET_NATIVE_ENV naming it."""
        lan = _own_lan_address()
        marker = tmp_path / "owned"
        script = f"#!/bin/sh\ntouch {marker}\nexit 1\n".encode()
        peer = channel(hostile_daemon, source=lan, dest=lan)
        peer.send(EnvTransfer(name="evilgcc", target="x86_64"))
        peer.send_file(_env_tarball({"usr/bin/gcc": script, "usr/bin/g++": script}))
        hostile_daemon.wait_events(
            "env_installed",
            1
            + sum(
                1 for e in hostile_daemon.events("env_installed") if e["env"] != "x86_64/evilgcc"
            ),
        )
        compiler = str(hostile_daemon.basedir / "target=x86_64" / "evilgcc" / "usr/bin/gcc")
        peer.send(GetNativeEnv(compiler=compiler))  # remote: refused outright
        assert isinstance(peer.receive(), ConnectionClosed)
        peer.close()
        failed_before = len(hostile_daemon.events("native_env_failed"))
        local = unix_channel(hostile_daemon)  # local: the path is refused
        local.send(GetNativeEnv(compiler=compiler))
        assert isinstance(local.receive(), End)
        local.close()
        (failed,) = hostile_daemon.wait_events("native_env_failed", failed_before + 1)[-1:]
        assert "inside the environment cache" in failed["error"]
        assert not marker.exists()
        local = unix_channel(hostile_daemon)  # the system compiler is still served
        local.send(GetNativeEnv(compiler="/usr/bin/gcc"))
        reply = local.receive()
        local.close()
        assert isinstance(reply, UseNativeEnv), reply
        assert not marker.exists()


def _env_tarball(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o755
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


class TestDaemonConnections:
    def test_tcp_flood_never_refuses_a_local_client(self, hostile_daemon: OurDaemon,
                                                    tmp_path: Path,
                                                    record_property: Recorder):  # fmt: skip
        """80 idle, handshaken TCP clients (budget 40, 30 per host): a real icecc still builds."""
        pid = _pid(hostile_daemon)
        fds = fd_count(pid)
        held: list[BlockingChannel] = []
        refused = 0
        try:
            for i in range(80):
                try:
                    held.append(channel(hostile_daemon, source=f"127.0.3.{1 + i // 40}"))
                except (ConnectionError, AssertionError, TimeoutError):
                    refused += 1  # reset before the handshake
            record_property("tcp_clients_held", len(held))
            record_property("fds_growth", fd_count(pid) - fds)
            assert len(held) == 40
            assert refused == 40
            real_icecc_builds(hostile_daemon, tmp_path / "build")
            assert fd_count(pid) - fds <= 40 + 8
        finally:
            for peer in held:
                peer.close()
        wait_for(lambda: fd_count(pid) <= fds + 2, WAIT, "the daemon to let them go")

    def test_drip_cannot_extend_a_handshake_or_a_message(self, hostile_daemon: OurDaemon,
                                                         record_property: Recorder):  # fmt: skip
        """One byte every 0.3 s: the 2 s deadlines close the handshake, then a message."""
        sock = connect(hostile_daemon.port or 0)
        version = sock.recv(4)
        sent = drip(sock, version * 8)  # the handshake, then what looks like a message
        record_property("handshake_bytes_dripped", sent)
        assert sent <= 16, f"still open after {sent} dripped bytes"
        peer = channel(hostile_daemon)
        peer.conn.send(GetCS(target="x86_64", filename="a" * 200))
        sent = drip(peer.sock, peer.conn.data_to_send())
        record_property("message_bytes_dripped", sent)
        assert sent <= 10, f"still open after {sent} dripped bytes"


def drip(sock: socket.socket, data: bytes, interval: float = 0.3) -> int:
    """Send *data* one byte every *interval* s until the peer closes; return the bytes sent."""
    sent = 0
    sock.settimeout(interval)
    try:
        for byte in data:
            sock.send(bytes([byte]))
            sent += 1
            with contextlib.suppress(TimeoutError):
                if sock.recv(4096) == b"":
                    break
    except ConnectionError:
        pass
    finally:
        sock.close()
    return sent


# === every attack at once against a cluster that builds (issue 20's "Done when") ==========
#
# A namespace bed of five hosts: h1 the client's host (our daemon with no slots, so every compile
# travels), h2 our compile server (3 slots, the daemon under attack), h3 a real 1.4 ``iceccd``
# (``--no-remote``: it only logs in), h4 our scheduler, h5 the attacker with four addresses a1..a4
# (per-host budgets apply to each).  From h5 every attack above runs at once, each on a thread of
# its own living in h5's namespace, while our ``icecc`` builds eight zstd units with ``make -j4``
# on h1.  Against the scheduler: 80 silent connections per round from a1, a3, a4 (a new round
# every second), a LOGIN dripped from the handshake on and a logged-in daemon (max_kids 0)
# dripping a STATS (a2), 30 MON_LOGINs that never read per round (a3), 20 telnet sessions per
# address sending empty lines (80 > the port's 64).  Against h2: 80 handshaken idle clients (a1),
# 12 stalled TRANSFER_ENVs (a2), 8 COMPILE_FILEs of 255 MiB of zstd zeros per round (a3),
# GET_NATIVE_ENV/JOB_LOCAL_BEGIN/GET_CS over TCP every second (a4).  Then, still under attack,
# telnet ``listcs`` from h1 and a real 1.4 ``icecc`` through h2's Unix socket.
#
# This test found two daemon bugs (fixed with it): a running job queued all its client's
# decompressed source whether or not the compiler took it (+257 MiB from a job that gave up
# at once), and one host's stalled transfers held every unpacker and the head of the queue,
# so the build's environment never got installed on h2.

BED_UNITS: Final = library_units(
        "common/debug", "common/entropy_common", "common/error_private", "common/pool",
        "common/threading", "common/xxhash", "common/zstd_common", "compress/hist",
)  # fmt: skip
#: Deadlines of the scheduler under attack: short, so the drips end within the build.
BED_SCHEDULER_ENV: Final = {"ICECC_SCHEDULER_HANDSHAKE_TIMEOUT": "5",
                            "ICECC_SCHEDULER_MESSAGE_TIMEOUT": "3"}  # fmt: skip
#: Budgets at their defaults (iceserv.config.models): per host and for the telnet port.
SCHEDULER_PER_HOST: Final = 64
TELNET_SESSIONS: Final = 64
DAEMON_PER_HOST: Final = 64
SOURCE_BUDGET_MIB: Final = 64
TRANSFER_QUEUE: Final = 16  # of which one host gets half
ATTACK_ROUNDS: Final = 600  # bound on every attack loop (each round paces itself)
#: FILE_CHUNKs are compressed by the protocol's shared zstd context: one attack thread at once.
_COMPRESSING: Final = threading.Lock()


def _keep_logs(cluster: Cluster, dest: Path) -> None:
    """Copy the programs' and clients' logs below *dest* (pytest keeps it) before the stop."""
    dest.mkdir(parents=True, exist_ok=True)
    programs = [cluster.scheduler, *cluster.daemons.values()]
    for program in programs:
        if program is not None and program.workdir is not None:
            for log in (program.log_path, program.workdir / (program.out_name or "-")):
                if log.is_file():
                    shutil.copy(log, dest / f"{program.title.replace(' ', '-')}-{log.name}")
    if cluster.workdir is not None:
        for log in cluster.workdir.glob("*.log"):
            shutil.copy(log, dest / log.name)


class Attacker:
    """The hostile host: each attack a thread inside its network namespace.

    A thread enters the namespace (its sockets then come from the attacker's
    addresses), sets up what it holds, reports ready, and repeats its round
    every *interval* seconds until ``close`` (at most ``ATTACK_ROUNDS`` times).
    Refusals by the target (resets, closes) are what the attacks expect and
    are counted in ``figures``; any other exception is kept in ``errors``.
    """

    def __init__(self, netns: str, addresses: Sequence[str], scheduler: tuple[str, int],
                 server: OurDaemon) -> None:  # fmt: skip
        self.netns = netns
        self.addresses = list(addresses)
        self.scheduler_ip, self.scheduler_port = scheduler
        self.server = server
        self.stop = threading.Event()
        self.figures: dict[str, int] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._held: list[Callable[[], None]] = []
        self._threads: list[threading.Thread] = []
        self._ready: list[threading.Event] = []

    # --- bookkeeping ---------------------------------------------------------------------

    def count(self, name: str, value: int = 1) -> None:
        with self._lock:
            self.figures[name] = self.figures.get(name, 0) + value

    def peak(self, name: str, value: int) -> None:
        with self._lock:
            self.figures[name] = max(self.figures.get(name, 0), value)

    def hold(self, closer: Callable[[], None]) -> None:
        with self._lock:
            self._held.append(closer)

    def _run(self, name: str, setup: Callable[[], Any], round_: Callable[[Any], Any],
             interval: float, ready: threading.Event) -> None:  # fmt: skip
        try:
            enter_netns(self.netns)
            state = setup()
            ready.set()
            for _ in range(ATTACK_ROUNDS):
                if self.stop.wait(interval):
                    break
                state = round_(state)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            with self._lock:
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            ready.set()

    def start(self) -> Attacker:
        a1, a2, a3, a4 = self.addresses
        attacks: list[tuple[str, Callable[[], Any], Callable[[Any], Any], float]] = [
            ("connection flood", lambda: self._flood([a1, a3, a4]), self._flood_again, 1.0),
            ("drips", lambda: None, lambda _: self._drips(a2), 0.0),
            ("monitors", lambda: self._monitors(a3), self._monitors_again, 2.0),
            ("telnet hogs", self._telnet_hogs, self._telnet_ping, 1.0),
            ("idle daemon clients", lambda: self._idle_clients(a1), lambda held: held, 1.0),
            ("stalled transfers", lambda: self._stalled(a2), lambda held: held, 1.0),
            ("queued source", lambda: self._queue_source(a3, []),
             lambda peers: self._queue_source(a3, peers), 2.0),
            ("local-only requests", lambda: self._local_only(a4), lambda _: self._local_only(a4),
             1.0),
        ]  # fmt: skip
        for name, setup, round_, interval in attacks:
            ready = threading.Event()
            thread = threading.Thread(target=self._run, args=(name, setup, round_, interval, ready),
                                      name=f"attack-{name}", daemon=True)  # fmt: skip
            self._ready.append(ready)
            self._threads.append(thread)
            thread.start()
        return self

    def wait_ready(self) -> None:
        wait_for(lambda: all(e.is_set() for e in self._ready), 3 * WAIT, "every attack set up",
                 context=lambda: str(self.errors))  # fmt: skip

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(3 * WAIT)
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        with self._lock:
            held, self._held = self._held, []
        for closer in held:
            with contextlib.suppress(OSError):
                closer()
        assert not alive, f"attack threads still running: {alive}"

    # --- the scheduler's ports ---------------------------------------------------------------

    def _flood(self, sources: Sequence[str]) -> list[socket.socket]:
        """80 connections from each source that never say a word (64 fit per host)."""
        opened = []
        for source in sources:
            for _ in range(80):
                with contextlib.suppress(OSError):
                    opened.append(connect(self.scheduler_port, source, dest=self.scheduler_ip))
        self.count("scheduler_connections_opened", len(opened))
        return opened

    def _flood_again(self, previous: list[socket.socket]) -> list[socket.socket]:
        for sock in previous:
            sock.close()
        return self._flood([self.addresses[0], *self.addresses[2:]])

    def _drips(self, source: str) -> None:
        """A LOGIN dripped from the handshake on, then a logged-in daemon dripping a STATS."""
        login = _login_bytes()
        with contextlib.suppress(OSError):
            sent = drip(connect(self.scheduler_port, source, dest=self.scheduler_ip), login)
            self.peak("handshake_bytes_dripped", sent)
            self.count("handshake_drips_unfinished", int(sent < len(login)))
            self.count("handshake_drips")
        if self.stop.is_set():
            return
        name = f"dripper{self.figures.get('message_drips', 0)}"
        with contextlib.suppress(OSError):  # max_kids 0: no job is ever placed on it
            daemon = FakeDaemon(self.scheduler_port, name, source, dest=self.scheduler_ip,
                                max_kids=0)  # fmt: skip
            self.hold(daemon.probe.close)
            daemon.conn.send(Stats(load=1))
            frame = daemon.conn.data_to_send()
            sent = drip(daemon.sock, frame[:-1])
            self.peak("message_bytes_dripped", sent)
            self.count("message_drips_unfinished", int(sent < len(frame)))
            self.count("message_drips")
            daemon.close()

    def _monitors(self, source: str) -> list[Peer]:
        """30 MON_LOGINs with a 4 KiB receive buffer that never read (16 fit per host)."""
        monitors = []
        for _ in range(30):
            with contextlib.suppress(OSError):
                peer = Peer(self.scheduler_port, source, rcvbuf=4096, dest=self.scheduler_ip)
                peer.send(MonLogin())
                monitors.append(peer)
        self.count("mon_logins", len(monitors))
        return monitors

    def _monitors_again(self, previous: list[Peer]) -> list[Peer]:
        for peer in previous:
            peer.close()
        return self._monitors(self.addresses[2])

    def _telnet_hogs(self) -> list[socket.socket]:
        """20 telnet sessions from each address (the port takes 64, 16 per host)."""
        sessions = []
        for source in self.addresses:
            for _ in range(20):
                with contextlib.suppress(OSError):
                    sock = connect(self.scheduler_port + 1, source, dest=self.scheduler_ip)
                    sock.sendall(b"\n")
                    sessions.append(sock)
        self.count("telnet_sessions_opened", len(sessions))
        return sessions

    def _telnet_ping(self, sessions: list[socket.socket]) -> list[socket.socket]:
        """An empty line on every session still open; closed ones are replaced."""
        alive = []
        for sock in sessions:
            try:
                sock.settimeout(0)  # a look without waiting
                with contextlib.suppress(BlockingIOError):
                    if sock.recv(65536) == b"":
                        raise ConnectionResetError
                sock.sendall(b"\n")
                alive.append(sock)
            except OSError:
                sock.close()
                self.count("telnet_sessions_closed_by_scheduler")
        if len(alive) < 4 * 20:
            alive += self._telnet_hogs()
        return alive

    # --- the compile server ------------------------------------------------------------------

    def _idle_clients(self, source: str) -> list[BlockingChannel]:
        """80 handshaken TCP clients that then say nothing (64 fit per host)."""
        held = []
        for _ in range(80):
            try:
                peer = channel(self.server, source=source, dest=self.server.host.ip)
            except (OSError, AssertionError):
                self.count("daemon_clients_reset")  # reset before the handshake
                continue
            held.append(peer)
            self.hold(peer.close)
        self.count("daemon_clients_held", len(held))
        return held

    def _stalled(self, source: str) -> list[BlockingChannel]:
        with _COMPRESSING:
            peers = stall_transfers(self.server, [source] * 12, dest=self.server.host.ip)
        for peer in peers:
            self.hold(peer.close)
        return peers

    def _queue_source(self, source: str, previous: list[BlockingChannel]) -> list[BlockingChannel]:
        """8 COMPILE_FILEs of 255 MiB of zeros each (~18 KB on the wire), every round anew."""
        for peer in previous:
            peer.close()
        try:
            with _COMPRESSING:
                peers = queue_zeros(self.server, [source] * 8, dest=self.server.host.ip)
        except OSError:
            self.count("source_floods_refused")
            return []
        self.count("source_flood_jobs", len(peers))
        return peers

    def _local_only(self, source: str) -> None:
        with contextlib.suppress(OSError):
            answers = ask_local_only(self.server, source, self.server.host.ip)
            self.count("local_only_refused", sum(isinstance(a, ConnectionClosed) for a in answers))
            self.count("local_only_served", sum(not isinstance(a, ConnectionClosed)
                                                for a in answers))  # fmt: skip


class Sampler:
    """Peak RSS and descriptors of some processes, read from /proc every 0.1 s until closed."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.rss = {name: rss_kib(pid) for name, pid in self.pids.items()}
        self.fds = {name: fd_count(pid) for name, pid in self.pids.items()}
        self.base_rss, self.base_fds = dict(self.rss), dict(self.fds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        for _ in range(100_000):
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError, AssertionError):
                    self.rss[name] = max(self.rss[name], rss_kib(pid))
                    self.fds[name] = max(self.fds[name], fd_count(pid))
            if self._stop.wait(0.1):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)


def nofile_soft_limit(pid: int) -> int:
    """The soft ``Max open files`` of *pid* (``/proc/<pid>/limits``)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(pid)


@pytest.mark.live
@pytest.mark.netns
class TestCombinedOnTheBed:
    def test_a_cluster_builds_under_every_attack(self, tmp_path: Path,  # noqa: PLR0915
                                                 record_property: Recorder) -> None:  # fmt: skip
        """Every attack from one hostile host at once: a real build still succeeds, remotely."""
        project = restrict(unpack_project(fetch_sdist(), tmp_path / "zstd"), BED_UNITS)
        reference = build_reference(project)
        # Every job must compile on h2, the daemon under attack: h3's real 1.4 iceccd takes no
        # remote jobs (it logs in and is listed beside ours).  One of h2's three slots is held
        # by the attacker's stalled transfer; while real jobs fill the other two, the flooding
        # COMPILE_FILEs queue and the source budget is what bounds them.
        plans = [DaemonPlan("ours", max_jobs=0), DaemonPlan("ours", max_jobs=3),
                 DaemonPlan("real", max_jobs=1, no_remote=True), None, None]  # fmt: skip
        with NetnsBed(5) as bed, Cluster(bed, "ours", plans, scheduler_host=3,
                                         scheduler_env=BED_SCHEDULER_ENV) as cluster:  # fmt: skip
            host = bed[4]
            prefix = host.ip.rsplit(".", 1)[0]
            aliases = [f"{prefix}.{50 + i}" for i in range(3)]
            for alias in aliases:
                host.add_address(alias)
            scheduler, server = cluster.scheduler, cluster.daemon(1)
            assert isinstance(scheduler, OurScheduler)
            assert isinstance(server, OurDaemon)
            pids = {"scheduler": _pid(scheduler), "server": _pid(server)}
            cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
            sampler = Sampler(pids)
            attacker = Attacker(host.name, [host.ip, *aliases], (bed[3].ip, SCHEDULER_PORT),
                                server)  # fmt: skip
            started = time.monotonic()
            try:
                attacker.start().wait_ready()
                server.wait_events("env_transfer_queued", TRANSFER_QUEUE // 2)
                result = cluster.build(project, reference, ClientPlan("ours"), on=0, jobs=4,
                                       timeout=240)  # fmt: skip
                build_seconds = result.seconds
                listed = telnet_listcs(bed[0], (bed[3].ip, SCHEDULER_PORT + 1))
                real_icecc_builds(server, tmp_path / "local")
                wait_for(
                    lambda: attacker.figures.get("message_drips", 0) >= 1,
                    3 * WAIT,
                    "a whole drip of each kind",
                    context=lambda: str(attacker.figures),
                )
            finally:
                attacker.close()
                sampler.close()
                _keep_logs(cluster, tmp_path / "logs")
            window = time.monotonic() - started
            spent = {name: cpu_seconds(pid) - cpu[name] for name, pid in pids.items()}
            listed_after = telnet_listcs(bed[0], (bed[3].ip, SCHEDULER_PORT + 1))
            # A local client afterwards; its job's monitor messages also show the scheduler
            # that the attacker's monitors are gone (it does not read monitors, so a closed
            # one is noticed when it is next written to).
            real_icecc_builds(server, tmp_path / "after")
            limits = {name: nofile_soft_limit(pid) for name, pid in pids.items()}
            for name, pid in pids.items():
                wait_for(lambda pid=pid, name=name: fd_count(pid) <= sampler.base_fds[name] + 8,
                         WAIT, f"the {name} to let the attackers go",
                         context=lambda pid=pid: f"{fd_count(pid)} fds")  # fmt: skip
            served_remotely = sum(
                1 for e in server.events("job_finished") if e.get("where") == "server"
                and str(e.get("peer")).rsplit(":", 1)[0] == bed[0].ip)  # fmt: skip
            sched_events = {name: len(scheduler.events(name)) for name in (
                "connection_refused", "connection_evicted", "monitor_dropped",
                "telnet_session_closed", "daemon_logged_out")}  # fmt: skip
            server_events = {name: len(server.events(name)) for name in (
                "client_read_paused", "env_transfer_queued", "client_request_refused",
                "connection_refused")}  # fmt: skip
            logouts = [e.get("reason") for e in scheduler.events("daemon_logged_out")]
            context = f"{result.summary()}\n{cluster.log_tails()}"
        figures = {
            "build_s": round(build_seconds, 1), "window_s": round(window, 1),
            "served_remotely_on_h2": served_remotely, "placement": str(result.placement),
            **{f"{n}_rss_growth_kib": sampler.rss[n] - sampler.base_rss[n] for n in pids},
            **{f"{n}_peak_fds": sampler.fds[n] for n in pids},
            **{f"{n}_base_fds": sampler.base_fds[n] for n in pids},
            **{f"{n}_cpu_s": round(spent[n], 1) for n in pids},
            **{f"scheduler_{k}": v for k, v in sched_events.items()},
            **{f"server_{k}": v for k, v in server_events.items()},
            **attacker.figures,
        }  # fmt: skip
        for name, value in figures.items():
            record_property(name, value)
        context += f"\n{figures}"
        assert not attacker.errors, f"{attacker.errors}\n{context}"
        result.check(on=["h2-ours"])
        assert result.placement.began["h2-ours"] == len(BED_UNITS), context
        assert served_remotely == len(BED_UNITS), context
        for hosts in (listed, listed_after):  # under attack, and after it
            assert {"h1-ours", "h2-ours", "h3-real"} <= {h.name for h in hosts}, context
        ours = {name: code for name, code in cluster.exit_codes.items() if name != "h3-real"}
        assert ours == {"h1-ours": 0, "h2-ours": 0, "scheduler": 0}, f"exit codes {ours}"
        # The attacks were all made and refused as designed.
        assert attacker.figures.get("local_only_served", 0) == 0, context
        assert attacker.figures.get("local_only_refused", 0) >= len(LOCAL_ONLY), context
        assert attacker.figures.get("daemon_clients_held", 0) <= DAEMON_PER_HOST, context
        assert attacker.figures.get("handshake_drips", 0) >= 1, context
        assert attacker.figures.get("handshake_drips_unfinished") == attacker.figures.get(
            "handshake_drips"), context  # fmt: skip
        assert attacker.figures.get("message_drips_unfinished") == attacker.figures.get(
            "message_drips"), context  # fmt: skip
        assert "message deadline passed" in logouts, context
        assert server_events["env_transfer_queued"] >= TRANSFER_QUEUE // 2, context
        # Bounds: descriptors within the budgets (and the limit), memory within its budgets.
        attackers = len(attacker.addresses)
        sched_bound = (
            sampler.base_fds["scheduler"]
            + attackers * SCHEDULER_PER_HOST
            + TELNET_SESSIONS
            + _SLACK
        )
        server_bound = sampler.base_fds["server"] + attackers * DAEMON_PER_HOST + 64 + _SLACK
        assert sampler.fds["scheduler"] <= min(sched_bound, limits["scheduler"]), context
        assert sampler.fds["server"] <= min(server_bound, limits["server"]), context
        assert figures["scheduler_rss_growth_kib"] < 32 * 1024, context
        for name in pids:  # neither spins: a busy loop would use the whole window
            assert spent[name] < 0.5 * window, context
        assert figures["server_rss_growth_kib"] < (SOURCE_BUDGET_MIB + 1 + 40) * 1024, context
