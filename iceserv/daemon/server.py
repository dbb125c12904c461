"""The daemon's asyncio shell: listeners, connections, timers, and carrying out the core's effects.

This module owns :class:`Daemon`: the Unix socket (reference §1.2) and the
TCP port (10245; not opened with ``--no-remote`` or without chroot; with
``-i`` on that interface's address and 127.0.0.1), one read loop per
accepted connection (handshake, then every decoded message goes to the
core), the timers the core arms, the scheduler link's I/O
(:class:`~iceserv.daemon.scheduler_link.SchedulerLink`, for which it is the
owner), STATS from ``/proc``, and the work the core starts: compiles
(:class:`~iceserv.daemon.remote_job.CompileJob`), environment installs
(:class:`~iceserv.daemon.env_transfer.Installer`), VERIFY_ENV and native
environments.  Every decision is the core's
(:class:`~iceserv.daemon.core.DaemonCore`); this module holds none.
Empty connections (the scheduler's reachability probes) never reach the
core.  Graceful stop: stop accepting, end every client (killing running
compilers), leave the scheduler.

Hostile peers (issue 20): both listeners accept through
:class:`~iceserv.netio.Listener` (a pause with back-off when descriptors
run out, no traceback per attempt); TCP connections count against
``max_clients`` and ``max_clients_per_host``, the Unix socket against its
own ``max_local_clients``, so a remote flood never refuses a local client.
The handshake has ``handshake_timeout`` in all from the accept, and a
message that has started must be complete within ``message_timeout``: a
drip of bytes extends neither.  A client the core paused is not read from
(``PauseReading``): its input stays in the kernel.  When a client that made
us hold more than a MiB goes (counted decompressed: a FILE_CHUNK of zeros is
~70 bytes on the wire and 1 MiB in memory), freed heap is handed back to the
system (``malloc_trim``), or the RSS it cost would stay: glibc returns freed
heap by itself only from the top, and one small chunk still in use (or parked
in its per-thread cache) above the freed buffers keeps them all resident.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import itertools
import os
import random
import shutil
import socket
import time
from typing import TYPE_CHECKING, Any, Final

import structlog

from iceserv.daemon.core import DaemonCore
from iceserv.daemon.effects import (
    AbortUnpack,
    AnnounceLogin,
    AnswerInternals,
    ArmTimer,
    BuildNative,
    ClientConnected,
    ClientGone,
    Close,
    CompileFinished,
    ConnKind,
    CountJobCpu,
    DropScheduler,
    EnvPushed,
    EnvVerified,
    FeedCompile,
    FeedUnpack,
    FinishUnpack,
    GoneReason,
    HoldEnv,
    KillCompile,
    LoadSampled,
    Log,
    NativeEnvBuilt,
    NativeResolved,
    NativesFound,
    PauseReading,
    PushEnv,
    Received,
    ReleaseEnv,
    ResolveNative,
    ResumeReading,
    SchedulerConnecting,
    SchedulerDown,
    SchedulerUp,
    SealChannel,
    Send,
    SendFile,
    SendStats,
    StartCompile,
    StartUnpack,
    Stop,
    TimerExpired,
    ToScheduler,
    Unpacked,
    UnpackFailed,
    VerifyEnvironment,
    WakeScheduler,
)
from iceserv.daemon.env_transfer import Installer, unpack_server
from iceserv.daemon.environments import EnvInstallError, EnvironmentCache
from iceserv.daemon.load import (
    LoadTracker,
    Sample,
    memory_limit_mb,
    parse_meminfo,
    parse_proc_stat,
)
from iceserv.daemon.metrics import DaemonMetrics
from iceserv.daemon.native import NativeEnvError, NativeEnvironments
from iceserv.daemon.pusher import PushError, push_environment
from iceserv.daemon.remote_job import CompileJob, JobContext, verify_environment
from iceserv.daemon.scheduler_link import LinkSettings, SchedulerLink
from iceserv.daemon.slots import FULL_LOAD
from iceserv.daemon.states import EXIT_NO_HOSTS
from iceserv.errors import ProtocolError
from iceserv.hostfacts import set_keepalive
from iceserv.netio import (
    Admission,
    ConnectionBudget,
    Listener,
    Throttle,
    bind_listeners,
    host_key,
    host_port,
)
from iceserv.netio import open_stream as _open_stream
from iceserv.protocol import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    FileChunk,
    Handshake,
    Login,
    Stats,
    StatusText,
)
from iceserv.protocol.endpoint import iceserv_endpoint, tcp_address
from iceserv.protocol.sealing import Opener, Sealer

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence

    from iceserv.clock import Clock
    from iceserv.daemon.effects import Effect, Event, FromScheduler
    from iceserv.daemon.jobstarter import JobStarter
    from iceserv.daemon.sandbox import RunAs
    from iceserv.daemon.settings import ServerSettings
    from iceserv.daemon.slots import Slots
    from iceserv.protocol import Message

__all__ = ["Daemon"]

log = structlog.get_logger()

_READ_LIMIT: Final = 65536
#: A client that made us hold more than this (read, or decompressed from its FILE_CHUNKs)
#: leaves freed heap worth handing back (malloc_trim).
_TRIM_AFTER: Final = 1 << 20
_TRIM_DELAY: Final = 0.5
_REFUSAL_LOG_INTERVAL: Final = 10.0
_LINGER_RESET: Final = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {1, 0}
_LOCAL_KEY: Final = "local"


@dataclasses.dataclass(slots=True, eq=False)
class _Peer:
    """One accepted connection: its stream, its codec, and whether the core closed it."""

    conn_id: int
    peer: str
    writer: asyncio.StreamWriter
    conn: Connection
    closing: bool = False
    #: Bytes read from it plus what its FILE_CHUNKs decompressed to (what it cost us).
    received: int = 0
    readable: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.readable.set()


class Daemon:
    """A running compile daemon; see the module docstring."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        run_as: RunAs,
        clock: Clock,
        starter: JobStarter,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.run_as = run_as
        self.clock = clock
        self.starter = starter
        self.cache = EnvironmentCache(
            settings.env_basedir, settings.cache_limit, run_as, clock, nice=settings.nice
        )
        self.native = NativeEnvironments(
            self.cache,
            settings.native_command,
            run_as,
            dict(settings.child_environ),
            max_builds=settings.max_native_builds,
            default_compression=settings.native_compression,
        )
        self.unpackers = unpack_server()  # the fork server of unpackers; started on first use
        self.tracker = LoadTracker(os.cpu_count() or 1)
        self.link = SchedulerLink(
            LinkSettings(
                scheduler=settings.scheduler,
                netname=settings.netname,
                discovery_port=settings.discovery_port,
                broadcasts=settings.broadcasts,
                multicast=settings.multicast,
                fast_reconnect=settings.fast_reconnect,
                family=settings.family,
                host_addresses=settings.host_addresses,
                auth=settings.auth,
                keys=settings.keys,
                encrypt=settings.encrypt,
            ),
            self,
            rng or random.Random(),  # noqa: S311 - reconnect jitter, not security
        )
        self.core = DaemonCore(settings, port=settings.port)
        #: Running totals for ``/metrics``: fed every event and every batch of effects.
        self.metrics = DaemonMetrics()
        self.jobs = JobContext(
            settings=settings,
            cache=self.cache,
            run_as=run_as,
            starter=starter,
            environ=settings.child_environ,
            memory_limit_mb=self.memory_limit_mb,
        )
        self.port = settings.port
        self.free_mem_mb = 0
        self._cpu_seen = 0.0
        self._ids = itertools.count(1)
        self._peers: dict[int, _Peer] = {}
        self._compiles: dict[int, CompileJob] = {}
        self._installers: dict[int, Installer] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._unix: Listener | None = None
        #: The iceserv-only abstract sockets (iceserv.protocol.endpoint): same service.
        self._endpoints: list[Listener] = []
        self._servers: list[Listener] = []  # the TCP listeners
        self._tcp_budget = ConnectionBudget(
            total=settings.max_clients, per_host=settings.max_clients_per_host
        )
        self._local_budget = ConnectionBudget(
            total=settings.max_local_clients, per_host=settings.max_local_clients
        )
        self._refusals = Throttle(_REFUSAL_LOG_INTERVAL)
        self._trim: asyncio.TimerHandle | None = None
        self._libc = _libc()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Native environment work (the prebuild, path checks, builds): cancelled at close,
        #: since nobody waits for it then (a build's process group is killed).
        self._native_tasks: set[asyncio.Task[Any]] = set()
        self._link_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set after every event: a slot may have been freed
        #: Draining (D-Bus ``Drain``): STATS report full load, so no new remote jobs come.
        self.draining = False
        self._effects: dict[type, Callable[[Any], Coroutine[Any, Any, None] | None]] = {
            Send: self._send,
            SendFile: self._send_file,
            Close: self._close,
            PauseReading: self._pause_reading,
            ResumeReading: self._resume_reading,
            ToScheduler: self._to_scheduler,
            AnnounceLogin: self._announce,
            DropScheduler: self._drop_scheduler,
            SendStats: self._send_stats,
            WakeScheduler: self._wake_scheduler,
            AnswerInternals: self._answer_internals,
            ArmTimer: self._arm,
            StartCompile: self._start_compile,
            FeedCompile: self._feed_compile,
            KillCompile: self._kill_compile,
            HoldEnv: self._hold_env,
            ReleaseEnv: self._release_env,
            StartUnpack: self._start_unpack,
            FeedUnpack: self._feed_unpack,
            FinishUnpack: self._finish_unpack,
            AbortUnpack: self._abort_unpack,
            VerifyEnvironment: self._verify,
            ResolveNative: self._resolve_native,
            BuildNative: self._build_native,
            PushEnv: self._push_env,
            SealChannel: self._seal_channel,
            CountJobCpu: self._count_cpu,
            Log: self._log,
        }

    # --- views -----------------------------------------------------------------------

    @property
    def slots(self) -> Slots:
        """The core's slot accounting (read-only use)."""
        return self.core.slots

    @property
    def client_count(self) -> int:
        """Connected clients (1.4's ``clients.size()``)."""
        return self.core.client_count

    @property
    def scheduler_connected(self) -> bool:
        """Whether we are logged in to a scheduler."""
        return self.link.connected

    @property
    def own_ip(self) -> str:
        """Our address on the scheduler connection ("" without one)."""
        return self.core.own_ip

    @property
    def in_flight(self) -> int:
        """Remote compiles and installs still running."""
        return self.core.slots.children

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Wipe the cache, bind the listeners, start talking to the scheduler."""
        self.cache.wipe(keep_native=True)
        self.native.load()
        self._sample_stats()  # the first STATS then covers the time since start-up
        path = self.settings.unix_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0)  # world-connectable, as 1.4 binds it
        try:
            unix.bind(str(path))
            unix.listen(1024)
            unix.setblocking(False)  # noqa: FBT003 - the socket API's spelling
        except OSError:
            unix.close()
            raise
        finally:
            os.umask(old_umask)
        self._unix = Listener(unix, self._accepted_unix, name="daemon-unix")
        self._unix.start()
        opened, self.port = await self._listen(
            self.settings.listen_addresses, self.port, self.settings.family
        )
        self._servers = opened
        addresses = [str(path)] + ([tcp_address(self.port)] if opened and self.port else [])
        self._endpoints = [e for e in map(self._open_endpoint, addresses) if e is not None]
        await self._carry_out(
            self.core.reconfigure(self.settings, port=self.port, now=self.clock.now())
        )
        self._link_task = asyncio.create_task(self.link.run())
        self._spawn_native(self._prebuild())
        log.info(
            "daemon_started",
            socket=str(path),
            port=self.port,
            listen=[host_port(*listener.address) for listener in opened],
            max_kids=self.settings.max_kids,
            chroot_possible=self.settings.chroot_possible,
            user=self.run_as.name,
        )

    def _open_endpoint(self, address: str) -> Listener | None:
        """Listen on the iceserv-only abstract socket for *address*; None if that fails.

        It serves exactly as the Unix socket does (same budget, same core), so
        a client that reaches it knows it talks to iceserv and may send
        iceserv's own messages (``icecc --slots``).  Without it those clients
        count this host's slots alone: nothing else depends on it.
        """
        name = iceserv_endpoint(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(name)
            sock.listen(128)
            sock.setblocking(False)  # noqa: FBT003 - the socket API's spelling
        except OSError as exc:
            sock.close()
            log.warning("iceserv_endpoint_unavailable", address=address, error=str(exc))
            return None
        listener = Listener(sock, self._accepted_iceserv, name="daemon-iceserv")
        listener.start()
        return listener

    async def stop_accepting(self) -> None:
        """Close the listeners, leave the scheduler, end every client not being compiled for."""
        for server in self._servers:
            server.close()
        if self._unix is not None:
            self._unix.close()
        for endpoint in self._endpoints:
            endpoint.close()
        await self._stop_link()
        await self._feed(Stop(EXIT_NO_HOSTS))

    async def _stop_link(self) -> None:
        if self._link_task is not None:
            self._link_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._link_task
            self._link_task = None
            await self._feed(SchedulerDown())

    async def reconfigure(self, settings: ServerSettings) -> None:
        """Apply reloaded *settings* without touching running compiles (SIGHUP, issue 7).

        Slots, niceness and the cache limit apply at once (waiting work is
        granted if slots were added).  Changed TCP listeners (``--no-remote``,
        port, interface) are closed and reopened; if the new ones cannot be
        bound the old ones are restored and ``OSError`` is raised.  When what
        the scheduler knows of us changed (slots, name, network, scheduler,
        port), the daemon logs in again on a new connection, the only way a
        1.4 scheduler learns it; as when a scheduler goes away, requests still
        waiting for its answer are told to compile locally.  The Unix socket,
        ``run_as``, the environment directory and connected clients stay.
        """
        old = self.settings
        if (settings.listen_addresses, settings.port, settings.family) != (
            old.listen_addresses,
            old.port,
            old.family,
        ):
            await self._rebind(settings, old)
        self.settings = settings
        self._tcp_budget.total = settings.max_clients
        self._tcp_budget.per_host = settings.max_clients_per_host
        self._local_budget.total = self._local_budget.per_host = settings.max_local_clients
        self.jobs.settings = settings
        self.cache.nice = settings.nice
        self.cache.limit = settings.cache_limit
        await self._carry_out(self.core.reconfigure(settings, port=self.port, now=self.clock.now()))
        seen_by_scheduler = (
            "max_kids",
            "nodename",
            "netname",
            "scheduler",
            "port",
            "listen_addresses",
            "family",
            "discovery_port",
            "chroot_possible",
            "auth",
            "keys",
        )
        if any(getattr(settings, n) != getattr(old, n) for n in seen_by_scheduler):
            await self._restart_link()

    async def _rebind(self, settings: ServerSettings, old: ServerSettings) -> None:
        for server in self._servers:
            server.close()
        try:
            opened, port = await self._listen(
                settings.listen_addresses, settings.port, settings.family
            )
        except OSError:
            self._servers, self.port = await self._listen(
                old.listen_addresses, self.port, old.family
            )
            raise
        self._servers = opened
        self.port = port

    async def _listen(
        self, addresses: Sequence[str], port: int, family: str
    ) -> tuple[list[Listener], int]:
        opened: list[Listener] = []
        try:
            for address in addresses:
                for sock in bind_listeners([address], port, family=family, backlog=1024):
                    port = int(sock.getsockname()[1])  # port 0: the one chosen
                    opened.append(Listener(sock, self._accepted_tcp, name="daemon"))
        except OSError:
            for listener in opened:
                listener.close()
            raise
        for listener in opened:
            listener.start()
        return opened, port

    async def _restart_link(self) -> None:
        if self._link_task is None:
            return  # stopping: no new login
        await self._stop_link()
        self.link.settings = dataclasses.replace(
            self.link.settings,
            scheduler=self.settings.scheduler,
            netname=self.settings.netname,
            discovery_port=self.settings.discovery_port,
            family=self.settings.family,
            auth=self.settings.auth,
            keys=self.settings.keys,
        )
        self._link_task = asyncio.create_task(self.link.run())

    async def wait_idle(self) -> None:
        """Return once no compile or install runs (the caller bounds the wait)."""
        while self.in_flight:
            self._idle.clear()
            await self._idle.wait()

    async def close(self) -> None:
        """End every client (killing running compilers) and remove the Unix socket."""
        await self.stop_accepting()
        await self._feed(Stop(EXIT_NO_HOSTS, compiles_too=True))
        for task in list(self._native_tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.write_timeout)
        for task in list(self._tasks):
            task.cancel()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._trim is not None:
            self._trim.cancel()
        self.native.close()
        self.unpackers.stop()
        with contextlib.suppress(OSError):
            self.settings.unix_socket.unlink()
        log.info("daemon_stopped")

    async def stop(self) -> None:
        """Stop at once: :meth:`stop_accepting`, then :meth:`close`."""
        await self.close()

    # --- connections -----------------------------------------------------------------

    def _accepted_tcp(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Admit a TCP connection within the TCP budgets (the listener's callback)."""
        ip = address[0]
        key = host_key(ip)
        answer = self._tcp_budget.admit(key)
        if answer is not Admission.ADMITTED:
            self._refuse(sock, ip, answer)
            return
        kind = ConnKind(unix=False, loopback=_is_loopback(ip))
        self._start_serving(sock, host_port(ip, address[1]), kind, self._tcp_budget, key)

    def _accepted_unix(
        self, sock: socket.socket, _: tuple[str, int], *, iceserv: bool = False
    ) -> None:
        """Admit a Unix-socket connection within its own budget, never spent by TCP peers."""
        answer = self._local_budget.admit(_LOCAL_KEY)
        if answer is not Admission.ADMITTED:
            self._refuse(sock, "local", answer)
            return
        kind = ConnKind(unix=True, loopback=False, iceserv=iceserv)
        self._start_serving(sock, "local", kind, self._local_budget, _LOCAL_KEY)

    def _accepted_iceserv(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Admit a connection on the iceserv-only endpoint: one of our own clients."""
        self._accepted_unix(sock, address, iceserv=True)

    def _refuse(self, sock: socket.socket, peer: str, answer: Admission) -> None:
        count = self._refusals.note(time.monotonic())
        if count:
            log.warning(
                "connection_refused",
                peer=peer,
                reason=answer.value,
                refusals=count,
                tcp=self._tcp_budget.count,
                local=self._local_budget.count,
            )
        with contextlib.suppress(OSError):  # reset: no TIME_WAIT left behind
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()

    def _start_serving(
        self, sock: socket.socket, peer: str, kind: ConnKind, budget: ConnectionBudget, key: str
    ) -> None:
        deadline = asyncio.get_running_loop().time() + self.settings.handshake_timeout
        self._spawn(self._accept(sock, peer, kind, deadline, lambda: budget.release(key)))

    async def _accept(
        self,
        sock: socket.socket,
        peer: str,
        kind: ConnKind,
        deadline: float,
        release: Callable[[], None],
    ) -> None:
        try:
            try:
                reader, writer = await _open_stream(sock, limit=_READ_LIMIT)
            except OSError:
                sock.close()
                return
            if not kind.unix:
                set_keepalive(sock, (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
            item = _Peer(next(self._ids), peer, writer, Connection())
            self._peers[item.conn_id] = item
            try:
                await self._serve(item, reader, peer, kind, deadline)
            finally:
                self._peers.pop(item.conn_id, None)
                timer = self._timers.pop(item.conn_id, None)
                if timer is not None:
                    timer.cancel()
                writer.close()
                if item.received > _TRIM_AFTER:
                    self._trim_soon()
        finally:
            release()

    def _trim_soon(self) -> None:
        """Hand freed heap back to the system shortly (once for a burst of departures)."""
        if self._trim is None and self._libc is not None:
            self._trim = asyncio.get_running_loop().call_later(_TRIM_DELAY, self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        if self._libc is not None:
            released = bool(self._libc.malloc_trim(0))
            log.debug("heap_trimmed", released=released)

    async def _serve(
        self,
        item: _Peer,
        reader: asyncio.StreamReader,
        peer: str,
        kind: ConnKind,
        deadline: float,
    ) -> None:
        """Handshake, then pass every message to the core until it or the client ends."""
        item.writer.write(item.conn.data_to_send())
        try:
            async with asyncio.timeout_at(deadline):
                first = await self._read_event(item, reader)
        except ProtocolError as exc:
            log.warning("client_protocol_error", peer=peer, error=str(exc), state="handshake")
            return
        except (OSError, TimeoutError) as exc:
            log.debug("connection_without_handshake", peer=peer, error=str(exc))
            return
        if not isinstance(first, Handshake):
            log.debug("connection_without_handshake", peer=peer)  # e.g. a scheduler probe
            return
        await self._feed(ClientConnected(item.conn_id, peer, kind, first.protocol))
        reason, detail = GoneReason.EOF, ""
        try:
            while not item.closing:
                event = await self._read_event(item, reader)  # the core's timer bounds this
                if event is None:
                    break
                if isinstance(event, Handshake):
                    reason, detail = GoneReason.PROTOCOL_ERROR, "a second handshake"
                    break
                item.received += _decompressed(event)
                await self._feed(Received(item.conn_id, event), reader=item.conn_id)
        except ProtocolError as exc:
            reason, detail = GoneReason.PROTOCOL_ERROR, str(exc)
        except OSError as exc:  # TimeoutError too: a message missed its deadline
            reason, detail = GoneReason.IO_ERROR, str(exc) or type(exc).__name__
        if not item.closing:
            await self._feed(ClientGone(item.conn_id, reason, detail))

    async def _read_event(
        self, item: _Peer, reader: asyncio.StreamReader
    ) -> Message | Handshake | None:
        """Return the next message; one under way must be complete within ``message_timeout``.

        Nothing is decoded while the core has paused the client.
        """
        conn = item.conn
        started: float | None = None
        while True:
            if not item.readable.is_set():
                await item.readable.wait()
            event = conn.next_event()
            out = conn.data_to_send()
            if out:
                item.writer.write(out)
            if isinstance(event, ConnectionClosed):
                return None
            if event is not NEED_DATA:
                return event
            loop = asyncio.get_running_loop()
            if conn.buffered and started is None:
                started = loop.time()
            if started is None:
                data = await reader.read(_READ_LIMIT)
            else:
                try:
                    async with asyncio.timeout_at(started + self.settings.message_timeout):
                        data = await reader.read(_READ_LIMIT)
                except TimeoutError:
                    msg = f"a message took over {self.settings.message_timeout:g} s to arrive"
                    raise TimeoutError(msg) from None
            if data and started is None:
                started = loop.time()
            item.received += len(data)
            conn.receive_data(data)

    # --- the core --------------------------------------------------------------------

    async def _feed(self, event: Event, *, reader: int = 0) -> None:
        """Give *event* to the core and carry out what it answers.

        *reader* is the client whose read loop fed the event: what it is sent
        is drained before the loop reads on (back-pressure, as 1.4 blocks on
        the write); other clients' writes drain in the background, so one
        slow client never stalls the scheduler link or another client.
        """
        now = self.clock.now()
        effects = self.core.handle(event, now)
        self.metrics.event(event, now)
        await self._carry_out(effects, reader=reader)
        self._idle.set()

    async def _carry_out(self, effects: list[Effect], *, reader: int = 0) -> None:
        self.metrics.effects(effects, self.clock.now())
        touched: set[int] = set()
        for effect in effects:
            if isinstance(effect, Send | SendFile):
                touched.add(effect.conn_id)
            pending = self._effects[type(effect)](effect)
            if pending is not None:
                await pending
        for conn_id in touched:
            if conn_id == reader:
                await self._flush(conn_id)
            else:
                self._spawn(self._flush(conn_id))
        if any(isinstance(e, ToScheduler | AnnounceLogin | SendStats) for e in effects):
            self._spawn(self.link.flush())  # a slow scheduler never holds a client's reads

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- effects: clients ------------------------------------------------------------

    def _send(self, effect: Send) -> None:
        item = self._peers.get(effect.conn_id)
        if item is None or item.writer.is_closing():
            return
        item.conn.send(effect.message)
        item.writer.write(item.conn.data_to_send())

    def _send_file(self, effect: SendFile) -> None:
        item = self._peers.get(effect.conn_id)
        if item is None or item.writer.is_closing():
            return
        item.conn.send_file(effect.data)
        item.writer.write(item.conn.data_to_send())

    async def _flush(self, conn_id: int) -> None:
        item = self._peers.get(conn_id)
        if item is None or item.writer.is_closing():
            return
        try:
            async with asyncio.timeout(self.settings.write_timeout):
                await item.writer.drain()
        except (OSError, TimeoutError):
            item.writer.close()  # its read loop ends and reports the client gone

    def _close(self, effect: Close) -> None:
        item = self._peers.get(effect.conn_id)
        if item is not None:
            item.closing = True
            item.readable.set()  # a paused read loop wakes up and sees the end
            item.writer.close()  # what was queued still goes out first

    def _seal_channel(self, effect: SealChannel) -> None:
        item = self._peers.get(effect.conn_id)
        if item is not None:
            # Before the read loop decodes its next message: the ticket was the last clear one.
            item.conn.open_input(Opener(effect.receive))
            item.conn.seal_output(Sealer(effect.send))

    def _pause_reading(self, effect: PauseReading) -> None:
        item = self._peers.get(effect.conn_id)
        if item is not None:
            item.readable.clear()

    def _resume_reading(self, effect: ResumeReading) -> None:
        item = self._peers.get(effect.conn_id)
        if item is not None:
            item.readable.set()

    def _arm(self, effect: ArmTimer) -> None:
        old = self._timers.pop(effect.key, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, effect.deadline - self.clock.now())
        loop = asyncio.get_running_loop()
        self._timers[effect.key] = loop.call_later(delay, self._fire, effect.key)

    def _fire(self, key: int) -> None:
        self._timers.pop(key, None)
        self._spawn(self._feed(TimerExpired(key)))

    def _log(self, effect: Log) -> None:
        getattr(log, effect.level)(effect.event, **effect.fields)

    # --- effects: compiles -----------------------------------------------------------

    def _start_compile(self, effect: StartCompile) -> None:
        item = self._peers.get(effect.conn_id)
        peer = item.peer if item is not None else "?"
        job = CompileJob(self.jobs, effect.job, effect.protocol, peer)
        job.feed(effect.pieces, ended=effect.ended)
        self._compiles[effect.conn_id] = job
        self._spawn(self._run_compile(effect.conn_id, job))

    async def _run_compile(self, conn_id: int, job: CompileJob) -> None:
        try:
            report = await job.run()
        finally:
            self._compiles.pop(conn_id, None)
        await self._feed(CompileFinished(conn_id, report))

    def _feed_compile(self, effect: FeedCompile) -> Coroutine[Any, Any, None] | None:
        """Hand source on; over the job's input limit the reader awaits the compiler.

        The client is read again only once the compiler has taken the source
        (back-pressure to the sender), or the job ended without it.
        """
        job = self._compiles.get(effect.conn_id)
        if job is None:
            return None
        job.feed(effect.pieces, ended=effect.ended)
        return job.room() if job.full else None

    def _kill_compile(self, effect: KillCompile) -> None:
        job = self._compiles.get(effect.conn_id)
        if job is not None:
            job.kill()

    def _hold_env(self, effect: HoldEnv) -> None:
        self.cache.acquire(effect.target, effect.name)

    def _release_env(self, effect: ReleaseEnv) -> None:
        self.cache.release(effect.target, effect.name)

    async def _verify(self, effect: VerifyEnvironment) -> None:
        ok = await verify_environment(self.jobs, effect.target, effect.name)
        await self._feed(EnvVerified(effect.conn_id, ok))

    async def _prebuild(self) -> None:
        """Find the compilers to have environments ready for; the core queues their builds."""
        compilers = self.settings.native_compilers
        found, skipped = await self.native.discover(compilers)
        for compiler, reason in skipped:
            log.info("native_compiler_skipped", compiler=compiler, reason=reason)
        await self._feed(NativesFound(tuple(found)))

    def _spawn_native(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        self._native_tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._native_tasks.discard)

    def _resolve_native(self, effect: ResolveNative) -> None:
        self._spawn_native(self._resolve(effect))

    async def _resolve(self, effect: ResolveNative) -> None:
        try:
            key, path = await self.native.resolve(
                effect.compiler, effect.extrafiles, effect.compression
            )
        except (NativeEnvError, OSError) as exc:
            await self._feed(NativeResolved(effect.conn_id, None, error=str(exc)))
            return
        await self._feed(NativeResolved(effect.conn_id, key, path=path))

    def _build_native(self, effect: BuildNative) -> None:
        self._spawn_native(self._native(effect))

    async def _native(self, effect: BuildNative) -> None:
        try:
            path = await self.native.build(effect.key)
        except (NativeEnvError, OSError) as exc:
            await self._feed(NativeEnvBuilt(effect.key, error=str(exc)))
            return
        await self._feed(NativeEnvBuilt(effect.key, path=str(path)))

    def _push_env(self, effect: PushEnv) -> None:
        self._spawn_native(self._push(effect))

    async def _push(self, effect: PushEnv) -> None:
        try:
            result = await push_environment(effect, within=self.settings.push_timeout)
        except PushError as exc:
            await self._feed(EnvPushed(effect.host, effect.port, effect.name, error=str(exc)))
            return
        await self._feed(
            EnvPushed(effect.host, effect.port, effect.name, result.size, result.seconds)
        )

    def _count_cpu(self, effect: CountJobCpu) -> None:
        self.tracker.add_job_cpu(effect.msec)

    # --- effects: environment installs -----------------------------------------------

    async def _start_unpack(self, effect: StartUnpack) -> None:
        try:
            installer = Installer(self.cache, effect.target, effect.name, self.unpackers)
            self._installers[effect.conn_id] = installer
            await installer.start()
        except (EnvInstallError, OSError) as exc:
            await self._unpack_failed(effect.conn_id, str(exc))

    async def _feed_unpack(self, effect: FeedUnpack) -> None:
        installer = self._installers.get(effect.conn_id)
        if installer is None:
            return
        try:
            await installer.feed(effect.data)
        except EnvInstallError as exc:
            await self._unpack_failed(effect.conn_id, str(exc))

    async def _finish_unpack(self, effect: FinishUnpack) -> None:
        installer = self._installers.get(effect.conn_id)
        if installer is None:
            return
        try:
            size = await installer.finish()
        except EnvInstallError as exc:
            await self._unpack_failed(effect.conn_id, str(exc))
            return
        del self._installers[effect.conn_id]
        evicted = self.cache.evict(keep=installer.key)
        await self._feed(Unpacked(effect.conn_id, size, self.cache.size, tuple(evicted)))

    async def _unpack_failed(self, conn_id: int, error: str) -> None:
        installer = self._installers.pop(conn_id, None)
        if installer is not None:
            await installer.abort()
        await self._feed(UnpackFailed(conn_id, error))

    async def _abort_unpack(self, effect: AbortUnpack) -> None:
        installer = self._installers.pop(effect.conn_id, None)
        if installer is not None:
            await installer.abort()

    # --- effects: the scheduler ------------------------------------------------------

    def _to_scheduler(self, effect: ToScheduler) -> None:
        self.link.send(effect.message)

    def _announce(self, effect: AnnounceLogin) -> None:
        if self.link.send(self.login(reannounce=effect.reannounce)):
            self._send_stats(SendStats())

    def _send_stats(self, effect: SendStats) -> None:
        if not self.link.connected:
            return
        stats = self.stats(force=effect.force)
        if stats is not None:
            self.link.send(stats)

    def _drop_scheduler(self, effect: DropScheduler) -> None:
        self.link.drop(effect.reason)

    def _wake_scheduler(self, effect: WakeScheduler) -> None:
        self.link.wake(effect.host, effect.port)

    def _answer_internals(self, effect: AnswerInternals) -> None:
        self.link.send(StatusText(self.internals(effect.clients)))

    async def scheduler_event(
        self, event: SchedulerConnecting | SchedulerUp | SchedulerDown | FromScheduler
    ) -> None:
        """Feed what the link reports to the core (the link's ``LinkOwner``)."""
        if isinstance(event, SchedulerUp):
            self.tracker.reset()  # logged in: the first STATS goes out whatever the load
        await self._feed(event)

    # --- what the scheduler hears ----------------------------------------------------

    def drain(self) -> None:
        """Take no new remote jobs; nothing running is touched (D-Bus ``Drain``).

        While draining, STATS tell the scheduler the load is full (1000), which
        any scheduler, 1.4's too, reads as "give me no jobs"; jobs it already
        assigned still arrive and run, and local clients are served as usual.
        The new load goes out at once.
        """
        self._set_draining(draining=True)

    def resume(self) -> None:
        """Take remote jobs again after :meth:`drain`; the real load goes out at once."""
        self._set_draining(draining=False)

    def _set_draining(self, *, draining: bool) -> None:
        self.draining = draining
        self.tracker.reset()  # the next STATS is sent whatever the load did
        self._send_stats(SendStats())

    def login(self, *, reannounce: bool) -> Login:
        """LOGIN as 1.4 sends it (the re-announcement has port 0 and no platform)."""
        nodename = self.settings.nodename or os.uname().nodename
        envs = self.cache.installed()
        features = self.settings.supported_features
        if reannounce:
            return Login(
                port=0,
                envs=envs,
                nodename=nodename,
                chroot_possible=self.settings.chroot_possible,
                supported_features=features,
            )
        return Login(
            port=self.port if self.settings.remote_allowed else 0,
            max_kids=self.settings.max_kids,
            envs=envs,
            nodename=nodename,
            host_platform=self.settings.platform,
            chroot_possible=self.settings.chroot_possible,
            noremote=not self.settings.remote_allowed,
            supported_features=features,
        )

    def stats(self, *, force: bool = False) -> Stats | None:
        """STATS from ``/proc`` if the load changed enough (§5.2.4) or *force*."""
        sample = self._sample_stats()
        if sample is None or not (sample.send or force):
            return None
        return Stats(
            load=FULL_LOAD if self.draining else sample.load,
            load_avg1=sample.load_avg[0],
            load_avg5=sample.load_avg[1],
            load_avg10=sample.load_avg[2],
            free_mem=sample.free_mem_mb,
        )

    def memory_limit_mb(self) -> int:
        """Per-job memory limit from the latest free-memory figure."""
        if not self.free_mem_mb:
            self._sample_stats()
        return memory_limit_mb(self.free_mem_mb, self.settings.max_kids)

    def _our_cpu_ms(self) -> int:
        """CPU ms used since the last call by this process and its reaped children.

        Children are the compile helpers (with their compilers), unpackers and
        native builds: 1.4 counts ``RUSAGE_CHILDREN`` the same way, and the
        daemon's own work serving jobs is ours too.
        """
        times = os.times()
        total = times.user + times.system + times.children_user + times.children_system
        used, self._cpu_seen = total - self._cpu_seen, total
        return max(0, int(used * 1000))

    def _sample_stats(self) -> Sample | None:
        try:
            cpu = parse_proc_stat((self.settings.proc_dir / "stat").read_text())
            mem = parse_meminfo((self.settings.proc_dir / "meminfo").read_text())
            disk_free = shutil.disk_usage(self.settings.env_basedir).free
        except (OSError, ValueError) as exc:
            log.warning("stats_unavailable", error=str(exc))
            return None
        self.tracker.add_job_cpu(self._our_cpu_ms())
        free_slots = self.settings.max_kids + 1 - self.core.slots.children
        sample = self.tracker.evaluate(
            cpu=cpu, mem=mem, load_avg=os.getloadavg(), disk_free=disk_free, free_slots=free_slots
        )
        self.free_mem_mb = sample.free_mem_mb
        if sample.load != self.core.load:
            self._spawn(self._feed(LoadSampled(sample.load)))  # a lower load may admit compiles
        return sample

    def internals(self, clients: Sequence[str] = ()) -> str:
        """GET_INTERNALS text (free-form, like 1.4's ``dump_internals``)."""
        lines = [
            f"Node Name: {self.settings.nodename or os.uname().nodename}",
            f"  Remote name: {self.core.own_ip}",
        ]
        lines += [f"  {line}" for line in clients]
        lines.append(f"  Cache Size: {self.cache.size}")
        lines.append(f"  Architecture: {self.settings.platform}")
        lines += [
            f"  Env {env.key}: size {env.size}, idle {env.idle_seconds} s"
            for env in self.cache.describe()
        ]
        lines.append(f"  Current kids: {self.core.slots.children} (max: {self.settings.max_kids})")
        lines.append(f"  load: {self.tracker.current_load}")
        return "\n".join(lines) + "\n"


def _libc() -> Any:  # noqa: ANN401 - a ctypes library handle
    """glibc, for ``malloc_trim`` (None elsewhere: then freed heap stays with the process)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        _ = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def _decompressed(message: Message) -> int:
    """Return what a FILE_CHUNK holds in memory (1 MiB of zeros: ~70 bytes on the wire)."""
    return len(message.data) if isinstance(message, FileChunk) else 0


def _is_loopback(address: str) -> bool:
    address = address.removeprefix("::ffff:")
    try:
        packed = socket.inet_pton(socket.AF_INET, address)
    except OSError:
        return address == "::1"
    return packed[0] == 127
