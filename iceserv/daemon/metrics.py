"""Running totals of what the daemon did, for its ``/metrics``.

This module owns :class:`DaemonMetrics`: counters (jobs started by kind,
remote compiles finished and failed by reason, environment installs by
result, evictions, native environments built) and fixed-bucket histograms
(compile time as the compiler reported it, environment install time from
the first tarball byte to the environment being in the cache), read off the
events the shell feeds the core and the effects the core answers, the same
stream the shell carries out.  The core needs no hook and keeps no extra
state for it.

It is pure: no I/O, no clock (``now`` is passed in), no logging, and it
knows nothing of Prometheus; :mod:`iceserv.web` renders the view.  Its memory
is bounded: one float per running install and one id per killed compile,
both cleared when that work ends (and capped).  Labels are fixed sets:
:data:`JOB_KINDS`, :data:`FAIL_REASONS`, :data:`INSTALL_RESULTS`.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from iceserv.daemon.effects import (
    AbortUnpack,
    CompileFinished,
    KillCompile,
    Log,
    NativeEnvBuilt,
    Send,
    StartCompile,
    StartUnpack,
    Unpacked,
    UnpackFailed,
)
from iceserv.protocol import JobLocalBegin, UseCS

if TYPE_CHECKING:
    from collections.abc import Iterable

    from iceserv.daemon.effects import Effect, Event

__all__ = [
    "COMPILE_BUCKETS",
    "FAIL_REASONS",
    "INSTALL_BUCKETS",
    "INSTALL_RESULTS",
    "JOB_KINDS",
    "MAX_OPEN",
    "TICKET_RESULTS",
    "DaemonMetrics",
    "HistogramView",
    "TotalsView",
]

#: What a slot was granted for: a remote compile we run, a local job of a client (link,
#: icerun, a local fallback: JOB_LOCAL_BEGIN), a client told to compile itself (USE_CS 127.0.0.1).
JOB_KINDS: Final = ("remote", "local", "self")
#: Why a remote compile failed: the compiler's exit code was not 0 (``compile_error``), it ran
#: out of memory (``out_of_memory``), it was killed (client gone, input timed out or too
#: large, stop: ``killed``), or it could not start (environment gone, no compiler:
#: ``not_started``).
FAIL_REASONS: Final = ("compile_error", "out_of_memory", "killed", "not_started")
#: How an environment install ended.
INSTALL_RESULTS: Final = ("ok", "failed", "aborted")
#: What became of a connection's job ticket (issue 14): ``accepted``, ``refused`` (bad, or none
#: under ``auth = require``), ``missing`` (none under ``prefer``: served unauthenticated).
TICKET_RESULTS: Final = ("accepted", "refused", "missing")
_TICKET_EVENTS: Final = {
    "job_ticket_accepted": "accepted",
    "job_refused": "refused",
    "job_unauthenticated": "missing",
}
#: Histogram bucket upper bounds in seconds (``+Inf`` is implied).
COMPILE_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
INSTALL_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: The address a "compile it yourself" USE_CS names (the core's ``_pending``); a USE_CS the
#: core passes on never names it (another daemon on this host is named ``localhost``).
_SELF_HOST: Final = "127.0.0.1"
#: Open records are pruned to the newest this many (a leak guard; far above any slot count).
MAX_OPEN: Final = 10_000


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
class TotalsView:
    """A snapshot of :class:`DaemonMetrics`; every counter only grows."""

    jobs_started: dict[str, int]
    jobs_finished: int
    jobs_failed: dict[str, int]
    installs: dict[str, int]
    evictions: int
    native_builds: dict[str, int]
    compile_time: HistogramView
    install_time: HistogramView
    tickets: dict[str, int]


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


def _bounded_put(table: dict[int, float], key: int, value: float) -> None:
    if len(table) >= MAX_OPEN:
        del table[next(iter(table))]
    table[key] = value


class DaemonMetrics:
    """Counts jobs, failures and installs from the core's events and effects."""

    def __init__(self) -> None:
        self._started = dict.fromkeys(JOB_KINDS, 0)
        self._finished = 0
        self._failed = dict.fromkeys(FAIL_REASONS, 0)
        self._installs = dict.fromkeys(INSTALL_RESULTS, 0)
        self._evictions = 0
        self._native = {"ok": 0, "failed": 0}
        self._tickets = dict.fromkeys(TICKET_RESULTS, 0)
        self._unpacking: dict[int, float] = {}
        self._killed: dict[int, float] = {}
        self._compile = _Histogram(COMPILE_BUCKETS)
        self._install = _Histogram(INSTALL_BUCKETS)

    def event(self, event: Event, now: float) -> None:
        """Count one event the shell gives the core (results of work it carried out)."""
        if isinstance(event, CompileFinished):
            self._compile_finished(event)
        elif isinstance(event, Unpacked):
            started = self._unpacking.pop(event.conn_id, None)
            self._installs["ok"] += 1
            self._evictions += len(event.evicted)
            if started is not None:
                self._install.observe(max(0.0, now - started))
        elif isinstance(event, UnpackFailed):
            if self._unpacking.pop(event.conn_id, None) is not None:
                self._installs["failed"] += 1
        elif isinstance(event, NativeEnvBuilt):
            self._native["ok" if event.path else "failed"] += 1

    def effects(self, effects: Iterable[Effect], now: float) -> None:
        """Count one batch of effects the shell is about to carry out."""
        for effect in effects:
            if isinstance(effect, StartCompile):
                self._started["remote"] += 1
            elif isinstance(effect, Send):
                message = effect.message
                if isinstance(message, JobLocalBegin):
                    self._started["local"] += 1
                elif isinstance(message, UseCS) and message.hostname == _SELF_HOST:
                    self._started["self"] += 1
            elif isinstance(effect, Log) and effect.event in _TICKET_EVENTS:
                self._tickets[_TICKET_EVENTS[effect.event]] += 1
            elif isinstance(effect, KillCompile):
                _bounded_put(self._killed, effect.conn_id, now)
            elif isinstance(effect, StartUnpack):
                _bounded_put(self._unpacking, effect.conn_id, now)
            elif (
                isinstance(effect, AbortUnpack)
                and self._unpacking.pop(effect.conn_id, None) is not None
            ):
                self._installs["aborted"] += 1

    def _compile_finished(self, event: CompileFinished) -> None:
        report = event.report
        killed = self._killed.pop(event.conn_id, None) is not None
        self._finished += 1
        if report.give_up:
            reason: str | None = "not_started"
        elif killed:
            reason = "killed"
        elif report.was_out_of_memory:
            reason = "out_of_memory"
        else:
            reason = "compile_error" if report.status != 0 else None
        if reason is not None:
            self._failed[reason] += 1
        if not report.give_up and report.real_msec > 0:
            self._compile.observe(report.real_msec / 1000)

    def view(self) -> TotalsView:
        """Return the totals so far."""
        return TotalsView(
            jobs_started=dict(self._started),
            jobs_finished=self._finished,
            jobs_failed=dict(self._failed),
            installs=dict(self._installs),
            evictions=self._evictions,
            native_builds=dict(self._native),
            compile_time=self._compile.view(),
            install_time=self._install.view(),
            tickets=dict(self._tickets),
        )
