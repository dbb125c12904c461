"""Our scheduler and daemon as subprocesses under a fake service manager (NOTIFY_SOCKET).

Each program gets its own ``AF_UNIX``/``SOCK_DGRAM`` socket as NOTIFY_SOCKET.
The tests check that ``READY=1`` comes only once every port accepts, the
exact datagrams of a reload and a stop, that SIGHUP applies a changed conf.d
(the daemon's new max processes shows in the scheduler's telnet ``listcs``)
without dropping a telnet session or a running job, that a broken conf.d is
reported as ``path:line`` while the old configuration goes on, and that
SIGTERM waits for a running remote compile before exiting 0.  The running
job is a real remote job played over the protocol, with a static fake
compiler in a chroot'ed environment, so its end is under the test's control.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from service.notifybed import FakeManager
from testbed import LOOPBACK, free_port, stop_process, wait_for
from testbed.hosts import free_scheduler_port
from testbed.procs import make_workdir

from iceserv.protocol import CompileFile, CompileResult, EnvTransfer, FileChunk
from iceserv.testing import BlockingChannel

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0
FAKE_COMPILER = r"""
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *out = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
    char buf[65536];
    size_t n, total = 0;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) total += n;
    if (!out) return 0;
    FILE *f = fopen(out, "w");
    if (!f) return 3;
    fprintf(f, "OBJ %zu\n", total);
    return fclose(f) != 0;
}
"""


class Program:
    """``python -m iceserv.app.<module>`` with its own fake manager, conf.d and JSON log."""

    def __init__(self, module: str, workdir: Path, argv: list[str], env: dict[str, str]) -> None:
        self.workdir = workdir
        self.log_path = workdir / f"{module}.log"
        self.manager = FakeManager(str(workdir / "notify.sock"), str(workdir / "notify.sock"))
        environ = {key: value for key, value in os.environ.items() if not key.startswith("ICECC")}
        environ |= {"NOTIFY_SOCKET": self.manager.address, "PYTHONPATH": str(ROOT), **env}
        with (workdir / f"{module}.out").open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"iceserv.app.{module}", "-l", str(self.log_path), *argv],
                env=environ, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=workdir, start_new_session=True,
            )  # fmt: skip

    def events(self, name: str) -> list[dict]:
        records = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == name:
                        records.append(record)
        return records

    def notifications(self, until: str, timeout: float = WAIT) -> list[str]:
        """Datagrams up to the first starting with *until*, watchdog pings left out."""
        seen = self.manager.wait_for(lambda text: text.startswith(until), timeout)
        return [text for text in seen if text != "WATCHDOG=1"]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def tail(self) -> str:
        out = self.workdir / f"{self.log_path.stem}.out"
        return "\n".join(
            path.read_text(errors="replace")[-4000:] for path in (self.log_path, out)
            if path.exists()
        )  # fmt: skip

    def stop(self) -> int:
        code = stop_process(self.proc)
        self.manager.close()
        return code


def _telnet(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    _read_until(sock, b"\n")  # the greeting
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    deadline = time.monotonic() + WAIT
    while marker not in data:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            msg = f"connection closed; got {data!r}"
            raise AssertionError(msg)
        data += chunk
    return data


def _listcs(sock: socket.socket) -> str:
    sock.sendall(b"listcs\r\n")
    return _read_until(sock, b"200 done").decode(errors="replace")


@pytest.fixture
def scheduler(tmp_path):
    """Our scheduler on loopback with a watchdog of 1 s and an empty conf.d."""
    workdir = tmp_path / "scheduler"
    workdir.mkdir()
    confd = workdir / "icecc-scheduler"
    confd.write_text('ICECC_SCHEDULER_VERBOSITY="v"\n')
    port = free_scheduler_port(LOOPBACK)
    program = Program("scheduler", workdir, ["-p", str(port), "-i", "lo", "-n", f"SV{os.getpid()}",
                                             "--confd", str(confd)],
                      {"ICECC_TESTS": "1", "WATCHDOG_USEC": "1000000"})  # fmt: skip
    program.port, program.confd = port, confd
    yield program
    program.stop()


@pytest.fixture(scope="module")
def fake_env_tarball(tmp_path_factory):
    """A gzip tarball whose /usr/bin/gcc (and as, bin/true) is a static fake compiler."""
    if os.geteuid() != 0:
        pytest.skip("remote jobs are chroot'ed: needs root")
    try:
        pwd.getpwnam("icecc")
    except KeyError:
        pytest.skip("no icecc user (bin/setup installs Debian's icecc)")
    workdir = tmp_path_factory.mktemp("fake-env")
    (workdir / "fake.c").write_text(FAKE_COMPILER)
    binary = workdir / "gcc"
    subprocess.run([shutil.which("gcc") or "gcc", "-static", "-O1", str(workdir / "fake.c"),
                    "-o", str(binary)], check=True, timeout=120)  # fmt: skip
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ("usr/bin/gcc", "usr/bin/as", "bin/true"):
            archive.add(binary, arcname=name)
    return buffer.getvalue()


@pytest.fixture
def daemon(scheduler):
    """Our daemon (2 slots, jobs as icecc) logged in to the scheduler fixture."""
    if os.geteuid() != 0:
        pytest.skip("remote jobs are chroot'ed: needs root")
    workdir = make_workdir("svc-daemon")  # tmp_path's parents are 0700: jobs run as icecc
    confd = workdir / "iceccd"
    confd.write_text('ICECCD_MAX_PROCESSES="2"\nICECCD_VERBOSITY="vv"\n')
    port = free_port(LOOPBACK)
    program = Program(
        "daemon", workdir,
        ["-s", f"127.0.0.1:{scheduler.port}", "-p", str(port), "-N", "svcnode", "-u", "icecc",
         "-b", str(workdir / "envs"), "--stop-grace", "20", "--confd", str(confd)],
        {"ICECC_TESTS": "1", "ICECC_TEST_SOCKET": str(workdir / "iceccd.socket")},
    )  # fmt: skip
    program.port, program.confd = port, confd
    yield program
    program.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def _start_job(daemon: Program, tarball: bytes) -> BlockingChannel:
    """Send an environment and a COMPILE_FILE with part of the source; leave the job running."""
    channel = BlockingChannel.connect("127.0.0.1", daemon.port, timeout=WAIT)
    channel.send(EnvTransfer("fakeenv", "x86_64"))
    channel.send_file(tarball)
    wait_for(lambda: daemon.events("env_installed"), WAIT, "the environment to be installed",
             context=daemon.tail)  # fmt: skip
    channel.send(
        CompileFile(job_id=7, args=("-c",), environment="fakeenv", target="x86_64",
                    compiler_name="gcc", input_file="a.c", working_dir="/src", output_file="a.o"),
        FileChunk(b"int x;\n" * 1000),
    )  # fmt: skip
    wait_for(lambda: daemon.events("compiler_started"), WAIT, "the compiler to start",
             context=daemon.tail)  # fmt: skip
    return channel


def _finish_job(channel: BlockingChannel) -> tuple[CompileResult, bytes]:
    channel.send(FileChunk(b"int y;\n"))
    channel.send_file(b"")  # END
    result = channel.receive()
    assert isinstance(result, CompileResult), result
    obj, _ = channel.receive_file()
    channel.close()
    return result, obj


class TestReadiness:
    def test_scheduler_ready_only_when_ports_accept(self, scheduler):
        """READY=1 is the first datagram, and at that moment TCP, telnet and UDP are bound."""
        pid, first = scheduler.manager.receive(WAIT)
        assert pid == scheduler.proc.pid
        assert first == "READY=1\nSTATUS=0 hosts, 0/0 jobs running"
        socket.create_connection(("127.0.0.1", scheduler.port), timeout=1).close()
        socket.create_connection(("127.0.0.1", scheduler.port + 1), timeout=1).close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(OSError):
            udp.bind(("127.0.0.1", scheduler.port))  # taken by the scheduler
        assert scheduler.events("scheduler_started")

    def test_daemon_ready_only_when_sockets_accept(self, daemon):
        """The daemon's READY=1 comes once its Unix socket and TCP port accept connections."""
        first = daemon.notifications("READY=1")
        assert first[0].startswith("READY=1\nSTATUS=0/2 jobs")
        socket.create_connection(("127.0.0.1", daemon.port), timeout=1).close()
        with socket.socket(socket.AF_UNIX) as unix:
            unix.settimeout(1)
            unix.connect(str(daemon.workdir / "iceccd.socket"))

    def test_watchdog_pings(self, scheduler):
        """With WATCHDOG_USEC=1 s the scheduler pings WATCHDOG=1 every half second."""
        scheduler.notifications("READY=1")
        start = time.monotonic()
        pings = [scheduler.manager.receive(WAIT)[1] for _ in range(3)]
        elapsed = time.monotonic() - start
        assert set(pings) <= {"WATCHDOG=1", "STATUS=0 hosts, 0/0 jobs running"}
        assert pings.count("WATCHDOG=1") >= 2
        assert 0.5 <= elapsed < 3.0


class TestReload:
    def test_scheduler_datagrams(self, scheduler):
        """SIGHUP: RELOADING=1 with MONOTONIC_USEC in one datagram, then READY=1."""
        scheduler.notifications("READY=1")
        scheduler.confd.write_text('ICECC_SCHEDULER_VERBOSITY="vv"\n')
        before = time.monotonic_ns() // 1000
        scheduler.signal(signal.SIGHUP)
        (reloading,) = scheduler.notifications("RELOADING=1")
        key, _, value = reloading.split("\n")[1].partition("=")
        assert key == "MONOTONIC_USEC"
        assert before <= int(value) <= time.monotonic_ns() // 1000
        assert scheduler.notifications("READY=1") == ["READY=1\nSTATUS=0 hosts, 0/0 jobs running"]
        (done,) = scheduler.events("config_reloaded")
        assert done["changed"] == ["verbosity"]

    def test_broken_confd_keeps_the_old_configuration(self, scheduler):
        """A conf.d that fails to parse is one reload_failed line with path:line; still serving."""
        scheduler.notifications("READY=1")
        telnet = _telnet(scheduler.port + 1)
        scheduler.confd.write_text('ICECC_SCHEDULER_VERBOSITY="v"\nICECC_SCHEDULER_PORT=$(id)\n')
        scheduler.signal(signal.SIGHUP)
        scheduler.notifications("RELOADING=1")
        scheduler.notifications("READY=1")
        (failed,) = scheduler.events("reload_failed")
        assert failed["error"].startswith(f"{scheduler.confd}:2: ")
        assert failed["level"] == "error"
        assert "listcs" not in _listcs(telnet)  # the old session still answers
        assert scheduler.proc.poll() is None
        telnet.close()

    def test_daemon_max_processes_reaches_the_scheduler(self, scheduler, daemon, fake_env_tarball):
        """SIGHUP with a new ICECCD_MAX_PROCESSES: listcs shows it; telnet and the job survive."""
        scheduler.notifications("READY=1")  # the daemon can be ready first; telnet needs this
        daemon.notifications("READY=1")
        telnet = _telnet(scheduler.port + 1)
        wait_for(lambda: "svcnode" in _listcs(telnet), WAIT, "the daemon in listcs",
                 context=daemon.tail)  # fmt: skip
        assert "jobs=0/2" in _listcs(telnet)
        job = _start_job(daemon, fake_env_tarball)
        daemon.confd.write_text('ICECCD_MAX_PROCESSES="5"\nICECCD_VERBOSITY="vv"\n')
        daemon.signal(signal.SIGHUP)
        daemon.notifications("RELOADING=1")
        ready = daemon.notifications("READY=1")
        assert ready[-1].startswith("READY=1\nSTATUS=1/5 jobs")
        wait_for(lambda: "/5" in _listcs(telnet), WAIT, "max 5 in listcs", context=daemon.tail)
        result, obj = _finish_job(job)
        assert (result.status, obj) == (0, f"OBJ {7 * 1001}\n".encode())
        assert daemon.events("config_reloaded")[0]["changed"] == ["max_processes"]
        assert daemon.proc.poll() is None

    def test_daemon_broken_confd(self, daemon):
        """The daemon reports a bad value with path:line and keeps its slots."""
        daemon.notifications("READY=1")
        daemon.confd.write_text('ICECCD_VERBOSITY="vv"\nICECCD_MAX_PROCESSES="eight"\n')
        daemon.signal(signal.SIGHUP)
        daemon.notifications("RELOADING=1")
        assert daemon.notifications("READY=1")[-1].startswith("READY=1\nSTATUS=0/2 jobs")
        (failed,) = daemon.events("reload_failed")
        assert failed["error"].startswith(f"{daemon.confd}:2: ICECCD_MAX_PROCESSES='eight'")


class TestStop:
    def test_scheduler_stops_cleanly(self, scheduler):
        """SIGTERM: STOPPING=1 and exit 0."""
        scheduler.notifications("READY=1")
        scheduler.signal(signal.SIGTERM)
        assert (
            scheduler.notifications("STOPPING=1")[-1]
            == "STOPPING=1\nSTATUS=stopping, 0 jobs running"
        )
        assert scheduler.proc.wait(WAIT) == 0

    def test_daemon_finishes_the_running_job(self, scheduler, daemon, fake_env_tarball):
        """SIGTERM with a compile running: STOPPING=1, the scheduler sees the node leave at
        once (no new jobs), the running job completes, then exit 0."""
        daemon.notifications("READY=1")
        wait_for(lambda: scheduler.events("daemon_logged_in"), WAIT, "the daemon's login")
        job = _start_job(daemon, fake_env_tarball)
        daemon.signal(signal.SIGTERM)
        wait_for(lambda: scheduler.events("daemon_logged_out"), WAIT,
                 "the scheduler to see the daemon leave", context=daemon.tail)  # fmt: skip
        assert daemon.proc.poll() is None
        stopping = daemon.notifications("STOPPING=1")
        assert stopping[-1] == "STOPPING=1\nSTATUS=stopping, 1 jobs running"
        extend = daemon.notifications("EXTEND_TIMEOUT_USEC=")
        assert int(extend[-1].partition("=")[2]) > 10_000_000
        with pytest.raises(subprocess.TimeoutExpired):
            daemon.proc.wait(1)  # still waiting for the job
        result, obj = _finish_job(job)
        assert (result.status, obj) == (0, f"OBJ {7 * 1001}\n".encode())
        assert daemon.proc.wait(WAIT) == 0
        (stopped,) = daemon.events("service_stopped")
        assert stopped["cancelled"] == 0


class TestJournalFormat:
    def test_journal_lines_when_journal_stream_is_stderr(self, tmp_path):
        """With $JOURNAL_STREAM naming its stderr, the program writes <N>-prefixed logfmt lines."""
        manager = FakeManager(str(tmp_path / "n.sock"), str(tmp_path / "n.sock"))
        err = tmp_path / "stderr"
        port = free_scheduler_port(LOOPBACK)
        with err.open("wb") as stream:
            info = os.fstat(stream.fileno())
            env = {k: v for k, v in os.environ.items() if not k.startswith("ICECC")}
            env |= {"PYTHONPATH": str(ROOT), "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}",
                    "NOTIFY_SOCKET": manager.address, "ICECC_TESTS": "1"}  # fmt: skip
            proc = subprocess.Popen(
                [sys.executable, "-m", "iceserv.app.scheduler", "--confd", "/dev/null", "-v",
                 "-i", "lo", "-p", str(port)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stream,
            )  # fmt: skip
        try:
            manager.wait_for(lambda text: text.startswith("READY=1"))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT) == 0
        finally:
            stop_process(proc)
            manager.close()
        lines = err.read_text().splitlines()
        assert "<6>event=scheduler_ready " in "\n".join(lines)
        assert all(line.startswith("<") and " level=" in line for line in lines), lines
