"""Family-neutral addresses: the one place that knows IPv4 from IPv6.

This module owns what the shells need to treat both address families alike:
:class:`Family` (the ``family = any|ipv4|ipv6`` setting), :func:`unmapped`
(an IPv4 peer accepted on a dual-stack socket shows as ``::ffff:a.b.c.d``;
everything above the accept loop sees ``a.b.c.d``), :func:`host_port` (how
an address and port are printed: ``[v6]:port``), :func:`is_ipv6` and
:func:`is_loopback`, and :func:`bind_listeners`, which opens the listening
sockets for a list of addresses where ``""`` means "every address of the
allowed families": one ``::`` socket with ``IPV6_V6ONLY=0`` where the system
allows it, else an IPv6 and an IPv4 socket, and IPv4 only where the kernel
has no IPv6 at all.

It must not import the scheduler, the daemon, ``config`` or ``service``,
and does not log: the caller logs what it bound.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import ipaddress
import socket
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "DISCOVERY_GROUP6",
    "IP_FREEBIND",
    "WILDCARD",
    "Family",
    "bind_listeners",
    "host_port",
    "in_networks",
    "is_ipv6",
    "is_link_local",
    "is_loopback",
    "is_own_host",
    "sockaddr_host_port",
    "socket_families",
    "unmapped",
]

#: The IPv6 discovery group: link-local scope, the same UDP port as broadcast discovery
#: (8765).  ff02::114 is IANA's "any private experiment" address (RFC 4291's variable-scope
#: list), so iceserv claims no registered group; 1.4 peers never use it.
DISCOVERY_GROUP6: Final = "ff02::114"
#: The listen address meaning "every address of the allowed families".
WILDCARD: Final = ""
#: Linux's IP_FREEBIND (not exported by Python 3.11's socket module); IPv6 sockets honour it.
IP_FREEBIND: Final = 15
#: Errors that mean "this kernel or host has no IPv6" (module not loaded, disabled by sysctl).
_NO_IPV6: Final = frozenset((errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT))


class Family(enum.StrEnum):
    """Which address families a service uses (the ``family`` setting)."""

    ANY = "any"
    IPV4 = "ipv4"
    IPV6 = "ipv6"

    def allows(self, family: socket.AddressFamily) -> bool:
        """Whether sockets of *family* (``AF_INET``/``AF_INET6``) are allowed."""
        if family == socket.AF_INET:
            return self is not Family.IPV6
        if family == socket.AF_INET6:
            return self is not Family.IPV4
        return False


def socket_families(family: Family | str) -> int:
    """Return the ``family`` argument for ``getaddrinfo``/``create_connection``."""
    chosen = Family(family)
    if chosen is Family.IPV4:
        return socket.AF_INET
    if chosen is Family.IPV6:
        return socket.AF_INET6
    return socket.AF_UNSPEC


def unmapped(address: str) -> str:
    """Return *address* with an IPv4-mapped IPv6 form (``::ffff:10.0.0.1``) as plain IPv4.

    Anything else (IPv6, IPv4, a Unix socket path, ``""``) is returned as is.
    """
    if not address.startswith("::ffff:") and not address.startswith("::FFFF:"):
        return address
    try:
        mapped = ipaddress.IPv6Address(address).ipv4_mapped
    except ValueError:
        return address
    return str(mapped) if mapped is not None else address


def is_ipv6(address: str) -> bool:
    """Whether *address* is an IPv6 literal (with or without a ``%zone``), not a name or IPv4."""
    if ":" not in address:
        return False
    try:
        ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return False
    return True


def is_link_local(address: str) -> bool:
    """Whether *address* is an IPv6 link-local literal (``fe80::/10``, with or without zone)."""
    try:
        return ipaddress.IPv6Address(address.split("%", 1)[0]).is_link_local
    except ValueError:
        return False


def is_loopback(address: str) -> bool:
    """Whether *address* is a loopback literal (127.0.0.0/8, ``::1``, mapped 127.x)."""
    try:
        return ipaddress.ip_address(unmapped(address).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _plain(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """*address* as an address object: unmapped, zone dropped; None if not a literal."""
    try:
        return ipaddress.ip_address(unmapped(address).split("%", 1)[0])
    except ValueError:
        return None


def is_own_host(address: str, own: Iterable[str]) -> bool:
    """Whether *address* (a peer's) is this host: loopback, or one of *own* addresses.

    *own* is what :func:`iceserv.hostfacts.local_addresses` returns; IPv4-mapped
    and zoned forms compare as their plain address.
    """
    peer = _plain(address)
    if peer is None:
        return False
    return peer.is_loopback or any(_plain(mine) == peer for mine in own)


def in_networks(address: str, networks: Iterable[str]) -> bool:
    """Whether *address* lies in one of *networks* (CIDR or single addresses, both families)."""
    peer = _plain(address)
    if peer is None:
        return False
    for network in networks:
        try:
            if peer in ipaddress.ip_network(network, strict=False):
                return True
        except ValueError:
            continue  # settings validate them; a bad one matches nothing
    return False


def host_port(host: str, port: int) -> str:
    """Return ``host:port``, with an IPv6 literal in brackets (``[fd00::1]:8765``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_listeners(
    addresses: Sequence[str], port: int, *, family: Family | str = Family.ANY, backlog: int = 1024
) -> list[socket.socket]:
    """Return non-blocking listening TCP sockets for *addresses* on one *port* (0: a free one).

    ``""`` stands for every address of the families *family* allows (see the
    module docstring); other entries are IP literals bound as given (``::``
    then is IPv6 only), skipped when their family is not allowed.  All
    sockets share the port the first one got.  Raises ``OSError`` when an
    address cannot be bound (the sockets opened so far are closed), or
    ``EADDRNOTAVAIL`` when *family* leaves nothing to bind.
    """
    chosen = Family(family)
    opened: list[socket.socket] = []
    try:
        for address in addresses:
            if address == WILDCARD:
                for sock in _wildcard(port, chosen, backlog):
                    port = int(sock.getsockname()[1])
                    opened.append(sock)
                continue
            kind = socket.AF_INET6 if ":" in address else socket.AF_INET
            if not chosen.allows(kind):
                continue
            sock = _bind(kind, address, port, backlog, v6only=True)
            port = int(sock.getsockname()[1])
            opened.append(sock)
    except OSError:
        for sock in opened:
            sock.close()
        raise
    if not opened:
        msg = f"no address of family {chosen} to listen on among {list(addresses)}"
        raise OSError(errno.EADDRNOTAVAIL, msg)
    return opened


def _wildcard(port: int, family: Family, backlog: int) -> list[socket.socket]:
    """Return the wildcard sockets for *family*: ``::`` dual-stack, else two, else IPv4 only."""
    if family is Family.IPV4:
        return [_bind(socket.AF_INET, "0.0.0.0", port, backlog)]  # noqa: S104 - all interfaces
    if family is Family.IPV6:
        return [_bind(socket.AF_INET6, "::", port, backlog, v6only=True)]
    try:
        return [_bind(socket.AF_INET6, "::", port, backlog, v6only=False)]
    except OSError as exc:
        if exc.errno in _NO_IPV6:  # no IPv6 here: what 1.4 always did
            return [_bind(socket.AF_INET, "0.0.0.0", port, backlog)]  # noqa: S104
        if exc.errno != errno.ENOPROTOOPT:
            raise
    # The system refuses dual-stack sockets: one socket per family on the same port.
    six = _bind(socket.AF_INET6, "::", port, backlog, v6only=True)
    try:
        four = _bind(socket.AF_INET, "0.0.0.0", int(six.getsockname()[1]), backlog)  # noqa: S104
    except OSError:
        six.close()
        raise
    return [six, four]


def _bind(
    kind: socket.AddressFamily, address: str, port: int, backlog: int, *, v6only: bool = True
) -> socket.socket:
    sock = socket.socket(kind, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if kind == socket.AF_INET6:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
            except OSError as exc:
                raise OSError(errno.ENOPROTOOPT, f"IPV6_V6ONLY={int(v6only)}: {exc}") from exc
        if kind == socket.AF_INET6 and address != "::":
            # An interface's IPv6 address is "tentative" for a second or two after it is
            # added (duplicate address detection) and cannot be bound then; IP_FREEBIND
            # binds it anyway, and it answers once DAD is done (a daemon started at boot).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if kind == socket.AF_INET6 and "%" in address:
            sock.bind(socket.getaddrinfo(address, port, kind, socket.SOCK_STREAM)[0][4])
        else:
            sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)  # noqa: FBT003 - the socket API's spelling
    except OSError:
        sock.close()
        raise
    return sock


def sockaddr_host_port(address: tuple[object, ...]) -> tuple[str, int]:
    """Return ``(host, port)`` of a socket address, as the rest of iceserv prints it.

    IPv4-mapped peers of a dual-stack socket become plain IPv4; IPv6
    link-local ones get their zone (``fe80::2%eth0``), which Python leaves out.
    """
    host, port = unmapped(str(address[0])), int(str(address[1]))
    scope = int(str(address[3])) if len(address) == 4 else 0
    if scope and "%" not in host:
        try:
            host += "%" + socket.if_indextoname(scope)
        except OSError:
            host += f"%{scope}"
    return host, port
