"""Network I/O pieces the service shells share: accept loop, connection budgets, fd limit.

``addresses`` is the one place that knows IPv4 from IPv6 (dual-stack
listeners, ``[v6]:port``, IPv4-mapped peers); ``accept`` runs a listening
socket's accept loop and pauses it with back-off when the process runs out
of descriptors (asyncio 3.11's own loop spins and logs a traceback per
attempt); ``budget`` counts connections per source
host and in total (pure, no sockets); ``throttle`` keeps a flood of
refusals from flooding the log; ``limits`` raises the soft
``RLIMIT_NOFILE`` and fits a connection budget under it.  The scheduler,
the daemon and the telnet shells import this package; it must not import
any of them, nor ``config``, ``service`` or ``app``.
"""

from __future__ import annotations

from iceserv.netio.accept import Listener, bind_tcp, open_stream
from iceserv.netio.addresses import (
    DISCOVERY_GROUP6,
    IP_FREEBIND,
    WILDCARD,
    Family,
    bind_listeners,
    host_port,
    in_networks,
    is_ipv6,
    is_link_local,
    is_loopback,
    is_own_host,
    sockaddr_host_port,
    socket_families,
    unmapped,
)
from iceserv.netio.budget import Admission, ConnectionBudget, host_key
from iceserv.netio.limits import DESCRIPTOR_RESERVE, NofileLimit, fit_budget, raise_nofile_limit
from iceserv.netio.throttle import Throttle

__all__ = [
    "DESCRIPTOR_RESERVE",
    "DISCOVERY_GROUP6",
    "IP_FREEBIND",
    "WILDCARD",
    "Admission",
    "ConnectionBudget",
    "Family",
    "Listener",
    "NofileLimit",
    "Throttle",
    "bind_listeners",
    "bind_tcp",
    "fit_budget",
    "host_key",
    "host_port",
    "in_networks",
    "is_ipv6",
    "is_link_local",
    "is_loopback",
    "is_own_host",
    "open_stream",
    "raise_nofile_limit",
    "sockaddr_host_port",
    "socket_families",
    "unmapped",
]
