"""Cluster events for in-process observers (D-Bus signals), read off the monitor stream.

This module owns :class:`ClusterEvents`: it watches the messages the core
sends to monitors (MON_STATS, MON_GET_CS, MON_JOB_BEGIN, MON_JOB_DONE) and
turns them into calls on :class:`ClusterObserver` objects: a daemon joined
or left, a job started or finished, and "something changed" once per batch
of effects.  It also remembers, per known job, when it was queued and when
it started, which the core does not keep, and, when asked to
(:meth:`ClusterEvents.keep_finished`), the last jobs that finished, so that a
web page connecting later can draw them without having to watch every job.
The monitor stream is the one place where the core already reports every one
of these moments, so the core needs no extra hook.

It must not change the scheduler's state or send anything.  A failing
observer is logged and does not disturb the scheduler or other observers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

from iceserv.protocol import MonGetCS, MonJobBegin, MonJobDone, MonStats
from iceserv.scheduler.effects import ToMonitors
from iceserv.scheduler.monitoring import OFFLINE
from iceserv.scheduler.views import JobView

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from iceserv.scheduler.effects import Effect
    from iceserv.scheduler.state import ClusterState
    from iceserv.scheduler.views import JobState as JobStateName

__all__ = ["ClusterEvents", "ClusterObserver"]

log = structlog.get_logger()

#: The job records are pruned to the known jobs when they outgrow them by this many.
_PRUNE_SLACK: Final = 1024


class ClusterObserver(Protocol):
    """What :class:`ClusterEvents` calls; parameters are positional-only."""

    def host_joined(self, nodename: str, ip: str, /) -> None:
        """Hear that a daemon logged in."""
        ...

    def host_left(self, nodename: str, ip: str, /) -> None:
        """Hear that a daemon logged out, was removed or was lost."""
        ...

    def job_started(self, job: JobView, /) -> None:
        """Hear that the compile server reported JOB_BEGIN for *job*."""
        ...

    def job_finished(self, job: JobView, exitcode: int, /) -> None:
        """Hear that *job* ended: JOB_DONE (its exit code), or aborted (255)."""
        ...

    def cluster_changed(self) -> None:
        """Hear that counts or lists may have changed (at most once per batch of effects)."""
        ...


@dataclass(slots=True)
class _JobRecord:
    """What is known of a job, also after the core forgot it."""

    submitter: str
    filename: str
    queued_at: float
    state: JobStateName
    server: str = ""
    started_at: float | None = None

    def view(self, job_id: int) -> JobView:
        return JobView(
            id=job_id,
            state=self.state,
            submitter=self.submitter,
            server=self.server or "<unknown>",
            filename=self.filename,
            queued_at=self.queued_at,
            started_at=self.started_at,
        )


class ClusterEvents:
    """Derives observer calls and job times from the effects the shell applied."""

    def __init__(self) -> None:
        self._observers: list[ClusterObserver] = []
        self._hosts: dict[int, tuple[str, str]] = {}
        self._jobs: dict[int, _JobRecord] = {}
        # The last finished jobs that had started: (job id, record, end, exit code).
        self._finished: deque[tuple[int, _JobRecord, float, int]] | None = None
        # Handlers take (message, state, now); other monitor messages say nothing we report.
        # A plain dict looked up by exact class: this runs for every effect the shell applies.
        self._routes: dict[type[object], Callable[[Any, ClusterState, float], None]] = {
            MonStats: self._on_stats,
            MonGetCS: self._on_get_cs,
            MonJobBegin: self._on_job_begin,
            MonJobDone: self._on_job_done,
        }

    def add_observer(self, observer: ClusterObserver) -> None:
        """Call *observer* from now on."""
        self._observers.append(observer)

    def remove_observer(self, observer: ClusterObserver) -> None:
        """Stop calling *observer* (no error if it was not added)."""
        if observer in self._observers:
            self._observers.remove(observer)

    def keep_finished(self, count: int) -> None:
        """Remember the last *count* jobs that finished after they started, from now on."""
        self._finished = deque(self._finished or (), maxlen=count)

    def finished(self) -> list[tuple[JobView, float, int]]:
        """Return the remembered finished jobs, oldest first: (view, end time, exit code)."""
        return [
            (record.view(job_id), end, code) for job_id, record, end, code in self._finished or ()
        ]

    def times(self, job_id: int) -> tuple[float | None, float | None]:
        """Return when job *job_id* was queued and started, as far as seen."""
        record = self._jobs.get(job_id)
        if record is None:
            return None, None
        return record.queued_at, record.started_at

    def feed(self, state: ClusterState, effects: Iterable[Effect], now: float) -> None:
        """Look at a batch of applied *effects*; *state* is the core's state after them."""
        seen = False
        routes = self._routes
        for effect in effects:
            seen = True
            if type(effect) is ToMonitors:
                route = routes.get(type(effect.message))
                if route is not None:
                    route(effect.message, state, now)
        if seen:
            self.changed()
        if len(self._jobs) > len(state.jobs) + _PRUNE_SLACK:
            self._jobs = {k: v for k, v in self._jobs.items() if k in state.jobs}

    def changed(self) -> None:
        """Tell the observers that counts or lists may have changed."""
        if self._observers:
            self._notify(lambda observer: observer.cluster_changed())

    # --- the monitor messages ---------------------------------------------------------

    def _on_stats(self, stats: MonStats, state: ClusterState, _now: float) -> None:
        if stats.statmsg == OFFLINE:
            known = self._hosts.pop(stats.host_id, None)
            if known is not None:
                self._notify(lambda observer: observer.host_left(*known))
            return
        host = state.hosts.get(stats.host_id)
        if host is not None and stats.host_id not in self._hosts:
            self._hosts[stats.host_id] = (host.nodename, host.ip)
            self._notify(lambda observer: observer.host_joined(host.nodename, host.ip))

    def _on_get_cs(self, msg: MonGetCS, state: ClusterState, now: float) -> None:
        job_id = msg.job_id
        job = state.jobs.get(job_id)
        if job is None:
            return
        submitter = state.hosts.get(job.submitter)
        server = state.hosts.get(job.server) if job.server is not None else None
        self._jobs[job_id] = _JobRecord(
            submitter=submitter.nodename if submitter is not None else "<>",
            filename=job.filename,
            queued_at=now,
            state=job.state.value,
            server=server.nodename if server is not None else "",
        )

    def _on_job_begin(self, begin: MonJobBegin, state: ClusterState, now: float) -> None:
        record = self._jobs.get(begin.job_id)
        server = state.hosts.get(begin.host_id)
        if record is None or server is None:
            return
        record.server, record.started_at, record.state = server.nodename, now, "COMP"
        if self._observers:
            view = record.view(begin.job_id)
            self._notify(lambda observer: observer.job_started(view))

    def _on_job_done(self, done: MonJobDone, _state: ClusterState, now: float) -> None:
        record = self._jobs.pop(done.job_id, None)
        if record is None:
            return
        if self._finished is not None and record.started_at is not None:
            self._finished.append((done.job_id, record, now, done.exitcode))
        if not self._observers:
            return
        view = record.view(done.job_id)
        self._notify(lambda observer: observer.job_finished(view, done.exitcode))

    def _notify(self, call: Callable[[ClusterObserver], None]) -> None:
        for observer in list(self._observers):
            try:
                call(observer)
            except Exception:  # an observer must not break the scheduler
                log.warning("observer_failed", observer=type(observer).__name__, exc_info=True)
