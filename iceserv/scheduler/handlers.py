"""The scheduler core: messages and timer ticks in, effects out (reference §5.2, §5.5, §7).

This module owns :class:`Scheduler`, the sans-I/O state machine of the whole
scheduler: who is connected as what, what every daemon and monitor message
does, when daemons are probed, pinged or dropped, and when the queue is
served.  It returns :mod:`~iceserv.scheduler.effects` for the asyncio shell
to carry out.  It must not do I/O, use asyncio, log, or read a clock: every
entry point takes ``now`` and randomness comes from the ``random.Random`` it
was given.

Theory of operation
-------------------
A TCP peer becomes known to the core after its version handshake
(:meth:`Scheduler.peer_connected`).  Its first message decides what it is:
LOGIN makes it a daemon (a :class:`~iceserv.scheduler.state.Host` with a
fresh, never reused host id), MON_LOGIN a monitor (sent the state of every
host, then never read from again); anything else is a protocol error and the
shell closes the connection.  Each kind has its own dispatch table
``dict[MsgType, handler]``; a message missing from the table raises
:class:`~iceserv.errors.RemoteProtocolError`.

A daemon's GET_CS queues ``count`` jobs (state PEND).  After *every* event
(message, lost connection, probe result, timer tick, telnet command) the core
serves the queue: :func:`~iceserv.scheduler.placement.empty_queue` picks a
job and a server until nothing more can be placed, and each placement moves
the job to WAIT and sends USE_CS (or NO_CS) to the submitting daemon.  The
server's JOB_BEGIN moves it to COMP; JOB_DONE removes it and feeds the speed
statistics; the loss of its server or submitter aborts it (MON_JOB_DONE with
exit code 255).  Monitors hear about all of it as it happens.

Timers (:meth:`Scheduler.get_timer` / :meth:`Scheduler.handle_timer`): the
scheduler announcement every 120 s, the reachability probe of each daemon's
compile port (every 60 s, back-off 2…4096 s after failures), dropping a
daemon busy installing for 120 s, and application pings for daemons below
protocol 27.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final, cast

from iceserv.errors import RemoteProtocolError
from iceserv.protocol import (
    PROTOCOL_VERSION,
    BlacklistHostEnv,
    ConfCS,
    Feature,
    GetCS,
    GetInternalStatus,
    JobBegin,
    JobDone,
    JobDoneFlag,
    JobLocalBegin,
    JobLocalDone,
    Login,
    MonGetCS,
    MonJobBegin,
    MonJobDone,
    MonLocalJobBegin,
    MonStats,
    MsgType,
    NoCS,
    Ping,
    Stats,
    StatusText,
    UseCS,
)
from iceserv.protocol.constants import MAX_SCHEDULER_PING, MAX_SCHEDULER_PONG
from iceserv.protocol.discovery import DEFAULT_NETNAME, SchedulerInfo, is_better
from iceserv.protocol.features import supports
from iceserv.scheduler import placement
from iceserv.scheduler.effects import (
    Announce,
    Close,
    Effect,
    InternalsReply,
    Send,
    StartProbe,
    StopReading,
    ToMonitors,
)
from iceserv.scheduler.monitoring import OFFLINE, host_stats_text, shorten_filename
from iceserv.scheduler.state import ClusterState, Host, Job, JobState

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable

    from iceserv.protocol import Message

__all__ = ["Scheduler", "SchedulerConfig"]

#: Seconds between scheduler announcements (§4.5).
ANNOUNCE_PERIOD: Final = 120.0
#: A daemon busy installing an environment this long is dropped (§7.8).
MAX_BUSY_INSTALLING: Final = 120.0
#: 1.4 raises minimal_host_version to 31 when the legacy ignore_unverified word is set.
_IGNORE_UNVERIFIED_VERSION: Final = 31
_MAX_NICENESS: Final = 20
#: GET_CS asks for 1 job (3 for repeat jobs); more is a broken or hostile peer.
_MAX_JOBS_PER_REQUEST: Final = 64
#: Local jobs remembered per daemon (a daemon that never reports them done must not grow us).
_MAX_LOCAL_JOBS: Final = 4096
_ABORTED_EXITCODE: Final = 255


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """What the core needs to know about itself: start time, net name, ``-r``."""

    start_time: int
    netname: str = DEFAULT_NETNAME
    persistent_clients: bool = False
    version: int = PROTOCOL_VERSION

    @property
    def info(self) -> SchedulerInfo:
        """Return this scheduler as discovery replies and announcements describe it."""
        return SchedulerInfo(self.version, self.start_time, self.netname)


class _Kind(enum.Enum):
    NEW = enum.auto()
    DAEMON = enum.auto()
    MONITOR = enum.auto()


@dataclass(slots=True)
class _Peer:
    conn_id: int
    ip: str
    protocol: int
    peer_version: int
    kind: _Kind = _Kind.NEW
    host_id: int = 0


class Scheduler:
    """The scheduler's state machine; see the module docstring for the theory of operation."""

    def __init__(self, config: SchedulerConfig, rng: random.Random, now: float) -> None:
        self.config = config
        self.state = ClusterState()
        self.started = now
        self._rng = rng
        self._peers: dict[int, _Peer] = {}
        self._monitors: list[int] = []
        self._next_announce = now
        self._new_table: dict[MsgType, Callable[[int, Message, float], list[Effect]]] = {
            MsgType.LOGIN: self._on_login,
            MsgType.MON_LOGIN: self._on_mon_login,
        }
        self._daemon_table: dict[MsgType, Callable[[int, Message, float], list[Effect]]] = {
            MsgType.GET_CS: self._on_get_cs,
            MsgType.JOB_BEGIN: self._on_job_begin,
            MsgType.JOB_DONE: self._on_job_done,
            MsgType.JOB_LOCAL_BEGIN: self._on_job_local_begin,
            MsgType.JOB_LOCAL_DONE: self._on_job_local_done,
            MsgType.STATS: self._on_stats,
            MsgType.PING: self._on_ping,
            MsgType.LOGIN: self._on_relogin,
            MsgType.BLACKLIST_HOST_ENV: self._on_blacklist,
            MsgType.STATUS_TEXT: self._on_status_text,
            MsgType.END: self._on_end,
        }

    # --- connections ------------------------------------------------------------------

    @property
    def monitors(self) -> tuple[int, ...]:
        """Connection ids of the monitors, in login order."""
        return tuple(self._monitors)

    def host_by_conn(self, conn_id: int) -> Host | None:
        """Return the daemon logged in on *conn_id*, if any."""
        peer = self._peers.get(conn_id)
        if peer is None or peer.kind is not _Kind.DAEMON:
            return None
        return self.state.hosts.get(peer.host_id)

    def peer_connected(self, conn_id: int, ip: str, protocol: int, peer_version: int) -> None:
        """Register a peer whose handshake finished (negotiated *protocol*, its max version)."""
        self._peers[conn_id] = _Peer(conn_id, ip, protocol, peer_version)

    def handle_message(self, conn_id: int, msg: Message, now: float) -> list[Effect]:
        """Handle *msg* from *conn_id*; raise ``RemoteProtocolError`` if it is unexpected."""
        peer = self._peers.get(conn_id)
        if peer is None:
            text = f"message on unknown connection {conn_id}"
            raise RemoteProtocolError(text, msg_type=int(msg.TYPE))
        table = {_Kind.NEW: self._new_table, _Kind.DAEMON: self._daemon_table}.get(peer.kind, {})
        handler = table.get(msg.TYPE)
        if handler is None:
            text = f"unexpected {msg.TYPE.name} from a {peer.kind.name.lower()} peer"
            raise RemoteProtocolError(text, msg_type=int(msg.TYPE))
        return handler(conn_id, msg, now) + self._place(now)

    def connection_lost(self, conn_id: int, now: float) -> list[Effect]:
        """Forget *conn_id* (closed, failed or kicked); a daemon's jobs are aborted."""
        peer = self._peers.pop(conn_id, None)
        if peer is None:
            return []
        if peer.kind is _Kind.MONITOR:
            self._monitors.remove(conn_id)
            return []
        host = self.state.hosts.get(peer.host_id) if peer.kind is _Kind.DAEMON else None
        if host is None:
            return []
        return self._remove_host(host) + self._place(now)

    # --- timers -----------------------------------------------------------------------

    def get_timer(self) -> float:
        """Return the absolute time at which :meth:`handle_timer` must run next."""
        deadlines = [self._next_announce]
        for host in self.state.hosts.values():
            if host.probed and not host.probe.in_progress:
                deadlines.append(host.probe.next_at)
            if host.busy_installing_since is not None:
                deadlines.append(host.busy_installing_since + MAX_BUSY_INSTALLING)
            if not supports(host.protocol, Feature.NO_PINGS):
                deadlines.append(host.ping_deadline or host.last_talk + MAX_SCHEDULER_PING)
        return min(deadlines)

    def handle_timer(self, now: float) -> list[Effect]:
        """Run everything that is due at *now*."""
        effects: list[Effect] = []
        if now >= self._next_announce:
            effects.append(Announce(self.config.info))
            self._next_announce = now + ANNOUNCE_PERIOD
        for host in list(self.state.hosts.values()):
            effects += self._host_timers(host, now)
        return effects + self._place(now)

    def _host_timers(self, host: Host, now: float) -> list[Effect]:
        busy = host.busy_installing_since
        if busy is not None and now - busy >= MAX_BUSY_INSTALLING:
            return self._remove_host(host)
        if not supports(host.protocol, Feature.NO_PINGS):
            if host.ping_deadline is not None:
                if now >= host.ping_deadline:
                    return self._remove_host(host)  # no answer to our PING
            elif now - host.last_talk >= MAX_SCHEDULER_PING:
                # While the ping is out the daemon gets no jobs (1.4 negates max jobs).
                host.ping_deadline = now + 2 * MAX_SCHEDULER_PONG
                return [Send(host.conn_id, Ping())]
        if host.probed and not host.probe.in_progress and now >= host.probe.next_at:
            host.probe.in_progress = True
            return [StartProbe(host.host_id, host.ip, host.port)]
        return []

    def probe_finished(self, host_id: int, *, ok: bool, now: float) -> list[Effect]:
        """Record whether host *host_id* accepted the probe connection."""
        host = self.state.hosts.get(host_id)
        if host is None:
            return []
        host.probe.record(ok=ok, now=now)
        return self._place(now)

    def handle_announcement(self, info: SchedulerInfo, now: float) -> list[Effect]:
        """Hand our daemons and monitors over if a better scheduler of our net announced itself."""
        if (
            not supports(info.version, Feature.SCHEDULER_ANNOUNCEMENTS)
            or info.netname != self.config.netname
            or not is_better(info, self.config.info)
            or self.config.persistent_clients
        ):
            return []
        effects: list[Effect] = []
        for host in list(self.state.hosts.values()):
            effects += self._remove_host(host)
        for conn_id in list(self._monitors):
            self._peers.pop(conn_id, None)
            self._monitors.remove(conn_id)
            effects.append(Close(conn_id))
        return effects + self._place(now)

    # --- control (telnet, D-Bus) ------------------------------------------------------

    def remove_hosts(
        self, names: Iterable[str], now: float, *, block: bool = False
    ) -> tuple[list[str], list[Effect]]:
        """Disconnect the first daemon matching each name; with *block*, block the names too.

        Returns the names that matched a daemon, in order, and the effects.
        """
        matched: list[str] = []
        effects: list[Effect] = []
        for name in names:
            if block:
                self.state.blocked.append(name)
            host = self.state.find_host(name)
            if host is not None:
                matched.append(name)
                effects += self._remove_host(host)
        return matched, effects + self._place(now)

    def unblock_hosts(self, names: Iterable[str], now: float) -> list[Effect]:
        """Remove the first exact match of each name from the block list."""
        for name in names:
            if name in self.state.blocked:
                self.state.blocked.remove(name)
        return self._place(now)

    def request_internals(self, names: Iterable[str]) -> tuple[list[Host], list[Effect]]:
        """Ask every daemon (or those matching *names*) for its internals text."""
        wanted = list(names)
        hosts = [
            host for host in self.state.hosts.values()
            if not wanted or any(host.matches(name) for name in wanted)
        ]  # fmt: skip
        for host in hosts:
            host.internals_pending += 1
        return hosts, [Send(host.conn_id, GetInternalStatus()) for host in hosts]

    # --- placement --------------------------------------------------------------------

    def _place(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for _ in range(len(self.state.queue)):
            assignment = placement.empty_queue(self.state, self._rng)
            if assignment is None:
                break
            effects.append(self._apply(assignment, now))
        return effects

    def _apply(self, assignment: placement.Assignment, now: float) -> Effect:
        job, host = assignment.job, assignment.host
        submitter = self.state.hosts[job.submitter]
        self.state.queue.take(job)
        job.state = JobState.WAIT
        job.server = host.host_id
        host.jobs.append(job.job_id)
        host.last_picked_id = job.job_id
        if not assignment.got_env:
            host.busy_installing_since = now  # cleared by its re-LOGIN after the install
        placement.restrict_siblings(self.state, assignment)
        if host is submitter and supports(submitter.protocol, Feature.NO_CS):
            return Send(submitter.conn_id, NoCS(job.job_id, job.client_id))
        return Send(
            submitter.conn_id,
            UseCS(
                job_id=job.job_id,
                port=host.port,
                hostname=host.ip,
                host_platform=assignment.host_platform,
                got_env=assignment.got_env,
                client_id=job.client_id,
                matched_job_id=assignment.matched_job_id,
            ),
        )

    def _forget_job(self, job: Job) -> None:
        del self.state.jobs[job.job_id]
        submitter = self.state.hosts.get(job.submitter)
        if submitter is not None:
            submitter.submitted -= 1

    def _remove_host(self, host: Host) -> list[Effect]:
        """Drop *host*: abort its jobs, forget blacklists naming it, close its connection."""
        state = self.state
        del state.hosts[host.host_id]
        self._peers.pop(host.conn_id, None)
        effects: list[Effect] = [ToMonitors(MonStats(host.host_id, OFFLINE))]
        for job in state.queue.drop_submitter(host.host_id):
            effects.append(ToMonitors(MonJobDone(job.job_id, _ABORTED_EXITCODE)))
            del state.jobs[job.job_id]
        for job in list(state.jobs.values()):
            if host.host_id not in (job.server, job.submitter):
                continue
            effects.append(ToMonitors(MonJobDone(job.job_id, _ABORTED_EXITCODE)))
            server = state.hosts.get(job.server) if job.server is not None else None
            if server is not None:
                server.jobs.remove(job.job_id)
                server.busy_installing_since = None  # as 1.4: it may have been installing for it
            if job.state is JobState.PEND:
                state.queue.discard(job)
            self._forget_job(job)
        for other in state.hosts.values():
            other.blacklist.pop(host.host_id, None)
        effects.append(Close(host.conn_id))
        return effects

    # --- first message ----------------------------------------------------------------

    def _on_login(self, conn_id: int, msg: Message, now: float) -> list[Effect]:
        login = cast("Login", msg)
        peer = self._peers[conn_id]
        host = Host(
            host_id=self.state.new_host_id(),
            conn_id=conn_id,
            ip=peer.ip,
            port=login.port,
            nodename=login.nodename or peer.ip,
            platform=login.host_platform,
            max_jobs=login.max_kids,
            noremote=login.noremote,
            chroot_possible=login.chroot_possible,
            features=login.supported_features,
            version=peer.peer_version,
            protocol=peer.protocol,
            envs=login.envs,
            last_talk=now,
        )
        host.probe.next_at = now  # check its compile port right away
        if self.state.is_blocked(host):
            # As 1.4: the refused daemon used up a host id and is reported offline.
            del self._peers[conn_id]
            return [ToMonitors(MonStats(host.host_id, OFFLINE)), Close(conn_id)]
        effects: list[Effect] = [ToMonitors(MonStats(host.host_id, host_stats_text(host)))]
        for old in list(self.state.hosts.values()):
            if old.ip == host.ip and old.nodename == host.nodename:
                effects += self._remove_host(old)  # a stale connection of the same daemon
        self.state.hosts[host.host_id] = host
        peer.kind, peer.host_id = _Kind.DAEMON, host.host_id
        if supports(peer.protocol, Feature.CS_CONF):
            effects.append(Send(conn_id, ConfCS()))
        return effects

    def _on_mon_login(self, conn_id: int, _msg: Message, _now: float) -> list[Effect]:
        self._peers[conn_id].kind = _Kind.MONITOR
        self._monitors.append(conn_id)
        effects: list[Effect] = [StopReading(conn_id)]
        effects += [
            Send(conn_id, MonStats(host.host_id, host_stats_text(host)))
            for host in self.state.hosts.values()
        ]
        return effects

    # --- daemon messages --------------------------------------------------------------

    def _host(self, conn_id: int) -> Host:
        return self.state.hosts[self._peers[conn_id].host_id]

    def _on_get_cs(self, conn_id: int, msg: Message, _now: float) -> list[Effect]:
        request = cast("GetCS", msg)
        host = self._host(conn_id)
        if request.count > _MAX_JOBS_PER_REQUEST:
            text = f"GET_CS asks for {request.count} jobs"
            raise RemoteProtocolError(text, msg_type=int(MsgType.GET_CS))
        host.client_count = request.client_count
        minimal = request.minimal_host_version
        if request.ignore_unverified:
            minimal = max(minimal, _IGNORE_UNVERIFIED_VERSION)
        effects: list[Effect] = []
        master: Job | None = None
        for _ in range(request.count):
            job = Job(
                job_id=self.state.new_job_id(),
                submitter=host.host_id,
                client_id=request.client_id,
                envs=request.versions,
                target=request.target,
                filename=request.filename,
                lang=request.lang,
                arg_flags=request.arg_flags,
                preferred_host=request.preferred_host,
                minimal_host_version=minimal,
                required_features=request.required_features,
                niceness=max(0, min(_MAX_NICENESS, request.niceness)),
            )
            self.state.jobs[job.job_id] = job
            host.submitted += 1
            self.state.queue.enqueue(job)
            effects.append(
                ToMonitors(
                    MonGetCS(
                        filename=shorten_filename(request.filename),
                        lang=request.lang,
                        job_id=job.job_id,
                        client_id=host.host_id,
                    )
                )
            )
            if master is None:
                master = job
            else:
                master.siblings.append(job.job_id)
        return effects

    def _on_job_begin(self, conn_id: int, msg: Message, _now: float) -> list[Effect]:
        begin = cast("JobBegin", msg)
        host = self._host(conn_id)
        job = self.state.jobs.get(begin.job_id)
        if job is None or job.server != host.host_id:
            return []  # 1.4 ignores a begin for a job this daemon does not serve
        host.client_count = begin.client_count
        job.state = JobState.COMP
        job.stime = begin.stime
        return [ToMonitors(MonJobBegin(begin.job_id, begin.stime, host.host_id))]

    def _find_unknown_job(self, host: Host, client_id: int) -> Job | None:
        for job in self.state.jobs.values():
            if job.server is None and job.submitter == host.host_id and job.client_id == client_id:
                return job
        return None

    def _on_job_done(self, conn_id: int, msg: Message, _now: float) -> list[Effect]:
        done = cast("JobDone", msg)
        host = self._host(conn_id)
        if done.flags & JobDoneFlag.UNKNOWN_JOB_ID:
            # The submitter gave up before it learnt the job id: job_id is its client id.
            job = self._find_unknown_job(host, done.job_id)
        else:
            job = self.state.jobs.get(done.job_id)
        if job is None:
            return []  # already aborted or finished; 1.4 ignores it too
        if done.flags & JobDoneFlag.FROM_SUBMITTER:
            if job.submitter != host.host_id:
                text = f"JOB_DONE from a daemon that did not submit job {job.job_id}"
                raise RemoteProtocolError(text, msg_type=int(MsgType.JOB_DONE))
        elif job.server != host.host_id:
            text = f"JOB_DONE from a daemon that does not serve job {job.job_id}"
            raise RemoteProtocolError(text, msg_type=int(MsgType.JOB_DONE))
        host.client_count = done.client_count
        server = self.state.hosts.get(job.server) if job.server is not None else None
        if server is not None:
            server.jobs.remove(job.job_id)
        if job.state is JobState.PEND:
            self.state.queue.discard(job)
        placement.record_job_stats(
            self.state,
            job,
            exitcode=done.exitcode,
            out_uncompressed=done.out_uncompressed,
            user_msec=done.user_msec,
        )
        self._forget_job(job)
        values = {f.name: getattr(done, f.name) for f in fields(done)}
        values["job_id"] = job.job_id
        return [ToMonitors(MonJobDone(**values))]

    def _on_job_local_begin(self, conn_id: int, msg: Message, _now: float) -> list[Effect]:
        begin = cast("JobLocalBegin", msg)
        host = self._host(conn_id)
        job_id = self.state.new_job_id()
        host.local_jobs.pop(begin.id, None)
        host.local_jobs[begin.id] = job_id
        if len(host.local_jobs) > _MAX_LOCAL_JOBS:
            del host.local_jobs[next(iter(host.local_jobs))]
        return [
            ToMonitors(
                MonLocalJobBegin(host.host_id, job_id, begin.stime, shorten_filename(begin.outfile))
            )
        ]

    def _on_job_local_done(self, conn_id: int, msg: Message, _now: float) -> list[Effect]:
        done = cast("JobLocalDone", msg)
        job_id = self._host(conn_id).local_jobs.pop(done.job_id, 0)
        return [ToMonitors(JobLocalDone(job_id))]

    def _on_stats(self, conn_id: int, msg: Message, now: float) -> list[Effect]:
        stats = cast("Stats", msg)
        host = self._host(conn_id)
        host.load = stats.load
        host.client_count = 0  # as 1.4: STATS carries no client count, yet resets it
        if not supports(host.protocol, Feature.STATS_NOT_PONG):
            self._answered_ping(host, now)
        return [ToMonitors(MonStats(host.host_id, host_stats_text(host, stats)))]

    def _answered_ping(self, host: Host, now: float) -> None:
        host.last_talk = now
        host.ping_deadline = None

    def _on_ping(self, conn_id: int, _msg: Message, now: float) -> list[Effect]:
        self._answered_ping(self._host(conn_id), now)
        return []

    def _on_relogin(self, conn_id: int, msg: Message, _now: float) -> list[Effect]:
        login = cast("Login", msg)
        host = self._host(conn_id)
        host.envs = login.envs
        host.busy_installing_since = None
        if supports(host.protocol, Feature.CS_CONF):
            return [Send(conn_id, ConfCS())]
        return []

    def _on_blacklist(self, conn_id: int, msg: Message, _now: float) -> list[Effect]:
        request = cast("BlacklistHostEnv", msg)
        host = self._host(conn_id)
        entry = (request.target, request.environment)
        for server in self.state.hosts.values():
            if server.ip == request.hostname:
                entries = host.blacklist.setdefault(server.host_id, [])
                if entry not in entries:
                    entries.append(entry)
        return []

    def _on_status_text(self, conn_id: int, msg: Message, _now: float) -> list[Effect]:
        host = self._host(conn_id)
        if not host.internals_pending:
            text = "STATUS_TEXT without a GET_INTERNALS"
            raise RemoteProtocolError(text, msg_type=int(MsgType.STATUS_TEXT))
        host.internals_pending -= 1
        return [InternalsReply(host.host_id, cast("StatusText", msg).text)]

    def _on_end(self, conn_id: int, _msg: Message, _now: float) -> list[Effect]:
        return self._remove_host(self._host(conn_id))
