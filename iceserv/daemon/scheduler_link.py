"""The daemon's one connection to the scheduler: discovery, login, STATS, reconnects.

This module owns finding the scheduler (UDP broadcast on the given
addresses, or a fixed ``-s host[:port]``), the TCP connection with 1.4's
keepalive options, the LOGIN, periodic STATS, and the messages the scheduler
sends to a daemon.  What to log in with, what the load is and what to do
with USE_CS/NO_CS is the owner's business (:class:`LinkOwner`, the daemon
in :mod:`iceserv.daemon.server`).

Theory of operation
-------------------
::

    DISCOVERING --reply chosen / -s given--> CONNECTING --handshake--> LOGGED_IN
         ^                                        |                        |
         |                                   fails|           lost / error |
         +------------- WAITING (20..51 s; 3 s with ICECC_TESTS) <---------+

In DISCOVERING one request byte goes to every broadcast address and the
replies of the next ``max_scheduler_pong`` seconds are judged with
:func:`~iceserv.protocol.discovery.choose_scheduler`; without a suitable one
the round repeats.  LOGGED_IN sends LOGIN at once, then every
``max_scheduler_pong`` seconds (3, or what CS_CONF says) asks the owner for
STATS, which it sends only on a significant change (so the first one goes out
right after LOGIN).  Losing the connection tells the owner, which drops its
clients as 1.4 does, and waits before starting over.  Every network wait is
bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from iceserv.errors import ProtocolError, RemoteProtocolError
from iceserv.protocol import (
    NEED_DATA,
    SCHEDULER_PORT,
    ConfCS,
    Connection,
    ConnectionClosed,
    Feature,
    GetInternalStatus,
    Handshake,
    Login,
    NoCS,
    Ping,
    Stats,
    StatusText,
    UseCS,
)
from iceserv.protocol.discovery import choose_scheduler, decode_reply, encode_request

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Sequence

    from iceserv.protocol import Message

__all__ = [
    "LinkOwner",
    "LinkSettings",
    "LinkState",
    "SchedulerLink",
    "determine_platform",
    "set_keepalive",
]

log = structlog.get_logger()

_READ_SIZE: Final = 65536
_IDLE_READ: Final = 300.0
_MAX_PONG: Final = 60
_WAKE_INTERVAL: Final = 1.0


class LinkState(enum.Enum):
    """Where the link is (see the theory of operation)."""

    DISCOVERING = "discovering"
    CONNECTING = "connecting"
    LOGGED_IN = "logged in"
    WAITING = "waiting to reconnect"
    STOPPED = "stopped"


class LinkOwner(Protocol):
    """What the link needs from the daemon."""

    def login(self, *, reannounce: bool) -> Login:
        """Return the LOGIN to send (first login, or the re-announcement after an install)."""
        ...

    def stats(self) -> Stats | None:
        """STATS to send now, or None when the load did not change enough."""
        ...

    def scheduler_login(self, own_ip: str) -> None:
        """Note the login; *own_ip* is our address on that connection (for USE_CS-to-self)."""
        ...

    def scheduler_message(self, msg: UseCS | NoCS) -> None:
        """Route a job answer to one of our clients."""
        ...

    def internals(self) -> str:
        """Return the text for GET_INTERNALS."""
        ...

    def scheduler_lost(self) -> None:
        """Drop the clients that depended on the connection that is gone."""
        ...


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """How to find and talk to the scheduler.

    ``scheduler`` is ``(host, port)`` from ``-s`` (None: discovery, sending to
    ``broadcasts()`` on ``discovery_port``); ``fast_reconnect`` is
    ``ICECC_TESTS``' 3 s delay instead of 20..51 s.
    """

    scheduler: tuple[str, int] | None = None
    netname: str = ""
    discovery_port: int = SCHEDULER_PORT
    broadcasts: Callable[[], Sequence[str]] = lambda: ("255.255.255.255",)
    fast_reconnect: bool = False
    connect_timeout: float = 10.0
    handshake_timeout: float = 15.0
    send_timeout: float = 30.0
    discovery_wait: float = 3.0


def set_keepalive(sock: socket.socket | None) -> None:
    """1.4's options on every channel (§1.3): keepalive 27 s + 3 x 3 s, 9 s user timeout."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    for level, name, value in (
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 27),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 3),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
        (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 9000),
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    ):
        with contextlib.suppress(OSError):
            sock.setsockopt(level, name, value)


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
        self._pong = 3.0
        self._waking: asyncio.Task[None] | None = None

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

    def reannounce(self) -> None:
        """Send the re-announcement LOGIN (after an environment was installed or removed)."""
        if self.send(self._owner.login(reannounce=True)):
            self.send_stats()

    def send_stats(self) -> None:
        """Evaluate the load now and send STATS if it changed enough."""
        if self.connected:
            stats = self._owner.stats()
            if stats is not None:
                self.send(stats)

    # --- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Find, connect, serve, and start over after a delay, until cancelled."""
        try:
            while True:
                target = await self._find()
                if target is not None:
                    await self._session(target)
                    self._owner.scheduler_lost()
                self.state = LinkState.WAITING
                delay = 3.0 if self.settings.fast_reconnect else 20.0 + self._rng.randint(0, 31)
                log.info("scheduler_reconnect_scheduled", delay=delay)
                await asyncio.sleep(delay)
        finally:
            self.state = LinkState.STOPPED
            self._close()

    async def _find(self) -> tuple[str, int] | None:
        if self.settings.scheduler is not None:
            return self.settings.scheduler
        self.state = LinkState.DISCOVERING
        for _ in range(10):  # a few rounds, then the long reconnect wait
            found = await self._discover_once()
            if found is not None:
                return found
        return None

    async def _wake(self, target: tuple[str, int]) -> None:
        """Send discovery datagrams to a fixed scheduler until cancelled (handshake done).

        A real iceccd sends one with ``-s`` too (1.4's scheduler logs
        ``broadcast from <ip>``), and 1.4's scheduler needs it: after an
        accept its main loop stops polling the listening sockets for at least
        a second and re-arms them only when something else wakes it
        (reference 7.9), so a plain TCP connect can wait 20-35 s.  One
        datagram that arrives within that second is not enough, hence one
        every :data:`_WAKE_INTERVAL` while we wait.  The answers do not matter.
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                infos = await loop.getaddrinfo(*target, type=socket.SOCK_DGRAM)
            family, kind, proto, _, address = infos[0]
            with socket.socket(family, kind, proto) as sock:
                sock.setblocking(False)  # noqa: FBT003 - socket API
                while True:
                    with contextlib.suppress(OSError):  # e.g. ICMP unreachable from the last one
                        await loop.sock_sendto(sock, encode_request(), address)
                    await asyncio.sleep(_WAKE_INTERVAL)
        except (OSError, TimeoutError, IndexError) as exc:
            log.info("scheduler_wake_failed", address=f"{target[0]}:{target[1]}",
                     error=str(exc) or type(exc).__name__)  # fmt: skip

    async def _discover_once(self) -> tuple[str, int] | None:
        loop = asyncio.get_running_loop()
        replies: list[tuple[tuple[str, int], object]] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setblocking(False)  # noqa: FBT003 - socket API
            sock.bind(("", 0))
            for address in self.settings.broadcasts():
                with contextlib.suppress(OSError):
                    await loop.sock_sendto(sock, encode_request(),
                                           (address, self.settings.discovery_port))  # fmt: skip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.discovery_wait):
                    while True:
                        data, origin = await loop.sock_recvfrom(sock, 1024)
                        info = decode_reply(data)
                        if info is not None:
                            replies.append(((str(origin[0]), int(origin[1])), info))
        chosen = choose_scheduler(replies, self.settings.netname)  # type: ignore[arg-type]
        if chosen is None:
            log.info("scheduler_not_found", replies=len(replies), netname=self.settings.netname)
            return None
        return chosen[0]

    async def _session(self, target: tuple[str, int]) -> None:
        self.state = LinkState.CONNECTING
        if self.settings.scheduler is not None:  # discovery already woke it
            self._waking = asyncio.create_task(self._wake(target))
        try:
            await self._connected_session(target)
        finally:
            self._stop_waking()

    def _stop_waking(self) -> None:
        if self._waking is not None:
            self._waking.cancel()
            self._waking = None

    async def _connected_session(self, target: tuple[str, int]) -> None:
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                reader, writer = await asyncio.open_connection(*target, limit=_READ_SIZE)
        except (OSError, TimeoutError) as exc:
            log.warning("scheduler_connect_failed", address=f"{target[0]}:{target[1]}",
                        error=str(exc) or type(exc).__name__)  # fmt: skip
            return
        sock = writer.get_extra_info("socket")
        set_keepalive(sock)
        own_ip = str(writer.get_extra_info("sockname")[0])
        conn = Connection()
        self._conn, self._writer, self.address = conn, writer, target
        stats_task: asyncio.Task[None] | None = None
        try:
            writer.write(conn.data_to_send())
            async with asyncio.timeout(self.settings.handshake_timeout):
                event = await self._next(reader)
            if not isinstance(event, Handshake):
                return
            self._stop_waking()
            self.protocol = event.protocol
            self.state = LinkState.LOGGED_IN
            self._owner.scheduler_login(own_ip)
            self.send(self._owner.login(reannounce=False))
            log.info("scheduler_logged_in", address=f"{target[0]}:{target[1]}",
                     protocol=event.protocol, own_ip=own_ip)  # fmt: skip
            self.send_stats()
            stats_task = asyncio.create_task(self._stats_loop())
            await self._serve(reader, writer)
        except (OSError, TimeoutError, ProtocolError) as exc:
            log.warning("scheduler_connection_lost", error=str(exc) or type(exc).__name__)
        finally:
            if stats_task is not None:
                stats_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stats_task
            self.state = LinkState.WAITING
            self._close()

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
            async with asyncio.timeout(_IDLE_READ):
                data = await reader.read(_READ_SIZE)
            conn.receive_data(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers: dict[type, Callable[[Message], None]] = {
            UseCS: self._job_answer, NoCS: self._job_answer, ConfCS: self._conf,
            GetInternalStatus: self._internals, Ping: self._ping,
        }  # fmt: skip
        while True:
            msg = await self._next(reader)
            if msg is None:
                log.warning("scheduler_closed_connection")
                return
            handler = None if isinstance(msg, Handshake) else handlers.get(type(msg))
            if handler is None or isinstance(msg, Handshake):
                text = f"unexpected {type(msg).__name__} from the scheduler"
                raise RemoteProtocolError(text, msg_type=int(getattr(msg, "TYPE", 0)))
            handler(msg)
            async with asyncio.timeout(self.settings.send_timeout):
                await writer.drain()

    def _job_answer(self, msg: Message) -> None:
        assert isinstance(msg, UseCS | NoCS)  # noqa: S101 - dispatched by type
        self._owner.scheduler_message(msg)

    def _conf(self, msg: Message) -> None:
        assert isinstance(msg, ConfCS)  # noqa: S101
        self._pong = float(min(max(msg.max_scheduler_pong, 1), _MAX_PONG))

    def _internals(self, _: Message) -> None:
        self.send(StatusText(self._owner.internals()))

    def _ping(self, _: Message) -> None:
        if self._conn is not None and not self._conn.supports(Feature.NO_PINGS):
            self.send(Ping())

    async def _stats_loop(self) -> None:
        writer = self._writer
        while writer is not None and not writer.is_closing():
            await asyncio.sleep(self._pong)
            self.send_stats()
            try:
                async with asyncio.timeout(self.settings.send_timeout):
                    await writer.drain()
            except (OSError, TimeoutError):
                writer.close()  # the read loop sees the end and reconnects
                return

    def _close(self) -> None:
        writer = self._writer
        self._writer = None
        self._conn = None
        self.address = None
        if writer is not None:
            writer.close()


def determine_platform() -> str:
    """1.4's host platform: ``uname -m`` on Linux, ``<sysname>_<machine>`` elsewhere."""
    uname = os.uname()
    if uname.sysname == "Linux":
        return uname.machine.replace(" ", "")
    if uname.sysname == "Darwin":
        return f"Darwin{uname.release.split('.')[0]}_{uname.machine}".replace(" ", "")
    return f"{uname.sysname}_{uname.machine}".replace(" ", "")
