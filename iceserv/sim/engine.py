"""Discrete-event simulation of a compile cluster replaying a job trace.

This module owns :class:`Simulation`: simulated daemons (slots, their
queues, environment installs, LOGIN/STATS), clients (GET_CS, transfers,
waiting for results) and the clock, around a
:class:`~iceserv.sim.placer.Placement` that decides where jobs go.  It must
not decide placement itself, do I/O, read a real clock or use asyncio.

Theory of operation
-------------------
Events sit in a heap ordered by (time, sequence number), so equal times run
in the order they were scheduled and a run is deterministic.  Hosts that
join at 0 log in 10 s before the trace starts and send their first STATS
3 s after logging in (until then 1.4 and iceserv treat a daemon as fully
loaded), as real daemons do.  The load they report is their ``load``
setting: icecream's own compiles count as idle time in 1.4's load figure,
so a dedicated compile host reports a steady value and, as 1.4's daemon
does, sends STATS only once.

A job is submitted at its trace time (open loop), or, with ``make_jobs=N``,
as soon as its submitter has fewer than N jobs in flight (``make -jN``:
recorded times only order the jobs and say when each submitter starts).
GET_CS goes to the placement; for each USE_CS/NO_CS the client ships the
environment if the server lacks it (tarball transfer plus unpacking, then
the daemon's re-LOGIN), then the source; the server starts a compile when a
slot is free, its own clients' jobs first (§5.3), sends JOB_BEGIN, and
after ``cpu / speed`` seconds JOB_DONE; the object travels back.  Transfers
do not compete for bandwidth and preprocessing is not modelled.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from iceserv.errors import IceservError
from iceserv.sim.cluster import HostSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from iceserv.sim.cluster import ClusterSpec
    from iceserv.sim.placer import Placed, Placement
    from iceserv.sim.trace import TraceJob

__all__ = ["Install", "JobRun", "SimResult", "Simulation", "SimulationError"]

#: Hosts present from the start log in this long before the first job.
WARMUP: Final = 10.0
#: A daemon sends its first STATS this long after logging in (MAX_SCHEDULER_PONG).
FIRST_STATS: Final = 3.0
_EVENTS_PER_JOB: Final = 64


class SimulationError(IceservError, RuntimeError):
    """The simulation cannot go on (jobs never placed, or a runaway event loop)."""


@dataclass(frozen=True, slots=True)
class JobRun:
    """What happened to one trace job: where, and when it was submitted, placed, run, done."""

    index: int
    submitter: str
    server: str
    submit: float
    placed: float
    start: float
    end: float
    done: float
    lane: int
    file: str

    @property
    def wait(self) -> float:
        """Seconds from GET_CS to the start of the compile."""
        return self.start - self.submit


@dataclass(frozen=True, slots=True)
class Install:
    """*host* received and unpacked an environment from *start* to *end*."""

    host: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class SimResult:
    """One replay: the placement's name, every job's run, the installs and the hosts."""

    placement: str
    runs: tuple[JobRun, ...]
    installs: tuple[Install, ...]
    hosts: tuple[HostSpec, ...]


@dataclass(eq=False, slots=True)
class _Run:
    index: int
    job: TraceJob
    client_id: int = 0
    job_id: int = 0
    server: str = ""
    submit: float = 0.0
    placed: float = 0.0
    start: float = 0.0
    end: float = 0.0
    done: float = -1.0
    lane: int = 0


@dataclass(eq=False, slots=True)
class _Daemon:
    spec: HostSpec
    envs: set[str]
    lanes: list[bool]
    local: deque[_Run] = field(default_factory=deque)
    remote: deque[_Run] = field(default_factory=deque)
    installing: dict[str, list[_Run]] = field(default_factory=dict)
    outstanding: int = 0  # its own clients' jobs not yet finished
    served: int = 0  # remote jobs that reached it and did not finish
    next_client_id: int = 0

    @property
    def clients(self) -> int:
        return self.outstanding + self.served


class Simulation:
    """Replay *trace* on *cluster* with *placement* deciding; see the module docstring."""

    def __init__(
        self,
        trace: Sequence[TraceJob],
        cluster: ClusterSpec,
        placement: Placement,
        *,
        make_jobs: int | None = None,
    ) -> None:
        if make_jobs is not None and make_jobs < 1:
            msg = "make_jobs must be at least 1"
            raise ValueError(msg)
        self._cluster = cluster
        self._placement = placement
        self._make_jobs = make_jobs
        hosts = list(cluster.hosts)
        for job in trace:  # a submitter without a daemon entry is a client-only machine
            if all(host.name != job.submitter for host in hosts):
                hosts.append(HostSpec(job.submitter, slots=0))
        self._hosts = tuple(hosts)
        self._daemons = {h.name: _Daemon(h, set(h.envs), [False] * max(1, h.slots)) for h in hosts}
        self._runs = [_Run(i, job) for i, job in enumerate(trace)]
        self._by_client: dict[tuple[str, int], _Run] = {}
        self._backlog: dict[str, deque[_Run]] = {}
        self._installs: list[Install] = []
        self._heap: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> SimResult:
        """Run to the end and return every job's story; raises :class:`SimulationError`."""
        for host in self._hosts:
            at = host.join if host.join > 0 else -WARMUP
            self._at(at, functools.partial(self._login, host))
            self._at(at + FIRST_STATS, functools.partial(self._stats, host))
        self._schedule_submissions()
        budget = _EVENTS_PER_JOB * len(self._runs) + 16 * len(self._hosts) + 1024
        while self._heap:
            budget -= 1
            if budget < 0:
                msg = "the simulation did not settle (runaway events)"
                raise SimulationError(msg)
            when, _, action = heapq.heappop(self._heap)
            action(when)
        stuck = [run for run in self._runs if run.done < 0]
        if stuck:
            msg = f"{len(stuck)} jobs were never finished (first: #{stuck[0].index})"
            raise SimulationError(msg)
        return SimResult(
            self._placement.name,
            tuple(self._result(run) for run in self._runs),
            tuple(self._installs),
            self._hosts,
        )

    def _at(self, when: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action))

    def _schedule_submissions(self) -> None:
        for run in self._runs:
            self._backlog.setdefault(run.job.submitter, deque()).append(run)
        for submitter, queue in self._backlog.items():
            join = self._daemons[submitter].spec.join
            if self._make_jobs is None:
                for run in queue:
                    self._at(max(run.job.submit, join), functools.partial(self._submit, run))
                queue.clear()
            else:
                start = max(queue[0].job.submit, join)
                for _ in range(min(self._make_jobs, len(queue))):
                    run = queue.popleft()
                    self._at(start, functools.partial(self._submit, run))

    @staticmethod
    def _result(run: _Run) -> JobRun:
        return JobRun(
            run.index,
            run.job.submitter,
            run.server,
            run.submit,
            run.placed,
            run.start,
            run.end,
            run.done,
            run.lane,
            run.job.file,
        )

    # --- daemons ----------------------------------------------------------------------

    def _login(self, host: HostSpec, now: float) -> None:
        envs = tuple(sorted(self._daemons[host.name].envs))
        self._placed(self._placement.login(host, envs, now), now)

    def _stats(self, host: HostSpec, now: float) -> None:
        self._placed(self._placement.stats(host.name, host.load, now), now)

    def _try_start(self, daemon: _Daemon, now: float) -> None:
        while (daemon.local or daemon.remote) and not all(daemon.lanes):
            run = daemon.local.popleft() if daemon.local else daemon.remote.popleft()
            run.lane = daemon.lanes.index(False)
            daemon.lanes[run.lane] = True
            run.start = now
            self._placed(
                self._placement.job_begin(daemon.spec.name, run.job_id, daemon.clients, now), now
            )
            self._at(
                now + run.job.cpu / daemon.spec.speed, functools.partial(self._finish, daemon, run)
            )

    def _finish(self, daemon: _Daemon, run: _Run, now: float) -> None:
        daemon.lanes[run.lane] = False
        run.end = now
        own = run.server == run.job.submitter
        if not own:
            daemon.served -= 1
        placed = self._placement.job_done(
            daemon.spec.name,
            run.job_id,
            from_submitter=own,
            user_msec=max(1, round((run.end - run.start) * 1000)),
            out_size=run.job.object_size,
            client_count=daemon.clients,
            now=now,
        )
        self._placed(placed, now)
        back = 0.0 if own else self._transfer(run.job.object_size)
        self._at(now + back, functools.partial(self._complete, run))
        self._try_start(daemon, now)

    def _install_done(self, daemon: _Daemon, env: str, now: float) -> None:
        daemon.envs.add(env)
        waiting = daemon.installing.pop(env)
        self._login(daemon.spec, now)  # the re-LOGIN with the new environment
        for run in waiting:
            self._send_source(run, daemon, now)

    # --- clients ----------------------------------------------------------------------

    def _submit(self, run: _Run, now: float) -> None:
        submitter = self._daemons[run.job.submitter]
        submitter.next_client_id += 1
        submitter.outstanding += 1
        run.client_id, run.submit = submitter.next_client_id, now
        self._by_client[run.job.submitter, run.client_id] = run
        placed = self._placement.get_cs(
            run.job.submitter, run.client_id, run.job, submitter.clients, now
        )
        self._placed(placed, now)

    def _placed(self, placed: list[Placed], now: float) -> None:
        """Act on USE_CS/NO_CS: every action is scheduled, never run from inside a call."""
        for one in placed:
            run = self._by_client.pop((one.submitter, one.client_id))
            run.job_id, run.server, run.placed = one.job_id, one.server, now
            server = self._daemons[one.server]
            if one.server == one.submitter:
                self._at(now + self._cluster.latency, functools.partial(self._arrive, server, run))
            elif one.got_env:
                self._send_source(run, server, now)
            else:
                self._send_env(run, server, now)

    def _send_env(self, run: _Run, server: _Daemon, now: float) -> None:
        env = run.job.env
        if env in server.installing:
            server.installing[env].append(run)
            return
        server.installing[env] = [run]
        end = now + self._cluster.latency + self._cluster.env_size / self._cluster.bandwidth
        end += self._cluster.install_seconds
        self._installs.append(Install(server.spec.name, now, end))
        self._at(end, functools.partial(self._install_done, server, env))

    def _send_source(self, run: _Run, server: _Daemon, now: float) -> None:
        arrival = now + self._transfer(run.job.source_size)
        self._at(arrival, functools.partial(self._arrive, server, run))

    def _transfer(self, size: int) -> float:
        return self._cluster.latency + size * self._cluster.wire_ratio / self._cluster.bandwidth

    def _arrive(self, server: _Daemon, run: _Run, now: float) -> None:
        if run.server == run.job.submitter:
            server.local.append(run)
        else:
            server.served += 1
            server.remote.append(run)
        self._try_start(server, now)

    def _complete(self, run: _Run, now: float) -> None:
        run.done = now
        submitter = self._daemons[run.job.submitter]
        submitter.outstanding -= 1
        queue = self._backlog.get(run.job.submitter)
        if self._make_jobs is not None and queue:
            nxt = queue.popleft()
            self._at(now, functools.partial(self._submit, nxt))
