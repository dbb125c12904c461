"""Job placement: which daemon compiles which queued job (reference §7.3-§7.7).

This module owns the rules of icecream 1.4's ``scheduler.cpp`` (``pick_server``,
``empty_queue``, ``server_speed``, ``add_job_stats``) and ``compileserver.cpp``
(``platforms_compatible``, ``can_install``, ``is_eligible_ever/now``), written
as pure functions over :class:`~iceserv.scheduler.state.ClusterState`.
Randomness comes in as a :class:`random.Random`; nothing here does I/O,
logs or reads a clock.  Deciding is separate from doing: :func:`empty_queue`
returns an :class:`Assignment` and :func:`iceserv.scheduler.jobs.place_jobs`
applies it.

Probing hosts (deliberately as 1.4, not as upstream master): a host that has
never compiled anything is tried as soon as it is free, and any host not
picked during the last ``20 * number of hosts`` job ids is picked once, so
speed ratings keep refreshing.  Upstream's refactor after 1.4
(``pick_server_fastest``, icecream issue #657) computes that interval as an
integer division that is always 0, which disables the branch: ratings freeze
and a newly joined host is never picked for being new.  We keep the rule
unconditional; ``tests/scheduler/test_placement.py`` pins both behaviours.

One step beyond 1.4: there, a new host that lacks the job's environment
loses to any earlier host that has it, and the submitter always "has" its
own environment, so a host that logs in after a busy submitter may never be
tried.  We pick a host that was never picked outright (1.4's
``!lastPickedId`` rule, moved ahead of the new-host rule).

A second step beyond 1.4: there, a host with a free slot always beats a
faster host that only has a preload slot, so while the fast servers are
full every job goes to whatever slow host is free, even when a slot on a
fast one frees within a fraction of a second; a long compile on a host
three times slower then decides the build's makespan.  When the leader or
the challenger would have to queue (and both have a rating), we compare
when each would finish an average job instead: its compile time from the
measured rating (with 1.4's own-host and load factors) plus, beyond the
slots, a slot's share of a job for each job waiting ahead.  Between free
slots, and for new, unrated or stale hosts, 1.4's rules stand.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from iceserv.protocol import ArgFlag, EnvEntry
from iceserv.scheduler.state import IPV4, IPV6, IPV6_LOOPBACK, OLDEST_IDS_KEPT, JobStat

if TYPE_CHECKING:
    import random
    from collections.abc import Collection

    from iceserv.scheduler.state import ClusterState, Host, Job

__all__ = [
    "Assignment",
    "address_for",
    "can_install",
    "eligible_ever",
    "eligible_now",
    "empty_queue",
    "envs_match",
    "matched_job_id",
    "pick_server",
    "platforms_compatible",
    "reachable",
    "record_job_stats",
    "restrict_siblings",
    "server_speed",
    "source_for",
]

#: Addresses USE_CS names ``localhost`` (a daemon on the scheduler's own host).
_LOOPBACKS: Final = frozenset(("127.0.0.1", IPV6_LOOPBACK))

#: Host platforms that can also run environments built for another (1.4's table).
COMPATIBLE: Final = {
    "i386": frozenset({"i486", "i586", "i686", "x86_64"}),
    "i486": frozenset({"i586", "i686", "x86_64"}),
    "i586": frozenset({"i686", "x86_64"}),
    "i686": frozenset({"x86_64"}),
    "ppc": frozenset({"ppc64"}),
    "s390": frozenset({"s390x"}),
}
#: A load of 1000 means "give me no jobs" (§5.2 step 4).
FULL_LOAD: Final = 1000
#: Fewer stats than this: the rating is scaled up by a pessimism factor, and not smoothed.
_TRUSTED_STATS: Final = 7
#: JOB_DONE output smaller than this says nothing about speed.
_MIN_OUTPUT: Final = 4096
#: Hosts unpicked for this many job ids per host are picked again (exploration).
EXPLORE_IDS_PER_HOST: Final = 20
#: matched_job_id compares this many statistics of submitter and server.
_MATCH_SCAN: Final = OLDEST_IDS_KEPT  # 1.4 scans the 17 oldest of each window
#: Argument flags as plain ints: ``int & IntFlag`` builds a flag object through enum's code.
_G: Final = int(ArgFlag.G)
_G3: Final = int(ArgFlag.G3)
_OPTIMISED: Final = int(ArgFlag.O | ArgFlag.O2 | ArgFlag.OL2)


@dataclass(frozen=True, slots=True)
class Assignment:
    """The decision to give *job* to *host*, and what to tell the submitter."""

    job: Job
    host: Host
    host_platform: str
    got_env: bool
    matched_job_id: int


def platforms_compatible(host: Host, platform: str) -> bool:
    """Return whether *host* can run an environment built to run on *platform*."""
    return platform == host.platform or host.platform in COMPATIBLE.get(platform, ())


def _blacklisted(state: ClusterState, host: Host, job: Job, env: EnvEntry) -> bool:
    submitter = state.hosts.get(job.submitter)
    if submitter is None:
        return False
    return (env.platform, env.name) in submitter.blacklist.get(host.host_id, ())


def can_install(
    state: ClusterState, host: Host, job: Job, *, ignore_installing: bool = False
) -> str:
    """Return the platform of the first job environment *host* could install, or ``""``.

    A host busy installing another environment installs nothing (unless
    *ignore_installing*); environments the submitter blacklisted for this
    host are skipped.
    """
    if not ignore_installing and host.busy_installing_since is not None:
        return ""
    for env in job.envs:
        if platforms_compatible(host, env.platform) and not _blacklisted(state, host, job, env):
            return env.platform
    return ""


def envs_match(host: Host, job: Job) -> str:
    """Return the platform of a job environment already installed on *host*, or ``""``.

    The submitter compiles with its own native environment, so it always matches.
    """
    if job.submitter == host.host_id:
        return host.platform
    for installed in host.envs:
        if installed.platform != job.target:
            continue
        for env in job.envs:
            if env.name == installed.name and platforms_compatible(host, env.platform):
                return env.platform
    return ""


def reachable(submitter: Host | None, server: Host) -> bool:
    """Whether *submitter*'s clients may be sent to *server*: it has an address they reach.

    :attr:`Host.offers` are the families *server* has an address of (link-local
    ones excepted: their zone is the scheduler's), :attr:`Host.reach` those the
    submitter's clients reach.  A submitter that logged in over IPv4 and
    declared nothing may be icecream 1.4: IPv4 only.
    """
    if submitter is server:
        return True
    reach = submitter.reach if submitter is not None else IPV4 | IPV6
    return bool(server.offers & reach)


def address_for(submitter: Host, server: Host) -> str:
    """Return the address USE_CS (or PUSH_TARGETS) names *server* by for *submitter*'s clients.

    IPv4 first when both would do: a client behind an iceserv daemon may be
    icecream 1.4's, which parses nothing else.  Its own or a loopback
    address stays as it is (:func:`~iceserv.scheduler.jobs` names
    127.0.0.1/::1 ``localhost``).
    """
    if submitter is server or server.ip in _LOOPBACKS:
        return server.ip
    if submitter.reach & IPV4 and server.v4:
        return server.v4
    if submitter.reach & IPV6 and server.v6:
        return server.v6
    return server.ip


def source_for(submitter: Host, named: str) -> str:
    """Return the address *submitter*'s clients connect from to reach *named* (same family)."""
    six = ":" in named
    if (":" in submitter.ip) == six and not submitter.link_local:
        return submitter.ip
    return (submitter.v6 if six else submitter.v4) or submitter.ip


def eligible_ever(state: ClusterState, host: Host, job: Job) -> bool:
    """Return whether *host* could take *job* at all, now or later (§7.3).

    A drained host (not in 1.4) takes only its own jobs, as with ``--no-remote``.
    """
    own = job.submitter == host.host_id
    return (
        host.max_jobs > 0
        and host.ping_deadline is None
        and (host.chroot_possible or own)
        and job.minimal_host_version <= host.version
        and host.features & job.required_features == job.required_features
        and host.probe.accepting
        and bool(can_install(state, host, job, ignore_installing=True))
        and (own or not host.noremote)
        and (own or not state.is_drained(host))
        and (own or reachable(state.hosts.get(job.submitter), host))
    )


def preload_slots(host: Host) -> int:
    # One job may always wait at a busy server, plus one per four slots.
    return 1 + host.max_jobs // 4


def eligible_now(state: ClusterState, host: Host, job: Job) -> bool:
    """Return whether *host* can take *job* right now: free (preload) slot, load, not installing."""
    return (
        eligible_ever(state, host, job)
        and len(host.jobs) < host.max_jobs + preload_slots(host)
        and host.load < FULL_LOAD
        and bool(can_install(state, host, job))
    )


def server_speed(host: Host, job: Job | None = None) -> float:
    """Return *host*'s rating: normalised output bytes per user-CPU millisecond (§7.4).

    With *job*, the rating is adjusted for taking that job now (load, busy
    slots, and whether *host* is the job's own submitter).
    """
    return _speed(host, None if job is None else _circumstances(host, job))


def server_rating(host: Host) -> float:
    """Return ``server_speed(host, job)`` for any *job* that *host* did not submit.

    That rating does not depend on the job, so :mod:`iceserv.scheduler.index`
    can keep hosts ordered by it; it is computed by the very same steps.
    """
    return _speed(host, (FULL_LOAD - host.load) / FULL_LOAD)


def _speed(host: Host, circumstances: float | None) -> float:
    compiled = host.compiled
    rated = len(compiled)
    if not rated or compiled.user_sum == 0:
        return 0.0
    speed = compiled.output_sum / compiled.user_sum
    if circumstances is not None:
        speed *= circumstances
        if host.max_jobs > 0:
            speed *= 1.0 - 0.5 * len(host.jobs) / host.max_jobs
    if rated < _TRUSTED_STATS:
        speed *= 4.5 - 0.5 * rated
    return speed


def _circumstances(host: Host, job: Job) -> float:
    """Return the factor by which taking *job* now changes *host*'s rating (§7.4).

    A busy submitter should not build all its own jobs, an idle one saves the
    transfer; another host's own load slows its compiles down.
    """
    if job.submitter == host.host_id:
        clients = host.client_count or host.submitted
        if clients > host.max_jobs:
            return 0.1  # building all its jobs itself would overload it
        if clients == host.max_jobs:
            return 0.8
        if clients <= host.max_jobs // 2:
            return 1.1  # few jobs: save the transfer
        return 1.0
    return (FULL_LOAD - host.load) / FULL_LOAD


def record_job_stats(
    state: ClusterState,
    job: Job,
    *,
    exitcode: int,
    out_uncompressed: int,
    user_msec: int,
) -> JobStat | None:
    """Add the statistics of a finished job to its server, its submitter and the cluster.

    Returns the recorded stat, or ``None`` when the job says nothing about
    speed (failed, tiny output, no server).
    """
    server = state.hosts.get(job.server) if job.server is not None else None
    if exitcode != 0 or out_uncompressed < _MIN_OUTPUT or server is None:
        return None
    size = out_uncompressed
    if job.arg_flags & _G:
        size = size * 10 // 36  # debug info inflates the output about 3.6 times
    elif job.arg_flags & _G3:
        size = size * 10 // 45
    if job.arg_flags & _OPTIMISED:
        size = size * 58 // 35
    if len(server.compiled) >= _TRUSTED_STATS and user_msec > 0:
        # Smooth out spikes: one job moves the rating by at most a factor 1.2.
        this_speed = size / user_msec
        current = server_speed(server)
        if this_speed / 1.2 > current:
            size = int(current * 1.2 * user_msec)
        elif this_speed * 1.2 < current:
            size = int(current / 1.2 * user_msec)
    stat = JobStat(job.job_id, size, user_msec)
    server.compiled.add(stat)
    submitter = state.hosts.get(job.submitter)
    if submitter is not None:
        submitter.requested.add(stat)
    state.all_stats.add(stat)
    return stat


def rated(host: Host) -> bool:
    """Whether *host* has a rating to estimate with (``server_speed`` is 0 without one)."""
    return host.compiled.output_sum > 0 and host.compiled.user_sum > 0


_rated = rated


def _expected_finish(host: Host, job: Job) -> float:
    """Return when *host* would finish an average job given to it now, in relative units.

    The time is measured in "average job output per unit of rating", so the
    cluster's mean job size cancels out of any comparison.  The rating is the
    measured one with 1.4's factors for the submitter's own jobs and for a
    host's load; 1.4's crude allowance for busy slots is replaced by the
    queue modelled here, and its boost of barely rated hosts (an incentive
    to measure them, not a speed) is left out.  A job beyond the host's
    slots waits at the daemon (preload); with every slot busy one frees on
    average every 1/slots of a job, so the job waits a slot's share of a job
    for itself and for each job queued ahead of it.
    """
    return _finish(host, _circumstances(host, job))


def finish_as_server(host: Host) -> float:
    """Return ``_expected_finish(host, job)`` for any *job* that *host* did not submit."""
    return _finish(host, (FULL_LOAD - host.load) / FULL_LOAD)


def _finish(host: Host, circumstances: float) -> float:
    rating = host.compiled.output_sum / host.compiled.user_sum * circumstances
    waiting = max(0, len(host.jobs) + 1 - host.max_jobs)
    return (1.0 + waiting / host.max_jobs) / rating


expected_finish = _expected_finish


def rating_and_finish(host: Host, job: Job | None = None) -> tuple[float, float]:
    """Return ``(server_speed(host, job), expected_finish(host, job))`` in one call.

    Without *job*: ``(server_rating(host), finish_as_server(host))``, the same for any
    job *host* did not submit.  The very same steps as those functions:
    :mod:`iceserv.scheduler.index` files both at every change of a free host.
    """
    if job is None:
        circumstances = (FULL_LOAD - host.load) / FULL_LOAD
    else:
        circumstances = _circumstances(host, job)
    return _speed(host, circumstances), _finish(host, circumstances)


def queues_at(host: Host) -> bool:
    # A job given to *host* now would wait for a slot (eligible_now allows preload).
    return len(host.jobs) >= host.max_jobs


def pick_server(state: ClusterState, job: Job, rng: random.Random) -> Host | None:
    """Return the best daemon for *job* now, or ``None`` (§7.5)."""
    hosts = state.hosts.values()
    if job.preferred_host:
        return next(
            (
                host
                for host in hosts
                if host.matches(job.preferred_host) and eligible_now(state, host, job)
            ),
            None,
        )
    index = state.index
    if not len(state.all_stats):
        # No statistics yet: choose at random, so one broken host cannot
        # starve the cluster of the statistics that would expose it.
        candidates = index.usable_hosts(job) if index is not None else None
        if candidates is None:
            candidates = [host for host in hosts if eligible_now(state, host, job)]
        elif index is not None and index.check:
            index.compare_all(
                job, candidates, [host for host in hosts if eligible_now(state, host, job)]
            )
        return rng.choice(candidates) if candidates else None
    if index is None:
        return _pick_fastest(state, job, hosts)
    answered, host = index.pick(job)
    if not answered:
        index.scans += 1
        return _pick_fastest(state, job, hosts)
    index.picks += 1
    if index.check:
        index.compare(job, host, _pick_fastest(state, job, hosts))
    return host


class JobFit:
    """The job's side of :func:`eligible_now`, worked out once for a whole scan.

    :meth:`usable` is the composition 1.4 applies to each host (eligible now,
    can install, chroot or own, remote allowed or own) with every test inlined;
    the full :func:`can_install` runs only for hosts the submitter blacklisted
    something on.
    """

    __slots__ = (
        "blacklists",
        "job",
        "min_version",
        "own_id",
        "reach",
        "required",
        "runs_on",
        "state",
    )

    def __init__(self, state: ClusterState, job: Job) -> None:
        self.state = state
        self.job = job
        self.own_id = job.submitter
        submitter = state.hosts.get(job.submitter)
        self.blacklists = submitter.blacklist if submitter is not None else {}
        self.reach = submitter.reach if submitter is not None else IPV4 | IPV6  # see reachable()
        self.runs_on = _runs_on(tuple(job.envs))
        self.min_version = job.minimal_host_version
        self.required = job.required_features

    def usable(self, host: Host) -> bool:
        """Return whether *host* can take the job now."""
        max_jobs = host.max_jobs
        if (
            max_jobs <= 0
            or len(host.jobs) >= max_jobs + preload_slots(host)
            or host.load >= FULL_LOAD
            or host.busy_installing_since is not None
            or host.ping_deadline is not None
            or host.version < self.min_version
            or host.features & self.required != self.required
            or not host.probe.accepting
            or host.platform not in self.runs_on
        ):
            return False
        if host.host_id != self.own_id and (
            not host.chroot_possible
            or host.noremote
            or (self.state.drained and self.state.is_drained(host))
        ):
            return False
        if not host.offers & self.reach and host.host_id != self.own_id:  # see reachable()
            return False
        return host.host_id not in self.blacklists or bool(can_install(self.state, host, self.job))


@functools.lru_cache(maxsize=256)
def _runs_on(envs: tuple[EnvEntry, ...]) -> frozenset[str]:
    """Return the host platforms that can run one of *envs* (a pure function, cached)."""
    runs_on: set[str] = set()
    for env in envs:
        runs_on.add(env.platform)
        runs_on.update(COMPATIBLE.get(env.platform, ()))
    return frozenset(runs_on)


def _pick_fastest(state: ClusterState, job: Job, hosts: Collection[Host]) -> Host | None:
    """1.4's scan for the fastest usable host, with its early returns (§7.5).

    This runs over every host for every placement (a profile at 1,000 daemons
    put two thirds of the scheduler's time here), so it is written for speed:
    :class:`JobFit` inlines the eligibility tests and each host is rated at most
    once per scan.  The decisions are exactly those of 1.4's loop over
    :func:`eligible_now`, :func:`envs_match` and :func:`server_speed` with
    :func:`_challenge`'s one change (the expected finish where a job would
    queue), as ``tests/scheduler/test_placement_scan.py`` checks against the
    plain statement of that rule.
    """
    fit = JobFit(state, job)
    explore_after = EXPLORE_IDS_PER_HOST * len(hosts)
    best: Host | None = None
    best_uninstalled: Host | None = None
    best_preload: Host | None = None
    best_speed: float | None = None  # the leaders' ratings, once computed
    uninstalled_speed: float | None = None
    for host in hosts:
        if not fit.usable(host):
            continue
        installed = host.host_id == job.submitter or bool(host.envs and envs_match(host, job))
        if not host.last_picked_id:
            return host  # never picked: try it now, with or without the env (see above)
        if not len(host.compiled) and not host.jobs:
            # Every host compiles at least once so that it gets a rating.
            return host if installed else best or host
        if job.job_id - host.last_picked_id > explore_after:
            return host  # about 5 % of the jobs re-measure hosts nobody picked for long
        if installed:
            best, best_speed, preload = _challenge(best, best_speed, host, job)
        else:
            best_uninstalled, uninstalled_speed, preload = _challenge(
                best_uninstalled, uninstalled_speed, host, job
            )
        best_preload = preload or best_preload
    return best or best_uninstalled or best_preload


def _challenge(
    leader: Host | None, leader_speed: float | None, host: Host, job: Job
) -> tuple[Host, float | None, Host | None]:
    """Let *host* challenge *leader*: return the leader, its rating, and a preload pick.

    1.4: only a leader with statistics can be beaten, by a faster host with a
    free slot; a faster host with only a preload slot is remembered as the last
    resort instead.  iceserv: when either would have to queue the job and both
    have a rating, the sooner :func:`_expected_finish` decides (see the module
    docstring).  Ratings are computed only when needed, the leader's once.
    """
    if leader is None:
        return host, None, None
    queues = queues_at(host)
    speed: float | None = None
    if _rated(leader) and _rated(host) and (queues or queues_at(leader)):
        if _expected_finish(host, job) < _expected_finish(leader, job):
            return host, None, None
    elif not queues and len(leader.compiled):
        leader_speed = server_speed(leader, job) if leader_speed is None else leader_speed
        speed = server_speed(host, job)
        if leader_speed < speed:
            return host, speed, None
    if queues and len(leader.compiled):
        leader_speed = server_speed(leader, job) if leader_speed is None else leader_speed
        speed = server_speed(host, job) if speed is None else speed
        if leader_speed < speed:
            return leader, leader_speed, host
    return leader, leader_speed, None


def matched_job_id(submitter: Host, server: Host) -> int:
    """Return a job id among the submitter's requested and the server's compiled stats, or 0.

    Informational only (USE_CS ``matched_job_id``); 1.4 scans the 17 oldest of each.
    """
    requested = submitter.requested.oldest_ids(_MATCH_SCAN)
    if not requested:
        return 0
    common = set(server.compiled.oldest_ids(_MATCH_SCAN)).intersection(requested)
    if not common:  # the usual answer: one C-level pass, no Python loop
        return 0
    return next(job_id for job_id in requested if job_id in common)


def _assign(state: ClusterState, job: Job, host: Host) -> Assignment:
    platform = envs_match(host, job)
    got_env = bool(platform)
    if not got_env:
        platform = can_install(state, host, job)
    submitter = state.hosts[job.submitter]
    return Assignment(job, host, platform, got_env, matched_job_id(submitter, host))


def empty_queue(state: ClusterState, rng: random.Random) -> Assignment | None:
    """Decide where the first placeable queued job goes, or ``None`` to wait (§7.6).

    Jobs are tried in queue order.  A job nobody can take now falls back to
    its submitter if that has a free slot (and no preferred host).  If no job
    can be placed, the head job waits while some connected daemon could ever
    take it; otherwise it goes to its submitter, as nobody else ever will.
    """
    index = state.index
    if (
        index.any_may_take()
        if index is not None
        else any(may_take_a_job(host) for host in state.hosts.values())
    ):
        for job in state.queue:
            assignment = _place(state, job, rng)
            if assignment is not None:
                return assignment
    head = state.queue.first()
    if head is None:
        return None
    for host in state.hosts.values():
        if head.preferred_host and not host.matches(head.preferred_host):
            continue
        if eligible_ever(state, host, head):
            return None  # "No suitable host found, delaying"
    return _assign(state, head, state.hosts[head.submitter])


def may_take_a_job(host: Host) -> bool:
    """Whether *host* passes the job-independent parts of every way a job can be placed.

    A job goes to a host that is eligible now (some slots, room within slots +
    preload, load under 1000, not installing) or falls back to its submitter (a
    free slot).
    When no host passes either test, no queued job can be placed, and scanning
    the queue -- queue length x hosts checks per event, seconds with thousands
    of queued jobs -- is skipped.  This is an optimisation only: the outcome is
    the same as 1.4's full scan.
    """
    return len(host.jobs) < host.max_jobs or (
        host.max_jobs > 0
        and len(host.jobs) < host.max_jobs + preload_slots(host)
        and host.load < FULL_LOAD
        and host.busy_installing_since is None
    )


def _place(state: ClusterState, job: Job, rng: random.Random) -> Assignment | None:
    """Place *job* on the best server, or on its submitter as a fallback, or not at all."""
    host = pick_server(state, job, rng)
    if host is not None:
        return _assign(state, job, host)
    submitter = state.hosts[job.submitter]
    if (
        len(submitter.jobs) < submitter.max_jobs
        and not job.preferred_host
        and can_install(state, submitter, job)
    ):
        return _assign(state, job, submitter)
    return None


def restrict_siblings(state: ClusterState, assignment: Assignment) -> None:
    """Restrict the other jobs of a multi-count request to the environment just chosen."""
    job, host = assignment.job, assignment.host
    if not job.siblings:
        return
    name = next((env.name for env in job.envs if env.platform == host.platform), "")
    if not name:
        return
    for sibling_id in job.siblings:
        sibling = state.jobs.get(sibling_id)
        if sibling is not None:
            sibling.envs = (EnvEntry(host.platform, name),)
