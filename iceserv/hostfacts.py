"""What icecream 1.4 does with the host it runs on, written down once for every layer.

This module owns the facts about the local machine that the client, the
scheduler and the daemon share: the platform name 1.4 derives from
``uname`` (``determine_platform``), the TCP options 1.4 puts on every
channel (keepalive, user time-out; reference §1.3), the IPv4 address of a
network interface (and its IPv6 ones, from ``/proc/net/if_inet6``) and
the broadcast addresses 1.4 announces to (§4.2), and
the service manager's variables that must never reach a child process.

It is stdlib-only and cheap to import: the compiler wrapper imports it on
every call, so the modules that only some functions need (``socket``,
``fcntl``, ``struct``, ``ipaddress``) are imported inside those functions,
and ``typing`` only for the type checker.  It must not read configuration,
log, or open anything but the short-lived ``ioctl`` socket of the interface
queries.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Mapping
    from typing import Final

__all__ = [
    "KEEPALIVE_COUNT",
    "KEEPALIVE_IDLE",
    "KEEPALIVE_INTERVAL",
    "MANAGER_VARIABLES",
    "USER_TIMEOUT_MS",
    "broadcast_addresses",
    "host_platform",
    "interface_address",
    "interface_addresses",
    "local_addresses",
    "multicast_sources",
    "routable_addresses",
    "set_keepalive",
    "without_manager_variables",
]

#: Seconds of silence before the first keepalive probe (1.4 ``comm.cpp``, ``prepare_connect``).
KEEPALIVE_IDLE: Final = 27
#: Seconds between keepalive probes.
KEEPALIVE_INTERVAL: Final = 3
#: Unanswered probes before the kernel drops the connection.
KEEPALIVE_COUNT: Final = 3
#: Milliseconds unacknowledged data may wait before the kernel drops the connection.
USER_TIMEOUT_MS: Final = 9000

#: Variables a service manager hands a service; none may reach a compiler or helper.
MANAGER_VARIABLES: Final = frozenset(
    ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
)

_SIOCGIFFLAGS: Final = 0x8913
_SIOCGIFADDR: Final = 0x8915
_SIOCGIFBRDADDR: Final = 0x8919
_IFF_BROADCAST: Final = 0x2
_IFF_POINTOPOINT: Final = 0x10
_IFNAMSIZ: Final = 16
_LOOPBACK: Final = "127.0.0.1"
#: The kernel's list of IPv6 addresses: address (32 hex digits), index, prefix, scope, flags, name.
_IF_INET6: Final = "/proc/net/if_inet6"
_IPV6_LINK_SCOPE: Final = 0x20
#: The kernel's IPv4 routing tries; ``/32 host LOCAL`` marks an address of this host.
_FIB_TRIE: Final = "/proc/net/fib_trie"


def host_platform() -> str:
    """1.4 ``determine_platform``: ``uname -m`` on Linux, else ``<sysname>_<machine>``.

    Darwin adds its major release to the system name (``Darwin23_arm64``), and
    spaces are removed, as 1.4 does.
    """
    uts = os.uname()
    system = uts.sysname
    if system == "Darwin":
        system += uts.release.partition(".")[0]
    platform = uts.machine if system == "Linux" else f"{system}_{uts.machine}"
    return platform.replace(" ", "")


def set_keepalive(sock: socket.socket | None, *extra: tuple[int, int, int]) -> None:
    """Put 1.4's options on a TCP socket (§1.3), then each ``(level, name, value)`` of *extra*.

    Keepalive after 27 s, then 3 probes 3 s apart, and a 9 s user time-out.
    ``None`` and non-IP sockets are left alone; an option the kernel refuses
    is skipped, as 1.4 ignores ``setsockopt`` failures.
    """
    import socket  # noqa: PLC0415 - the wrapper imports this module on paths without sockets

    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    for level, name, value in (
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT),
        (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS),
        *extra,
    ):
        try:
            sock.setsockopt(level, name, value)
        except OSError:
            continue


def without_manager_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of *environ* without :data:`MANAGER_VARIABLES`."""
    return {name: value for name, value in environ.items() if name not in MANAGER_VARIABLES}


def _ioctl(name: str, request: int) -> bytes:
    import fcntl  # noqa: PLC0415 - only the services ask about interfaces
    import socket  # noqa: PLC0415
    import struct  # noqa: PLC0415

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        arg = struct.pack("256s", name.encode()[: _IFNAMSIZ - 1])
        return fcntl.ioctl(sock.fileno(), request, arg)


def interface_address(name: str) -> str:
    """Return the IPv4 address of interface *name* (an IPv4 literal is returned as is).

    This is the address 1.4 binds to for ``-i IF``.  Raises ``OSError`` if
    there is no such interface or it has no IPv4 address.
    """
    import ipaddress  # noqa: PLC0415 - only the services ask about interfaces
    import socket  # noqa: PLC0415

    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        return socket.inet_ntoa(_ioctl(name, _SIOCGIFADDR)[20:24])


def _ipv6_addresses(name: str, if_inet6: str) -> list[str]:
    """Return *name*'s IPv6 addresses from the kernel's list (link-local: ``fe80::1%name``)."""
    import ipaddress  # noqa: PLC0415 - only the services ask about interfaces

    found: list[str] = []
    try:
        with open(if_inet6, encoding="ascii") as lines:  # noqa: PTH123 - pathlib is not imported here
            rows = [line.split() for line in lines]
    except OSError:
        return found  # no IPv6 in this kernel
    for row in rows:
        if len(row) != 6 or row[5] != name:
            continue
        address = str(ipaddress.IPv6Address(int(row[0], 16)))
        if int(row[3], 16) == _IPV6_LINK_SCOPE:
            address += f"%{name}"
        found.append(address)
    # Global addresses first: a link-local one needs its zone and serves only that link.
    return sorted(found, key=lambda a: "%" in a)


def interface_addresses(
    name: str, *, ipv4: bool = True, ipv6: bool = True, if_inet6: str = _IF_INET6
) -> list[str]:
    """Return the addresses of interface *name* of the families asked for, IPv4 first.

    This is what ``-i IF`` binds.  IPv6 link-local addresses carry their zone
    (``fe80::1%eth0``).  Raises ``OSError`` if the interface does not exist
    or has no address of those families.
    """
    import contextlib  # noqa: PLC0415 - only the services ask about interfaces
    import errno  # noqa: PLC0415
    import ipaddress  # noqa: PLC0415
    import socket  # noqa: PLC0415

    try:
        return [str(ipaddress.IPv4Address(name))]  # 1.4 accepts an address for -i too
    except ValueError:
        pass
    try:
        socket.if_nametoindex(name)
    except OSError:
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), name) from None
    found: list[str] = []
    if ipv4:
        with contextlib.suppress(OSError):  # an IPv6-only interface
            found.append(interface_address(name))
    if ipv6:
        found += _ipv6_addresses(name, if_inet6)
    if not found:
        families = " or ".join(f for f, wanted in (("IPv4", ipv4), ("IPv6", ipv6)) if wanted)
        raise OSError(errno.EADDRNOTAVAIL, f"interface {name} has no {families} address")
    return found


def multicast_sources(*, if_inet6: str = _IF_INET6) -> list[tuple[str, str]]:
    """Return ``(interface, source address)`` for each non-loopback interface with IPv6.

    The source is the interface's first global (or unique local) address, so
    that the answer to a link-local multicast comes from, and goes to,
    routable addresses; an interface with only a link-local address gets that
    one (``fe80::1%eth0``).  Empty when the kernel has no IPv6.
    """
    try:
        with open(if_inet6, encoding="ascii") as lines:  # noqa: PTH123 - pathlib is not imported here
            names = sorted({row.split()[5] for row in lines if len(row.split()) == 6})
    except OSError:
        return []
    found: list[tuple[str, str]] = []
    for name in names:
        addresses = _ipv6_addresses(name, if_inet6)
        if name != "lo" and addresses:
            found.append((name, addresses[0]))
    return found


def routable_addresses(*, if_inet6: str = _IF_INET6) -> list[str]:
    """Return this host's addresses another host could connect to, IPv4 first.

    Each interface's IPv4 address (not 127/8) and its global or unique local
    IPv6 addresses (no link-local ones: their zone means nothing elsewhere).
    What an iceserv daemon tells its scheduler (HOST_ADDRESSES).
    """
    import contextlib  # noqa: PLC0415 - only the services ask about interfaces
    import socket  # noqa: PLC0415

    ipv4: list[str] = []
    ipv6: list[str] = []
    for _, name in socket.if_nameindex():
        with contextlib.suppress(OSError):  # no IPv4 address there
            address = interface_address(name)
            if not address.startswith("127."):
                ipv4.append(address)
        ipv6 += [a for a in _ipv6_addresses(name, if_inet6) if "%" not in a and a != "::1"]
    return list(dict.fromkeys(ipv4 + ipv6))


def broadcast_addresses() -> list[str]:
    """Return the broadcast address of every broadcast-capable, non-loopback interface.

    As 1.4 announces to (§4.2): interfaces with ``IFF_BROADCAST`` that are not
    point-to-point and whose address is not 127.0.0.1, each address once.
    """
    import socket  # noqa: PLC0415 - only the services ask about interfaces
    import struct  # noqa: PLC0415

    found: list[str] = []
    for _, name in socket.if_nameindex():
        try:
            (flags,) = struct.unpack_from("H", _ioctl(name, _SIOCGIFFLAGS), _IFNAMSIZ)
            if not flags & _IFF_BROADCAST or flags & _IFF_POINTOPOINT:
                continue
            if interface_address(name) == _LOOPBACK:
                continue
            address = socket.inet_ntoa(_ioctl(name, _SIOCGIFBRDADDR)[20:24])
        except OSError:
            continue  # no IPv4 address on this interface
        if address not in found:
            found.append(address)
    return found


def local_addresses(*, fib_trie: str = _FIB_TRIE, if_inet6: str = _IF_INET6) -> frozenset[str]:
    """Return every address of this host (of its network namespace), both families.

    IPv4 from the kernel's local routing table (every address, secondary ones
    too; without that file, each interface's primary address), IPv6 from
    ``/proc/net/if_inet6`` without zones.  Read again at each call: addresses
    come and go (DHCP, SLAAC).  Used to tell a connection from the host itself.
    """
    import contextlib  # noqa: PLC0415 - only the services ask about interfaces
    import ipaddress  # noqa: PLC0415
    import socket  # noqa: PLC0415

    found: set[str] = set()
    try:
        with open(fib_trie, encoding="ascii") as lines:  # noqa: PTH123 - pathlib is not imported here
            last = ""
            for line in lines:
                words = line.split()
                if len(words) == 2 and words[0] == "|--":
                    last = words[1]
                elif words[-2:] == ["host", "LOCAL"] and last:
                    found.add(last)
    except OSError:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                found.add(interface_address(name))
    try:
        with open(if_inet6, encoding="ascii") as lines:  # noqa: PTH123 - pathlib is not imported here
            for line in lines:
                words = line.split()
                if len(words) == 6:
                    found.add(str(ipaddress.IPv6Address(int(words[0], 16))))
    except OSError:
        pass  # no IPv6 in this kernel
    return frozenset(found)
