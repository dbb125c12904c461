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

from testbed.procs import (
    clean_env,
    listening_tcp_ports,
    listening_unix_paths,
    make_icecc_subdir,
    require_program,
)
from testbed.program import DaemonProgram
from testbed.real import PROTOCOL_VERSION
from testbed.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from testbed.real import ListedHost, RealScheduler

DAEMON_PROGRAM: Final = "/usr/sbin/iceccd"
_END_MESSAGE: Final = bytes.fromhex("0000000400000043")  # length 4, type 'C' (END)


@dataclass(eq=False)
class RealDaemon(DaemonProgram):
    """A real ``iceccd`` run as a subprocess on ``host``.

    The options it shares with ours are ``DaemonProgram``'s (``scheduler``
    e.g. ``RealScheduler.address``).  ``icecc_tests`` None means
    ``ICECC_TESTS=1`` on loopback only.  The Unix socket, the ``-b`` env
    directory (owned by ``icecc``; iceccd wipes it at start) and the log live
    in ``workdir`` (None: a fresh one, removed by ``stop`` unless
    ``keep_workdir``; a given one must be writable by the ``icecc`` user and
    not shared with another daemon).
    """

    program: ClassVar[str] = "iceccd"
    log_name: ClassVar[str] = "iceccd.log"
    out_name: ClassVar[str | None] = "iceccd.out"

    icecc_tests: bool | None = None
    extra_args: Sequence[str] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def start(self, *, wait: bool = True) -> Self:
        """Start iceccd; with ``wait``, return once its socket and port listen."""
        program = require_program(DAEMON_PROGRAM)
        self._prepare(f"d-{self.name}")
        make_icecc_subdir(self._workdir, "envs")
        argv = [program, *self._daemon_args(), "-vvv", "-l", str(self.log_path), *self.extra_args]
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
