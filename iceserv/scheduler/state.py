"""The scheduler's data: connected daemons ("hosts"), jobs, the job queue and statistics.

This module owns the plain records the scheduler keeps (reference §7.1, §7.2)
and the small invariants that belong to them: host ids are never reused, job
ids (remote and local) come from one counter, a job's state only moves
PEND → WAIT → COMP, the queue is grouped per (submitter, niceness) and served
round-robin within a niceness level, statistics windows keep running sums.

It is pure: no I/O, no asyncio, no logging, no clock (callers pass ``now``).
Placement rules live in :mod:`iceserv.scheduler.placement`, message handling
in :mod:`iceserv.scheduler.handlers`.
"""

from __future__ import annotations

import enum
import itertools
import operator
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

    from iceserv.protocol import EnvEntry, PushQuery
    from iceserv.scheduler.index import HostIndex

__all__ = [
    "COMPILED_STATS_LIMIT",
    "GLOBAL_STATS_LIMIT",
    "IPV4",
    "IPV6",
    "IPV6_LOOPBACK",
    "OLDEST_IDS_KEPT",
    "ClusterState",
    "Host",
    "Job",
    "JobQueue",
    "JobStat",
    "JobState",
    "ProbeState",
    "StatWindow",
]

#: A host remembers its last 200 compiled and 200 requested job statistics (§7.1).
COMPILED_STATS_LIMIT: Final = 200
#: The cluster remembers the last 2000 job statistics.
GLOBAL_STATS_LIMIT: Final = 2000
#: The IPv6 loopback address: a daemon logged in from it is named ``localhost`` in USE_CS.
IPV6_LOOPBACK: Final = "::1"
_LOOPBACKS: Final = frozenset(("127.0.0.1", IPV6_LOOPBACK))
#: Address-family bits of :attr:`Host.offers` and :attr:`Host.reach`.
IPV4: Final = 1
IPV6: Final = 2


class JobState(enum.Enum):
    """Where a job is: queued, assigned (client not yet at the server), compiling."""

    PEND = "PEND"
    WAIT = "WAIT"
    COMP = "COMP"


@dataclass(frozen=True, slots=True)
class JobStat:
    """What one finished job tells about speed: normalised output size and user time."""

    job_id: int
    output_size: int
    user_msec: int


#: The oldest job ids a window keeps at hand: USE_CS's ``matched_job_id`` compares the 17
#: oldest of two windows (§7.7) at every placement, and reading them from the records
#: themselves (the least recently touched objects of the scheduler) costs cache misses.
OLDEST_IDS_KEPT: Final = 17
_JOB_ID: Final = operator.attrgetter("job_id")
_NO_IDS: Final[list[int]] = []  # shared by every empty window; never changed (add() replaces it)


class StatWindow:
    """The last *limit* :class:`JobStat` records, oldest first, with running sums.

    The ids of the :data:`OLDEST_IDS_KEPT` oldest records are also kept in a
    list of their own, moved on by one id when the oldest record is forgotten.
    """

    __slots__ = ("_items", "_oldest", "limit", "output_sum", "user_sum")

    def __init__(self, limit: int) -> None:
        # Made at the first record: an empty deque is ~600 bytes, times two per daemon.
        self._items: deque[JobStat] | None = None
        self._oldest: list[int] = _NO_IDS
        self.limit = limit
        self.output_sum = 0
        self.user_sum = 0

    def add(self, stat: JobStat) -> None:
        """Append *stat*, forgetting the oldest record beyond the limit."""
        items = self._items
        if items is None:
            items = self._items = deque()
            self._oldest = []
        items.append(stat)
        self.output_sum += stat.output_size
        self.user_sum += stat.user_msec
        oldest = self._oldest
        if len(oldest) < OLDEST_IDS_KEPT:
            oldest.append(stat.job_id)
        if len(items) > self.limit:
            old = items.popleft()
            self.output_sum -= old.output_size
            self.user_sum -= old.user_msec
            del oldest[0]
            if len(items) >= OLDEST_IDS_KEPT:
                oldest.append(items[OLDEST_IDS_KEPT - 1].job_id)

    def oldest_ids(self, count: int) -> list[int]:
        """Return the job ids of the *count* oldest records (1.4 scans from the front)."""
        if count <= OLDEST_IDS_KEPT:
            return self._oldest[:count]
        if self._items is None:
            return []
        return list(map(_JOB_ID, itertools.islice(self._items, count)))

    def __len__(self) -> int:
        """Return how many records are kept."""
        return 0 if self._items is None else len(self._items)


#: Reachability-probe back-off after failures, in seconds (§5.2 step 3).  1.4
#: indexes its table with ``sizeof`` (bytes, not entries) and so reads past its
#: end after the twelfth failure; we stay at the last entry instead.
PROBE_BACKOFF: Final = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
#: Seconds between probes of a daemon that accepted the last one.
PROBE_PERIOD: Final = 60.0


@dataclass(slots=True)
class ProbeState:
    """The reachability check of a daemon's compile port (§5.2 step 3).

    A daemon counts as reachable until a probe fails, so it can take jobs at once.
    """

    accepting: bool = True
    in_progress: bool = False
    next_at: float = 0.0
    failures: int = 0

    def record(self, *, ok: bool, now: float) -> None:
        """Note the outcome of a probe that finished at *now* and plan the next one."""
        self.in_progress = False
        self.accepting = ok
        if ok:
            self.failures = 0
            self.next_at = now + PROBE_PERIOD
        else:
            self.next_at = now + PROBE_BACKOFF[min(self.failures, len(PROBE_BACKOFF) - 1)]
            self.failures += 1


@dataclass(eq=False, slots=True)
class Host:
    """One logged-in daemon (a compile server, "CS" in 1.4).

    ``version`` is the daemon's announced maximum protocol (for
    ``minimal_host_version`` and the monitors' ``Version:``); ``protocol`` is the
    negotiated one (for what we send it).  ``blacklist`` maps a *server's* host
    id to the ``(target, environment)`` pairs this host, as a submitter, must
    not use there (§7.7).
    """

    host_id: int
    conn_id: int
    ip: str
    port: int
    nodename: str
    platform: str
    max_jobs: int
    noremote: bool
    chroot_possible: bool
    features: int
    version: int
    protocol: int
    envs: tuple[EnvEntry, ...]
    last_talk: float
    load: int = 1000
    client_count: int = 0
    submitted: int = 0
    jobs: list[int] = field(default_factory=list)
    busy_installing_since: float | None = None
    installing_for: int | None = None  # the job whose USE_CS (no env yet) made it busy installing
    last_picked_id: int = 0
    probe: ProbeState = field(default_factory=ProbeState)
    blacklist: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    compiled: StatWindow = field(default_factory=lambda: StatWindow(COMPILED_STATS_LIMIT))
    requested: StatWindow = field(default_factory=lambda: StatWindow(COMPILED_STATS_LIMIT))
    local_jobs: dict[int, int] = field(default_factory=dict)
    ping_deadline: float | None = None
    internals_pending: int = 0
    #: (target, environment) -> until when a daemon pushing it ahead was sent here.
    pushes: dict[tuple[str, str], float] = field(default_factory=dict)
    #: (target, environment) -> the PUSH_QUERY this daemon sent (it stands while connected).
    push_wants: dict[tuple[str, str], PushQuery] = field(default_factory=dict)
    #: What it proved before LOGIN: off, authenticated or unauthenticated (issue 14).
    auth: str = "off"
    #: Its link is sealed (issue 14 item 4): its jobs' keys may be sent to it.
    sealed: bool = False

    #: The routable addresses the daemon declared (HOST_ADDRESSES, iceserv only), checked.
    addresses: tuple[str, ...] = ()
    #: The families (:data:`IPV4` | :data:`IPV6`) it declared its clients reach; 0: not declared.
    declared_reach: int = 0
    #: Worked out by :meth:`refresh_families` (so a placement scan only tests bits).
    v4: str = ""
    v6: str = ""
    offers: int = 0
    reach: int = 0

    def __post_init__(self) -> None:
        """Work out the families from the login address."""
        self.refresh_families()

    def refresh_families(self) -> None:
        """Work out which addresses other hosts' clients use here and which families ours reach.

        The login address stands for its own family (unless it is link-local:
        its zone is the scheduler's); a declared address of the other family
        (or a routable one of the same, for a link-local login) fills in.  A
        daemon on the scheduler's loopback is named ``localhost``, reachable as
        before.  A daemon that declared nothing reaches what its login implies:
        over IPv4 it may be icecream 1.4, whose clients parse IPv4 only; over
        IPv6 it is iceserv (1.4 has no IPv6) and is assumed to reach both.
        """
        ip = self.ip
        six = ":" in ip
        loopback = ip in _LOOPBACKS
        link = "%" in ip or ip.lower().startswith("fe80:")
        self.v4 = ip if not six else next((a for a in self.addresses if ":" not in a), "")
        self.v6 = (
            ip
            if six and not link and not loopback
            else next((a for a in self.addresses if ":" in a), "")
        )
        if loopback:
            self.offers = IPV4 | IPV6
        else:
            self.offers = (IPV4 if self.v4 else 0) | (IPV6 if self.v6 else 0)
        implied = IPV4 | IPV6 if six and not loopback else IPV4
        self.reach = self.declared_reach or implied

    @property
    def family_limited(self) -> bool:
        """Whether some host may be unable to reach this one, or this one some host.

        False for the 1.4 case (an IPv4 address, IPv4 clients): while every
        host is so, the placement index needs no family test.
        """
        return not (self.offers & IPV4 and self.reach & IPV4)

    @property
    def link_local(self) -> bool:
        """Whether it logged in from an IPv6 link-local address (``fe80::…%zone``).

        The zone is the scheduler's interface name, meaningless on any other
        host: other daemons' clients are sent to a routable address it
        declared, or not at all.
        """
        return "%" in self.ip or self.ip.lower().startswith("fe80:")

    def matches(self, name: str) -> bool:
        """Return whether *name* is this daemon's nodename or IP address (1.4 ``matches``)."""
        return name in (self.nodename, self.ip)

    @property
    def probed(self) -> bool:
        """Whether the compile port is probed at all (not for no-remote daemons)."""
        return not self.noremote and self.port != 0


@dataclass(eq=False, slots=True)
class Job:
    """One compile job requested by a submitting daemon (one of GET_CS's ``count``)."""

    job_id: int
    submitter: int
    client_id: int
    envs: tuple[EnvEntry, ...]
    target: str
    filename: str
    lang: int
    arg_flags: int
    preferred_host: str
    minimal_host_version: int
    required_features: int
    niceness: int
    state: JobState = JobState.PEND
    server: int | None = None
    stime: int = 0
    siblings: list[int] = field(default_factory=list)
    queued_at: float = 0.0  # when its GET_CS arrived (the waiting report says how long)


@dataclass(eq=False, slots=True)
class _Group:
    submitter: int
    niceness: int
    jobs: list[Job]


class JobQueue:
    """Queued (PEND) jobs grouped per (submitter, niceness) (§7.2).

    Groups are ordered by niceness, lower first.  When a job is taken for
    placement its group moves behind the other groups of the same niceness,
    so submitters of one niceness level are served round-robin.
    """

    __slots__ = ("_count", "_groups")

    def __init__(self) -> None:
        self._groups: list[_Group] = []
        self._count = 0  # len(): asked after every message, so not a sum over the groups

    def enqueue(self, job: Job) -> None:
        """Append *job* to its group, creating the group at the end of its niceness level."""
        self._count += 1
        for i, group in enumerate(self._groups):
            if group.submitter == job.submitter and group.niceness == job.niceness:
                group.jobs.append(job)
                return
            if group.niceness > job.niceness:
                self._groups.insert(i, _Group(job.submitter, job.niceness, [job]))
                return
        self._groups.append(_Group(job.submitter, job.niceness, [job]))

    def __iter__(self) -> Iterator[Job]:
        """Yield the queued jobs in the order placement tries them."""
        for group in self._groups:
            yield from group.jobs

    def __len__(self) -> int:
        """Return the number of queued jobs."""
        return self._count

    def __bool__(self) -> bool:
        """Return whether any job is queued."""
        return bool(self._groups)

    def first(self) -> Job | None:
        """Return the job at the head of the queue."""
        return self._groups[0].jobs[0] if self._groups else None

    def take(self, job: Job) -> None:
        """Remove *job* because it was placed, and rotate its group (round-robin)."""
        group = self._find(job)
        self._groups.remove(group)
        group.jobs.remove(job)
        self._count -= 1
        if not group.jobs:
            return
        for i, other in enumerate(self._groups):
            if other.niceness > group.niceness:
                self._groups.insert(i, group)
                return
        self._groups.append(group)

    def discard(self, job: Job) -> None:
        """Remove *job* without placing it (cancelled); its group keeps its place."""
        group = self._find(job)
        group.jobs.remove(job)
        self._count -= 1
        if not group.jobs:
            self._groups.remove(group)

    def drop_submitter(self, submitter: int) -> list[Job]:
        """Remove and return every queued job of *submitter* (the daemon went away)."""
        dropped = [
            job for group in self._groups if group.submitter == submitter for job in group.jobs
        ]
        self._groups = [group for group in self._groups if group.submitter != submitter]
        self._count -= len(dropped)
        return dropped

    def _find(self, job: Job) -> _Group:
        for group in self._groups:
            if group.submitter == job.submitter and group.niceness == job.niceness:
                return group
        msg = f"job {job.job_id} is not queued"
        raise KeyError(msg)


@dataclass(eq=False, slots=True)
class ClusterState:
    """Everything the scheduler knows about the cluster, with the id counters.

    ``hosts`` keeps login order (dict insertion order), which placement and the
    telnet ``listcs`` follow.  ``jobs`` holds PEND, WAIT and COMP jobs by id;
    local jobs only take an id.  ``blocked`` is the ``blockcs`` list.
    ``drained`` lists the names (nodenames or IPs) of daemons being drained:
    they get no new jobs from other daemons, and, like the block list, the
    names outlive the connection, so a drained daemon that reconnects stays
    drained.
    """

    hosts: dict[int, Host] = field(default_factory=dict)
    jobs: dict[int, Job] = field(default_factory=dict)
    queue: JobQueue = field(default_factory=JobQueue)
    all_stats: StatWindow = field(default_factory=lambda: StatWindow(GLOBAL_STATS_LIMIT))
    blocked: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    last_host_id: int = 0
    last_job_id: int = 0
    index: HostIndex | None = None
    by_address: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    #: Hosts with :attr:`Host.family_limited` (the index defers to the scan while any exist).
    family_limited: int = 0
    #: Hosts that asked where to push an environment (PUSH_QUERY), by host id: a login
    #: looks at these, not at every host (a host gone from ``hosts`` is skipped).
    pushers: dict[int, Host] = field(default_factory=dict)
    #: Hosts that blacklisted a server (BLACKLIST_HOST_ENV), by host id: a logout clears
    #: the entries naming the host that left in these, not in every host.
    blacklisters: dict[int, Host] = field(default_factory=dict)

    def add_host(self, host: Host) -> None:
        """Log *host* in (last in login order)."""
        self.hosts[host.host_id] = host
        self.family_limited += host.family_limited
        self.by_address.setdefault((host.ip, host.nodename), []).append(host.host_id)
        self.touch(host)

    def drop_host(self, host: Host) -> None:
        """Forget *host* (logged out, lost or kicked)."""
        del self.hosts[host.host_id]
        self.family_limited -= host.family_limited
        ids = self.by_address.get((host.ip, host.nodename), [])
        if host.host_id in ids:
            ids.remove(host.host_id)
            if not ids:
                del self.by_address[(host.ip, host.nodename)]
        self.touch(host)

    def set_families(self, host: Host, addresses: tuple[str, ...], reach: int) -> None:
        """Record what *host* declared about its addresses and its clients' families."""
        self.family_limited -= host.family_limited
        host.addresses, host.declared_reach = addresses, reach
        host.refresh_families()
        self.family_limited += host.family_limited
        self.touch(host)

    def hosts_at(self, ip: str, nodename: str) -> list[Host]:
        """Return the hosts logged in from *ip* as *nodename* (stale connections of one daemon)."""
        return [self.hosts[i] for i in self.by_address.get((ip, nodename), ()) if i in self.hosts]

    def touch(self, host: Host) -> None:
        """Note that *host* changed in a way placement reads (or logged in, or left).

        Whoever changes a host's jobs, load, installing or ping state, probe
        result, statistics, last pick or environments, or adds or removes it,
        calls this, so that :attr:`index` re-files it before the next pick.
        """
        if self.index is not None:
            self.index.dirty.add(host.host_id)

    def touch_all(self) -> None:
        """Note that every host may have changed (the drain list changed)."""
        if self.index is not None:
            self.index.dirty.update(self.hosts)

    def new_host_id(self) -> int:
        """Return a host id never handed out before."""
        self.last_host_id += 1
        return self.last_host_id

    def new_job_id(self) -> int:
        """Return the next job id (remote and local jobs share the counter)."""
        self.last_job_id += 1
        return self.last_job_id

    def forget_job(self, job: Job) -> None:
        """Remove a finished or aborted job (no longer counted for its submitter)."""
        del self.jobs[job.job_id]
        submitter = self.hosts.get(job.submitter)
        if submitter is not None:
            submitter.submitted -= 1

    def is_blocked(self, host: Host) -> bool:
        """Return whether *host*'s nodename or IP is on the block list."""
        return any(host.matches(name) for name in self.blocked)

    def is_drained(self, host: Host) -> bool:
        """Return whether *host*'s nodename or IP is on the drain list."""
        return any(host.matches(name) for name in self.drained)

    def find_host(self, name: str) -> Host | None:
        """Return the first host (login order) whose nodename or IP is *name*."""
        return next((host for host in self.hosts.values() if host.matches(name)), None)
