"""The scheduler's asyncio shell: TCP for daemons and monitors, UDP discovery, timers, probes.

This module owns every socket of the scheduler except the telnet port (the
app starts that with :attr:`SchedulerServer.control`).  It feeds bytes to
one :class:`~iceserv.protocol.Connection` per peer, hands events to the pure
:class:`~iceserv.scheduler.handlers.Scheduler`, and carries out the effects
it returns.  It holds no scheduling logic of its own.  Each TCP peer is an
``asyncio.Protocol`` (:class:`_Peer`) that its transport calls back: no
stream objects, task or event per connection, which at farm scale (issue 19:
5,000 daemons) is most of the memory per daemon and much of the CPU per
message.

Rules kept here: every read runs under a deadline that more bytes cannot
move: the handshake and the first message (LOGIN or MON_LOGIN) must all
arrive within ``handshake_timeout`` of the accept, and once a logged-in
daemon has started a message the whole of it must arrive within
``message_timeout`` (a timer per connection, armed only while one of these
deadlines is in force); a daemon whose transport stays paused for writing
(the kernel does not take our bytes) for ``send_timeout``, or that leaves
more than ``daemon_buffer_limit`` unsent, is dropped; monitors are never read from
again (their socket stops being polled) and are written without waiting;
what the kernel does not take is queued in user space, at most
``monitor_buffer_limit`` (64 KiB) for one monitor and
``monitor_buffer_total`` (2 MiB) for all of them together, beyond which the
monitors furthest behind are dropped (1.4 drops a monitor whose socket
would block; a small queue lets a reading monitor survive a burst, such as
one 64 KiB read of STATS fanned out at once); accepted sockets
get 1.4's keepalive options (reference §1.3), which is how dead daemons are
noticed.

Connection budgets: the listener (:class:`~iceserv.netio.Listener`, which
pauses with back-off when descriptors run out) admits a connection only
while its source host holds fewer than ``max_connections_per_host`` and
everyone fewer than ``max_connections``; a MON_LOGIN also needs a place in
the monitor budget.  When a new connection does not fit, the oldest
connection still in its handshake (of the same host when that host is
full) makes room: a real peer finishes its handshake within a round trip,
so held or dripping connections cannot keep daemons out.  Logged-in
daemons and monitors are never closed for room.  A connection that still
does not fit is reset at once; refusals and evictions are logged at most
once per ``_REFUSAL_LOG_INTERVAL``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import itertools
import logging
import math
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog

from iceserv.errors import ProtocolError
from iceserv.hostfacts import local_addresses, set_keepalive
from iceserv.netio import (
    DISCOVERY_GROUP6,
    IP_FREEBIND,
    Admission,
    ConnectionBudget,
    Family,
    Listener,
    Throttle,
    bind_listeners,
    host_key,
    host_port,
    in_networks,
    is_link_local,
    is_own_host,
    sockaddr_host_port,
    unmapped,
)
from iceserv.protocol import (
    NEED_DATA,
    SCHEDULER_PORT,
    Connection,
    ConnectionClosed,
    Handshake,
    Login,
    MonLogin,
    records,
)
from iceserv.protocol.auth import (
    NONCE_BYTES,
    AuthMode,
    Endpoints,
    KeyRing,
    decode_offer,
    decode_probe,
    decode_proven_announcement,
    encode_offer,
    encode_probe,
    encode_proven_announcement,
)
from iceserv.protocol.discovery import (
    DEFAULT_NETNAME,
    SchedulerInfo,
    decode_announcement,
    decode_reply,
    decode_request,
    encode_announcements,
    encode_reply,
    encode_request,
)
from iceserv.scheduler import standby as sb
from iceserv.scheduler.control import INTERNALS_TIMEOUT, ClusterControl
from iceserv.scheduler.effects import (
    Announce,
    Close,
    Effect,
    HostsSkipped,
    InternalsReply,
    JobsWaiting,
    Send,
    StartProbe,
    StopReading,
    ToMonitors,
)
from iceserv.scheduler.handlers import Scheduler, SchedulerConfig
from iceserv.scheduler.joblog import JobSummaries

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Collection, Coroutine

    from iceserv.clock import Clock
    from iceserv.protocol import Event, Message, NeedData
    from iceserv.scheduler.auth import AuthGate

__all__ = ["SchedulerServer", "SchedulerServerSettings"]

log = structlog.get_logger()
#: The stdlib logger behind ``log`` (structlog's factory names it after this module): its
#: level check is cached, where a filtered structlog call still costs a bound logger.
_LOGGER: Final = logging.getLogger(__name__)
#: A job waiting this long (seconds) is logged as a warning: a client gives up after 10 s.
_WAIT_WARNING: Final = 10.0

_READ_SIZE: Final = 65536
#: Messages from TCP peers handled in one loop iteration, all peers together, at most, and
#: the time they may take: a burst (20 daemons each sending 1,000 GET_CS at once, one read
#: of up to 256 KiB each) is cut into slices, and between two slices the loop serves
#: telnet, D-Bus, HTTP and the other peers (issue 19 item 4).  A slice is short against the
#: answers' bounds and long against one loop iteration's own cost.
_SLICE_MESSAGES: Final = 128
_SLICE_SECONDS: Final = 0.004
#: A peer with messages waiting for a slice is read on until this many bytes wait; then its
#: transport stops reading until they are handled (a peer buffers at most this plus one read).
_BACKLOG_BYTES: Final = 1 << 16
#: Every TCP peer reads into this one buffer (``_Peer.get_buffer``), and its bytes are copied
#: into the peer's ``Connection`` before the next read.  A plain ``Protocol`` gets a new
#: ``bytes`` of up to 256 KiB per read, allocated and shrunk: depending on malloc's mmap
#: threshold at the time that is an mmap, an mremap and an munmap, ~15 us a read, more than
#: the rest of a small read costs together.
_READ_BUFFER: Final = memoryview(bytearray(256 * 1024))
#: A read on a logged-in daemon that sees nothing for this long just starts again:
#: liveness is TCP keepalive's job (§5.2 step 6), the timeout only bounds the await.
_IDLE_READ: Final = 300.0
_MONITOR_SNDBUF: Final = 65536
_REFUSAL_LOG_INTERVAL: Final = 10.0
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
#: An IPv6 socket address is (host, port, flowinfo, scope id).
_IPV6_SOCKADDR: Final = 4
#: Seconds an announcement counts for "heard over both families" (one announce period and
#: a half: the two datagrams of one round arrive together).
_HEARD_WINDOW: Final = 180.0
#: Schedulers whose announcements are remembered at once.
_HEARD_LIMIT: Final = 64
#: Keyed discovery probes held by a standby for its takeover, at most.
_HELD_PROBES: Final = 8192
#: Nonces of our own keyed probes remembered (one probe every 0.5 s; answers come in ms).
_NONCES: Final = 8
#: A scheduler that took over numbers its jobs from a random start in this range: far above
#: the ids of a first scheduler (counted from 1), almost surely away from the recent ids of
#: one that took over itself, and 2**30 ids below the end of the u32 the protocol carries.
_TAKEOVER_JOB_IDS: Final = (1 << 31, (1 << 32) - (1 << 30))


@dataclass(frozen=True, slots=True)
class SchedulerServerSettings:
    """How the scheduler listens; built by ``app`` from the configuration.

    ``announce_to`` lists the addresses the scheduler announcements go to
    (the interfaces' broadcast addresses, or 127.0.0.1 under ``ICECC_TESTS``).
    The TCP port listens on ``addresses`` (default: ``(address,)``; ``""`` is
    every address of ``family``, dual-stack where the system allows it, see
    :func:`~iceserv.netio.bind_listeners`); UDP discovery listens on IPv4 (1.4's
    broadcasts) and, unless ``family`` is ``ipv4``, on IPv6 for unicast requests
    and for requests to :data:`~iceserv.netio.DISCOVERY_GROUP6`, joined on each
    of ``multicast_interfaces`` (iceserv daemons' discovery over IPv6).
    ``routable_ipv6`` says one of those has a global or unique local address:
    only then is this scheduler dual-stack for the election.
    ``handshake_timeout`` bounds the handshake and first message together,
    ``message_timeout`` any later message from its first byte; the
    ``max_*`` fields are the connection budgets (the module docstring).
    """

    address: str = ""  # every address: 1.4 listens on every interface unless -i is given
    addresses: tuple[str, ...] = ()
    family: str = Family.ANY
    port: int = SCHEDULER_PORT
    netname: str = DEFAULT_NETNAME
    persistent_clients: bool = False
    announce_to: tuple[str, ...] = ()
    multicast_interfaces: tuple[str, ...] = ()
    routable_ipv6: bool = False
    handshake_timeout: float = 15.0
    message_timeout: float = 30.0
    send_timeout: float = 30.0
    probe_timeout: float = 5.0
    internals_timeout: float = INTERNALS_TIMEOUT
    monitor_buffer_limit: int = 1 << 16
    monitor_buffer_total: int = 1 << 21
    daemon_buffer_limit: int = 1 << 22
    max_connections: int = 16384
    max_connections_per_host: int = 64
    max_monitors: int = 256
    max_monitors_per_host: int = 16
    #: The active/standby role machine's time-outs (:mod:`~iceserv.scheduler.standby`);
    #: None: always active, as 1.4 (tests that drive the server directly).
    standby: sb.StandbySettings | None = None
    #: How long the TCP check of a silent active scheduler may take.
    confirm_timeout: float = 0.5
    auth: str = AuthMode.OFF
    keys: tuple[bytes, ...] = field(default=(), repr=False)  # never in a log line
    #: ``[cluster] encrypt``: seal the links of daemons that can (issue 14 item 4).
    encrypt: bool = False
    monitors: tuple[str, ...] = ()  # under require: networks whose monitors are served


class _Peer(asyncio.BufferedProtocol):
    """One TCP peer (daemon, monitor, or a connection in its handshake): its transport's protocol.

    The transport calls it back and it hands everything to the server: no
    task, stream or event per connection (a farm has thousands of them).
    It reads into the shared :data:`_READ_BUFFER`.
    ``timer`` is the deadline in force (the handshake's, or that of a message
    under way); ``stall`` fires when the transport stayed paused for writing
    (our bytes not taken) for ``send_timeout``.  ``backlog``: messages it
    sent wait for the next slice (the server's ``_next_slice``); ``held``: its
    transport does not read meanwhile, because more than ``_BACKLOG_BYTES``
    wait (a daemon with a few messages waiting is read on, which saves the
    two system calls of a pause and a resume per deferral).
    """

    __slots__ = (
        "backlog",
        "closed",
        "conn",
        "conn_id",
        "eof",
        "gate",
        "held",
        "host_id",
        "ip",
        "key",
        "logged_in",
        "lost",
        "lost_reason",
        "monitor",
        "monitor_admitted",
        "nodename",
        "server",
        "stall",
        "timer",
        "transport",
    )

    def __init__(self, server: SchedulerServer, conn_id: int, ip: str, key: str) -> None:
        self.server = server
        self.conn_id = conn_id
        self.ip = ip
        self.key = key
        self.conn = Connection()
        self.transport: asyncio.Transport | None = None
        self.monitor = False
        self.monitor_admitted = False
        self.logged_in = False
        self.closed = False
        self.lost = False
        self.lost_reason = ""
        #: Complete messages wait in ``conn`` for a later slice; reading is paused meanwhile.
        self.backlog = False
        self.held = False
        self.eof = False
        self.nodename: str | None = None
        self.host_id = 0
        self.gate: AuthGate | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.stall: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - a TCP socket's
        self.transport = transport
        self.server.connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:  # noqa: ARG002 - any size will do
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        # ``received`` copies the bytes out (into the Connection) before it returns.
        self.server.received(self, _READ_BUFFER[:nbytes])

    def eof_received(self) -> bool:
        self.server.received(self, b"")
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.lost(self, exc)

    def pause_writing(self) -> None:
        self.server.write_paused(self)

    def resume_writing(self) -> None:
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def cancel_timers(self) -> None:
        """Cancel the read deadline and the stall timer."""
        for handle in (self.timer, self.stall):
            if handle is not None:
                handle.cancel()
        self.timer = self.stall = None


@dataclass(eq=False)
class _Pending:
    """A connection still in its handshake, in accept order: the first to make room."""

    key: str
    sock: socket.socket
    task: asyncio.Task[None] | None = None
    started: bool = False
    deadline: float = 0.0  # of the handshake and first message (loop time)
    peer: _Peer | None = None
    evicted: bool = False


#: A monitor's socket (bulk): no TCP_NODELAY, and a big send buffer (1.4 ``MsgChannel``).
_BULK_OPTIONS: Final = (
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 0),
    (socket.SOL_SOCKET, socket.SO_SNDBUF, _MONITOR_SNDBUF),
)


class _Discovery(asyncio.DatagramProtocol):
    """UDP: answer discovery requests, notice other schedulers' announcements."""

    def __init__(self, server: SchedulerServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._server.datagram_received(data, addr)


class _Prober(asyncio.DatagramProtocol):
    """UDP, ephemeral port: our discovery requests out, other schedulers' replies in."""

    def __init__(self, server: SchedulerServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self._server.reply_received(data, (str(addr[0]), addr[1]))


def _is_local(ip: str) -> bool:
    """Whether *ip* is an address of this host (it can be bound; a link-local one: maybe not)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((ip.split("%", 1)[0], 0))
    except OSError:
        return False
    return True


def _local_ip_towards(ip: str) -> str:
    """Return the source address this host uses to reach *ip* ("" if unknown)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((ip, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return ""


def _remember(table: dict[Any, Any], key: Any, value: Any) -> None:  # noqa: ANN401 - any table
    """Set *key* in *table*, most recent last, keeping at most :data:`_HEARD_LIMIT` keys."""
    table.pop(key, None)
    table[key] = value
    while len(table) > _HEARD_LIMIT:
        del table[next(iter(table))]


class SchedulerServer:
    """A running scheduler: listeners, peer connections and the core's timers."""

    def __init__(
        self,
        settings: SchedulerServerSettings,
        *,
        clock: Clock,
        rng: random.Random,
        own_addresses: Callable[[], Collection[str]] = local_addresses,
    ) -> None:
        """Serve per *settings*; *own_addresses* lists this host's (monitors under require)."""
        self.settings = settings
        self._own_addresses = own_addresses
        self._clock = clock
        self._start = clock.now()
        config = SchedulerConfig(
            start_time=int(self._start),
            netname=settings.netname,
            persistent_clients=settings.persistent_clients,
            ticket_keys=settings.keys if settings.keys and settings.auth != "off" else (),
        )
        self._core = Scheduler(config, rng, self._start)
        self._rng = rng
        self.control = ClusterControl(self, internals_timeout=settings.internals_timeout)
        self._peers: dict[int, _Peer] = {}
        self._summaries = JobSummaries()
        self._ids = itertools.count(1)
        self._listeners: list[Listener] = []
        self._connections = ConnectionBudget(
            total=settings.max_connections, per_host=settings.max_connections_per_host
        )
        self._monitor_budget = ConnectionBudget(
            total=settings.max_monitors, per_host=settings.max_monitors_per_host
        )
        self._refusals = Throttle(_REFUSAL_LOG_INTERVAL)
        self._evictions = Throttle(_REFUSAL_LOG_INTERVAL)
        self._pending: dict[int, _Pending] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._udp6: asyncio.DatagramTransport | None = None
        self._heard: dict[tuple[str, int, int], dict[bool, float]] = {}
        self._prober: asyncio.DatagramTransport | None = None
        self._prober6: asyncio.DatagramTransport | None = None
        self._prober_port = 0
        self._prober6_port = 0
        #: Schedulers (net name, version, start) that answered us from a routable IPv6
        #: address, and the IPv4 address each answered from (bounded: _HEARD_LIMIT).
        self._replied6: dict[tuple[str, int, int], float] = {}
        self._replied4: dict[tuple[str, int, int], tuple[str, int]] = {}
        self._logged_active: tuple[str, int] | None = None
        self.standby = (
            sb.Standby(self._core.config.info, settings.standby, self._start)
            if settings.standby is not None
            else None
        )
        #: Nonces of our latest keyed probes (their offers are checked against them).
        self._nonces: collections.deque[bytes] = collections.deque(maxlen=_NONCES)
        #: Keyed discovery probes heard while passive, answered at a takeover (as requests).
        self._held_probes: collections.deque[tuple[float, tuple[Any, ...], Any]] = (
            collections.deque(maxlen=_HELD_PROBES)
        )
        self._timer_wake = asyncio.Event()
        #: Set once this scheduler knows whether it serves or stands by (at once without
        #: the role machine; after its listening second with it): what READY=1 waits for.
        self.role_known = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._readers: set[asyncio.Task[None]] = set()  # making accepted sockets' transports
        #: Peers whose transport has not called connection_lost yet (stop() waits for them).
        self._links: set[_Peer] = set()
        self._all_lost: asyncio.Event | None = None
        #: Peers with messages waiting for a slice, in turn (each one at most once).
        self._backlog: collections.deque[_Peer] = collections.deque()
        #: The open slice: messages left and its end (perf_counter); None: no slice open.
        self._slice_left: int | None = None
        self._slice_end = 0.0
        self.port = settings.port

    @property
    def core(self) -> Scheduler:
        """The pure scheduler core (read-only use outside this module)."""
        return self._core

    def now(self) -> float:
        """Return the current time of the server's clock."""
        return self._clock.now()

    # --- life cycle -------------------------------------------------------------------

    @property
    def listen_addresses(self) -> tuple[str, ...]:
        """The TCP port's addresses as configured (``""``: every address)."""
        return self.settings.addresses or (self.settings.address,)

    @property
    def bound(self) -> list[str]:
        """Where the TCP port listens now, as ``host:port`` / ``[v6]:port``."""
        return [host_port(*listener.address) for listener in self._listeners]

    async def start(self) -> None:
        """Bind the TCP and UDP listeners and start the timer task."""
        family = Family(self.settings.family)
        socks = bind_listeners(
            self.listen_addresses, self.settings.port, family=family, backlog=1024
        )
        self._listeners = [Listener(sock, self._accepted, name="scheduler") for sock in socks]
        self.port = self._listeners[0].address[1]
        try:
            await self._bind_udp(family, socks)
        except OSError:
            for listener in self._listeners:
                listener.close()
            self._listeners = []
            raise
        for listener in self._listeners:
            listener.start()
        if self.standby is not None and self._udp is not None:
            await self._open_prober()
        self._spawn(self._timers())
        if self.standby is not None:
            self.apply_standby(self.standby.start())
        else:
            self.role_known.set()
        log.info(
            "scheduler_started",
            address=self.bound,
            family=str(family),
            port=self.port,
            netname=self.settings.netname,
        )

    async def _bind_udp(self, family: Family, tcp: list[socket.socket]) -> None:
        """Open discovery: IPv4 for 1.4's broadcasts, IPv6 for unicast requests (wakes)."""
        loop = asyncio.get_running_loop()
        four = [str(s.getsockname()[0]) for s in tcp if s.family == socket.AF_INET]
        # Whole IPv6 socket names: a link-local address needs its scope id to be bound.
        six = [s.getsockname() for s in tcp if s.family == socket.AF_INET6]
        dual = any(
            s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
            for s in tcp
            if s.family == socket.AF_INET6
        )
        if dual:  # the wildcard on a dual-stack socket: UDP on both wildcards
            four, six = ["0.0.0.0"], [("::", 0, 0, 0)]  # noqa: S104 - every interface, as TCP
        if family.allows(socket.AF_INET) and four:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                udp.bind((four[0], self.port))
            except OSError:
                udp.close()
                raise
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Discovery(self), sock=udp)
        if family.allows(socket.AF_INET6) and six:
            udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                udp6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                udp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                with contextlib.suppress(OSError):  # a tentative address, as the TCP port's
                    udp6.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                udp6.bind((six[0][0], self.port, 0, six[0][3]))
            except OSError:
                udp6.close()
                if self._udp is not None:
                    self._udp.close()
                    self._udp = None
                raise
            self._join_group(udp6)
            self._udp6, _ = await loop.create_datagram_endpoint(lambda: _Discovery(self), sock=udp6)

    def _join_group(self, udp6: socket.socket) -> None:
        """Join the IPv6 discovery group on each multicast interface (failures are logged)."""
        group = socket.inet_pton(socket.AF_INET6, DISCOVERY_GROUP6)
        joined: list[str] = []
        for name in self.settings.multicast_interfaces:
            try:
                index = socket.if_nametoindex(name)
                udp6.setsockopt(
                    socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group + struct.pack("@I", index)
                )
            except OSError as exc:
                log.warning("multicast_join_failed", interface=name, error=str(exc))
                continue
            joined.append(name)
        if joined:
            log.info("multicast_joined", group=DISCOVERY_GROUP6, interfaces=joined)

    async def _open_prober(self) -> None:
        """Open the standby's IPv4 socket for its discovery requests (1.4 discovers over IPv4)."""
        loop = asyncio.get_running_loop()
        local = str(self._udp.get_extra_info("sockname")[0]) if self._udp is not None else ""
        prober, _ = await loop.create_datagram_endpoint(
            lambda: _Prober(self),
            local_addr=(local or "0.0.0.0", 0),  # noqa: S104 - as the discovery port
            family=socket.AF_INET,
            allow_broadcast=True,
        )
        self._prober = prober
        self._prober_port = int(prober.get_extra_info("sockname")[1])
        if self.standby is not None and self.dual_stack:  # IPv6 replies: dual-stack evidence
            self.standby.dual = True
            prober6, _ = await loop.create_datagram_endpoint(
                lambda: _Prober(self), local_addr=("::", 0), family=socket.AF_INET6
            )
            self._prober6 = prober6
            self._prober6_port = int(prober6.get_extra_info("sockname")[1])

    async def stop(self) -> None:
        """Stop listening and close every daemon and monitor connection (1.4's clean exit)."""
        for listener in self._listeners:
            listener.close()
        for udp in (self._udp, self._udp6, self._prober, self._prober6):
            if udp is not None:
                udp.close()
        for peer in list(self._peers.values()):
            self._close(peer)
        for pending in list(self._pending.values()):  # accepted, no reader loop yet
            if pending.peer is None and pending.task is not None:
                pending.evicted = True  # its task must not release the budget again
                if not pending.started:
                    pending.sock.close()
                pending.task.cancel()
        self._pending.clear()
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        readers = list(self._readers)  # cancelled above, or about to finish
        self._all_lost = asyncio.Event()
        if not self._links:
            self._all_lost.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.send_timeout):
                await asyncio.gather(*readers, return_exceptions=True)
                await self._all_lost.wait()  # closed transports flush what is queued first
        log.info("scheduler_stopped")

    def reconfigure(self, *, netname: str, persistent_clients: bool) -> None:
        """Apply a reloaded net name and ``-r`` without touching any connection.

        Discovery replies and announcements use the new net name from now
        on; daemons already logged in stay (the service layer's SIGHUP).
        """
        self.settings = dataclasses.replace(
            self.settings, netname=netname, persistent_clients=persistent_clients
        )
        self._core.config = dataclasses.replace(
            self._core.config, netname=netname, persistent_clients=persistent_clients
        )
        if self.standby is not None:
            self.standby.info = records.replace(self.standby.info, netname=netname)

    def reconfigure_keys(self, keys: tuple[bytes, ...]) -> None:
        """Use reloaded network *keys* (SIGHUP) for connections and probes from now on.

        Daemons already logged in stay: they proved the key they had.
        """
        self.settings = dataclasses.replace(self.settings, keys=keys)
        self._core.config = dataclasses.replace(
            self._core.config, ticket_keys=keys if self.auth_mode is not AuthMode.OFF else ()
        )

    @property
    def auth_mode(self) -> AuthMode:
        """``[cluster] auth`` (off unless a key is loaded)."""
        return AuthMode(self.settings.auth) if self.settings.keys else AuthMode.OFF

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- effects ----------------------------------------------------------------------

    def apply(self, effects: list[Effect]) -> None:  # noqa: C901 - one case per effect type
        """Carry out the core's *effects* in order."""
        for effect in effects:
            match effect:
                case Send(conn_id, message):
                    self._send(conn_id, message)
                case ToMonitors(message):
                    self._to_monitors(message)
                case Close(conn_id):
                    if (peer := self._peers.get(conn_id)) is not None:
                        self._close(peer)
                case StopReading(conn_id):
                    self._become_monitor(conn_id)
                case StartProbe(host_id, ip, port):
                    self._spawn(self._probe(host_id, ip, port))
                case Announce(info):
                    if self.standby is None or self.standby.serving:  # a standby stays silent
                        self._announce(encode_announcements(info))
                case InternalsReply(host_id, text):
                    self.control.deliver_internals(host_id, text)
                case JobsWaiting():
                    _log_waiting(effect)
                case HostsSkipped(job_id, submitter, reasons):
                    log.info(
                        "hosts_skipped",
                        job_id=job_id,
                        submitter=submitter,
                        reasons=[f"{name}: {why}" for name, why in reasons],
                    )
        self.control.observe(effects)
        self._timer_wake.set()  # the timer task looks again (once per loop iteration at most)

    def _become_monitor(self, conn_id: int) -> None:
        peer = self._peers.get(conn_id)
        if peer is not None:
            peer.monitor = True
            # 1.4 stops polling a monitor's socket: whatever it sends stays in the kernel.
            transport = peer.transport
            assert transport is not None  # noqa: S101 - registered peers have one
            transport.pause_reading()
            set_keepalive(transport.get_extra_info("socket"), *_BULK_OPTIONS)
            log.info("monitor_logged_in", peer=peer.ip, conn_id=conn_id)

    def _send(self, conn_id: int, message: Message) -> None:
        peer = self._peers.get(conn_id)
        if peer is None or peer.closed:
            return
        try:
            peer.conn.send(message)
        except ProtocolError as exc:
            log.warning("message_dropped", conn_id=peer.conn_id, error=str(exc))
            return
        self._write(peer, peer.conn.data_to_send())

    def _host_name(self, host_id: int) -> str:
        host = self._core.state.hosts.get(host_id)
        return host.nodename if host is not None else f"host {host_id}"

    def _log_job(self, message: Message) -> None:
        if not _LOGGER.isEnabledFor(logging.INFO):  # followed only for job_finished records
            return
        summary = self._summaries.observe(message, self._host_name, self.now())
        if summary is not None:  # a record per job
            log.info("job_finished", **summary)

    def _to_monitors(self, message: Message) -> None:
        self._log_job(message)
        monitors = self._core.monitors
        if not monitors:
            return
        encoded: dict[int, bytes] = {}  # one encoding per protocol version, not per monitor
        behind: list[tuple[int, _Peer]] = []
        for conn_id in monitors:
            peer = self._peers.get(conn_id)
            if peer is None:
                continue
            transport = peer.transport
            assert transport is not None  # noqa: S101 - registered peers have one
            if not transport.is_closing():
                version = peer.conn.protocol
                data = encoded.get(version)
                if data is None:
                    peer.conn.send(message)
                    data = encoded[version] = peer.conn.data_to_send()
                transport.write(data)
            queued = transport.get_write_buffer_size()
            if transport.is_closing() or queued > self.settings.monitor_buffer_limit:
                self._drop_monitor(peer)
            elif queued:
                behind.append((queued, peer))
        # All monitors together hold at most monitor_buffer_total: the furthest behind go first.
        total = sum(queued for queued, _ in behind)
        for queued, peer in sorted(behind, key=lambda item: item[0], reverse=True):
            if total <= self.settings.monitor_buffer_total:
                break
            total -= queued
            self._drop_monitor(peer)

    def _drop_monitor(self, peer: _Peer) -> None:
        log.info("monitor_dropped", peer=peer.ip, conn_id=peer.conn_id)
        self._close(peer)
        self.apply(self._core.connection_lost(peer.conn_id, self.now()))

    def _close(self, peer: _Peer) -> None:
        if peer.closed:
            return
        peer.closed = True
        self._peers.pop(peer.conn_id, None)
        self._pending.pop(peer.conn_id, None)
        self._connections.release(peer.key)
        if peer.monitor_admitted:
            self._monitor_budget.release(peer.key)
        peer.cancel_timers()
        if peer.transport is not None:
            peer.transport.close()  # connection_lost follows (after what is queued is sent)

    def _announce(self, datagrams: tuple[bytes, ...]) -> None:
        if self.auth_mode is not AuthMode.OFF:
            ring = KeyRing(self.settings.keys)
            proven = encode_proven_announcement(ring, self._core.config.info, self.now())
            if proven is not None:
                datagrams = (*datagrams, proven)
        if self._udp is not None:
            for address in self.settings.announce_to:
                for datagram in datagrams:
                    with contextlib.suppress(OSError):
                        self._udp.sendto(datagram, (address, self.port))
        if self._udp6 is not None:  # iceserv schedulers also hear each other over IPv6
            for name in self.settings.multicast_interfaces:
                with contextlib.suppress(OSError):
                    group = (DISCOVERY_GROUP6, self.port, 0, socket.if_nametoindex(name))
                    for datagram in datagrams[1:]:  # ICF (and the proven one), not legacy ICE
                        self._udp6.sendto(datagram, group)

    @property
    def dual_stack(self) -> bool:
        """Whether this scheduler is dual-stack for the election (routable IPv6 and IPv4).

        Link-local IPv6 alone (every Linux host on an IPv4 network) does not
        count: there 1.4's election applies unchanged.
        """
        return self._udp is not None and self._udp6 is not None and self.settings.routable_ipv6

    def _heard_on_both(self, info: SchedulerInfo, addr: tuple[Any, ...]) -> bool:
        """Note *info*'s announcement over *addr*'s family; return whether both were heard lately.

        The table is bounded (:data:`_HEARD_LIMIT` schedulers, the oldest
        forgotten first): announcements cost a peer nothing to forge.
        """
        now = time.monotonic()
        key = (info.netname.casefold(), info.version, info.start_time)
        families = self._heard.pop(key, {})
        if len(addr) == _IPV6_SOCKADDR and is_link_local(str(addr[0])):
            return False  # no evidence of a routable IPv6 address
        families[len(addr) == _IPV6_SOCKADDR] = now
        self._heard[key] = families  # most recent last
        while len(self._heard) > _HEARD_LIMIT:
            del self._heard[next(iter(self._heard))]
        fresh = [when for when in families.values() if now - when <= _HEARD_WINDOW]
        return len(fresh) == 2

    # --- UDP --------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Answer a discovery request or react to another scheduler's announcement.

        *addr* is the sender's socket address as received (an IPv6 one with
        its scope id, so that a reply reaches a link-local sender).
        """
        if self.auth_mode is not AuthMode.OFF and (probe := decode_probe(data)) is not None:
            if self.standby is not None and not self.standby.serving:
                self._held_probes.append((self.now(), addr, probe))  # answered at a takeover
                return
            self._offer(addr, probe)
            return
        requester = decode_request(data)
        if requester is not None:
            self._request_received(requester, addr)
            return
        info = decode_announcement(data)
        if self.auth_mode is not AuthMode.OFF:
            # An ICF announcement proves nothing (icecream#177: a rogue "better" scheduler
            # makes every other one drop its daemons): a keyed scheduler yields only to a
            # better one whose announcement proves the key.
            ring = KeyRing(self.settings.keys)
            info = decode_proven_announcement(data, ring, self.now())
        if info is not None:
            self._announcement_received(info, addr)

    def _offer(self, addr: tuple[Any, ...], probe: Any) -> None:  # noqa: ANN401 - auth's probe
        offer = encode_offer(KeyRing(self.settings.keys), probe, self._core.config.info)
        udp = self._udp6 if len(addr) == _IPV6_SOCKADDR else self._udp
        if offer is not None and udp is not None:
            with contextlib.suppress(OSError):
                udp.sendto(offer, addr)

    def _request_received(self, requester: int, addr: tuple[Any, ...]) -> None:
        if self.standby is None:
            self._answer(addr, requester, self._core.config.info)
        elif addr[1] not in (self._prober_port, self._prober6_port) or not _is_local(
            str(addr[0])
        ):  # not our own
            self.apply_standby(self.standby.request_heard(addr, requester, self.now()))

    def _announcement_received(self, info: SchedulerInfo, addr: tuple[Any, ...]) -> None:
        both = self._heard_on_both(info, addr)
        single = self.dual_stack and info.version == self._core.config.info.version and not both
        if self.standby is not None:
            if len(addr) == _IPV6_SOCKADDR or (addr[1] == self.port and _is_local(str(addr[0]))):
                return  # the role machine follows 1.4's IPv4 discovery; or our own
            if single and self.standby.serving:
                return  # the dual-stack rule below: no step down for it
            self._scheduler_heard((str(addr[0]), int(addr[1])), info)
            return
        if single:
            # The election prefers a dual-stack scheduler (after netname and version): do
            # not yield to one of the same version heard over one family only (so far).
            return
        effects = self._core.handle_announcement(info, self.now())
        if effects:
            log.info("scheduler_preferred", peer=unmapped(str(addr[0])), version=info.version)
        self.apply(effects)

    def reply_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Another scheduler answered one of our discovery requests (IPv4, or IPv6 evidence)."""
        if self.standby is None:
            return
        info = self._decode_answer(data)
        if info is None:
            return
        key = (info.netname.casefold(), info.version, info.start_time)
        if len(addr) == _IPV6_SOCKADDR:
            if is_link_local(str(addr[0])) or _is_local(str(addr[0])):
                return  # no evidence of a routable address; or our own answer
            _remember(self._replied6, key, time.monotonic())
            four = self._replied4.get(key)
            if four is not None:  # tell the role machine again, now known dual-stack
                self._scheduler_heard(four, info)
            return
        if addr[1] == self.port and _is_local(str(addr[0])):
            return  # our own answer to our own broadcast
        four = (str(addr[0]), int(addr[1]))
        _remember(self._replied4, key, four)
        self._scheduler_heard(four, info)

    def _scheduler_heard(self, addr: tuple[str, int], info: SchedulerInfo) -> None:
        assert self.standby is not None  # noqa: S101 - only called with the role machine
        wins_tie = False
        if info == self.standby.info:  # the same version and start time: lower address serves
            ours = _local_ip_towards(addr[0])
            with contextlib.suppress(ValueError):
                wins_tie = (ipaddress.ip_address(addr[0]), addr[1]) < (
                    ipaddress.ip_address(ours),
                    self.port,
                )
        key = (info.netname.casefold(), info.version, info.start_time)
        fresh = time.monotonic() - self._replied6.get(key, -math.inf) <= _HEARD_WINDOW
        families = self._heard.get(key, {})
        heard_both = len(families) == 2
        self.apply_standby(
            self.standby.scheduler_heard(
                addr, info, self.now(), wins_tie=wins_tie, other_dual=fresh or heard_both
            )
        )

    def _answer(self, addr: tuple[Any, ...], requester: int, info: SchedulerInfo) -> None:
        udp = self._udp6 if len(addr) == _IPV6_SOCKADDR else self._udp
        if udp is not None:
            with contextlib.suppress(OSError, ProtocolError):
                udp.sendto(encode_reply(requester, info), addr)

    def apply_standby(self, effects: list[sb.StandbyEffect]) -> None:  # noqa: C901 - one case per effect
        """Carry out the role machine's *effects* in order."""
        assert self.standby is not None  # noqa: S101 - only called with the role machine
        for effect in effects:
            match effect:
                case sb.ProbeAll():
                    for address in self.settings.announce_to:
                        self._probe_to((address, self.port))
                    self._probe_group()
                case sb.Probe(address):
                    self._probe_to(address)
                case sb.Confirm(address):
                    self._spawn(self._confirm(address))
                case sb.AnswerRequest(address, version):
                    self._answer(address, version, self.standby.info)
                case sb.TakeOver(info, predecessor):
                    self._took_over(info, predecessor)
                case sb.Announce(info):
                    self._announce(encode_announcements(info))
                case sb.StepDown(address, info):
                    log.warning(
                        "scheduler_stepped_down",
                        active=f"{address[0]}:{address[1]}",
                        start_time=info.start_time,
                        daemons=len(self._core.state.hosts),
                    )
                    self.apply(self._core.handle_announcement(info, self.now()))
        if self.standby.role is sb.Role.STANDBY and self.standby.active is not None:
            self._log_standby()
        if self.standby.role is not sb.Role.LISTENING:
            self.role_known.set()
        self._timer_wake.set()

    def _took_over(self, info: SchedulerInfo, predecessor: tuple[Any, ...] | None) -> None:
        """Serve from now on: advertise *info*, answer held probes, log."""
        assert self.standby is not None  # noqa: S101 - only called with the role machine
        self._core.config = dataclasses.replace(self._core.config, start_time=info.start_time)
        if predecessor is not None:
            # Daemons report jobs the old scheduler gave them (JOB_DONE of a
            # compile that outlived it): our ids must not meet its ids, or such a
            # report would end (or be kicked as foreign to) another job here.
            state = self._core.state
            state.last_job_id = max(state.last_job_id, self._rng.randrange(*_TAKEOVER_JOB_IDS))
        since = self.now() - self.standby.settings.replay
        for at, address, probe in self._held_probes:
            if at >= since:
                self._offer(address, probe)
        self._held_probes.clear()
        before = None if predecessor is None else f"{predecessor[0]}:{predecessor[1]}"
        log.info(
            "scheduler_took_over",
            predecessor=before,
            start_time=info.start_time,
            netname=info.netname,
        )

    def _log_standby(self) -> None:
        assert self.standby is not None  # noqa: S101
        active = self.standby.active
        if active is not None and active != self._logged_active:
            self._logged_active = active
            log.info("scheduler_standby", active=f"{active[0]}:{active[1]}")

    def _probe_payload(self) -> bytes:
        """Return our discovery request: 1.4's byte, or with a key a probe with a fresh nonce.

        A keyed scheduler defers only to one that proves the key: a rogue or
        1.4 scheduler answering plain requests cannot keep it passive.
        """
        if self.auth_mode is AuthMode.OFF:
            return encode_request()
        nonce = secrets.token_bytes(NONCE_BYTES)
        self._nonces.append(nonce)
        return encode_probe(nonce, KeyRing(self.settings.keys))

    def _decode_answer(self, data: bytes) -> SchedulerInfo | None:
        """Return who answered our request: a plain reply, or with a key a proven offer."""
        if self.auth_mode is AuthMode.OFF:
            return decode_reply(data)
        ring = KeyRing(self.settings.keys)
        for nonce in reversed(self._nonces):
            info = decode_offer(data, ring, nonce)
            if info is not None:
                return info
        return None

    def _probe_group(self) -> None:
        """Send our request to the IPv6 discovery group too (dual-stack schedulers answer)."""
        if self._prober6 is None:
            return
        for name in self.settings.multicast_interfaces:
            with contextlib.suppress(OSError):
                group = (DISCOVERY_GROUP6, self.port, 0, socket.if_nametoindex(name))
                self._prober6.sendto(self._probe_payload(), group)

    def _probe_to(self, address: tuple[str, int]) -> None:
        if self._prober is not None:
            with contextlib.suppress(OSError):
                self._prober.sendto(self._probe_payload(), address)

    async def _confirm(self, address: tuple[str, int]) -> None:
        """Check whether a silent active scheduler's TCP port still accepts."""
        alive = False
        try:
            async with asyncio.timeout(self.settings.confirm_timeout):
                _, writer = await asyncio.open_connection(*address)
            alive = True
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            alive = False
        log.info("scheduler_checked", active=f"{address[0]}:{address[1]}", alive=alive)
        if self.standby is not None:
            self.apply_standby(self.standby.confirmed(alive=alive, now=self.now()))

    # --- timers and probes ------------------------------------------------------------

    async def _timers(self) -> None:
        while True:
            standby_at = math.inf if self.standby is None else self.standby.get_timer()
            delay = max(0.0, min(self._core.get_timer(), standby_at) - self.now())
            self._timer_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._timer_wake.wait()
            if self.standby is not None and self.standby.get_timer() <= self.now():
                self.apply_standby(self.standby.handle_timer(self.now()))
            if self._core.get_timer() <= self.now():
                self.apply(self._core.handle_timer(self.now()))
                if self._core.get_timer() <= self.now():
                    await asyncio.sleep(0.1)  # a deadline that did not move must not spin

    async def _probe(self, host_id: int, ip: str, port: int) -> None:
        ok = False
        try:
            async with asyncio.timeout(self.settings.probe_timeout):
                _, writer = await asyncio.open_connection(ip, port)
            ok = True
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            ok = False
        if not ok:
            log.info("probe_failed", host_id=host_id, peer=ip, port=port)
        self.apply(self._core.probe_finished(host_id, ok=ok, now=self.now()))

    # --- TCP peers --------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """Connections on the scheduler port now (daemons, monitors, handshakes)."""
        return self._connections.count

    def _refused(self, ip: str, reason: str) -> None:
        count = self._refusals.note(time.monotonic())
        if count:
            log.warning(
                "connection_refused",
                peer=ip,
                reason=reason,
                refusals=count,
                connections=self._connections.count,
                monitors=self._monitor_budget.count,
            )

    def _accepted(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Admit a new connection within the budgets (the listener's callback)."""
        ip = address[0]
        key = host_key(ip)
        answer = self._connections.admit(key)
        if answer is not Admission.ADMITTED and self._evict_pending(key, answer):
            answer = self._connections.admit(key)
        if answer is not Admission.ADMITTED:
            self._refused(ip, answer.value)
            with contextlib.suppress(OSError):  # reset: no TIME_WAIT left behind
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()
            return
        loop = asyncio.get_running_loop()
        conn_id = next(self._ids)
        pending = _Pending(key, sock)
        self._pending[conn_id] = pending
        deadline = loop.time() + self.settings.handshake_timeout
        pending.task = loop.create_task(self._serve(conn_id, pending, ip, deadline))
        self._readers.add(pending.task)
        pending.task.add_done_callback(self._readers.discard)

    def _evict_pending(self, key: str, answer: Admission) -> bool:
        """Close the oldest connection in its handshake (of *key* if that host is full)."""
        victim = next(
            (
                item
                for item in self._pending.items()
                if answer is Admission.TOTAL_FULL or item[1].key == key
            ),
            None,
        )
        if victim is None:
            return False
        conn_id, pending = victim
        del self._pending[conn_id]
        pending.evicted = True
        count = self._evictions.note(time.monotonic())
        if count:
            log.warning(
                "connection_evicted",
                reason=answer.value,
                evictions=count,
                connections=self._connections.count,
            )
        if pending.peer is not None:  # no record per connection: connection_evicted counts
            self._close(pending.peer)
            self.apply(self._core.connection_lost(conn_id, self.now()))
        else:
            self._connections.release(pending.key)
            if not pending.started:  # a task cancelled before its first step never runs
                pending.sock.close()
            if pending.task is not None:  # a started one closes the socket itself
                pending.task.cancel()
        return True

    async def _serve(self, conn_id: int, pending: _Pending, ip: str, deadline: float) -> None:
        """Make the transport of an admitted socket; its :class:`_Peer` does the rest."""
        sock = pending.sock
        pending.started = True
        loop = asyncio.get_running_loop()
        pending.deadline = deadline
        peer = _Peer(self, conn_id, ip, pending.key)
        try:
            await loop.connect_accepted_socket(lambda: peer, sock=sock)
        except (OSError, asyncio.CancelledError) as exc:
            if pending.peer is peer:  # its transport was made: it ends as any peer
                self._finish(peer, f"connection error: {exc!r}")
            else:
                sock.close()  # asyncio closed the transport it may have made
                if not pending.evicted:
                    self._pending.pop(conn_id, None)
                    self._connections.release(pending.key)
            if isinstance(exc, asyncio.CancelledError) and not pending.evicted:
                raise

    def connected(self, peer: _Peer) -> None:
        """*peer*'s transport exists: register it, send our handshake word."""
        transport = peer.transport
        assert transport is not None  # noqa: S101 - connection_made set it
        pending = self._pending.get(peer.conn_id)
        if pending is None or pending.evicted:  # evicted while its transport was being made
            peer.cancel_timers()
            peer.closed = True
            transport.abort()
            return
        set_keepalive(transport.get_extra_info("socket"))
        if self.auth_mode is not AuthMode.OFF:
            # Only with a key: the gate loads the cipher library (6 MiB at rest).
            from iceserv.scheduler.auth import AuthGate  # noqa: PLC0415

            ends = Endpoints(
                daemon=sockaddr_host_port(transport.get_extra_info("peername")),
                scheduler=sockaddr_host_port(transport.get_extra_info("sockname")),
            )
            nonce = secrets.token_bytes(NONCE_BYTES)
            peer.gate = AuthGate(
                self.auth_mode,
                KeyRing(self.settings.keys),
                nonce,
                ends,
                encrypt=self.settings.encrypt,
            )
        pending.peer = peer
        self._peers[peer.conn_id] = peer
        self._links.add(peer)
        peer.timer = asyncio.get_running_loop().call_at(pending.deadline, self._expired, peer)
        self._flush(peer)

    def received(self, peer: _Peer, data: bytes | memoryview) -> None:
        """Take what *peer* sent (``b""``: its end of file) and handle it (:meth:`_work`).

        *data* may be a view of the shared read buffer: it is copied, never kept.
        """
        if peer.closed or peer.monitor:
            return
        peer.conn.receive_data(data)
        if not data:
            peer.eof = True
        if not peer.backlog:
            self._work(peer)
        elif not peer.held:  # its turn comes: these bytes follow the ones waiting
            self._hold(peer)

    def _work(self, peer: _Peer) -> None:
        """Handle *peer*'s complete messages while the slice lasts; defer the rest.

        Before login the handshake deadline (set at the accept) stands; after
        it, a message whose first bytes came must be complete within
        ``message_timeout``, while an idle daemon may stay silent forever
        (keepalive finds dead ones).  Messages waiting for a slice are ours
        to handle, not the peer's to send: no message deadline runs for them.
        """
        broken = more = False
        try:
            ended, events, more = self._handle_events(peer)
        except ProtocolError as exc:
            # e.g. a sealed record that failed authentication: worth a warning, not an info
            ended, events, broken = f"protocol error: {exc}", 0, True
        if ended == "monitor":
            peer.backlog = False
            peer.cancel_timers()
            return
        if more and not ended and not peer.closed:
            self._defer(peer)
            return
        if not ended and peer.eof:
            ended = "closed by peer"
        if not ended and peer.lost:  # its transport went while messages waited
            ended = peer.lost_reason
        if ended:
            peer.backlog = False
            self._finish(peer, ended, broken=broken)
            return
        if peer.closed:  # closed by an effect of one of its messages
            peer.backlog = False
            return
        self._read_on(peer, events)

    def _read_on(self, peer: _Peer, events: int) -> None:
        """*peer*'s messages are all handled (*events* this time): read again, re-arm deadlines."""
        peer.backlog = False
        if peer.held:
            peer.held = False
            assert peer.transport is not None  # noqa: S101 - registered peers have one
            peer.transport.resume_reading()
        if peer.logged_in:
            if (events or not peer.conn.buffered) and peer.timer is not None:
                peer.timer.cancel()  # a message ended here
                peer.timer = None
            if peer.conn.buffered and peer.timer is None:
                loop = asyncio.get_running_loop()
                peer.timer = loop.call_at(
                    loop.time() + self.settings.message_timeout, self._expired, peer
                )

    def _defer(self, peer: _Peer) -> None:
        """Queue *peer* for the next slice (no message deadline runs while it waits)."""
        if not peer.backlog:
            peer.backlog = True
            if peer.logged_in and peer.timer is not None:
                peer.timer.cancel()
                peer.timer = None
        if not peer.held:
            self._hold(peer)
        self._backlog.append(peer)

    def _hold(self, peer: _Peer) -> None:
        """Stop reading *peer* while more than ``_BACKLOG_BYTES`` of it wait for a slice."""
        if peer.conn.buffered > _BACKLOG_BYTES and not peer.lost and not peer.eof:
            peer.held = True
            assert peer.transport is not None  # noqa: S101 - registered peers have one
            peer.transport.pause_reading()

    def _slice_room(self) -> bool:
        """Whether one more message fits in this loop iteration's slice (opening one if none)."""
        left = self._slice_left
        if left is None:
            self._slice_left = _SLICE_MESSAGES - 1
            self._slice_end = time.perf_counter() + _SLICE_SECONDS
            asyncio.get_running_loop().call_soon(self._next_slice)  # first of the next iteration
            return True
        if left <= 0 or time.perf_counter() >= self._slice_end:
            self._slice_left = 0
            return False
        self._slice_left = left - 1
        return True

    def _next_slice(self) -> None:
        """Close the last iteration's slice; give the peers waiting a new one, in turn."""
        self._slice_left = None
        backlog = self._backlog
        for _ in range(len(backlog)):  # each waiting peer once at most; the rest: next slice
            if self._slice_left == 0:
                break
            peer = backlog.popleft()
            if peer.closed or peer.monitor:
                peer.backlog = False
                continue
            self._work(peer)  # back at the end of the queue if the slice ended first

    def _expired(self, peer: _Peer) -> None:
        peer.timer = None
        if not peer.closed and not peer.monitor:
            passed = "message" if peer.logged_in else "handshake"
            self._finish(peer, f"{passed} deadline passed")

    def lost(self, peer: _Peer, exc: BaseException | None) -> None:
        """*peer*'s transport is gone (closed by us, by the peer, or failed)."""
        peer.cancel_timers()
        peer.lost = True
        self._links.discard(peer)
        if not self._links and self._all_lost is not None:
            self._all_lost.set()
        if peer.monitor:
            return  # not read from: the next broadcast finds it closing (as 1.4)
        if peer.closed:
            reason = "closed"
        elif exc is None:
            reason = "closed by peer"
        elif isinstance(exc, TimeoutError):
            reason = "timed out"  # the socket gave up (keepalive, user time-out)
        else:
            reason = f"connection error: {exc}"
        if peer.backlog and not peer.closed:
            # What it sent before is handled first, in its turn; then it ends with *reason*.
            peer.lost_reason = reason
            return
        self._finish(peer, reason)

    def write_paused(self, peer: _Peer) -> None:
        """Give a daemon whose bytes the kernel stopped taking ``send_timeout`` to read them."""
        if not peer.monitor and peer.stall is None and not peer.closed:
            loop = asyncio.get_running_loop()
            peer.stall = loop.call_later(self.settings.send_timeout, self._stalled, peer)

    def _stalled(self, peer: _Peer) -> None:
        peer.stall = None
        if not peer.closed:
            self._finish(peer, "send failed")

    def _finish(self, peer: _Peer, reason: str, *, broken: bool = False) -> None:
        """Log *peer*'s end (a warning if it broke the protocol: *broken*) and forget it."""
        if peer.nodename is not None:
            (log.warning if broken else log.info)(
                "daemon_logged_out",
                peer=peer.ip,
                host_id=peer.host_id,
                nodename=peer.nodename,
                reason=reason,
            )
            peer.nodename = None
        elif not peer.closed:
            log.debug("connection_closed", peer=peer.ip, conn_id=peer.conn_id, reason=reason)
        self._close(peer)
        self.apply(self._core.connection_lost(peer.conn_id, self.now()))

    def _refuse_monitor(self, peer: _Peer) -> str:
        """Why *peer*'s MON_LOGIN is refused ("" when it is admitted)."""
        if not self._monitor_allowed(peer):
            return "monitor refused"
        if not self._admit_monitor(peer):
            return "monitor budget full"
        return ""

    def _monitor_allowed(self, peer: _Peer) -> bool:
        """Issue 14 item 5: under require, monitors only from this host or ``monitors``."""
        if self.auth_mode is not AuthMode.REQUIRE:
            return True
        if in_networks(peer.ip, self.settings.monitors) or is_own_host(
            peer.ip, self._own_addresses()
        ):
            return True
        log.warning("monitor_refused", peer=peer.ip, auth=self.auth_mode.value)
        return False

    def _admit_monitor(self, peer: _Peer) -> bool:
        answer = self._monitor_budget.admit(peer.key)
        if answer is not Admission.ADMITTED:
            self._refused(peer.ip, f"monitor_{answer.value}")
            return False
        peer.monitor_admitted = True
        return True

    def _handle_events(self, peer: _Peer) -> tuple[str, int, bool]:
        """Handle *peer*'s complete events while the slice lasts.

        Return (why it ended or "", events handled, whether more may wait).
        """
        events = 0
        conn = peer.conn
        while (event := self._take(conn)) is not NEED_DATA:
            if event is None:  # the slice is over
                self._flush(peer)
                return "", events, bool(conn.buffered) or peer.eof
            events += 1
            self._flush(peer)
            if isinstance(event, ConnectionClosed):
                return "closed by peer", events, False
            if isinstance(event, Handshake):
                self._core.peer_connected(peer.conn_id, peer.ip, event.protocol, event.peer_version)
                continue
            passed, refused = self._admit(peer, event)
            if refused:
                return refused, events, False
            if not passed:
                continue
            self.apply(self._core.handle_message(peer.conn_id, event, self.now()))
            if peer.monitor:
                self._pending.pop(peer.conn_id, None)
                return "monitor", events, False  # never read from a monitor again (§5.5)
            if not peer.logged_in:
                self._check_login(peer)
        self._flush(peer)
        return "", events, False

    def _admit(self, peer: _Peer, event: Message) -> tuple[bool, str]:
        """Whether *event* goes to the core (the gate may keep it), and why *peer* is refused."""
        if peer.gate is not None and not peer.logged_in:
            passed, refused = self._gate(peer, peer.gate, event)
            if refused or passed is None:
                return False, refused
        if isinstance(event, MonLogin) and (refused := self._refuse_monitor(peer)):
            return False, refused
        return True, ""

    def _take(self, conn: Connection) -> Event | NeedData | None:
        """Return *conn*'s next event if this slice has room for it (None: it has not)."""
        if not self._slice_room():
            return None
        event = conn.next_event()
        if event is NEED_DATA and self._slice_left is not None:
            self._slice_left += 1  # no message: its place is given back
        return event

    def _check_login(self, peer: _Peer) -> None:
        """Note *peer*'s login once the core knows it as a daemon."""
        host = self._core.host_by_conn(peer.conn_id)
        if host is None:
            return
        self._pending.pop(peer.conn_id, None)
        peer.logged_in = True
        peer.nodename, peer.host_id = host.nodename, host.host_id
        log.info(
            "daemon_logged_in",
            peer=peer.ip,
            host_id=host.host_id,
            nodename=host.nodename,
            max_jobs=host.max_jobs,
            protocol=host.protocol,
            auth=host.auth,
            encrypted=host.sealed,
        )

    def _gate(self, peer: _Peer, gate: AuthGate, event: Message) -> tuple[Message | None, str]:
        """Pass *event* through *peer*'s authentication gate: (what the core gets, refusal)."""
        verdict = gate.handle(event)
        if verdict.send is not None:
            peer.conn.send(verdict.send)
            self._flush(peer)
        if verdict.seal is not None:
            peer.conn.seal_output(verdict.seal)
        if verdict.open is not None:
            peer.conn.open_input(verdict.open)
        if verdict.refuse:
            log.warning("peer_refused", peer=peer.ip, reason=verdict.refuse, auth=gate.mode.value)
            return None, "authentication failed"
        if isinstance(verdict.forward, Login):
            self._core.peer_authenticated(peer.conn_id, gate.state, sealed=gate.sealed)
        return verdict.forward, ""

    def _flush(self, peer: _Peer) -> None:
        data = peer.conn.data_to_send()
        if data and not peer.closed:
            self._write(peer, data)

    def _write(self, peer: _Peer, data: bytes) -> None:
        """Write to a daemon (or a peer in its handshake); close it if it hoards our data."""
        transport = peer.transport
        assert transport is not None  # noqa: S101 - registered peers have one
        if transport.is_closing():  # gone while its last messages waited for a slice
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self.settings.daemon_buffer_limit:
            # Not at once: this runs while effects are carried out.
            asyncio.get_running_loop().call_soon(self._stalled, peer)


def _log_waiting(report: JobsWaiting) -> None:
    """Say why jobs wait: info at first, a warning once the oldest waited 10 s."""
    fields = {
        "count": report.count,
        "job_id": report.job_id,
        "filename": report.filename,
        "waited": round(report.waited, 1),
        "reasons": [f"{name}: {why}" for name, why in report.reasons],
    }
    if report.waited >= _WAIT_WARNING:
        log.warning("jobs_waiting", **fields)
    else:
        log.info("jobs_waiting", **fields)
