"""Our ``iceccd`` (``python -m iceserv.app.daemon``) among the real icecream 1.4 programs.

(a) it logs in to the real scheduler and is listed by ``listcs``; (b) a real
``icecc`` client uses it as its local daemon (native environment built by
it, GET_CS forwarded, USE_CS passed back) and a real ``iceccd`` compiles;
(c) it is the remote compile server of a real client and real local daemon
(environment transfer, VERIFY_ENV, chroot'ed compile as ``icecc``), and the
real scheduler rates its speed from our JOB_DONE; (d) ``--no-remote`` opens
no TCP port; (e) hostile peers (garbage, an oversized frame, a tarball
escaping its directory) get an error while the daemon keeps serving.
Objects are compared with a local ``gcc -c``.  Tests run as root; jobs run
as the ``icecc`` user.  Every wait is bounded, every process stopped.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from testbed import OurDaemon, RealScheduler, wait_for
from testbed.procs import listening_tcp_ports, listening_unix_paths

from iceserv.protocol import (
    ConnectionClosed,
    EnvTransfer,
    StatusText,
    VerifyEnv,
    VerifyEnvResult,
)
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.live

HELLO_C = (
    "#include <stdio.h>\n"
    + "".join(f"int f{i}(int x) {{ return x * {i} + {i % 7}; }}\n" for i in range(200))
    + 'int main(void) { puts("hello from iceserv"); return f3(2) == 0; }\n'
)


def _session_members(pid: int) -> list[int]:
    """Living processes in the session ``pid`` led (helpers, compilers) after it stopped."""
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[3]) == pid and fields[0] != "Z":  # session id
                    left.append(int(entry.name))
    return left


@pytest.fixture
def our_daemon_factory() -> Iterator[Any]:
    """``make(name, scheduler=None, **options)`` -> a started ``OurDaemon``, stopped at teardown.

    The work directory outlives ``stop`` (tests read the log of a stopped
    daemon) and goes at teardown, after checking that nothing of the daemon's
    session is left.
    """
    made: list[OurDaemon] = []

    def make(name: str, scheduler: str | None = None, **options: Any) -> OurDaemon:
        daemon = OurDaemon(name, scheduler, keep_workdir=True, **options)
        made.append(daemon)
        return daemon.start()

    yield make
    for daemon in made:
        try:
            daemon.stop()
            if daemon.proc is not None:
                assert not _session_members(daemon.proc.pid), daemon.log_tail()
        finally:
            daemon.remove_workdir()


def _compile_with_real_client(workdir: Path, env: dict[str, str]) -> tuple[bytes, bytes, str]:
    """Run ``icecc gcc -c hello.c`` and a local ``gcc -c``; return both objects and the trace."""
    (workdir / "hello.c").write_text(HELLO_C)
    trace = workdir / "client.log"
    env = {**env, "ICECC_DEBUG": "debug", "ICECC_LOGFILE": str(trace)}
    subprocess.run(["/usr/bin/icecc", "gcc", "-O2", "-c", "hello.c", "-o", "hello.o"],
                   cwd=workdir, env=env, check=True, timeout=120)  # fmt: skip
    subprocess.run(["gcc", "-O2", "-c", "hello.c", "-o", "local.o"], cwd=workdir, check=True,
                   timeout=60)  # fmt: skip
    text = trace.read_text(errors="replace") if trace.exists() else ""
    return (workdir / "hello.o").read_bytes(), (workdir / "local.o").read_bytes(), text


def _speed(scheduler: RealScheduler, name: str) -> float:
    host = next((h for h in scheduler.listcs() if h.name == name), None)
    return host.speed if host is not None else 0.0


class TestLogin:
    def test_our_daemon_is_listed_by_the_real_scheduler(self, real_scheduler, our_daemon_factory):
        """LOGIN and STATS reach the real scheduler: listcs shows our node, port and slots."""
        ours = our_daemon_factory("ourlogin", real_scheduler.address)
        host = ours.wait_listed(real_scheduler)
        assert (host.ip, host.port, host.platform) == ("127.0.0.1", ours.port, os.uname().machine)
        assert host.max_jobs == 2
        assert 0 <= host.load < 1000
        (login,) = ours.events("scheduler_logged_in")
        assert login["protocol"] == 43
        assert ours.stop() == 0  # SIGTERM: a clean stop
        assert not ours.socket_path.exists()
        assert ours.events("service_stopped")

    @pytest.mark.parametrize("via", ["-s", "conf.d"])
    def test_a_named_scheduler_is_woken_by_us(
        self, real_scheduler, our_daemon_factory, tmp_path, via
    ):
        """With -s (or conf.d's ICECCD_SCHEDULER_HOST) we send 1.4's discovery datagram too.

        Another connection was just accepted, so the real scheduler stopped
        polling its listening sockets (reference 7.9) and sleeps until
        something wakes it (our daemon starts more than 1 s later).  Nothing here pokes it (no
        ``awake()``, no telnet command) until our daemon has logged in.
        """
        host, port = real_scheduler.address.split(":")
        with socket.create_connection((host, int(port)), 5.0) as other:
            assert other.recv(4)  # its handshake: accepted, the listeners are off now
            if via == "-s":
                ours = our_daemon_factory("ourwake", real_scheduler.address)
            else:
                confd = tmp_path / "iceccd.conf"
                confd.write_text(f'ICECCD_SCHEDULER_HOST="{real_scheduler.address}"\n')
                ours = our_daemon_factory("ourwake", extra_args=["--confd", str(confd)])
            wait_for(lambda: ours.check_alive() and ours.events("scheduler_logged_in"), 8.0,
                     "our daemon's login, with no help waking the scheduler", interval=0.1,
                     context=lambda: ours.log_tail() + real_scheduler.log_tail())  # fmt: skip
        assert "broadcast from 127.0.0.1" in real_scheduler.log_text()
        (login,) = ours.events("scheduler_logged_in")
        assert login["address"] == real_scheduler.address
        assert not ours.events("scheduler_not_found")  # named, not found by discovery
        host = ours.wait_listed(real_scheduler, loaded=False, timeout=5.0)
        assert host.port == ours.port

    def test_an_idle_link_stays_up(self, real_scheduler, our_daemon_factory):
        """A silent scheduler for many idle periods (1 s here, 300 s normally) costs no re-login.

        Each period ends with a forced STATS (the proof the peer is alive), never a close.
        """
        ours = our_daemon_factory("ouridle", real_scheduler.address,
                                  extra_env={"ICECC_TEST_SCHEDULER_IDLE": "1"})  # fmt: skip
        ours.wait_listed(real_scheduler)
        ours.wait_events("scheduler_stats_forced", 4, timeout=30)
        assert len(ours.events("scheduler_logged_in")) == 1
        assert not ours.events("scheduler_connection_lost")
        assert not ours.events("scheduler_reconnect_scheduled")
        assert any(h.name == "ouridle" for h in real_scheduler.listcs())


class TestLocalDaemon:
    def test_real_client_compiles_through_us_on_a_real_remote(
        self, real_scheduler, real_daemon_factory, our_daemon_factory, tmp_path
    ):
        """Native env built by us, GET_CS forwarded, USE_CS passed on, a real iceccd compiles."""
        remote = real_daemon_factory("realremote", real_scheduler)
        remote.wait_logged_in(real_scheduler)
        ours = our_daemon_factory("ourlocal", real_scheduler.address)
        ours.wait_listed(real_scheduler)
        env = ours.client_env({"ICECC_PREFERRED_HOST": "realremote",
                               "ICECC_TEST_REMOTEBUILD": "1"})  # fmt: skip
        with real_scheduler.awake():
            obj, local, trace = _compile_with_real_client(tmp_path, env)
            assert obj == local
            wait_for(lambda: _speed(real_scheduler, "realremote") > 0, 20,
                     "the real remote's JOB_DONE to rate its speed")  # fmt: skip
        (native,) = ours.events("native_env_sent")
        assert Path(native["path"]).name.endswith(".tar.zst")  # our default (1.4: gzip)
        (assigned,) = ours.events("compile_server_assigned")
        assert assigned["server"] == f"127.0.0.1:{remote.port}"
        assert "local build" not in trace.lower()


class TestRemoteServer:
    def test_real_client_compiles_on_us(
        self, real_scheduler, real_daemon_factory, our_daemon_factory, tmp_path
    ):
        """A real client and local iceccd ship the env to us; we compile; speed is rated."""
        ours = our_daemon_factory("ourremote", real_scheduler.address)
        ours.wait_listed(real_scheduler)
        local = real_daemon_factory("reallocal", real_scheduler)
        local.wait_logged_in(real_scheduler)
        env = local.client_env({"ICECC_PREFERRED_HOST": "ourremote",
                                "ICECC_TEST_REMOTEBUILD": "1"})  # fmt: skip
        with real_scheduler.awake():
            obj, local_obj, _ = _compile_with_real_client(tmp_path, env)
            assert obj == local_obj
            wait_for(lambda: _speed(real_scheduler, "ourremote") > 0, 20,
                     "our JOB_DONE to rate our speed", context=ours.log_tail)  # fmt: skip
        (installed,) = ours.events("env_installed")
        assert installed["size"] > 1_000_000
        assert ours.events("env_verified")[0]["ok"] is True
        (job,) = [e for e in ours.events("job_finished") if e["where"] == "server"]
        assert job["exitcode"] == 0
        assert job["in_bytes"] > len(HELLO_C)
        assert job["out_bytes"] == len(obj)
        env_dirs = list(ours.basedir.glob("target=*/*"))
        assert len(env_dirs) == 1
        assert (env_dirs[0] / "tmp").stat().st_mode & 0o7777 == 0o1775
        assert not list((env_dirs[0] / "tmp").iterdir())  # the job cleaned up


class TestNoRemote:
    def test_no_tcp_port_and_login_port_zero(self, real_scheduler, our_daemon_factory):
        """--no-remote: no TCP listener at all; the scheduler lists us with port 0."""
        ours = our_daemon_factory("ournoremote", real_scheduler.address, no_remote=True)
        host = ours.wait_listed(real_scheduler)
        assert ours.proc is not None
        assert listening_tcp_ports(ours.proc.pid) == set()
        assert str(ours.socket_path) in listening_unix_paths(ours.proc.pid)
        assert host.port == 0


class TestDiscovery:
    def test_finds_the_real_scheduler_by_broadcast(self, netns_hosts, our_daemon_factory):
        """Without -s our daemon broadcasts on its bridge and logs in to the real scheduler."""
        h1, h2 = netns_hosts(2)
        with RealScheduler(host=h1, netname="DISCO") as scheduler:
            ours = our_daemon_factory("ourdisco", host=h2, netname="disco")
            host = ours.wait_listed(scheduler)
            assert (host.ip, host.port) == (h2.ip, 10245)
            (login,) = ours.events("scheduler_logged_in")
            assert login["address"] == f"{h1.ip}:8765"


def _tarball(*members: tuple[str, bytes | str]) -> bytes:
    """A gzip tarball; a ``str`` value makes a symlink to that target."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


class TestHostilePeers:
    def test_garbage_oversize_and_malicious_tarball(self, our_daemon_factory, tmp_path):
        """Each hostile peer gets an error or is dropped; nothing escapes; service goes on."""
        ours = our_daemon_factory("ourhostile")
        port = ours.port or 0
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
            sock.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(4096):
                    pass  # the daemon closes after its own 4 handshake bytes
        channel = BlockingChannel.connect("127.0.0.1", port, timeout=10)
        channel.sock.sendall((64 << 20).to_bytes(4, "big") + b"XXXX")
        assert isinstance(channel.receive(), ConnectionClosed)
        channel.close()
        escape = tmp_path / "escaped"
        relative = os.path.relpath(escape, ours.basedir / ".staging" / "x")
        channel = BlockingChannel.connect("127.0.0.1", port, timeout=30)
        channel.send(EnvTransfer("evil", "x86_64"))
        channel.send_file(_tarball(("usr/bin/as", b"#!/bin/sh\n"), (relative, b"owned")))
        reply = channel.receive()
        assert isinstance(reply, StatusText)
        assert "'..'" in reply.text
        assert isinstance(channel.receive(), ConnectionClosed)
        channel.close()
        assert not escape.exists()
        assert not list(ours.basedir.glob("target=*/evil"))
        channel = BlockingChannel.connect("127.0.0.1", port, timeout=10)
        channel.send(EnvTransfer("evil2", "x86_64"))
        channel.send_file(_tarball(("lib", "../../../../../../../../../etc")))
        reply = channel.receive()
        assert isinstance(reply, StatusText)
        assert "points outside" in reply.text
        channel.close()
        channel = BlockingChannel.connect("127.0.0.1", port, timeout=10)
        channel.send(VerifyEnv("evil", "x86_64"))
        assert channel.receive() == VerifyEnvResult(ok=False)
        channel.close()
        assert ours.alive()
        assert len(ours.events("client_protocol_error")) >= 2
