"""Self-tests of the test bed: they start the real icecream 1.4 programs and namespaces."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import pytest
from testbed import (
    SUNDAE_PROTOCOL_VERSION,
    MissingProgramError,
    NetnsBed,
    Program,
    ProgramExitedError,
    RealScheduler,
    RealSundae,
    WaitTimeoutError,
    free_port,
    list_netns,
    parse_listcs,
    remove_stale_netns,
    remove_stale_workdirs,
    stop_process,
    wait_for,
)
from testbed.netns import delete_netns, ip_program
from testbed.procs import descendants, pid_alive, require_program

GREETING_RE = re.compile(
    r"^200-ICECC 1\.4\.0: \d+s uptime, 0 hosts, 0 jobs in queue \(0 total\)\.$"
)
HELP_LINES = [
    "listcs",
    "listblocks",
    "listjobs",
    "removecs",
    "blockcs",
    "unblockcs",
    "internals",
    "help",
    "quit",
]


def _impossible_pid() -> int:
    """A pid above the kernel's limit, so no process can have it."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def _handshake(sock: socket.socket, version: int = 43) -> int:
    """Do the 8-byte version handshake as a peer announcing ``version``; return the agreed one."""
    sock.sendall(version.to_bytes(4, "little"))
    theirs = int.from_bytes(_recv_exactly(sock, 4), "little")
    agreed = min(version, theirs)
    sock.sendall(agreed.to_bytes(4, "little"))
    assert int.from_bytes(_recv_exactly(sock, 4), "little") == agreed
    return agreed


class TestWaitFor:
    def test_returns_the_first_truthy_value(self):
        """wait_for returns what the predicate returned once it is truthy."""
        values = iter([0, None, "found"])
        assert wait_for(lambda: next(values), 5, "a value", interval=0.01) == "found"

    def test_timeout_names_what_and_shows_context(self):
        """On timeout the error says what was awaited and includes the context text."""
        with pytest.raises(WaitTimeoutError, match=r"(?s)waiting for the moon.*LOG TAIL"):
            wait_for(lambda: False, 0.1, "the moon", context=lambda: "LOG TAIL")

    def test_rejects_unbounded_waits(self):
        """A wait without a positive, finite timeout is refused."""
        with pytest.raises(ValueError, match="timeout"):
            wait_for(lambda: True, 0, "anything")


class TestParseListcs:
    def test_parses_hosts_and_their_jobs(self):
        """Host lines become ListedHost entries and indented job lines attach to them."""
        lines = [
            " nodeA (127.0.0.1:10245) [x86_64] speed=0.00 jobs=1/2 load=511",
            "   1 WAIT sub:nodeB on:nodeA a/b/c.cpp",
            (
                " nodeB (10.1.2.3:10246) [x86_64] speed=12.50 jobs=0/4 load=1000"
                " busy installing since 3 s"
            ),
        ]
        a, b = parse_listcs(lines)
        assert (a.name, a.ip, a.port, a.jobs, a.max_jobs, a.load) == (
            "nodeA",
            "127.0.0.1",
            10245,
            1,
            2,
            511,
        )
        assert a.job_lines == ("1 WAIT sub:nodeB on:nodeA a/b/c.cpp",)
        assert (b.speed, b.extra, b.job_lines) == (12.5, " busy installing since 3 s", ())


class TestProcs:
    def test_stop_process_kills_the_whole_tree(self):
        """stop_process reaps the process and kills the children it left behind."""
        proc = subprocess.Popen(["sh", "-c", "sleep 61 & sleep 62 & wait"], start_new_session=True)
        wait_for(lambda: len(descendants(proc.pid)) == 2, 5, "the two sleeps to start")
        children = descendants(proc.pid)
        stop_process(proc, grace=0.5)
        assert proc.returncode is not None
        wait_for(lambda: not any(pid_alive(pid) for pid in children), 5, "the sleeps to die")

    def test_missing_program_says_to_run_setup(self):
        """A missing program is an error pointing at ./bin/setup, never a skip."""
        with pytest.raises(MissingProgramError, match=r"\./bin/setup"):
            require_program("/usr/sbin/no-such-icecream-program")

    def test_stale_workdirs_of_dead_runs_are_removed(self):
        """A work directory named after a pid that cannot exist is deleted; ours stay."""
        dead = Path(tempfile.gettempdir()) / f"iceserv-tb-{_impossible_pid()}-x-abc"
        ours = Path(tempfile.mkdtemp(prefix=f"iceserv-tb-{os.getpid()}-x-"))
        try:
            dead.mkdir()
            removed = remove_stale_workdirs()
            assert dead in removed
            assert not dead.exists()
            assert ours.exists()
        finally:
            shutil.rmtree(dead, ignore_errors=True)
            shutil.rmtree(ours, ignore_errors=True)


@dataclass(eq=False)
class _Shell(Program):
    """A ``Program`` that runs a shell snippet and is ready once ``ready`` exists."""

    program: ClassVar[str] = "shell"
    log_name: ClassVar[str] = "shell.log"
    out_name: ClassVar[str | None] = "shell.out"

    script: str = "sleep 60"

    def start(self) -> Self:
        self._prepare("shell")
        self._launch(["sh", "-c", self.script], os.environ)
        with self._stopped_on_failure():
            self._wait_ready((self._workdir / "ready").exists, "the shell to be ready")
        return self


class TestProgram:
    def test_start_waits_until_ready_and_stop_removes_the_workdir(self):
        """start returns once ready; stop ends the program and deletes the directory it made."""
        with _Shell(script="echo logged > shell.log; touch ready; sleep 60") as shell:
            assert shell.log_text() == "logged\n"
            assert shell.check_alive()
            workdir = shell.workdir
        assert shell.proc is not None
        assert shell.proc.returncode is not None
        assert workdir is not None
        assert not workdir.exists()

    def test_exit_before_ready_fails_with_the_log_tails(self):
        """A program that dies while starting is reported with its exit status and output."""
        shell = _Shell(script="echo in-the-log > shell.log; echo on-stderr >&2; exit 3")
        pattern = r"(?s)shell exited with status 3\n.*in-the-log.*on-stderr"
        with pytest.raises(ProgramExitedError, match=pattern):
            shell.start()
        assert shell.workdir is not None
        assert not shell.workdir.exists()

    def test_never_ready_times_out_and_stops_it(self):
        """The ready wait is bounded; on timeout the program is stopped and cleaned up."""
        shell = _Shell(script="echo waiting > shell.log; sleep 60", start_timeout=0.5)
        with pytest.raises(WaitTimeoutError, match=r"(?s)the shell to be ready.*waiting"):
            shell.start()
        assert shell.proc is not None
        assert shell.proc.returncode is not None


@pytest.mark.live
class TestRealScheduler:
    def test_answers_telnet_banner_and_help(self, real_scheduler):
        """The real scheduler greets on its telnet port and answers help with its commands."""
        assert GREETING_RE.match(real_scheduler.greeting[0]), real_scheduler.greeting
        assert real_scheduler.greeting[1] == "200 Use 'help' for help and 'quit' to quit."
        assert real_scheduler.telnet("help") == HELP_LINES
        assert real_scheduler.listcs() == []

    def test_telnet_reconnects_after_quit(self, real_scheduler):
        """After quit closed the session, the next command opens a new one."""
        assert real_scheduler.telnet("quit") == []
        assert real_scheduler.telnet("help") == HELP_LINES

    def test_telnet_reconnects_before_the_idle_limit(self, real_scheduler):
        """A session idle for longer than the scheduler allows is replaced, not reused."""
        old_session = real_scheduler._telnet
        real_scheduler._telnet_used -= 40  # as if the last command were 40 s ago
        assert real_scheduler.telnet("help") == HELP_LINES
        assert real_scheduler._telnet is not old_session

    def test_poke_gets_an_answer(self, real_scheduler):
        """A discovery datagram to the scheduler's UDP port is answered (its loop ran)."""
        assert real_scheduler.poke()
        assert real_scheduler.poke()

    def test_second_binary_connection_is_accepted_while_awake(self, real_scheduler):
        """awake() overcomes the delayed accept: a connection right after another gets served."""
        first = socket.create_connection(("127.0.0.1", real_scheduler.port), timeout=5)
        with first:
            assert _handshake(first) == 43
            started = time.monotonic()
            with real_scheduler.awake():
                second = socket.create_connection(("127.0.0.1", real_scheduler.port), timeout=10)
                with second:
                    assert _handshake(second) == 43
            assert time.monotonic() - started < 5

    def test_stop_reaps_and_removes_workdir(self):
        """stop() ends the scheduler, reaps it and deletes the work directory it made."""
        scheduler = RealScheduler().start()
        workdir = scheduler.workdir
        assert workdir is not None
        assert scheduler.proc is not None
        assert scheduler.stop() is not None
        assert scheduler.proc.returncode is not None
        assert not workdir.exists()


@pytest.mark.live
class TestRealDaemon:
    def test_appears_in_listcs(self, real_scheduler, real_daemon_factory):
        """A real iceccd started with -s logs in and shows up in listcs with its node name."""
        daemon = real_daemon_factory("tbnodeA", real_scheduler)
        entry = daemon.wait_logged_in(real_scheduler)
        assert (entry.ip, entry.port, entry.max_jobs) == ("127.0.0.1", daemon.port, 2)
        assert "Connected to scheduler" in daemon.log_text()
        assert "login tbnodeA protocol version: 43" in real_scheduler.log_text()

    def test_two_daemons_both_appear(self, real_scheduler, real_daemon_factory):
        """Two real daemons against one scheduler are both listed."""
        first = real_daemon_factory("tbnodeA", real_scheduler)
        second = real_daemon_factory("tbnodeB", real_scheduler, max_jobs=1)
        first.wait_logged_in(real_scheduler)
        second.wait_logged_in(real_scheduler)
        listed = {host.name: host for host in real_scheduler.listcs()}
        assert set(listed) == {"tbnodeA", "tbnodeB"}
        assert listed["tbnodeB"].max_jobs == 1
        assert listed["tbnodeA"].port != listed["tbnodeB"].port

    def test_no_remote_daemon_has_no_tcp_port(self, real_scheduler, real_daemon_factory):
        """With --no-remote the daemon listens only on its socket and logs in with port 0."""
        daemon = real_daemon_factory("tbnoremote", real_scheduler, no_remote=True)
        assert daemon.port is None
        assert daemon.wait_logged_in(real_scheduler).port == 0

    def test_interface_lo_binds_loopback_twice(self, real_daemon_factory):
        """iceccd -i lo fails to bind 127.0.0.1 a second time and never opens its socket."""
        daemon = real_daemon_factory(
            "tbifacelo", f"127.0.0.1:{free_port()}", wait=False, extra_args=["-i", "lo"]
        )
        wait_for(
            lambda: "Failed to bind address to TCP listen socket" in daemon.log_text(),
            10,
            "iceccd -i lo to report the failed bind",
            context=daemon.log_tail,
        )
        assert daemon.log_text().count("starting to listen on interface lo") == 2
        assert "Address already in use" in daemon.log_text()
        assert not daemon.socket_path.exists()
        daemon.stop(grace=0.5)  # it ignores SIGTERM while retrying the bind


@pytest.mark.live
class TestRealSundae:
    def test_handshakes_as_protocol_42(self):
        """icecream-sundae announces protocol 42 and then sends MON_LOGIN."""
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(15)
            port = listener.getsockname()[1]
            with RealSundae(scheduler=f"127.0.0.1:{port}") as sundae:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    assert _handshake(conn) == SUNDAE_PROTOCOL_VERSION == 42
                    assert _recv_exactly(conn, 8) == bytes.fromhex("0000000400000052")
                sundae.stop()

    def test_shows_the_real_scheduler(self, real_scheduler):
        """Sundae connects to a real scheduler given as ICECC_SCHEDULER and draws its screen."""
        with RealSundae(scheduler=real_scheduler.address) as sundae, real_scheduler.awake():
            sundae.wait_for_text("Scheduler: 127.0.0.1", timeout=15)


@pytest.mark.live
class TestBuildRealEnv:
    def test_tarball_contains_gcc_and_as(self, real_gcc_env):
        """The real icecc-create-env output holds gcc and as and is named by its md5."""
        assert re.fullmatch(r"[0-9a-f]{32}", real_gcc_env.name)
        assert real_gcc_env.path.name == real_gcc_env.name + ".tar.gz"
        with tarfile.open(real_gcc_env.path) as tar:
            names = set(tar.getnames())
        assert {"usr/bin/gcc", "usr/bin/as", "usr/bin/cc1"} <= names


RECEIVE_SNIPPET = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.settimeout(5)
sock.connect((sys.argv[1], int(sys.argv[2])))
sock.sendall(b"hello from " + sys.argv[3].encode())
print(sock.recv(100).decode())
"""

BROADCAST_SNIPPET = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
"""


@pytest.mark.live
@pytest.mark.netns
class TestNetnsBed:
    def test_broadcast_reaches_the_other_host(self, netns_hosts):
        """A UDP broadcast sent on host 1 by a program arrives at a socket on host 2."""
        bed = netns_hosts(2)
        h1, h2 = bed
        with h2.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
            receiver.bind(("", 0))
            receiver.settimeout(5)
            port = receiver.getsockname()[1]
            h1.python(BROADCAST_SNIPPET, bed.broadcast, str(port))
            data, (source, _) = receiver.recvfrom(100)
        assert (data, source) == (b"ping", h1.ip)

    def test_hosts_reach_each_other_by_tcp(self, netns_hosts):
        """A program on host 1 connects to a listener on host 2 by its IP, and back."""
        h1, h2 = netns_hosts(2)
        with h2.socket() as listener:
            listener.bind((h2.ip, 0))
            listener.listen()
            listener.settimeout(5)
            client = h1.popen(
                [
                    sys.executable,
                    "-c",
                    RECEIVE_SNIPPET,
                    h2.ip,
                    str(listener.getsockname()[1]),
                    "h1",
                ],
                stdout=subprocess.PIPE,
            )
            conn, (peer, _) = listener.accept()
            with conn:
                assert conn.recv(100) == b"hello from h1"
                conn.sendall(b"hi")
            out, _ = client.communicate(timeout=10)
        assert (peer, out) == (h1.ip, b"hi\n")
        with h1.socket() as back:
            back.settimeout(5)
            with h2.socket() as server:
                server.bind((h2.ip, 0))
                server.listen()
                back.connect((h2.ip, server.getsockname()[1]))

    def test_root_namespace_gets_nothing(self, netns_hosts):
        """The bed's addresses and links exist only inside its namespaces."""
        bed = netns_hosts(2)
        prefix = bed.subnet.rsplit(".", 1)[0] + "."
        root = subprocess.run(
            [ip_program(), "-o", "addr"], capture_output=True, text=True, check=True, timeout=10
        )
        assert prefix not in root.stdout
        inside = bed[0].run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=10)
        assert f"{bed[0].ip}/24" in inside.stdout

    def test_teardown_leaves_no_namespace_or_process(self):
        """Closing a bed kills its processes, even orphans, and deletes its namespaces."""
        bed = NetnsBed(2).start()
        try:
            sleeper = bed[0].popen(["sleep", "63"])
            orphan_starter = bed[1].run(
                ["sh", "-c", "sleep 64 >/dev/null 2>&1 & echo $!"], capture_output=True, timeout=10
            )
            orphan = int(orphan_starter.stdout)
            assert any(name.startswith(bed.prefix) for name in list_netns())
        finally:
            bed.close()
        assert not [name for name in list_netns() if name.startswith(bed.prefix)]
        assert sleeper.returncode is not None
        wait_for(lambda: not pid_alive(orphan), 5, "the orphaned sleep to be gone")
        leftovers = [pid for pid in descendants(os.getpid()) if _cmdline(pid).startswith("sleep 6")]
        assert leftovers == []

    def test_stale_cleanup_removes_a_dead_runs_namespace(self):
        """A namespace named after a dead creator is deleted with its processes."""
        name = f"ictb{_impossible_pid()}-dead-h1"
        subprocess.run([ip_program(), "netns", "add", name], check=True, timeout=10)
        try:
            sleeper = subprocess.Popen([ip_program(), "netns", "exec", name, "sleep", "65"])
            wait_for(lambda: _cmdline(sleeper.pid).startswith("sleep"), 5, "sleep to start")
            assert name in remove_stale_netns()
            assert name not in list_netns()
            sleeper.wait(timeout=5)
        finally:
            delete_netns([name])

    def test_real_daemon_discovers_real_scheduler(self, netns_hosts, real_daemon_factory):
        """A real iceccd on host 2 finds a real scheduler on host 1 by broadcast and logs in."""
        h1, h2 = netns_hosts(2)
        with RealScheduler(host=h1) as scheduler:
            daemon = real_daemon_factory("tbnetnsB", None, host=h2, netname=scheduler.netname)
            entry = daemon.wait_logged_in(scheduler, timeout=25)
            assert (entry.ip, entry.port) == (h2.ip, 10245)
            wait_for(
                lambda: f"broadcast from {h2.ip}" in scheduler.log_text(),
                5,
                "the scheduler to log the discovery broadcast",
            )


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()
