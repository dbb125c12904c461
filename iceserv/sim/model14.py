"""A model of icecream 1.4's job placement, written separately from iceserv's scheduler.

This module owns :class:`Model14Placement`: the placement of 1.4's
``scheduler.cpp`` (``pick_server``, ``empty_queue``, ``server_speed``,
``add_job_stats``, the job-request queue) and ``compileserver.cpp``
(``is_eligible_ever/now``, ``can_install``, ``maxPreloadCount``) as a
simulated cluster meets them: one platform, no preferred hosts, no
blacklists, every daemon chroot-capable, reachable and new enough (those
rules never fire for a trace, so they are left out).  It deliberately does
not import :mod:`iceserv.scheduler`: the point is an independent second
implementation that keeps 1.4's quirks, which iceserv changed or avoids:

* **New hosts after a busy submitter.**  1.4 checks "never compiled and no
  jobs" *before* "never picked" and stops there; a new host without the
  environment becomes only "best uninstalled", and an earlier host that has
  it (the submitter always does) is still taken.  iceserv picks a never
  picked host outright.
* **Unsigned exploration arithmetic.**  ``job->id() - cs->lastPickedId()`` is
  unsigned: when a host last took a *newer* job (the round-robin queue
  serves submitters out of id order) the difference wraps around and the
  host is picked "for exploration" whatever its speed.
* **Single precision.**  Speeds are C ``float``; every step is rounded so.

Like the real thing it is pure and deterministic given its ``random.Random``
(used only while no statistics exist).  Reference §7.2-§7.6.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from iceserv.protocol import ArgFlag
from iceserv.sim.placer import Placed
from iceserv.sim.trace import SimInputError, arg_flags

if TYPE_CHECKING:
    from iceserv.sim.cluster import HostSpec
    from iceserv.sim.trace import TraceJob

__all__ = ["Model14Placement"]

_FLOAT: Final = struct.Struct("f")
_STATS_LIMIT: Final = 200
_ALL_STATS_LIMIT: Final = 2000
_TRUSTED: Final = 7
_MIN_OUTPUT: Final = 4096
_UINT32: Final = 1 << 32
_FULL_LOAD: Final = 1000


def _f32(value: float) -> float:
    """Round *value* to C ``float`` as 1.4's arithmetic does."""
    return float(_FLOAT.unpack(_FLOAT.pack(value))[0])


@dataclass(frozen=True, slots=True)
class _Stat:
    job_id: int
    output: int
    user: int


@dataclass(eq=False, slots=True)
class _Server:
    name: str
    max_jobs: int
    envs: frozenset[str]
    load: int = _FULL_LOAD
    client_count: int = 0
    submitted: int = 0
    jobs: list[_Job] = field(default_factory=list)
    busy_installing: bool = False
    last_picked: int = 0
    compiled: deque[_Stat] = field(default_factory=deque)
    cum_output: int = 0
    cum_user: int = 0
    requested: deque[_Stat] = field(default_factory=deque)


@dataclass(eq=False, slots=True)
class _Job:
    job_id: int
    submitter: _Server
    client_id: int
    env: str
    flags: int
    server: _Server | None = None


class Model14Placement:
    """1.4's scheduler behind the :class:`~iceserv.sim.placer.Placement` seam."""

    name = "icecream 1.4 (model)"

    def __init__(self, seed: int, now: float = 0.0) -> None:
        del now  # 1.4's placement reads no clock
        self._rng = random.Random(seed)  # noqa: S311 - placement randomness, not security
        self._servers: list[_Server] = []  # login order, as 1.4's ``css`` list
        self._by_name: dict[str, _Server] = {}
        self._jobs: dict[int, _Job] = {}
        self._groups: list[deque[_Job]] = []  # one per submitter (niceness is always 0)
        self._all_stats = 0
        self._last_job_id = 0

    # --- messages ---------------------------------------------------------------------

    def login(self, host: HostSpec, envs: tuple[str, ...], now: float) -> list[Placed]:
        """LOGIN (load 1000 until the first STATS), or the re-LOGIN after an install."""
        del now
        server = self._lookup(host.name)
        if server is None:
            server = _Server(host.name, host.slots, frozenset(envs))
            self._servers.append(server)
            self._by_name[host.name] = server
        else:
            server.envs = frozenset(envs)
            server.busy_installing = False
        return self._serve()

    def stats(self, host: str, load: int, now: float) -> list[Placed]:
        """STATS sets the load and, as 1.4 does, resets the client count to 0."""
        del now
        server = self._find(host)
        server.load, server.client_count = load, 0
        return self._serve()

    def get_cs(
        self, submitter: str, client_id: int, job: TraceJob, client_count: int, now: float
    ) -> list[Placed]:
        """GET_CS queues one job behind the submitter's earlier ones."""
        del now
        server = self._find(submitter)
        server.client_count = client_count
        self._last_job_id += 1
        new = _Job(self._last_job_id, server, client_id, job.env, arg_flags(job.flags))
        self._jobs[new.job_id] = new
        server.submitted += 1
        group = next((g for g in self._groups if g[0].submitter is server), None)
        if group is None:
            self._groups.append(deque([new]))
        else:
            group.append(new)
        return self._serve()

    def job_begin(self, host: str, job_id: int, client_count: int, now: float) -> list[Placed]:
        """JOB_BEGIN updates the server's client count."""
        del now
        server, job = self._find(host), self._jobs.get(job_id)
        if job is not None and job.server is server:
            server.client_count = client_count
        return self._serve()

    def job_done(  # noqa: PLR0913 - the fields of JOB_DONE the statistics use
        self,
        host: str,
        job_id: int,
        *,
        from_submitter: bool,
        user_msec: int,
        out_size: int,
        client_count: int,
        now: float,
    ) -> list[Placed]:
        """JOB_DONE frees the slot and adds the statistics (``add_job_stats``)."""
        del now
        reporter, job = self._find(host), self._jobs.pop(job_id, None)
        if job is None or job.server is None:
            text = f"JOB_DONE for job {job_id}, which 1.4 would not know"
            raise SimInputError(text)
        if (job.submitter if from_submitter else job.server) is not reporter:
            text = f"{host} reported job {job_id}; 1.4 would kick it"
            raise SimInputError(text)
        reporter.client_count = client_count
        job.server.jobs.remove(job)
        self._add_stats(job, out_size, user_msec)
        job.submitter.submitted -= 1
        return self._serve()

    # --- statistics -------------------------------------------------------------------

    def _add_stats(self, job: _Job, out_size: int, user: int) -> None:
        server = job.server
        if server is None or out_size < _MIN_OUTPUT:
            return
        output = out_size
        if job.flags & ArgFlag.G:
            output = output * 10 // 36
        elif job.flags & ArgFlag.G3:
            output = output * 10 // 45
        if job.flags & (ArgFlag.O | ArgFlag.O2 | ArgFlag.OL2):
            output = output * 58 // 35
        if len(server.compiled) >= _TRUSTED:
            this_speed = _f32(_f32(output) / _f32(user)) if user else float("inf")
            current = _speed(server)
            if this_speed / 1.2 > current:
                output = int(current * 1.2 * user)
            elif this_speed * 1.2 < current:
                output = int(current / 1.2 * user)
        stat = _Stat(job.job_id, output, user)
        server.compiled.append(stat)
        server.cum_output += output
        server.cum_user += user
        if len(server.compiled) > _STATS_LIMIT:
            old = server.compiled.popleft()
            server.cum_output -= old.output
            server.cum_user -= old.user
        job.submitter.requested.append(stat)
        if len(job.submitter.requested) > _STATS_LIMIT:
            job.submitter.requested.popleft()
        self._all_stats = min(self._all_stats + 1, _ALL_STATS_LIMIT)

    # --- placement --------------------------------------------------------------------

    def _lookup(self, name: str) -> _Server | None:
        return self._by_name.get(name)

    def _find(self, name: str) -> _Server:
        server = self._lookup(name)
        if server is None:
            text = f"host {name} is not logged in"
            raise SimInputError(text)
        return server

    def _serve(self) -> list[Placed]:
        """1.4's main loop: ``while (empty_queue())``."""
        placed: list[Placed] = []
        while (one := self._empty_queue()) is not None:
            placed.append(one)
        return placed

    def _eligible_now(self, cs: _Server) -> bool:
        # is_eligible_ever reduces to max_jobs > 0 here (see the module docstring).
        return (
            cs.max_jobs > 0
            and len(cs.jobs) < cs.max_jobs + 1 + cs.max_jobs // 4
            and cs.load < _FULL_LOAD
            and not cs.busy_installing
        )

    def _eligible(self) -> list[_Server]:
        return [cs for cs in self._servers if self._eligible_now(cs)]

    def _pick_server(  # noqa: C901, PLR0912 - 1.4's order
        self, job: _Job, eligible: list[_Server] | None = None
    ) -> _Server | None:
        """1.4's ``pick_server`` over *eligible*: the servers ``is_eligible_now`` in login order.

        Eligibility does not depend on the job, so a walk of the queue computes
        it once and passes it; 1.4 asks it per job and server, with the same answers.
        """
        if eligible is None:
            eligible = self._eligible()
        if not self._all_stats:
            selected = None
            for count, cs in enumerate(eligible, 1):
                if self._rng.randrange(count) == 0:  # random() % eligible_count == 0
                    selected = cs
            return selected
        best = bestui = bestpre = None
        for cs in eligible:
            matched = cs is job.submitter or job.env in cs.envs
            if not cs.compiled and not cs.jobs and cs.max_jobs:
                if matched:
                    best = cs
                else:
                    bestui = cs
                break
            if not cs.last_picked or (job.job_id - cs.last_picked) % _UINT32 > 20 * len(
                self._servers
            ):
                best = cs
                break
            leader = best if matched else bestui
            if leader is None:
                leader = cs
            elif leader.compiled and _speed(leader, job) < _speed(cs, job):
                if len(cs.jobs) < cs.max_jobs:
                    leader = cs
                else:
                    bestpre = cs
            if matched:
                best = leader
            else:
                bestui = leader
        return best or bestui or bestpre

    def _first_placeable(self) -> tuple[deque[_Job], _Job, _Server] | None:
        """Walk the queue as ``get_next_job_request`` does; the first job someone takes."""
        eligible = self._eligible()
        for group in self._groups:
            for job in group:
                cs = self._pick_server(job, eligible) if eligible else None
                if cs is None:
                    # Ignore the submitter's load, obey only its slots (1.4's comment).
                    own = job.submitter
                    cs = own if len(own.jobs) < own.max_jobs and not own.busy_installing else None
                if cs is not None:
                    return group, job, cs
        return None

    def _empty_queue(self) -> Placed | None:
        if not self._groups:
            return None
        chosen = self._first_placeable()
        if chosen is None:
            head = self._groups[0][0]
            if any(cs.max_jobs > 0 for cs in self._servers):
                return None  # "No suitable host found, delaying"
            chosen = (self._groups[0], head, head.submitter)
        group, job, cs = chosen
        self._groups.remove(group)
        group.remove(job)
        if group:
            self._groups.append(group)  # round-robin among submitters
        got_env = job.submitter is cs or job.env in cs.envs
        job.server = cs
        cs.jobs.append(job)
        cs.last_picked = job.job_id
        if not got_env:
            cs.busy_installing = True
        return Placed(job.submitter.name, job.client_id, job.job_id, cs.name, got_env)


def _speed(cs: _Server, job: _Job | None = None) -> float:
    """1.4's ``server_speed`` in single precision."""
    if not cs.compiled or cs.cum_user == 0:
        return 0.0
    f = _f32(_f32(cs.cum_output) / _f32(cs.cum_user))
    if job is not None:
        if job.submitter is cs:
            clients = cs.client_count or cs.submitted
            if clients > cs.max_jobs:
                f = _f32(f * 0.1)
            elif clients == cs.max_jobs:
                f = _f32(f * 0.8)
            elif clients <= cs.max_jobs // 2:
                f = _f32(f * 1.1)
        else:
            f = _f32(f * _f32(_f32(_FULL_LOAD - cs.load) / _FULL_LOAD))
        if cs.max_jobs:
            f = _f32(f * _f32(1.0 - _f32(_f32(0.5 * len(cs.jobs)) / cs.max_jobs)))
    if len(cs.compiled) < _TRUSTED:
        f = _f32(f * (-0.5 * len(cs.compiled) + 4.5))
    return f
