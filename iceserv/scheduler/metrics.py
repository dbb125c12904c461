"""Running totals of what the scheduler did, for ``/metrics`` and the web view.

This module owns :class:`ClusterMetrics`: counters (jobs placed, finished,
failed by reason, local jobs the daemons reported, bytes, environment
transfers) and fixed-bucket histograms (placement wait GET_CS → USE_CS,
compile time, turnaround GET_CS → JOB_DONE), read off the batches of effects
the shell applies, the same stream :mod:`iceserv.scheduler.events` watches.
The core needs no hook and keeps no extra state for it.

It is pure: no I/O, no clock (``now`` is passed in), no logging, and it knows
nothing of Prometheus; :mod:`iceserv.web` renders :class:`MetricsView`.  Its
memory is bounded: one float per open job (pruned like the event records).
Labels are a fixed set: failure reasons are the four in :data:`FAIL_REASONS`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from iceserv.protocol import JobDoneFlag, MonGetCS, MonJobDone, MonLocalJobBegin, NoCS, UseCS
from iceserv.scheduler.effects import Send, ToMonitors

if TYPE_CHECKING:
    from collections.abc import Iterable

    from iceserv.scheduler.effects import Effect

__all__ = ["FAIL_REASONS", "ClusterMetrics", "HistogramView", "MetricsView"]

#: Why a finished job counts as failed: the compiler failed (``compile_error``), the
#: submitter cancelled it (``cancelled``), a daemon went away (``aborted``), or the
#: submitter gave up before it learnt the job id (``unknown_job``).
FAIL_REASONS: Final = ("compile_error", "cancelled", "aborted", "unknown_job")
#: Histogram bucket upper bounds in seconds (``+Inf`` is implied).
WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COMPILE_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: The exit code 1.4 reports for a job aborted because a daemon left.
_ABORTED_EXITCODE: Final = 255
#: JOB_DONE flags as plain ints: ``int & IntFlag`` builds a flag object through enum's code.
_UNKNOWN_JOB_ID: Final = int(JobDoneFlag.UNKNOWN_JOB_ID)
_FROM_SUBMITTER: Final = int(JobDoneFlag.FROM_SUBMITTER)
#: Open-job records are pruned to the newest this many (a leak guard).
_MAX_OPEN: Final = 100_000
#: Finish times kept for the jobs-per-second rate (seconds).
RATE_WINDOW: Final = 60.0


@dataclass(frozen=True, slots=True)
class HistogramView:
    """A histogram's cumulative bucket counts (one per bound, then ``+Inf``) and sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        """How many values were observed."""
        return self.cumulative[-1]


@dataclass(frozen=True, slots=True)
class MetricsView:
    """A snapshot of :class:`ClusterMetrics`; every counter only grows."""

    jobs_placed: int
    jobs_placed_on_submitter: int
    jobs_finished: int
    jobs_failed: dict[str, int]
    local_jobs: int
    bytes_in: int
    bytes_out: int
    env_transfers: int
    placement_wait: HistogramView
    compile_time: HistogramView
    turnaround: HistogramView
    jobs_per_second: float


class _Histogram:
    __slots__ = ("_bounds", "_counts", "_total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._total = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._total += value

    def view(self) -> HistogramView:
        running, cumulative = 0, []
        for count in self._counts:
            running += count
            cumulative.append(running)
        return HistogramView(self._bounds, tuple(cumulative), self._total)


def fail_reason(done: MonJobDone) -> str | None:
    """Return why *done* failed (one of :data:`FAIL_REASONS`), or ``None`` for success."""
    if done.flags & _UNKNOWN_JOB_ID:
        return "unknown_job"
    if done.flags & _FROM_SUBMITTER:
        return "cancelled"
    if done.exitcode == _ABORTED_EXITCODE and done.real_msec == 0 and done.in_compressed == 0:
        return "aborted"
    return "compile_error" if done.exitcode != 0 else None


class ClusterMetrics:
    """Counts placements, finishes, failures, bytes and waits from applied effects."""

    def __init__(self) -> None:
        self._queued: dict[int, float] = {}
        self._placed = 0
        self._on_submitter = 0
        self._finished = 0
        self._failed = dict.fromkeys(FAIL_REASONS, 0)
        self._local = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._env_transfers = 0
        self._wait = _Histogram(WAIT_BUCKETS)
        self._compile = _Histogram(COMPILE_BUCKETS)
        self._turnaround = _Histogram(COMPILE_BUCKETS)
        self._finish_times: deque[float] = deque()

    def feed(self, effects: Iterable[Effect], now: float) -> None:
        """Count one batch of applied *effects*."""
        for effect in effects:
            if isinstance(effect, ToMonitors):
                self._monitor(effect.message, now)
            elif isinstance(effect, Send):
                message = effect.message
                if isinstance(message, UseCS):
                    self._placed += 1
                    self._env_transfers += not message.got_env
                    self._waited(message.job_id, now)
                elif isinstance(message, NoCS):
                    self._placed += 1
                    self._on_submitter += 1
                    self._waited(message.job_id, now)

    def _waited(self, job_id: int, now: float) -> None:
        queued = self._queued.get(job_id)
        if queued is not None:
            self._wait.observe(max(0.0, now - queued))

    def _monitor(self, message: object, now: float) -> None:
        if isinstance(message, MonGetCS):
            if len(self._queued) >= _MAX_OPEN:
                del self._queued[next(iter(self._queued))]
            self._queued[message.job_id] = now
        elif isinstance(message, MonJobDone):
            self._done(message, now)
        elif isinstance(message, MonLocalJobBegin):
            self._local += 1

    def _done(self, done: MonJobDone, now: float) -> None:
        self._finished += 1
        reason = fail_reason(done)
        if reason is not None:
            self._failed[reason] += 1
        self._bytes_in += done.in_compressed
        self._bytes_out += done.out_compressed
        if done.real_msec > 0:
            self._compile.observe(done.real_msec / 1000)
        queued = self._queued.pop(done.job_id, None)
        if queued is not None and reason is None:
            self._turnaround.observe(max(0.0, now - queued))
        self._finish_times.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        times = self._finish_times
        while times and times[0] < now - RATE_WINDOW:
            times.popleft()

    def view(self, now: float) -> MetricsView:
        """Return the totals as of *now*."""
        self._trim(now)
        return MetricsView(
            jobs_placed=self._placed,
            jobs_placed_on_submitter=self._on_submitter,
            jobs_finished=self._finished,
            jobs_failed=dict(self._failed),
            local_jobs=self._local,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            env_transfers=self._env_transfers,
            placement_wait=self._wait.view(),
            compile_time=self._compile.view(),
            turnaround=self._turnaround.view(),
            jobs_per_second=len(self._finish_times) / RATE_WINDOW,
        )
