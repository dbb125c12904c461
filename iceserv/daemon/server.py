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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import random
import shutil
import socket
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
    Received,
    ReleaseEnv,
    SchedulerDown,
    SchedulerUp,
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
)
from iceserv.daemon.env_transfer import Installer
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
from iceserv.daemon.remote_job import CompileJob, JobContext, verify_environment
from iceserv.daemon.scheduler_link import LinkSettings, SchedulerLink, set_keepalive
from iceserv.daemon.slots import FULL_LOAD
from iceserv.daemon.states import EXIT_NO_HOSTS
from iceserv.errors import ProtocolError
from iceserv.protocol import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Handshake,
    Login,
    Stats,
    StatusText,
)

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


@dataclasses.dataclass(slots=True, eq=False)
class _Peer:
    """One accepted connection: its stream, its codec, and whether the core closed it."""

    conn_id: int
    peer: str
    writer: asyncio.StreamWriter
    conn: Connection
    closing: bool = False


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
            self.cache, settings.native_command, run_as, dict(settings.child_environ)
        )
        self.tracker = LoadTracker(os.cpu_count() or 1)
        self.link = SchedulerLink(
            LinkSettings(
                scheduler=settings.scheduler,
                netname=settings.netname,
                discovery_port=settings.discovery_port,
                broadcasts=settings.broadcasts,
                fast_reconnect=settings.fast_reconnect,
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
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._link_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set after every event: a slot may have been freed
        #: Draining (D-Bus ``Drain``): STATS report full load, so no new remote jobs come.
        self.draining = False
        self._effects: dict[type, Callable[[Any], Coroutine[Any, Any, None] | None]] = {
            Send: self._send,
            SendFile: self._send_file,
            Close: self._close,
            ToScheduler: self._to_scheduler,
            AnnounceLogin: self._announce,
            DropScheduler: self._drop_scheduler,
            SendStats: self._send_stats,
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
            BuildNative: self._build_native,
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
        self.cache.wipe()
        self._sample_stats()  # the first STATS then covers the time since start-up
        path = self.settings.unix_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old_umask = os.umask(0)  # world-connectable, as 1.4 binds it
        try:
            self._servers.append(
                await asyncio.start_unix_server(self._accept, path=str(path), limit=_READ_LIMIT)
            )
        finally:
            os.umask(old_umask)
        opened, self.port = await self._listen(self.settings.listen_addresses, self.port)
        self._servers += opened
        await self._carry_out(
            self.core.reconfigure(self.settings, port=self.port, now=self.clock.now())
        )
        self._link_task = asyncio.create_task(self.link.run())
        log.info(
            "daemon_started",
            socket=str(path),
            port=self.port,
            listen=list(self.settings.listen_addresses),
            max_kids=self.settings.max_kids,
            chroot_possible=self.settings.chroot_possible,
            user=self.run_as.name,
        )

    async def stop_accepting(self) -> None:
        """Close the listeners, leave the scheduler, end every client not being compiled for."""
        for server in self._servers:
            server.close()
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
        if (settings.listen_addresses, settings.port) != (old.listen_addresses, old.port):
            await self._rebind(settings, old)
        self.settings = settings
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
            "discovery_port",
            "chroot_possible",
        )
        if any(getattr(settings, n) != getattr(old, n) for n in seen_by_scheduler):
            await self._restart_link()

    async def _rebind(self, settings: ServerSettings, old: ServerSettings) -> None:
        unix, tcp = self._servers[:1], self._servers[1:]
        for server in tcp:
            server.close()
        for server in tcp:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.write_timeout):
                    await server.wait_closed()
        try:
            opened, port = await self._listen(settings.listen_addresses, settings.port)
        except OSError:
            opened, self.port = await self._listen(old.listen_addresses, self.port)
            self._servers = [*unix, *opened]
            raise
        self._servers = [*unix, *opened]
        self.port = port

    async def _listen(
        self, addresses: Sequence[str], port: int
    ) -> tuple[list[asyncio.Server], int]:
        opened: list[asyncio.Server] = []
        try:
            for address in addresses:
                server = await asyncio.start_server(
                    self._accept,
                    address,
                    port,
                    reuse_address=True,
                    backlog=1024,
                    limit=_READ_LIMIT,
                )
                port = server.sockets[0].getsockname()[1]  # port 0: the one chosen
                opened.append(server)
        except OSError:
            for server in opened:
                server.close()
            raise
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
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.write_timeout)
        for task in list(self._tasks):
            task.cancel()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.write_timeout):
                    await server.wait_closed()
        with contextlib.suppress(OSError):
            self.settings.unix_socket.unlink()
        log.info("daemon_stopped")

    async def stop(self) -> None:
        """Stop at once: :meth:`stop_accepting`, then :meth:`close`."""
        await self.close()

    # --- connections -----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._peers) >= self.settings.max_clients:
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        set_keepalive(sock)
        peername = writer.get_extra_info("peername")
        tcp = isinstance(peername, tuple)
        peer = f"{peername[0]}:{peername[1]}" if tcp else "local"
        kind = ConnKind(unix=not tcp, loopback=tcp and _is_loopback(str(peername[0])))
        item = _Peer(next(self._ids), peer, writer, Connection())
        self._peers[item.conn_id] = item
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(item, reader, peer, kind)
        finally:
            self._peers.pop(item.conn_id, None)
            timer = self._timers.pop(item.conn_id, None)
            if timer is not None:
                timer.cancel()
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _serve(
        self, item: _Peer, reader: asyncio.StreamReader, peer: str, kind: ConnKind
    ) -> None:
        """Handshake, then pass every message to the core until it or the client ends."""
        item.writer.write(item.conn.data_to_send())
        try:
            async with asyncio.timeout(self.settings.handshake_timeout):
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
                await self._feed(Received(item.conn_id, event), reader=item.conn_id)
        except ProtocolError as exc:
            reason, detail = GoneReason.PROTOCOL_ERROR, str(exc)
        except OSError as exc:
            reason, detail = GoneReason.IO_ERROR, str(exc) or type(exc).__name__
        if not item.closing:
            await self._feed(ClientGone(item.conn_id, reason, detail))

    async def _read_event(
        self, item: _Peer, reader: asyncio.StreamReader
    ) -> Message | Handshake | None:
        conn = item.conn
        while True:
            event = conn.next_event()
            out = conn.data_to_send()
            if out:
                item.writer.write(out)
            if isinstance(event, ConnectionClosed):
                return None
            if event is not NEED_DATA:
                return event
            conn.receive_data(await reader.read(_READ_LIMIT))

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
            item.writer.close()  # what was queued still goes out first

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

    def _feed_compile(self, effect: FeedCompile) -> None:
        job = self._compiles.get(effect.conn_id)
        if job is not None:
            job.feed(effect.pieces, ended=effect.ended)

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

    def _build_native(self, effect: BuildNative) -> None:
        self._spawn(self._native(effect))

    async def _native(self, effect: BuildNative) -> None:
        try:
            path = await self.native.get(effect.compiler, effect.extrafiles, effect.compression)
        except (NativeEnvError, OSError) as exc:
            await self._feed(NativeEnvBuilt(effect.conn_id, error=str(exc)))
            return
        await self._feed(NativeEnvBuilt(effect.conn_id, path=str(path)))

    def _count_cpu(self, effect: CountJobCpu) -> None:
        self.tracker.add_job_cpu(effect.msec)

    # --- effects: environment installs -----------------------------------------------

    async def _start_unpack(self, effect: StartUnpack) -> None:
        try:
            installer = Installer(self.cache, effect.target, effect.name)
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

    def _answer_internals(self, effect: AnswerInternals) -> None:
        self.link.send(StatusText(self.internals(effect.clients)))

    async def scheduler_event(self, event: SchedulerUp | SchedulerDown | FromScheduler) -> None:
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


def _is_loopback(address: str) -> bool:
    address = address.removeprefix("::ffff:")
    try:
        packed = socket.inet_pton(socket.AF_INET, address)
    except OSError:
        return address == "::1"
    return packed[0] == 127
