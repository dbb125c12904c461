"""Reaching the local daemon and compile servers with plain blocking sockets.

Owns the order in which 1.4's ``icecc`` looks for its local daemon
(reference §1.2: ``ICECC_TEST_SOCKET`` only, else the two system sockets,
``$HOME/.iceccd.socket`` and TCP 127.0.0.1:10245) and TCP connects with a
time-out.  It uses ``_socket`` directly: ``socket`` would add ~12 ms of
imports to every compiler call.  It must not speak the protocol (that is
``remote``, which imports :mod:`iceserv.protocol` only once a daemon answered).
"""

import _socket

from iceserv.errors import IceservError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    from iceserv.client.env import ClientEnv

__all__ = [
    "TestSocketError",
    "connect_tcp",
    "connect_unix",
    "endpoint_name",
    "find_local_daemon",
]

DAEMON_PORT: "Final" = 10245  # iceserv.protocol.DAEMON_PORT, which is not imported yet
_SYSTEM_SOCKETS: "Final" = ("/var/run/icecc/iceccd.socket", "/var/run/iceccd.socket")
_LOCAL_CONNECT_TIMEOUT: "Final" = 10.0
# iceserv.protocol.endpoint: the abstract name's prefix and its FNV-1a 64 digest.
_ENDPOINT_PREFIX: "Final" = "iceserv-daemon/"
_FNV_OFFSET: "Final" = 0xCBF29CE484222325
_FNV_PRIME: "Final" = 0x100000001B3
_MASK: "Final" = (1 << 64) - 1


def _absolute(path: str) -> str:
    """``os.path.abspath``, importing ``os`` only for a path that is not already normal.

    Daemon sockets are absolute, normal paths; ``os`` costs the light path a
    millisecond (see :mod:`iceserv.client.env`).
    """
    if path.startswith("/") and all(part not in ("", ".", "..") for part in path[1:].split("/")):
        return path
    import os.path  # noqa: PLC0415 - rare: a relative or unnormalised socket path

    return os.path.abspath(path)  # noqa: PTH100 - no symlinks resolved


def endpoint_name(address: str) -> str:
    """``iceserv.protocol.endpoint.iceserv_endpoint``, without importing the protocol."""
    key = address if address.startswith("tcp:") else _absolute(address)
    digest = _FNV_OFFSET
    for byte in key.encode("utf-8", "surrogateescape"):
        digest = ((digest ^ byte) * _FNV_PRIME) & _MASK
    return f"\0{_ENDPOINT_PREFIX}{digest:016x}"


class TestSocketError(IceservError, OSError):
    """``ICECC_TEST_SOCKET`` is set but nothing answers there (1.4 exits 119)."""


def connect_unix(path: str, timeout: float = _LOCAL_CONNECT_TIMEOUT) -> _socket.socket | None:
    """Connect to a Unix stream socket; None if nobody listens there."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def connect_tcp(host: str, port: int, timeout: float) -> _socket.socket | None:
    """Connect to *host* (IPv4 name or dotted address, or an IPv6 literal) within *timeout*.

    Returns None on failure.  Names resolve to IPv4 only, as in 1.4; an IPv6
    literal (``fd00::2``, ``fe80::2%eth0``) is what an iceserv scheduler puts
    in USE_CS for a server that logged in over IPv6.  Sets ``TCP_NODELAY`` and
    keepalive as 1.4's outgoing connections do (§1.3).
    """
    family = _socket.AF_INET
    target: tuple[object, ...] = (host, port)
    if ":" in host:
        try:
            found = _socket.getaddrinfo(
                host, port, _socket.AF_INET6, _socket.SOCK_STREAM, 0, _socket.AI_NUMERICHOST
            )
        except (OSError, UnicodeError):
            return None
        family, target = _socket.AF_INET6, found[0][4]
    else:
        try:
            _socket.inet_aton(host)  # dotted already: no resolver, no idna codec (5 ms of imports)
        except OSError:
            name = host.encode("ascii") if host.isascii() else host  # bytes skip the idna codec
            try:
                found = _socket.getaddrinfo(name, port, _socket.AF_INET, _socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                return None
            if not found:
                return None
            target = (str(found[0][4][0]), port)
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
    except OSError:
        sock.close()
        return None
    return sock


def find_local_daemon(env: "ClientEnv") -> tuple[_socket.socket, bool] | None:
    """1.4 ``get_local_daemon``: the first local daemon socket that accepts, or None.

    At each address it first tries the daemon's iceserv-only endpoint
    (:mod:`iceserv.protocol.endpoint`); the flag says it answered there, so
    the daemon knows we are iceserv's client (it may send us JOB_TICKET) and
    we know it is iceserv.  A 1.4 daemon has no such endpoint: the connect
    fails at once and the address itself is used, as 1.4's client does.

    Raises :class:`TestSocketError` when ``ICECC_TEST_SOCKET`` names a socket
    nobody listens on: a test set-up error, not a reason to build locally.
    """
    if env.test_socket is not None:
        found = _connect_local(env.test_socket)
        if found is None:
            raise TestSocketError(env.test_socket)
        return found
    paths = list(_SYSTEM_SOCKETS)
    if env.home is not None:
        paths.append(env.home + "/.iceccd.socket")
    for path in [*paths, f"tcp:{DAEMON_PORT}"]:
        found = _connect_local(path)
        if found is not None:
            return found
    return None


def _connect_local(address: str) -> tuple[_socket.socket, bool] | None:
    """Connect to the daemon at *address* (a path or ``tcp:PORT``), its endpoint first."""
    sock = connect_unix(endpoint_name(address))
    if sock is not None:
        return sock, True
    if address.startswith("tcp:"):
        sock = connect_tcp("127.0.0.1", int(address[4:]), _LOCAL_CONNECT_TIMEOUT)
    else:
        sock = connect_unix(address)
    return None if sock is None else (sock, False)
