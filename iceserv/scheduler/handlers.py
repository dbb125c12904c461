"""The scheduler core: messages and timer ticks in, effects out (reference §5.2, §5.5, §7).

This module owns :class:`Scheduler`, the sans-I/O state machine of the whole
scheduler: who is connected as what, which handler each message goes to,
logins, loads, blacklists and internals, when daemons are probed, pinged or
dropped, and when the queue is served.  What happens to jobs is in
:mod:`iceserv.scheduler.jobs`.  It returns :mod:`~iceserv.scheduler.effects` for the asyncio shell
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
(:class:`~iceserv.protocol.dispatch.Dispatch`, message class to handler); a
message missing from the table raises
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
daemon busy installing for 120 s, application pings for daemons below
protocol 27, and the report of jobs that wait (``JobsWaiting``: the oldest
queued job, once it waited 2 s, and then at most every 10 s, with each
daemon's reason from :mod:`~iceserv.scheduler.waiting`).

iceserv's own traffic: CS_CONF carries ``iceserv/<version>`` in
``bench_source`` (1.4 daemons read that string and discard it, upstream
``ConfCSMsg::fill_from_channel``).  Only a daemon that saw it sends
SLOTS_QUERY, which is answered at once from the host table
(:func:`~iceserv.scheduler.capacity.count_slots`), and PUSH_QUERY, answered
with the hosts that should get its native environment ahead of any job
(:func:`~iceserv.scheduler.pushahead.push_targets`); so a 1.4 daemon never
receives a type it does not know.

A daemon is busy installing from the USE_CS that sends it a job without its
environment until it logs in again with the new environment, or until that
job ends first (the transfer never happened: e.g. the client compiled
itself), or until it is dropped.  A USE_CS naming a server that logged in
from 127.0.0.1, for another daemon, says ``localhost`` instead: clients
read "127.0.0.1" as "compile it yourself" (one-host clusters).
"""

from __future__ import annotations

import enum
import ipaddress
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

from iceserv._version import VERSION
from iceserv.errors import RemoteProtocolError
from iceserv.protocol import (
    ICESERV_MARK,
    PROTOCOL_VERSION,
    BlacklistHostEnv,
    ConfCS,
    End,
    Feature,
    GetCS,
    GetInternalStatus,
    HostAddresses,
    JobBegin,
    JobDone,
    JobLocalBegin,
    JobLocalDone,
    Login,
    MonLogin,
    MonStats,
    MsgType,
    Ping,
    PushQuery,
    SlotsQuery,
    Stats,
    StatusText,
)
from iceserv.protocol.auth import KeyRing
from iceserv.protocol.constants import MAX_SCHEDULER_PING, MAX_SCHEDULER_PONG
from iceserv.protocol.discovery import DEFAULT_NETNAME, SchedulerInfo, is_better
from iceserv.protocol.dispatch import Dispatch
from iceserv.protocol.features import supports
from iceserv.scheduler import jobs, waiting
from iceserv.scheduler.capacity import count_slots
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
from iceserv.scheduler.index import HostIndex
from iceserv.scheduler.monitoring import OFFLINE, host_stats_text
from iceserv.scheduler.placement import reachable
from iceserv.scheduler.pushahead import push_targets, targets_joining
from iceserv.scheduler.state import IPV4, IPV6, ClusterState, Host

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable

    from iceserv.protocol import Message

__all__ = ["MAX_DECLARED_ADDRESSES", "Scheduler", "SchedulerConfig", "checked_addresses"]

_M = TypeVar("_M", bound="Message")
#: A dispatch table of the core: handlers take (message, conn_id, now).
_Table = Dispatch[[int, float], list[Effect]]

#: CS_CONF with iceserv's mark in ``bench_source``, which 1.4 daemons read and discard.
_CONF: Final = ConfCS(bench_source=ICESERV_MARK + VERSION)
#: HOST_ADDRESSES: addresses kept per daemon, and the longest text taken for one.
MAX_DECLARED_ADDRESSES: Final = 8
_MAX_ADDRESS_TEXT: Final = 64
_FAMILIES: Final = {"ipv4": IPV4, "ipv6": IPV6}
#: Pairs (submitter, server) whose "skipped" reason was logged; forgotten beyond this many.
_MAX_SKIPS_TOLD: Final = 4096
#: The auth state of a daemon that logged in without proving the key (prefer).
_UNAUTHENTICATED: Final = "unauthenticated"
#: Seconds between scheduler announcements (§4.5).
ANNOUNCE_PERIOD: Final = 120.0
#: A daemon busy installing an environment this long is dropped (§7.8).
MAX_BUSY_INSTALLING: Final = 120.0
#: The oldest queued job is reported (JobsWaiting) once it waited this long ...
WAIT_REPORT_AFTER: Final = 2.0
#: ... and again at most this often while jobs keep waiting.
WAIT_REPORT_PERIOD: Final = 10.0


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """What the core needs to know about itself: start time, net name, ``-r``."""

    start_time: int
    netname: str = DEFAULT_NETNAME
    persistent_clients: bool = False
    version: int = PROTOCOL_VERSION
    #: The network keys placements are ticketed with (auth prefer/require; issue 14), or ().
    ticket_keys: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def info(self) -> SchedulerInfo:
        """Return this scheduler as discovery replies and announcements describe it."""
        return SchedulerInfo(self.version, self.start_time, self.netname)


class _Kind(enum.Enum):
    NEW = enum.auto()
    DAEMON = enum.auto()
    MONITOR = enum.auto()

    # Members are singletons: hash them by identity, in C (Enum's own ``__hash__`` is a
    # Python call, and every message looks its peer's kind up in the dispatch tables).
    __hash__ = object.__hash__


@dataclass(slots=True)
class _Peer:
    conn_id: int
    ip: str
    protocol: int
    peer_version: int
    kind: _Kind = _Kind.NEW
    host_id: int = 0
    auth: str = "off"
    sealed: bool = False


class Scheduler:
    """The scheduler's state machine; see the module docstring for the theory of operation."""

    def __init__(self, config: SchedulerConfig, rng: random.Random, now: float) -> None:
        self.config = config
        self.state = ClusterState()
        self._index = HostIndex(self.state, self._host_deadline)
        self.state.index = self._index
        self.started = now
        self._rng = rng
        self._peers: dict[int, _Peer] = {}
        self._monitors: list[int] = []
        self._next_announce = now
        self._next_wait_report = now  # no JobsWaiting before this time
        self._skips_told: set[tuple[int, int]] = set()
        # Monitors are never read from: anything they send is unexpected.
        self._tables: dict[_Kind, _Table] = {
            _Kind.NEW: _Table("new peer")
            .on(Login, self._on_login)
            .on(MonLogin, self._on_mon_login),
            _Kind.DAEMON: _Table("daemon peer")
            .on(GetCS, self._on_get_cs)
            .on(JobBegin, self._for_host(jobs.on_job_begin))
            .on(JobDone, self._for_host(jobs.on_job_done))
            .on(JobLocalBegin, self._for_host(jobs.on_job_local_begin))
            .on(JobLocalDone, self._for_host(jobs.on_job_local_done))
            .on(Stats, self._on_stats)
            .on(Ping, self._on_ping)
            .on(Login, self._on_relogin)
            .on(BlacklistHostEnv, self._on_blacklist)
            .on(StatusText, self._on_status_text)
            .on(SlotsQuery, self._on_slots_query)
            .on(PushQuery, self._on_push_query)
            .on(HostAddresses, self._on_host_addresses)
            .on(End, self._on_end),
            _Kind.MONITOR: _Table("monitor peer"),
        }

    # --- connections ------------------------------------------------------------------

    @property
    def monitors(self) -> tuple[int, ...]:
        """Connection ids of the monitors, in login order (``()`` without a copy when none)."""
        return tuple(self._monitors) if self._monitors else ()

    def host_by_conn(self, conn_id: int) -> Host | None:
        """Return the daemon logged in on *conn_id*, if any."""
        peer = self._peers.get(conn_id)
        if peer is None or peer.kind is not _Kind.DAEMON:
            return None
        return self.state.hosts.get(peer.host_id)

    def peer_connected(self, conn_id: int, ip: str, protocol: int, peer_version: int) -> None:
        """Register a peer whose handshake finished (negotiated *protocol*, its max version)."""
        self._peers[conn_id] = _Peer(conn_id, ip, protocol, peer_version)

    def peer_authenticated(self, conn_id: int, state: str, *, sealed: bool = False) -> None:
        """Record what *conn_id* proved before its LOGIN (``[cluster] auth``, issue 14).

        *state* is an :class:`~iceserv.scheduler.auth.AuthState` value.  An
        ``unauthenticated`` daemon (prefer: icecream 1.4 or keyless) logs in
        as if it had said ``--no-remote``: it may compile its own jobs, but
        the scheduler never places another host's job on it.
        """
        peer = self._peers.get(conn_id)
        if peer is not None:
            peer.auth = state
            peer.sealed = sealed  # its link is encrypted (item 4)

    def handle_message(self, conn_id: int, msg: Message, now: float) -> list[Effect]:
        """Handle *msg* from *conn_id*; raise ``RemoteProtocolError`` if it is unexpected."""
        peer = self._peers.get(conn_id)
        if peer is None:
            text = f"message on unknown connection {conn_id}"
            raise RemoteProtocolError(text, msg_type=int(msg.TYPE))
        return self._tables[peer.kind](msg, conn_id, now) + self._place(now)

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
        """Return the absolute time at which :meth:`handle_timer` must run next.

        The shell asks after every event; the host index keeps every host's
        deadline in a heap (re-filed whenever the host is touched), so this
        costs no scan.
        """
        return min(self._next_announce, self._index.next_deadline(), self._wait_report_due())

    def _wait_report_due(self) -> float:
        head = self.state.queue.first()
        if head is None:
            return math.inf
        return max(head.queued_at + WAIT_REPORT_AFTER, self._next_wait_report)

    @staticmethod
    def _host_deadline(host: Host) -> float:
        """When :meth:`_host_timers` has something to do for *host* (``inf``: never)."""
        # Runs at every touch of a host (the index files its deadline): no list, no min().
        deadline = math.inf
        probe = host.probe
        if host.probed and not probe.in_progress:
            deadline = probe.next_at
        busy = host.busy_installing_since
        if busy is not None and busy + MAX_BUSY_INSTALLING < deadline:
            deadline = busy + MAX_BUSY_INSTALLING
        if not supports(host.protocol, Feature.NO_PINGS):
            ping = host.ping_deadline or host.last_talk + MAX_SCHEDULER_PING
            if ping < deadline:  # noqa: PLR1730 - min() costs a call, at every touch
                deadline = ping
        return deadline

    def handle_timer(self, now: float) -> list[Effect]:
        """Run everything that is due at *now*."""
        effects: list[Effect] = []
        if now >= self._next_announce:
            effects.append(Announce(self.config.info))
            self._next_announce = now + ANNOUNCE_PERIOD
        for host_id in self._index.due(now):
            host = self.state.hosts.get(host_id)
            if host is not None:
                effects += self._host_timers(host, now)
                self.state.touch(host)
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
                self.state.touch(host)
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
        self.state.touch(host)
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

    def drain_hosts(self, names: Iterable[str], now: float) -> tuple[list[str], list[Effect]]:
        """Put each name on the drain list: no new jobs from others; running jobs finish.

        Returns the names that match a connected daemon, in order, and the effects.
        """
        matched: list[str] = []
        for name in names:
            if name not in self.state.drained:
                self.state.drained.append(name)
            if self.state.find_host(name) is not None:
                matched.append(name)
        self.state.touch_all()
        return matched, self._place(now)

    def resume_hosts(self, names: Iterable[str], now: float) -> list[Effect]:
        """Take each name off the drain list; queued jobs may go to those daemons again."""
        for name in names:
            if name in self.state.drained:
                self.state.drained.remove(name)
        self.state.touch_all()
        return self._place(now)

    def request_internals(self, names: Iterable[str]) -> tuple[list[Host], list[Effect]]:
        """Ask every daemon (or those matching *names*) for its internals text."""
        wanted = list(names)
        hosts = [
            host
            for host in self.state.hosts.values()
            if not wanted or any(host.matches(name) for name in wanted)
        ]
        for host in hosts:
            host.internals_pending += 1
        return hosts, [Send(host.conn_id, GetInternalStatus()) for host in hosts]

    # --- first message ----------------------------------------------------------------

    def _on_login(self, login: Login, conn_id: int, now: float) -> list[Effect]:
        peer = self._peers[conn_id]
        host = Host(
            host_id=self.state.new_host_id(),
            conn_id=conn_id,
            ip=peer.ip,
            port=login.port,
            nodename=login.nodename or peer.ip,
            platform=login.host_platform,
            max_jobs=login.max_kids,
            noremote=login.noremote or peer.auth == _UNAUTHENTICATED,
            chroot_possible=login.chroot_possible,
            features=login.supported_features,
            version=peer.peer_version,
            protocol=peer.protocol,
            envs=login.envs,
            last_talk=now,
            auth=peer.auth,
            sealed=peer.sealed,
        )
        host.probe.next_at = now  # check its compile port right away
        if self.state.is_blocked(host):
            # As 1.4: the refused daemon used up a host id and is reported offline.
            del self._peers[conn_id]
            return [ToMonitors(MonStats(host.host_id, OFFLINE)), Close(conn_id)]
        effects: list[Effect] = [ToMonitors(MonStats(host.host_id, host_stats_text(host)))]
        for old in self.state.hosts_at(host.ip, host.nodename):
            effects += self._remove_host(old)  # a stale connection of the same daemon
        self.state.add_host(host)
        peer.kind, peer.host_id = _Kind.DAEMON, host.host_id
        if supports(peer.protocol, Feature.CS_CONF):
            effects.append(Send(conn_id, _CONF))
        # Daemons that asked where to push their environments hear of this newcomer.
        effects += [Send(a.conn_id, t) for a, t in targets_joining(self.state, host, now)]
        return effects

    def _on_mon_login(self, _msg: MonLogin, conn_id: int, _now: float) -> list[Effect]:
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

    def _for_host(
        self, handler: Callable[[ClusterState, Host, _M], list[Effect]]
    ) -> Callable[[_M, int, float], list[Effect]]:
        """Adapt a job handler of :mod:`~iceserv.scheduler.jobs` to the dispatch table."""

        def handle(msg: _M, conn_id: int, _now: float) -> list[Effect]:
            return handler(self.state, self._host(conn_id), msg)

        return handle

    def _place(self, now: float) -> list[Effect]:
        keys = KeyRing(self.config.ticket_keys) if self.config.ticket_keys else None
        effects: list[Effect] = jobs.place_jobs(self.state, self._rng, now, keys)
        if now >= self._wait_report_due():
            effects.append(self._wait_report(now))
        return effects

    def _wait_report(self, now: float) -> JobsWaiting:
        head = self.state.queue.first()
        assert head is not None  # noqa: S101 - _wait_report_due is finite only with a queue
        self._next_wait_report = now + WAIT_REPORT_PERIOD
        return JobsWaiting(
            count=len(self.state.queue),
            job_id=head.job_id,
            filename=head.filename,
            waited=now - head.queued_at,
            reasons=waiting.reasons(self.state, head, now),
        )

    def _on_get_cs(self, msg: GetCS, conn_id: int, now: float) -> list[Effect]:
        first_new = self.state.last_job_id + 1
        submitter = self._host(conn_id)
        effects = jobs.on_get_cs(self.state, submitter, msg)
        for job_id in range(first_new, self.state.last_job_id + 1):
            self.state.jobs[job_id].queued_at = now
        if self.state.family_limited and self.state.last_job_id >= first_new:
            effects += self._skipped(submitter, first_new)
        return effects

    def _skipped(self, submitter: Host, job_id: int) -> list[Effect]:
        """Say once per pair which hosts *submitter*'s jobs skip for want of a reachable address."""
        told = self._skips_told
        if len(told) >= _MAX_SKIPS_TOLD:
            told.clear()
        found: list[tuple[str, str]] = []
        for host in self.state.hosts.values():
            pair = (submitter.host_id, host.host_id)
            if host is submitter or pair in told or reachable(submitter, host):
                continue
            told.add(pair)
            found.append((host.nodename, waiting.why_unreachable(submitter, host)))
        if not found:
            return []
        return [HostsSkipped(job_id, submitter.nodename, tuple(found))]

    def _remove_host(self, host: Host) -> list[Effect]:
        self._peers.pop(host.conn_id, None)
        return jobs.remove_host(self.state, host)

    def _on_stats(self, stats: Stats, conn_id: int, now: float) -> list[Effect]:
        host = self._host(conn_id)
        host.load = stats.load
        self.state.touch(host)
        host.client_count = 0  # as 1.4: STATS carries no client count, yet resets it
        if not supports(host.protocol, Feature.STATS_NOT_PONG):
            self._answered_ping(host, now)
        return [ToMonitors(MonStats(host.host_id, host_stats_text(host, stats)))]

    def _answered_ping(self, host: Host, now: float) -> None:
        host.last_talk = now
        host.ping_deadline = None
        self.state.touch(host)

    def _on_ping(self, _msg: Ping, conn_id: int, now: float) -> list[Effect]:
        self._answered_ping(self._host(conn_id), now)
        return []

    def _on_relogin(self, login: Login, conn_id: int, _now: float) -> list[Effect]:
        host = self._host(conn_id)
        host.envs = login.envs
        host.busy_installing_since = None
        host.installing_for = None
        self.state.touch(host)
        if supports(host.protocol, Feature.CS_CONF):
            return [Send(conn_id, _CONF)]
        return []

    def _on_blacklist(self, request: BlacklistHostEnv, conn_id: int, _now: float) -> list[Effect]:
        host = self._host(conn_id)
        entry = (request.target, request.environment)
        named = jobs.LOOPBACK_IP if request.hostname == jobs.LOOPBACK_NAME else request.hostname
        for server in self.state.hosts.values():
            if server.ip == named:
                entries = host.blacklist.setdefault(server.host_id, [])
                self.state.blacklisters[host.host_id] = host
                if entry not in entries:
                    entries.append(entry)
        return []

    def _on_status_text(self, msg: StatusText, conn_id: int, _now: float) -> list[Effect]:
        host = self._host(conn_id)
        if not host.internals_pending:
            text = "STATUS_TEXT without a GET_INTERNALS"
            raise RemoteProtocolError(text, msg_type=int(MsgType.STATUS_TEXT))
        host.internals_pending -= 1
        return [InternalsReply(host.host_id, msg.text)]

    def _on_slots_query(self, msg: SlotsQuery, conn_id: int, _now: float) -> list[Effect]:
        # Only an iceserv daemon sends it (it saw _CONF's mark), so the answer is safe to send.
        return [Send(conn_id, count_slots(self.state, self._host(conn_id), msg.platform))]

    def _on_push_query(self, msg: PushQuery, conn_id: int, now: float) -> list[Effect]:
        # Only an iceserv daemon sends it (it saw _CONF's mark), so the answer is safe to send.
        host = self._host(conn_id)
        return [Send(conn_id, push_targets(self.state, host, msg, now))]

    def _on_host_addresses(self, msg: HostAddresses, conn_id: int, now: float) -> list[Effect]:
        # Only an iceserv daemon sends it (it saw _CONF's mark); what it says is checked.
        host = self._host(conn_id)
        reach = 0
        for name in msg.families:
            reach |= _FAMILIES.get(name, 0)
        self.state.set_families(host, checked_addresses(msg.addresses), reach)
        # Daemons that asked where to push may reach it now.
        return [Send(a.conn_id, t) for a, t in targets_joining(self.state, host, now)]

    def _on_end(self, _msg: End, conn_id: int, _now: float) -> list[Effect]:
        return self._remove_host(self._host(conn_id))


def checked_addresses(declared: Iterable[str]) -> tuple[str, ...]:
    """Return the usable addresses among *declared* (HOST_ADDRESSES), normalised, at most 8.

    Only unicast addresses another host could connect to: no loopback,
    link-local, unspecified or multicast ones; an IPv4-mapped IPv6 address
    counts as its IPv4 address.  Anything else is dropped silently: a daemon
    that sends nonsense is merely placed as if it had declared nothing.
    """
    found: list[str] = []
    for text in declared:
        if len(found) >= MAX_DECLARED_ADDRESSES:
            break
        if len(text) > _MAX_ADDRESS_TEXT or "%" in text:
            continue
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if (
            address.is_loopback
            or address.is_link_local
            or address.is_unspecified
            or address.is_multicast
        ):
            continue
        if str(address) not in found:
            found.append(str(address))
    return tuple(found)
