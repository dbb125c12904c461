"""The daemon's asyncio shell: listeners, the registry of clients, slots and the scheduler link.

This module owns :class:`Daemon`: the Unix socket (reference §1.2) and the
TCP port (10245; not opened with ``--no-remote`` or without chroot; with
``-i`` on that interface's address and 127.0.0.1), one
:class:`~iceserv.daemon.session.ClientSession` per accepted connection, the
:class:`~iceserv.daemon.slots.Slots`, the environment cache and the
:class:`~iceserv.daemon.scheduler_link.SchedulerLink`, for which it is the
owner (LOGIN contents, STATS from ``/proc``, USE_CS/NO_CS routing,
GET_INTERNALS).  Empty connections (the scheduler's reachability probes)
are accepted and dropped by the session.  Graceful stop: stop accepting,
end every client (killing running compilers), leave the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import random
import shutil
from typing import TYPE_CHECKING, Final

import structlog

from iceserv.daemon.environments import EnvironmentCache
from iceserv.daemon.load import (
    LoadTracker,
    Sample,
    memory_limit_mb,
    parse_meminfo,
    parse_proc_stat,
)
from iceserv.daemon.native import NativeEnvironments
from iceserv.daemon.scheduler_link import LinkSettings, SchedulerLink, set_keepalive
from iceserv.daemon.session import ClientSession
from iceserv.daemon.slots import FULL_LOAD, Slots
from iceserv.protocol import JobDone, JobDoneFlag, Login, Stats

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from iceserv.daemon.environments import Clock
    from iceserv.daemon.remote_job import JobHost
    from iceserv.daemon.sandbox import RunAs
    from iceserv.daemon.settings import ServerSettings
    from iceserv.protocol import Message, NoCS, UseCS

__all__ = ["Daemon"]

log = structlog.get_logger()

_EXIT_IO_ERROR: Final = 107
_EXIT_NO_HOSTS: Final = 116
_READ_LIMIT: Final = 65536


class Daemon:
    """A running compile daemon; see the module docstring."""

    def __init__(self, settings: ServerSettings, *, run_as: RunAs, clock: Clock,
                 rng: random.Random | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.run_as = run_as
        self.child_environ: Mapping[str, str] = settings.child_environ
        self.slots = Slots(settings.max_kids)
        self.cache = EnvironmentCache(settings.env_basedir, settings.cache_limit, run_as, clock,
                                      nice=settings.nice)  # fmt: skip
        self.native = NativeEnvironments(self.cache, settings.native_command, run_as,
                                         dict(settings.child_environ))  # fmt: skip
        self.tracker = LoadTracker(os.cpu_count() or 1)
        self.link = SchedulerLink(
            LinkSettings(scheduler=settings.scheduler, netname=settings.netname,
                         discovery_port=settings.discovery_port, broadcasts=settings.broadcasts,
                         fast_reconnect=settings.fast_reconnect,
                         idle_read=settings.scheduler_idle),
            self, rng or random.Random(),  # noqa: S311 - reconnect jitter, not security
        )  # fmt: skip
        self.sessions: dict[int, ClientSession] = {}
        self.own_ip = ""
        self.port = settings.port
        self.free_mem_mb = 0
        self._cpu_seen = 0.0
        self._ids = itertools.count(1)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._link_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set whenever a slot is released
        #: Draining (D-Bus ``Drain``): STATS report full load, so no new remote jobs come.
        self.draining = False

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
            self._servers.append(await asyncio.start_unix_server(
                self._accept, path=str(path), limit=_READ_LIMIT))  # fmt: skip
        finally:
            os.umask(old_umask)
        for address in self.settings.listen_addresses:
            server = await asyncio.start_server(
                self._accept,
                address,
                self.port,
                reuse_address=True,
                backlog=1024,
                limit=_READ_LIMIT,
            )
            self.port = server.sockets[0].getsockname()[1]  # port 0: the one chosen
            self._servers.append(server)
        self._link_task = asyncio.create_task(self.link.run())
        log.info("daemon_started", socket=str(path), port=self.port,
                 listen=list(self.settings.listen_addresses), max_kids=self.settings.max_kids,
                 chroot_possible=self.settings.chroot_possible, user=self.run_as.name)  # fmt: skip

    async def stop_accepting(self) -> None:
        """Close the listeners, leave the scheduler, end every client not being compiled for."""
        for server in self._servers:
            server.close()
        if self._link_task is not None:
            self._link_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._link_task
            self._link_task = None
        for session in list(self.sessions.values()):
            if not session.compiling:
                session.drop(_EXIT_NO_HOSTS)

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
        self.slots.max_kids = settings.max_kids
        self.cache.nice = settings.nice
        self.cache.limit = settings.cache_limit
        seen_by_scheduler = ("max_kids", "nodename", "netname", "scheduler", "port",
                             "listen_addresses", "discovery_port", "chroot_possible")  # fmt: skip
        if any(getattr(settings, n) != getattr(old, n) for n in seen_by_scheduler):
            await self._restart_link()
        self.schedule()

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
                server = await asyncio.start_server(self._accept, address, port,
                                                    reuse_address=True, backlog=1024,
                                                    limit=_READ_LIMIT)  # fmt: skip
                port = server.sockets[0].getsockname()[1]
                opened.append(server)
        except OSError:
            for server in opened:
                server.close()
            raise
        return opened, port

    async def _restart_link(self) -> None:
        if self._link_task is None:
            return  # stopping: no new login
        self._link_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._link_task
        self.scheduler_lost()
        self.link.settings = dataclasses.replace(
            self.link.settings, scheduler=self.settings.scheduler,
            netname=self.settings.netname, discovery_port=self.settings.discovery_port,
        )  # fmt: skip
        self._link_task = asyncio.create_task(self.link.run())

    @property
    def in_flight(self) -> int:
        """Remote compiles and installs still running."""
        return self.slots.children

    async def wait_idle(self) -> None:
        """Return once no compile or install runs (the caller bounds the wait)."""
        while self.in_flight:
            self._idle.clear()
            await self._idle.wait()

    async def close(self) -> None:
        """End every client (killing running compilers) and remove the Unix socket."""
        await self.stop_accepting()
        for session in list(self.sessions.values()):
            session.drop(_EXIT_NO_HOSTS)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.write_timeout)
        for task in list(self._tasks):
            task.cancel()
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.sessions) >= self.settings.max_clients:
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        set_keepalive(sock)
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "local"
        client_id = next(self._ids)
        session = ClientSession(self, client_id, reader, writer, peer)
        self.sessions[client_id] = session
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        finally:
            self.sessions.pop(client_id, None)
            if task is not None:
                self._tasks.discard(task)

    # --- what sessions use -----------------------------------------------------------

    @property
    def client_count(self) -> int:
        """Connected clients (1.4's ``clients.size()``)."""
        return len(self.sessions)

    @property
    def scheduler_connected(self) -> bool:
        """Whether we are logged in to a scheduler."""
        return self.link.connected

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
        self.link.send_stats()

    def to_scheduler(self, msg: Message) -> bool:
        """Send *msg* to the scheduler if connected."""
        return self.link.send(msg)

    def job_host(self) -> JobHost:
        """Return the daemon as remote jobs see it."""
        return self

    def reannounce(self) -> None:
        """Re-send LOGIN with the current environments."""
        self.link.reannounce()

    def memory_limit_mb(self) -> int:
        """Per-job memory limit from the latest free-memory figure."""
        if not self.free_mem_mb:
            self._sample_stats()
        return memory_limit_mb(self.free_mem_mb, self.settings.max_kids)

    def job_cpu(self, msec: int) -> None:
        """Count CPU time of a job a client ran under our slot as ours (idle) in the load."""
        self.tracker.add_job_cpu(msec)

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

    def schedule(self) -> None:
        """Start whatever the free slots allow (reference §5.3)."""
        self._idle.set()
        for grant in self.slots.schedule(self.tracker.current_load):
            session = self.sessions.get(grant.client_id)
            if session is None:
                self.slots.release(grant.client_id)
                continue
            session.granted(grant.work)

    # --- LinkOwner -------------------------------------------------------------------

    def login(self, *, reannounce: bool) -> Login:
        """LOGIN as 1.4 sends it (the re-announcement has port 0 and no platform)."""
        nodename = self.settings.nodename or os.uname().nodename
        envs = self.cache.installed()
        features = self.settings.supported_features
        if reannounce:
            return Login(port=0, envs=envs, nodename=nodename,
                         chroot_possible=self.settings.chroot_possible,
                         supported_features=features)  # fmt: skip
        return Login(port=self.port if self.settings.remote_allowed else 0,
                     max_kids=self.settings.max_kids, envs=envs, nodename=nodename,
                     host_platform=self.settings.platform,
                     chroot_possible=self.settings.chroot_possible,
                     noremote=not self.settings.remote_allowed,
                     supported_features=features)  # fmt: skip

    def stats(self, *, force: bool = False) -> Stats | None:
        """STATS from ``/proc`` if the load changed enough (§5.2.4) or *force*."""
        sample = self._sample_stats()
        if sample is None or not (sample.send or force):
            return None
        return Stats(load=FULL_LOAD if self.draining else sample.load,
                     load_avg1=sample.load_avg[0],
                     load_avg5=sample.load_avg[1], load_avg10=sample.load_avg[2],
                     free_mem=sample.free_mem_mb)  # fmt: skip

    def _sample_stats(self) -> Sample | None:
        try:
            cpu = parse_proc_stat((self.settings.proc_dir / "stat").read_text())
            mem = parse_meminfo((self.settings.proc_dir / "meminfo").read_text())
            disk_free = shutil.disk_usage(self.settings.env_basedir).free
        except (OSError, ValueError) as exc:
            log.warning("stats_unavailable", error=str(exc))
            return None
        self.tracker.add_job_cpu(self._our_cpu_ms())
        free_slots = self.settings.max_kids + 1 - self.slots.children
        sample = self.tracker.evaluate(cpu=cpu, mem=mem, load_avg=os.getloadavg(),
                                       disk_free=disk_free, free_slots=free_slots)  # fmt: skip
        self.free_mem_mb = sample.free_mem_mb
        self.schedule()  # a lower load may admit waiting compiles
        return sample

    def scheduler_login(self, own_ip: str) -> None:
        """Remember our address on the scheduler connection."""
        self.own_ip = own_ip
        self.tracker.reset()

    def scheduler_message(self, msg: UseCS | NoCS) -> None:
        """Route USE_CS/NO_CS to its client; answer for clients that left."""
        session = self.sessions.get(msg.client_id)
        if session is None:
            self.to_scheduler(JobDone(job_id=msg.job_id, exitcode=_EXIT_IO_ERROR,
                                      flags=JobDoneFlag.FROM_SUBMITTER,
                                      client_count=self.client_count))  # fmt: skip
            return
        session.scheduler_answer(msg, self.own_ip)

    def internals(self) -> str:
        """GET_INTERNALS text (free-form, like 1.4's ``dump_internals``)."""
        lines = [f"Node Name: {self.settings.nodename or os.uname().nodename}",
                 f"  Remote name: {self.own_ip}"]  # fmt: skip
        lines += [f"  client {cid}: {s.peer} {s.state.value}" for cid, s in self.sessions.items()]
        lines.append(f"  Cache Size: {self.cache.size}")
        lines.append(f"  Architecture: {self.settings.platform}")
        lines += [f"  Env {env.key}: size {env.size}, idle {env.idle_seconds} s"
                  for env in self.cache.describe()]  # fmt: skip
        lines.append(f"  Current kids: {self.slots.children} (max: {self.settings.max_kids})")
        lines.append(f"  load: {self.tracker.current_load}")
        return "\n".join(lines) + "\n"

    def scheduler_lost(self) -> None:
        """As 1.4: drop every client except running compiles (they finish on their own)."""
        self.own_ip = ""
        for session in list(self.sessions.values()):
            if not session.compiling:
                session.drop(_EXIT_NO_HOSTS)
