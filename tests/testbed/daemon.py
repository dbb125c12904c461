"""The real icecream 1.4 daemon (``iceccd``) as a test fixture.

Owns ``RealDaemon``: start ``/usr/sbin/iceccd`` on a ``hosts.Host`` with its
own node name, port, env directory, Unix socket and log, wait until it
listens, wake its main loop, wait until a ``RealScheduler`` lists it, stop it
and its job children.  What the real daemon does (``-i lo``, login timing, the
poke) is written down in ``real.py``.  This module must not depend on iceserv.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final, Self

from testbed.errors import TestbedError
from testbed.hosts import free_port
from testbed.procs import (
    clean_env,
    listening_tcp_ports,
    listening_unix_paths,
    make_icecc_subdir,
    require_program,
)
from testbed.program import Program
from testbed.real import PROTOCOL_VERSION
from testbed.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from testbed.real import ListedHost, RealScheduler

DAEMON_PROGRAM: Final = "/usr/sbin/iceccd"
DEFAULT_DAEMON_PORT: Final = 10245
_END_MESSAGE: Final = bytes.fromhex("0000000400000043")  # length 4, type 'C' (END)


@dataclass(eq=False)
class RealDaemon(Program):
    """A real ``iceccd`` run as a subprocess on ``host``.

    ``scheduler`` is the ``-s`` value (``"ip:port"``, e.g.
    ``RealScheduler.address``) or None for discovery.  ``port`` None picks a
    free port on loopback and 10245 in a namespace; ``no_remote`` replaces it
    with ``--no-remote``.  ``icecc_tests`` None means ``ICECC_TESTS=1`` on
    loopback only.  The Unix socket (``ICECC_TEST_SOCKET``), the ``-b`` env
    directory and the log live in ``workdir`` (None: a fresh one, removed by
    ``stop`` unless ``keep_workdir``; a given one must be writable by the
    ``icecc`` user and not shared with another daemon).
    """

    program: ClassVar[str] = "iceccd"
    log_name: ClassVar[str] = "iceccd.log"
    out_name: ClassVar[str | None] = "iceccd.out"

    name: str
    scheduler: str | None = None
    port: int | None = None
    no_remote: bool = False
    max_jobs: int = 2
    netname: str | None = None
    icecc_tests: bool | None = None
    extra_args: Sequence[str] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """``iceccd <name>``."""
        return f"iceccd {self.name}"

    @property
    def socket_path(self) -> Path:
        """The daemon's local Unix socket (what ``ICECC_TEST_SOCKET`` points clients to)."""
        return self._workdir / "iceccd.socket"

    @property
    def basedir(self) -> Path:
        """The ``-b`` environment directory (owned by ``icecc``; wiped by iceccd at start)."""
        return self._workdir / "envs"

    @property
    def address(self) -> tuple[str, int]:
        """(ip, port) of the remote-compile TCP port."""
        if self.port is None:
            msg = "daemon not started or started with --no-remote"
            raise TestbedError(msg)
        return (self.host.ip, self.port)

    def start(self, *, wait: bool = True) -> Self:
        """Start iceccd; with ``wait``, return once its socket and port listen."""
        program = require_program(DAEMON_PROGRAM)
        self._prepare(f"d-{self.name}")
        make_icecc_subdir(self._workdir, "envs")
        if self.no_remote:
            self.port = None
            port_args = ["--no-remote"]
        else:
            if self.port is None:
                self.port = free_port(self.host) if self.host.is_loopback else DEFAULT_DAEMON_PORT
            port_args = ["-p", str(self.port)]
        argv = [program, "-N", self.name, *port_args, "-b", str(self.basedir)]
        argv += ["-m", str(self.max_jobs)]
        argv += ["-s", self.scheduler] if self.scheduler else []
        argv += ["-n", self.netname] if self.netname else []
        argv += ["-vvv", "-l", str(self.log_path), *self.extra_args]
        tests = self.host.is_loopback if self.icecc_tests is None else self.icecc_tests
        env = clean_env({"ICECC_TEST_SOCKET": str(self.socket_path)})
        env.update({"ICECC_TESTS": "1"} if tests else {})
        env.update(self.extra_env)
        self._launch(argv, env)
        if wait:
            with self._stopped_on_failure():
                self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the Unix socket (and unless ``--no-remote`` the TCP port) listen."""
        self._wait_ready(self._listening, f"iceccd {self.name} to listen", timeout)

    def _listening(self) -> bool:
        pid = self._pid
        if str(self.socket_path) not in listening_unix_paths(pid):
            return False
        return self.port is None or self.port in listening_tcp_ports(pid)

    def poke(self, timeout: float = 1.0) -> None:
        """Wake the daemon's main loop: a client connection that shakes hands and says END."""
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            theirs = _recv_exactly(sock, 4)
            sock.sendall(PROTOCOL_VERSION.to_bytes(4, "little"))
            agreed = min(PROTOCOL_VERSION, int.from_bytes(theirs, "little"))
            _recv_exactly(sock, 4)
            sock.sendall(agreed.to_bytes(4, "little") + _END_MESSAGE)

    def wait_logged_in(self, scheduler: RealScheduler, timeout: float = 20.0) -> ListedHost:
        """Wait until ``scheduler``'s ``listcs`` shows this daemon; return its entry."""

        def listed() -> ListedHost | None:
            self.check_alive()
            return next((h for h in scheduler.listcs() if h.name == self.name), None)

        return wait_for(
            listed,
            timeout,
            f"iceccd {self.name} to appear in the scheduler's listcs",
            interval=0.2,
            between=self.poke,
            context=lambda: self.log_tail() + "\n" + scheduler.log_tail(),
        )

    def client_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a real ``icecc`` client that should use this daemon."""
        return clean_env({"ICECC_TEST_SOCKET": str(self.socket_path), **(extra or {})})

    def stop(self, grace: float = 5.0) -> int | None:
        """Terminate iceccd and its job children, reap, clean up; return the exit code.

        SIGKILL follows after ``grace`` seconds; a daemon still retrying a
        failed bind at start-up ignores SIGTERM.
        """
        return self._stop(grace)


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            msg = "connection closed"
            raise ConnectionError(msg)
        data += chunk
    return data
