"""Connection budgets: how many connections one source host, and everyone, may hold.

This module owns the counting only: :class:`ConnectionBudget` says whether
one more connection from a host fits, and :func:`host_key` says which
addresses count as one host (an IPv4 address; an IPv6 /64, since a host on
the LAN picks any address of its /64 for free; an IPv4-mapped IPv6 address
as its IPv4 address).  It is pure: no sockets, no clock, no logging.  What
to do with a connection that does not fit (refuse it, or evict an idle one
first) is the shell's decision.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter

__all__ = ["Admission", "ConnectionBudget", "host_key"]

_IPV6_HOST_PREFIX = 64


class Admission(enum.Enum):
    """The answer to "may this host open one more connection?"."""

    ADMITTED = "admitted"
    HOST_FULL = "host_full"
    TOTAL_FULL = "total_full"


def host_key(address: str) -> str:
    """Return the key under which connections from *address* are counted.

    Anything that is not an IP address (a Unix socket path, ``"?"``) is
    its own key.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, _IPV6_HOST_PREFIX), strict=False))
    return str(ip)


class ConnectionBudget:
    """Counts open connections per host key and in total, against two limits.

    ``admit`` takes a place when there is one; every admitted connection
    must be given back with ``release`` exactly once.  A limit of 0 means
    "no connection at all".
    """

    def __init__(self, *, total: int, per_host: int) -> None:
        if total < 0 or per_host < 0:
            msg = "connection limits must not be negative"
            raise ValueError(msg)
        self.total = total
        self.per_host = per_host
        self._hosts: Counter[str] = Counter()
        self._count = 0

    @property
    def count(self) -> int:
        """Connections held now."""
        return self._count

    def count_of(self, host: str) -> int:
        """Return the connections *host* (a key from :func:`host_key`) holds now."""
        return self._hosts[host]

    def check(self, host: str) -> Admission:
        """Return whether *host* may open one more connection, without taking a place."""
        if self._hosts[host] >= self.per_host:
            return Admission.HOST_FULL
        if self._count >= self.total:
            return Admission.TOTAL_FULL
        return Admission.ADMITTED

    def admit(self, host: str) -> Admission:
        """Take a place for *host* if one is free; return the answer either way."""
        answer = self.check(host)
        if answer is Admission.ADMITTED:
            self._hosts[host] += 1
            self._count += 1
        return answer

    def release(self, host: str) -> None:
        """Give back a place *host* took with :meth:`admit`."""
        held = self._hosts[host]
        if held <= 0:
            msg = f"release() without admit() for {host!r}"
            raise ValueError(msg)
        if held == 1:
            del self._hosts[host]
        else:
            self._hosts[host] = held - 1
        self._count -= 1
