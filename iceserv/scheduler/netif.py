"""IPv4 addresses of network interfaces (Linux ``ioctl``), for ``-i`` and broadcasts.

This module owns turning an interface name into the address 1.4 binds to
(``-i IF``) and listing the broadcast addresses 1.4 announces to (every
interface with ``IFF_BROADCAST`` that is not point-to-point and not
127.0.0.1, reference §4.2).  It reads the kernel's interface table and
nothing else; it must not open listening sockets.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from typing import Final

__all__ = ["broadcast_addresses", "interface_address"]

_SIOCGIFFLAGS: Final = 0x8913
_SIOCGIFADDR: Final = 0x8915
_SIOCGIFBRDADDR: Final = 0x8919
_IFF_BROADCAST: Final = 0x2
_IFF_POINTOPOINT: Final = 0x10
_IFNAMSIZ: Final = 16
_LOOPBACK: Final = "127.0.0.1"


def _ioctl(name: str, request: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        arg = struct.pack("256s", name.encode()[: _IFNAMSIZ - 1])
        return fcntl.ioctl(sock.fileno(), request, arg)


def interface_address(name: str) -> str:
    """Return the IPv4 address of interface *name* (an IPv4 literal is returned as is).

    Raises ``OSError`` if there is no such interface or it has no IPv4 address.
    """
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv4Address(name))
    return socket.inet_ntoa(_ioctl(name, _SIOCGIFADDR)[20:24])


def broadcast_addresses() -> list[str]:
    """Return the broadcast address of every broadcast-capable, non-loopback interface."""
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
