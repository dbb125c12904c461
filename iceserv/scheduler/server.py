"""The scheduler's asyncio shell: TCP for daemons and monitors, UDP discovery, timers, probes.

This module owns every socket of the scheduler except the telnet port (the
app starts that with :attr:`SchedulerServer.control`).  It feeds bytes to
one :class:`~iceserv.protocol.Connection` per peer, hands events to the pure
:class:`~iceserv.scheduler.handlers.Scheduler`, and carries out the effects
it returns.  It holds no scheduling logic of its own.

Rules kept here: every read runs under ``asyncio.timeout()`` (15 s for the
handshake and the first message); every write to a daemon is followed by a
bounded ``drain()`` in that connection's writer task; monitors are written
without waiting and are dropped when their buffer passes a limit (1.4 drops
a monitor whose socket would block); accepted sockets get 1.4's keepalive
options (reference §1.3), which is how dead daemons are noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog

from iceserv.errors import ProtocolError
from iceserv.hostfacts import set_keepalive
from iceserv.protocol import (
    NEED_DATA,
    SCHEDULER_PORT,
    Connection,
    ConnectionClosed,
    Handshake,
)
from iceserv.protocol.discovery import (
    DEFAULT_NETNAME,
    decode_announcement,
    decode_request,
    encode_announcements,
    encode_reply,
)
from iceserv.scheduler.control import INTERNALS_TIMEOUT, ClusterControl
from iceserv.scheduler.effects import (
    Announce,
    Close,
    Effect,
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
    from collections.abc import Coroutine

    from iceserv.clock import Clock
    from iceserv.protocol import Message

__all__ = ["SchedulerServer", "SchedulerServerSettings"]

log = structlog.get_logger()
#: A job waiting this long (seconds) is logged as a warning: a client gives up after 10 s.
_WAIT_WARNING: Final = 10.0

_READ_SIZE: Final = 65536
#: A read on a logged-in daemon that sees nothing for this long just starts again:
#: liveness is TCP keepalive's job (§5.2 step 6), the timeout only bounds the await.
_IDLE_READ: Final = 300.0
_MONITOR_SNDBUF: Final = 65536


@dataclass(frozen=True, slots=True)
class SchedulerServerSettings:
    """How the scheduler listens; built by ``app`` from the configuration.

    ``announce_to`` lists the addresses the scheduler announcements go to
    (the interfaces' broadcast addresses, or 127.0.0.1 under ``ICECC_TESTS``).
    """

    address: str = "0.0.0.0"  # noqa: S104 - 1.4 listens on every interface unless -i is given
    port: int = SCHEDULER_PORT
    netname: str = DEFAULT_NETNAME
    persistent_clients: bool = False
    announce_to: tuple[str, ...] = ()
    handshake_timeout: float = 15.0
    send_timeout: float = 30.0
    probe_timeout: float = 5.0
    internals_timeout: float = INTERNALS_TIMEOUT
    monitor_buffer_limit: int = 1 << 18
    daemon_buffer_limit: int = 1 << 22


@dataclass(eq=False)
class _Peer:
    conn_id: int
    ip: str
    writer: asyncio.StreamWriter
    conn: Connection
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    monitor: bool = False
    closed: bool = False
    nodename: str | None = None
    host_id: int = 0
    drainer: asyncio.Task[None] | None = None


#: A monitor's socket (bulk): no TCP_NODELAY, and a big send buffer (1.4 ``MsgChannel``).
_BULK_OPTIONS: Final = (
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 0),
    (socket.SOL_SOCKET, socket.SO_SNDBUF, _MONITOR_SNDBUF),
)


class _Discovery(asyncio.DatagramProtocol):
    """UDP: answer discovery requests, notice other schedulers' announcements."""

    def __init__(self, server: SchedulerServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self._server.datagram_received(data, (str(addr[0]), addr[1]))


class SchedulerServer:
    """A running scheduler: listeners, peer connections and the core's timers."""

    def __init__(
        self, settings: SchedulerServerSettings, *, clock: Clock, rng: random.Random
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._start = clock.now()
        config = SchedulerConfig(
            start_time=int(self._start),
            netname=settings.netname,
            persistent_clients=settings.persistent_clients,
        )
        self._core = Scheduler(config, rng, self._start)
        self.control = ClusterControl(self, internals_timeout=settings.internals_timeout)
        self._peers: dict[int, _Peer] = {}
        self._summaries = JobSummaries()
        self._ids = itertools.count(1)
        self._tcp: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._timer_wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._readers: set[asyncio.Task[None]] = set()
        self.port = settings.port

    @property
    def core(self) -> Scheduler:
        """The pure scheduler core (read-only use outside this module)."""
        return self._core

    def now(self) -> float:
        """Return the current time of the server's clock."""
        return self._clock.now()

    # --- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the TCP and UDP listeners and start the timer task."""
        self._tcp = await asyncio.start_server(
            self._serve,
            self.settings.address,
            self.settings.port,
            reuse_address=True,
            backlog=1024,
            limit=_READ_SIZE,
        )
        self.port = self._tcp.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        try:
            udp.bind((self.settings.address, self.port))
        except OSError:
            udp.close()
            self._tcp.close()
            raise
        transport, _ = await loop.create_datagram_endpoint(lambda: _Discovery(self), sock=udp)
        self._udp = transport
        self._spawn(self._timers())
        log.info(
            "scheduler_started",
            address=self.settings.address,
            port=self.port,
            netname=self.settings.netname,
        )

    async def stop(self) -> None:
        """Stop listening and close every daemon and monitor connection (1.4's clean exit)."""
        if self._tcp is not None:
            self._tcp.close()
        if self._udp is not None:
            self._udp.close()
        for peer in list(self._peers.values()):
            self._close(peer)
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        readers = list(self._readers)
        if readers:  # they end on the end of file of their closed sockets
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.send_timeout):
                    await asyncio.gather(*readers, return_exceptions=True)
        if self._tcp is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.send_timeout):
                    await self._tcp.wait_closed()
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
                    self._announce(encode_announcements(info))
                case InternalsReply(host_id, text):
                    self.control.deliver_internals(host_id, text)
                case JobsWaiting():
                    _log_waiting(effect)
        self.control.observe(effects)
        self._timer_wake.set()

    def _become_monitor(self, conn_id: int) -> None:
        peer = self._peers.get(conn_id)
        if peer is not None:
            peer.monitor = True
            set_keepalive(peer.writer.get_extra_info("socket"), *_BULK_OPTIONS)
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
        peer.writer.write(peer.conn.data_to_send())
        peer.wake.set()

    def _host_name(self, host_id: int) -> str:
        host = self._core.state.hosts.get(host_id)
        return host.nodename if host is not None else f"host {host_id}"

    def _to_monitors(self, message: Message) -> None:
        summary = self._summaries.observe(message, self._host_name, self.now())
        if summary is not None:
            log.info("job_finished", **summary)
        for conn_id in self._core.monitors:
            peer = self._peers.get(conn_id)
            if peer is None:
                continue
            transport = peer.writer.transport
            if transport.is_closing() or (
                transport.get_write_buffer_size() > self.settings.monitor_buffer_limit
            ):
                log.info("monitor_dropped", peer=peer.ip, conn_id=conn_id)
                self._close(peer)
                self.apply(self._core.connection_lost(conn_id, self.now()))
                continue
            peer.conn.send(message)
            peer.writer.write(peer.conn.data_to_send())

    def _close(self, peer: _Peer) -> None:
        if peer.closed:
            return
        peer.closed = True
        self._peers.pop(peer.conn_id, None)
        peer.writer.close()  # the reader task sees end of file and finishes by itself
        if peer.drainer is not None and peer.drainer is not asyncio.current_task():
            peer.drainer.cancel()

    def _announce(self, datagrams: tuple[bytes, bytes]) -> None:
        if self._udp is None:
            return
        for address in self.settings.announce_to:
            for datagram in datagrams:
                with contextlib.suppress(OSError):
                    self._udp.sendto(datagram, (address, self.port))

    # --- UDP --------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Answer a discovery request or react to another scheduler's announcement."""
        requester = decode_request(data)
        if requester is not None:
            if self._udp is not None:
                with contextlib.suppress(OSError, ProtocolError):
                    self._udp.sendto(encode_reply(requester, self._core.config.info), addr)
            return
        info = decode_announcement(data)
        if info is not None:
            effects = self._core.handle_announcement(info, self.now())
            if effects:
                log.info("scheduler_preferred", peer=addr[0], version=info.version)
            self.apply(effects)

    # --- timers and probes ------------------------------------------------------------

    async def _timers(self) -> None:
        while True:
            delay = max(0.0, self._core.get_timer() - self.now())
            self._timer_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._timer_wake.wait()
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        set_keepalive(sock)
        peername = writer.get_extra_info("peername") or ("?", 0)
        conn_id = next(self._ids)
        peer = _Peer(conn_id, str(peername[0]), writer, Connection())
        self._peers[conn_id] = peer
        current = asyncio.current_task()
        if current is not None:
            self._readers.add(current)
            current.add_done_callback(self._readers.discard)
        peer.drainer = self._spawn(self._drain(peer))
        reason = "closed"
        try:
            reason = await self._read_loop(peer, reader)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
        except TimeoutError:
            reason = "timed out"
        except (OSError, asyncio.IncompleteReadError) as exc:
            reason = f"connection error: {exc}"
        finally:
            if not peer.monitor or peer.closed:
                self._finish(peer, reason)

    def _finish(self, peer: _Peer, reason: str) -> None:
        if peer.nodename is not None:
            log.info(
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

    async def _read_loop(self, peer: _Peer, reader: asyncio.StreamReader) -> str:
        self._flush(peer)
        logged_in = False
        while not peer.closed:
            timeout = _IDLE_READ if logged_in else self.settings.handshake_timeout
            try:
                async with asyncio.timeout(timeout) as deadline:
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                if logged_in and deadline.expired():
                    continue  # idle daemons are fine; keepalive finds dead ones
                # Not our deadline: the socket itself failed with ETIMEDOUT (keepalive or
                # the user timeout gave up on the peer).  The reader keeps raising that
                # error, so going round again would spin forever.
                raise
            peer.conn.receive_data(data)
            while (event := peer.conn.next_event()) is not NEED_DATA:
                self._flush(peer)
                if isinstance(event, ConnectionClosed):
                    return "closed by peer"
                if isinstance(event, Handshake):
                    self._core.peer_connected(
                        peer.conn_id, peer.ip, event.protocol, event.peer_version
                    )
                    continue
                self.apply(self._core.handle_message(peer.conn_id, event, self.now()))
                if peer.monitor:
                    return "monitor"  # never read from a monitor again (§5.5)
                if not logged_in and (host := self._core.host_by_conn(peer.conn_id)):
                    logged_in = True
                    peer.nodename, peer.host_id = host.nodename, host.host_id
                    log.info(
                        "daemon_logged_in",
                        peer=peer.ip,
                        host_id=host.host_id,
                        nodename=host.nodename,
                        max_jobs=host.max_jobs,
                        protocol=host.protocol,
                    )
            self._flush(peer)
            if not data:
                return "closed by peer"
        return "closed"

    def _flush(self, peer: _Peer) -> None:
        data = peer.conn.data_to_send()
        if data and not peer.closed:
            peer.writer.write(data)
            peer.wake.set()

    async def _drain(self, peer: _Peer) -> None:
        """Drain *peer*'s writes; close it if it stalls or hoards our data."""
        while not peer.closed:
            await peer.wake.wait()
            peer.wake.clear()
            if peer.monitor:
                continue
            try:
                buffered = peer.writer.transport.get_write_buffer_size()
                if buffered > self.settings.daemon_buffer_limit:
                    raise TimeoutError  # noqa: TRY301 - same treatment as a stalled drain
                async with asyncio.timeout(self.settings.send_timeout):
                    await peer.writer.drain()
            except (OSError, TimeoutError):
                self._finish(peer, "send failed")
                return


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
