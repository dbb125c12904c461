"""The I/O of the daemon's one connection to the scheduler: discovery, connect, read, send.

This module owns finding the scheduler (UDP broadcast on the given
addresses, or a fixed ``-s host[:port]``), sending the wake datagrams the
core asks for (:meth:`SchedulerLink.wake`), the TCP connection with 1.4's keepalive
options, its handshake, and reading and writing messages.  What the link's
state means (LOGIN, STATS every ``max_scheduler_pong`` seconds, what to do
with USE_CS, NO_CS, CS_CONF, GET_INTERNALS, PING, the loss of the link) is
the core's (:mod:`iceserv.daemon.core`): the link reports ``SchedulerUp``,
``SchedulerConnecting``, ``FromScheduler`` and ``SchedulerDown`` to its owner (the shell,
:mod:`iceserv.daemon.server`), which feeds them to the core.

Theory of operation
-------------------
::

    DISCOVERING --reply chosen / -s given--> CONNECTING --handshake--> LOGGED_IN
         ^                                        |                        |
         |                                   fails|           lost / error |
         +------------- WAITING (20..51 s; 3 s with ICECC_TESTS) <---------+

In DISCOVERING one request byte goes to every broadcast address and the
replies of the next ``discovery_wait`` seconds are judged with
:func:`~iceserv.protocol.discovery.choose_scheduler`; without a suitable one
the round repeats.  With a network key the request is an iceserv probe and
only offers proving the key are candidates; a plain request goes beside it
so that a scheduler that cannot prove the key (1.4's) is named in one
``scheduler_unproven`` warning per hour, not silently ignored.  Once the
TCP connection stands, the scheduler's address is reported
(``SchedulerConnecting``): the core then has a discovery
datagram sent to it every second until shortly after the handshake, named
or discovered (1.4's scheduler may not accept otherwise, reference 7.9).
A name is resolved to the addresses of the allowed families (``family``),
tried in the resolver's order with happy eyeballs (the next attempt starts
:data:`HAPPY_EYEBALLS_DELAY` after the previous); the wake datagrams go to
the address that answered.  Connecting and the handshake are bounded; once
logged in the link reads without a time-out (a quiet scheduler is normal),
and a dead peer is found by TCP keepalive and by the STATS the core sends.
Losing the connection tells the owner and waits before starting over:
0..0.5 s after a session that was logged in (the scheduler died or handed
us over: its standby is waiting, issue 19), else 20..51 s as 1.4.  The
discovery rounds after such a loss end 0.3 s after the first suitable reply
(1.4 waits the whole round, which lets every scheduler answer: a starting
one answers after its listening second).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from iceserv.daemon.effects import (
    FromScheduler,
    SchedulerConnecting,
    SchedulerDown,
    SchedulerUp,
)
from iceserv.errors import ProtocolError, RemoteProtocolError
from iceserv.hostfacts import set_keepalive
from iceserv.netio import (
    DISCOVERY_GROUP6,
    IP_FREEBIND,
    host_port,
    is_ipv6,
    is_link_local,
    sockaddr_host_port,
    socket_families,
    unmapped,
)
from iceserv.protocol import (
    NEED_DATA,
    SCHEDULER_PORT,
    AuthChallenge,
    Connection,
    ConnectionClosed,
    Feature,
    Handshake,
)
from iceserv.protocol.auth import (
    NONCE_BYTES,
    AuthError,
    AuthMode,
    DaemonHandshake,
    Endpoints,
    KeyRing,
    decode_offer,
    encode_probe,
)
from iceserv.protocol.discovery import (
    DEFAULT_NETNAME,
    SchedulerInfo,
    choose_scheduler,
    decode_reply,
    encode_request,
)
from iceserv.protocol.sealing import SEAL_OPTION, WANT_SEAL, Opener, Sealer, link_keys

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Sequence

    from iceserv.protocol import Message

__all__ = [
    "LinkOwner",
    "LinkSettings",
    "LinkState",
    "SchedulerLink",
    "elect",
]

log = structlog.get_logger()

_READ_SIZE: Final = 65536
#: 1.4 sets TCP_NODELAY on the daemon's channels too (beside the keepalive options).
_NODELAY: Final = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
#: Failover (issue 19): a scheduler whose host died or was cut off is given up after 2-3 s
#: (keepalive probes after 1 s of quiet, 1 s apart, and a 2 s limit on unanswered probes
#: or data) instead of 1.4's 9-36 s, so that the standby gets the daemon within 5 s.  The
#: probes are answered by the scheduler host's kernel: a busy scheduler is not given up.
_FAILOVER_KEEPALIVE: Final = (
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 2000),
)
#: After a lost session the next discovery starts within this many seconds (1.4: 20-51 s).
_LOST_RECONNECT: Final = 0.5
#: A discovery round ends this long after the first suitable reply (1.4 waits it out).
_REPLY_GRACE: Final = 0.3
#: A scheduler we do not log in to (it cannot prove the key) is named in one warning per
#: this many seconds; the attempts in between log at debug level.
UNPROVEN_REPEAT: Final = 3600.0
#: Seconds before the next address of a name is tried while the first still connects
#: (RFC 8305's recommended 250 ms; asyncio's ``happy_eyeballs_delay``).
HAPPY_EYEBALLS_DELAY: Final = 0.25


def elect(
    replies: Sequence[tuple[tuple[str, int], SchedulerInfo]],
    netname: str,
    *,
    ipv6_first: bool = False,
) -> tuple[tuple[str, int], SchedulerInfo] | None:
    """Pick the scheduler to connect to among discovery *replies*, and its address.

    1.4's rules (:func:`~iceserv.protocol.discovery.choose_scheduler`: the
    net name, then the highest version, then the earliest start) with one
    step after the version: a scheduler that answered over IPv4 and from a
    routable IPv6 address (the same net name, version and start time) is
    dual-stack and beats single-stack ones.  Of a dual-stack scheduler's
    addresses the IPv4 one is used (a daemon known by IPv4 can be named to
    every submitter, 1.4's too), the IPv6 one with *ipv6_first*.
    """
    best = choose_scheduler(replies, netname)
    if best is None:
        return None
    same_version = [r for r in replies if r[1].version == best[1].version]
    families: dict[tuple[str, int, int], set[bool]] = {}
    for (host, _), info in same_version:
        if not is_link_local(host):
            key = (info.netname.casefold(), info.version, info.start_time)
            families.setdefault(key, set()).add(is_ipv6(host))
    dual = [r for r in same_version if len(families.get(_key(r[1]), ())) == 2]
    best = choose_scheduler(dual, netname) or best
    addresses = [r for r in replies if _key(r[1]) == _key(best[1])]
    return next((r for r in addresses if is_ipv6(r[0][0]) == ipv6_first), best)


def _key(info: SchedulerInfo) -> tuple[str, int, int]:
    return info.netname.casefold(), info.version, info.start_time


@dataclass(slots=True)
class _Answers:
    """The discovery answers of one round: the candidates, and plain replies of the others."""

    proven: list[tuple[tuple[str, int], SchedulerInfo]] = field(default_factory=list)
    #: With a key: the plain (1.4) replies; one from a host that sent no proven offer names
    #: a scheduler we refuse (1.4's, a keyless or another key's).
    plain: list[tuple[tuple[str, int], SchedulerInfo]] = field(default_factory=list)


class LinkState(enum.Enum):
    """Where the link is (see the theory of operation)."""

    DISCOVERING = "discovering"
    CONNECTING = "connecting"
    LOGGED_IN = "logged in"
    WAITING = "waiting to reconnect"
    STOPPED = "stopped"


class LinkOwner(Protocol):
    """What the link needs from the daemon: somewhere to report what happens."""

    async def scheduler_event(
        self, event: SchedulerConnecting | SchedulerUp | SchedulerDown | FromScheduler
    ) -> None:
        """Handle the connect, the login, the loss of the link, or a message from the scheduler."""
        ...


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """How to find and talk to the scheduler.

    ``scheduler`` is ``(host, port)`` from ``-s`` (None: discovery, sending to
    ``broadcasts()`` on ``discovery_port``, and to the IPv6 discovery group
    from each ``(interface, source address)`` of ``multicast()``); ``fast_reconnect`` is
    ``ICECC_TESTS``' 3 s delay instead of 20..51 s.  ``family`` (``any``,
    ``ipv4``, ``ipv6``) limits the addresses a name resolves to; with several,
    they are tried in the resolver's order, the next one starting
    :data:`HAPPY_EYEBALLS_DELAY` after the previous (RFC 8305).
    ``host_addresses()`` lists this host's routable addresses, read at each
    login (HOST_ADDRESSES).
    """

    scheduler: tuple[str, int] | None = None
    netname: str = ""
    discovery_port: int = SCHEDULER_PORT
    broadcasts: Callable[[], Sequence[str]] = lambda: ("255.255.255.255",)
    multicast: Callable[[], Sequence[tuple[str, str]]] = lambda: ()
    fast_reconnect: bool = False
    connect_timeout: float = 10.0
    handshake_timeout: float = 15.0
    send_timeout: float = 30.0
    discovery_wait: float = 3.0
    family: str = "any"
    host_addresses: Callable[[], Sequence[str]] = lambda: ()
    auth: str = "off"
    keys: tuple[bytes, ...] = field(default=(), repr=False)
    #: ``[cluster] encrypt`` (issue 14 item 4): ask the scheduler to seal the link.
    encrypt: bool = False

    @property
    def ring(self) -> KeyRing | None:
        """The keys to prove, or None when authentication is off (1.4's behaviour)."""
        if self.auth == AuthMode.OFF or not self.keys:
            return None
        return KeyRing(self.keys)


class SchedulerLink:
    """The scheduler connection; :meth:`run` loops until cancelled."""

    def __init__(self, settings: LinkSettings, owner: LinkOwner, rng: random.Random) -> None:
        self.settings = settings
        self._owner = owner
        self._rng = rng
        self.state = LinkState.DISCOVERING
        self.address: tuple[str, int] | None = None
        self.protocol = 0
        self._conn: Connection | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._wake_socks: dict[socket.AddressFamily, socket.socket] = {}
        #: When each refused (unproven) scheduler was last named in a warning.
        self._unproven_told: dict[str, float] = {}

    @property
    def connected(self) -> bool:
        """Whether we are logged in."""
        return self.state is LinkState.LOGGED_IN

    # --- sending ---------------------------------------------------------------------

    def send(self, msg: Message) -> bool:
        """Queue *msg* for the scheduler; False if not connected (the message is dropped)."""
        conn, writer = self._conn, self._writer
        if not self.connected or conn is None or writer is None or writer.is_closing():
            return False
        try:
            conn.send(msg)
        except ProtocolError as exc:
            log.warning("scheduler_message_unsendable", msg_type=type(msg).__name__, error=str(exc))
            return False
        writer.write(conn.data_to_send())
        return True

    def supports(self, feature: Feature) -> bool:
        """Whether the negotiated scheduler protocol has *feature* (False when disconnected)."""
        return self._conn is not None and self.connected and self._conn.supports(feature)

    def drop(self, reason: str) -> None:
        """Close the connection (the scheduler broke the protocol); the loop reconnects."""
        log.warning("scheduler_connection_dropped", reason=reason)
        if self._writer is not None:
            self._writer.close()

    async def flush(self) -> None:
        """Wait until what was queued left (bounded); a stuck scheduler is dropped."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        try:
            async with asyncio.timeout(self.settings.send_timeout):
                await writer.drain()
        except (OSError, TimeoutError):
            writer.close()  # the read loop sees the end and reconnects

    # --- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Find, connect, serve, and start over after a delay, until cancelled."""
        served = False
        try:
            while True:
                target = await self._find(failover=served)
                served = False
                if target is not None:
                    served = await self._session(target)
                    await self._owner.scheduler_event(SchedulerDown())
                self.state = LinkState.WAITING
                delay = 3.0 if self.settings.fast_reconnect else 20.0 + self._rng.randint(0, 31)
                if served:  # the scheduler died or handed us over: find its standby at once
                    delay = self._rng.uniform(0.0, _LOST_RECONNECT)
                log.info("scheduler_reconnect_scheduled", delay=delay)
                await asyncio.sleep(delay)
        finally:
            self.state = LinkState.STOPPED
            self._close()
            for sock in self._wake_socks.values():
                sock.close()
            self._wake_socks.clear()

    async def _find(self, *, failover: bool = False) -> tuple[str, int] | None:
        if self.settings.scheduler is not None:
            if self.settings.ring is None:
                return self.settings.scheduler
            return await self._probe_named(self.settings.scheduler)
        self.state = LinkState.DISCOVERING
        for _ in range(10):  # a few rounds, then the long reconnect wait
            found = await self._discover_once(failover=failover)
            if found is not None:
                return found
        return None

    async def _discover_once(self, *, failover: bool = False) -> tuple[str, int] | None:
        """One round; after a lost session (*failover*) it ends soon after a suitable reply."""
        answers = _Answers()
        replies = answers.proven
        ring = self.settings.ring
        nonce = secrets.token_bytes(NONCE_BYTES)
        # With a key only proven offers count: a 1.4 or rogue scheduler is no candidate.  The
        # plain request beside the probe finds those, only to say why we do not log in there.
        requests = (
            (encode_request(),) if ring is None else (encode_probe(nonce, ring), encode_request())
        )
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(sock) for sock in await self._send_requests(*requests)]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.discovery_wait) as round_end:

                    def replied() -> None:  # end the round soon after a suitable reply
                        grace = asyncio.get_running_loop().time() + _REPLY_GRACE
                        when = round_end.when()
                        if (
                            failover
                            and choose_scheduler(replies, self.settings.netname)
                            and (when is None or grace < when)
                        ):
                            round_end.reschedule(grace)

                    await asyncio.gather(
                        *(self._collect(sock, answers, ring, nonce, replied) for sock in socks)
                    )
        wanted = (self.settings.netname or DEFAULT_NETNAME).casefold()
        proven = {origin[0] for origin, _ in replies}
        for origin, info in answers.plain:
            if info.netname.casefold() == wanted and origin[0] not in proven:
                self._unproven(origin, "cannot prove the network key (icecream 1.4?)")
        chosen = elect(replies, self.settings.netname, ipv6_first=self.settings.family == "ipv6")
        if chosen is None:
            log.info("scheduler_not_found", replies=len(replies), netname=self.settings.netname)
            return None
        return chosen[0]

    async def _probe_named(self, target: tuple[str, int]) -> tuple[str, int] | None:
        """Return *target* (``-s``) if it proves the key in answer to a probe, else None.

        A daemon with a key never logs in to a scheduler that cannot prove
        it (issue 14), so even a named one is asked first, over UDP on its
        port (1.4 schedulers ignore the probe: no answer, no login).
        """
        loop = asyncio.get_running_loop()
        ring = self.settings.ring
        assert ring is not None  # noqa: S101 - the caller checked
        nonce = secrets.token_bytes(NONCE_BYTES)
        answers = _Answers()
        try:
            infos = await loop.getaddrinfo(
                *target, family=socket_families(self.settings.family), type=socket.SOCK_DGRAM
            )
        except OSError as exc:
            log.warning("scheduler_unresolved", address=host_port(*target), error=str(exc))
            return None
        with contextlib.ExitStack() as stack:
            socks = []
            for family, _, _, _, address in infos[:4]:
                sock = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
                sock.setblocking(False)  # noqa: FBT003 - socket API
                with contextlib.suppress(OSError):
                    await loop.sock_sendto(sock, encode_probe(nonce, ring), address)
                    await loop.sock_sendto(sock, encode_request(), address)
                    socks.append(sock)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.discovery_wait):
                    await asyncio.gather(
                        *(self._collect(sock, answers, ring, nonce) for sock in socks)
                    )
        if not answers.proven:
            self._unproven(
                target,
                "cannot prove the network key (icecream 1.4?)"
                if answers.plain
                else "no proof of the network key (no answer to the probe)",
            )
            return None
        return target

    def _unproven(self, address: tuple[str, int], why: str) -> None:
        """Say once per :data:`UNPROVEN_REPEAT` seconds that we refuse the scheduler *address*."""
        shown = host_port(*address)
        now = asyncio.get_running_loop().time()
        told = self._unproven_told.get(shown)
        repeat = told is not None and now - told < UNPROVEN_REPEAT
        if not repeat:
            self._unproven_told[shown] = now
        (log.debug if repeat else log.warning)(
            "scheduler_unproven",
            address=shown,
            auth=self.settings.auth,
            message=f"scheduler {shown} {why}; not logging in (auth = {self.settings.auth})",
        )

    async def _send_requests(self, *requests: bytes) -> list[socket.socket]:
        """Send the *requests*: IPv4 broadcasts, and the IPv6 group on each interface.

        Each IPv6 request leaves from the interface's routable address when it
        has one (``multicast()``), so the scheduler answers from its own
        routable address, which is then the one connected to and the one the
        scheduler knows us by.
        """
        loop = asyncio.get_running_loop()
        port = self.settings.discovery_port
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks = [sock]
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setblocking(False)  # noqa: FBT003 - socket API
            sock.bind(("", 0))
            for address in self.settings.broadcasts():
                for request in requests:
                    with contextlib.suppress(OSError):
                        await loop.sock_sendto(sock, request, (address, port))
            for interface, source in self.settings.multicast():
                six = self._multicast_socket(interface, source)
                if six is None:
                    continue
                socks.append(six)
                for request in requests:
                    with contextlib.suppress(OSError):
                        index = socket.if_nametoindex(interface)
                        await loop.sock_sendto(six, request, (DISCOVERY_GROUP6, port, 0, index))
        except OSError:
            for opened in socks:
                opened.close()
            raise
        return socks

    @staticmethod
    def _multicast_socket(interface: str, source: str) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            index = socket.if_nametoindex(interface)
            sock.setblocking(False)  # noqa: FBT003 - socket API
            with contextlib.suppress(OSError):  # a tentative address (see netio.bind_listeners)
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            scope = index if "%" in source else 0
            sock.bind((source.split("%", 1)[0], 0, 0, scope))
        except OSError as exc:
            sock.close()
            log.debug("multicast_discovery_failed", interface=interface, error=str(exc))
            return None
        return sock

    @staticmethod
    async def _collect(
        sock: socket.socket,
        answers: _Answers,
        ring: KeyRing | None = None,
        nonce: bytes = b"",
        replied: Callable[[], None] | None = None,
    ) -> None:
        """Add every scheduler reply *sock* receives to *answers* (until cancelled).

        With a key *ring* only offers proving it for *nonce* count (``proven``);
        the plain (1.4) replies then go to ``plain``.
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                data, origin = await loop.sock_recvfrom(sock, 1024)
            except OSError:
                return  # e.g. an ICMP error queued on the socket: stop listening on it
            info = decode_reply(data) if ring is None else decode_offer(data, ring, nonce)
            if info is not None:
                answers.proven.append((sockaddr_host_port(origin), info))
                if replied is not None:
                    replied()
            elif ring is not None and (unproven := decode_reply(data)) is not None:
                answers.plain.append((sockaddr_host_port(origin), unproven))

    def wake(self, host: str, port: int) -> None:
        """Send one discovery datagram to the scheduler at *host*:*port* (a numeric address).

        A real iceccd sends them to the scheduler it connects to (1.4's
        scheduler logs ``broadcast from <ip>``), and 1.4's scheduler needs
        them: after an accept its main loop polls the listening sockets again
        only once it wakes a second later (reference 7.9).  The answers are
        read and ignored; errors (an ICMP unreachable from the last one) too.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = self._wake_socks.get(family)
            if sock is None:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)  # noqa: FBT003 - socket API
                self._wake_socks[family] = sock
            with contextlib.suppress(OSError):  # drop the answers to the earlier ones
                while sock.recv(1024):
                    pass
            sock.sendto(encode_request(), (host, port))
        except OSError as exc:
            log.debug("scheduler_wake_failed", address=host_port(host, port), error=str(exc))

    async def _session(self, target: tuple[str, int]) -> bool:
        """Connect to *target* and serve it; return whether we were logged in."""
        self.state = LinkState.CONNECTING
        family = socket_families(self.settings.family)
        shown = host_port(*target)
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    *target,
                    family=family,
                    happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
                    limit=_READ_SIZE,
                )
        except (OSError, TimeoutError) as exc:
            log.warning(
                "scheduler_connect_failed",
                address=shown,
                family=self.settings.family,
                error=str(exc) or type(exc).__name__,
            )
            return False
        sock = writer.get_extra_info("socket")
        set_keepalive(sock, _NODELAY, *_FAILOVER_KEEPALIVE)
        own_ip = unmapped(str(writer.get_extra_info("sockname")[0]))
        peer = writer.get_extra_info("peername")
        peer_ip = unmapped(str(peer[0]))
        # Wake the address the connection went to (of a name's several, the one that answered).
        await self._owner.scheduler_event(SchedulerConnecting(peer_ip, int(peer[1])))
        conn = Connection()
        self._conn, self._writer, self.address = conn, writer, target
        try:
            writer.write(conn.data_to_send())
            async with asyncio.timeout(self.settings.handshake_timeout):
                event = await self._next(reader)
            if not isinstance(event, Handshake):
                return False
            if self.settings.ring is not None:
                ends = Endpoints(
                    daemon=sockaddr_host_port(writer.get_extra_info("sockname")),
                    scheduler=sockaddr_host_port(peer),
                )
                async with asyncio.timeout(self.settings.handshake_timeout):
                    if not await self._authenticate(reader, self.settings.ring, ends):
                        return False
            self.protocol = event.protocol
            self.state = LinkState.LOGGED_IN
            log.info(
                "scheduler_logged_in",
                address=shown,
                connected_to=host_port(peer_ip, int(peer[1])),
                protocol=event.protocol,
                own_ip=own_ip,
            )
            found = tuple(self.settings.host_addresses())
            await self._owner.scheduler_event(
                SchedulerUp(own_ip, event.protocol, found, sealed=conn.sealed)
            )
            await self._serve(reader)
        except (OSError, TimeoutError, ProtocolError) as exc:
            log.warning("scheduler_connection_lost", error=str(exc) or type(exc).__name__)
        finally:
            served = self.state is LinkState.LOGGED_IN
            self.state = LinkState.WAITING
            self._close()
        return served

    async def _authenticate(
        self, reader: asyncio.StreamReader, ring: KeyRing, ends: Endpoints
    ) -> bool:
        """Prove the key and check the scheduler's proof before LOGIN; False: do not log in."""
        conn, writer = self._conn, self._writer
        assert conn is not None  # noqa: S101 - set by _session
        assert writer is not None  # noqa: S101
        handshake = DaemonHandshake(ring, secrets.token_bytes(NONCE_BYTES), ends)
        # We can always seal; with encrypt = yes we ask for it (issue 14 item 4).
        options = (SEAL_OPTION, WANT_SEAL) if self.settings.encrypt else (SEAL_OPTION,)
        conn.send(handshake.hello(options))
        writer.write(conn.data_to_send())
        reply = await self._next(reader)
        try:
            if not isinstance(reply, AuthChallenge):
                raise AuthError(  # noqa: TRY301 - one refusal path
                    "closed" if reply is None else f"{type(reply).__name__} instead of a challenge"
                )
            conn.send(handshake.answer(reply))
            sealed = SEAL_OPTION in reply.options
            if self.settings.encrypt and not sealed and self.settings.auth == AuthMode.REQUIRE:
                msg = "the scheduler does not encrypt (encrypt = yes)"
                raise AuthError(msg)  # noqa: TRY301
        except AuthError as exc:
            log.warning("scheduler_refused", address=host_port(*ends.scheduler), reason=exc.reason)
            return False
        if sealed:
            # The challenge was the scheduler's last clear message, our proof is our last.
            ours, theirs = link_keys(handshake.material)
            conn.seal_output(Sealer(ours))
            conn.open_input(Opener(theirs))
        writer.write(conn.data_to_send())
        log.info(
            "scheduler_authenticated", key_id=(handshake.key_id or b"").hex(), encrypted=sealed
        )
        return True

    async def _next(self, reader: asyncio.StreamReader) -> Message | Handshake | None:
        """Return the next event from the scheduler (None at EOF); write what is queued."""
        conn, writer = self._conn, self._writer
        assert conn is not None  # noqa: S101 - set by _session
        assert writer is not None  # noqa: S101
        while True:
            event = conn.next_event()
            out = conn.data_to_send()
            if out:
                writer.write(out)
            if isinstance(event, ConnectionClosed):
                return None
            if event is not NEED_DATA:
                return event
            # No time-out on this read once logged in: a quiet scheduler is normal (1.4's
            # answers nothing to STATS).  TCP keepalive, TCP_USER_TIMEOUT and the STATS the
            # core forces every ``scheduler_idle`` seconds find a dead peer.
            conn.receive_data(await reader.read(_READ_SIZE))

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        while True:
            msg = await self._next(reader)
            if msg is None:
                log.warning("scheduler_closed_connection")
                return
            if isinstance(msg, Handshake):
                text = "a second handshake from the scheduler"
                raise RemoteProtocolError(text, msg_type=0)
            await self._owner.scheduler_event(FromScheduler(msg))
            await self.flush()

    def _close(self) -> None:
        writer = self._writer
        self._writer = None
        self._conn = None
        self.address = None
        if writer is not None:
            writer.close()
