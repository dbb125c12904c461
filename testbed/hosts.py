"""Where a real program runs: the ``Host`` seam and the loopback host.

Owns the ``Host`` protocol that ``RealScheduler`` and ``RealDaemon`` are
given, its implementation for the machine's own loopback (``LOOPBACK``), and
free-port selection.  A namespace host (``netns.NetnsHost``) implements the
same protocol, so every wrapper works unchanged inside the namespace bed.

A host starts processes (``popen``/``run``) and makes sockets that live in its
network stack (``socket``), so the test process can talk to programs on that
host directly.  This module must not create namespaces.
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from testbed.errors import TestbedError

if TYPE_CHECKING:
    from collections.abc import Sequence

_PORT_TRIES: Final = 100


class Host(Protocol):
    """A network stack in which real programs run and test sockets are made."""

    @property
    def name(self) -> str:
        """Short unique name of the host."""
        ...

    @property
    def ip(self) -> str:
        """The IPv4 address other hosts reach this one at."""
        ...

    @property
    def is_loopback(self) -> bool:
        """True for the machine's own network stack, shared with everything else on it."""
        ...

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` on this host (``subprocess.Popen`` keyword arguments allowed)."""
        ...

    def run(
        self, argv: Sequence[str], *, timeout: float = 60.0, **run_kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` to completion on this host, killing it after ``timeout`` seconds."""
        ...

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """Return a new socket that lives in this host's network stack."""
        ...


@dataclass(frozen=True)
class LoopbackHost:
    """The machine's own network stack; programs on it are reached at 127.0.0.1."""

    name: str = "loopback"
    ip: str = "127.0.0.1"
    is_loopback: bool = True

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` as a plain child process."""
        return subprocess.Popen(argv, **popen_kwargs)

    def run(
        self, argv: Sequence[str], *, timeout: float = 60.0, **run_kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` to completion; ``check`` defaults to True."""
        run_kwargs.setdefault("check", True)
        return subprocess.run(argv, timeout=timeout, **run_kwargs)  # noqa: PLW1510 - set above

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """Return a new socket in the root network namespace."""
        return socket.socket(family, kind)


LOOPBACK: Final = LoopbackHost()


def free_port(host: Host = LOOPBACK) -> int:
    """Return a TCP port that nobody on ``host`` listens on right now.

    The port is checked on the wildcard address because the real daemon binds
    ``0.0.0.0``.  There is an unavoidable window before the caller binds it.
    """
    with host.socket() as sock:
        sock.bind(("", 0))
        port: int = sock.getsockname()[1]
        return port


def free_scheduler_port(host: Host = LOOPBACK) -> int:
    """Return a port P with TCP P, TCP P+1 (telnet) and UDP P (discovery) all free."""
    for _ in range(_PORT_TRIES):
        port = free_port(host)
        if (
            port < 65535
            and _bindable(host, port + 1, socket.SOCK_STREAM)
            and _bindable(host, port, socket.SOCK_DGRAM)
        ):
            return port
    msg = f"no free scheduler port pair on {host.name} after {_PORT_TRIES} tries"
    raise TestbedError(msg)


def _bindable(host: Host, port: int, kind: int) -> bool:
    with host.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def connect(host: Host, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """Open a TCP connection from ``host``'s network stack; the socket keeps ``timeout``."""
    sock = host.socket()
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock
