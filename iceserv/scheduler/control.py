"""The scheduler's control facade, used by the telnet interface and D-Bus.

This module owns :class:`ClusterControl`: the operations behind 1.4's
telnet commands (``listcs``, ``listjobs``, ``listblocks``, ``removecs``,
``blockcs``, ``unblockcs``, ``internals``) and the greeting's numbers, as
plain values (:mod:`iceserv.scheduler.views`), plus what D-Bus adds: queued
and running counts, draining daemons, and observers of cluster events
(:mod:`iceserv.scheduler.events`; the shell hands every applied batch of
effects to :meth:`ClusterControl.observe`).  It must not render text: the
telnet package formats what it gets here.  Consumers declare the subset they
need as a ``typing.Protocol`` and ``app`` passes this object in.

``internals`` asks all matching daemons at once and waits at most 10 s in
total, without blocking the event loop; 1.4 asks them one by one and stalls
the whole scheduler while it waits.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, Protocol

from iceserv.scheduler.events import ClusterEvents
from iceserv.scheduler.metrics import ClusterMetrics
from iceserv.scheduler.placement import server_speed
from iceserv.scheduler.views import HostView, JobView

if TYPE_CHECKING:
    from collections.abc import Iterable

    from iceserv.scheduler.effects import Effect
    from iceserv.scheduler.events import ClusterObserver
    from iceserv.scheduler.handlers import Scheduler
    from iceserv.scheduler.metrics import MetricsView
    from iceserv.scheduler.state import Job

__all__ = ["INTERNALS_TIMEOUT", "ClusterControl", "Shell"]

#: Seconds ``internals`` waits for the daemons' STATUS_TEXT answers (1.4: 10 s).
INTERNALS_TIMEOUT: Final = 10.0


class Shell(Protocol):
    """What the facade needs from the running server."""

    @property
    def core(self) -> Scheduler:
        """The scheduler core."""
        ...

    def now(self) -> float:
        """Return the current time."""
        ...

    def apply(self, effects: list[Effect]) -> None:
        """Carry out *effects*."""
        ...


class ClusterControl:
    """Cluster queries and administrative actions of a running scheduler."""

    def __init__(self, shell: Shell, *, internals_timeout: float = INTERNALS_TIMEOUT) -> None:
        self._shell = shell
        self._internals_timeout = internals_timeout
        self._waiting: dict[int, list[asyncio.Future[str]]] = {}
        self._events = ClusterEvents()
        self._metrics = ClusterMetrics()
        # list_jobs' views by job id, with the (state, server, times) they were made for.
        self._job_views: dict[
            int, tuple[object, int | None, tuple[float | None, float | None], JobView]
        ] = {}

    # --- numbers ----------------------------------------------------------------------

    def uptime_seconds(self) -> int:
        """Return whole seconds since the scheduler started."""
        return int(self._shell.now() - self._shell.core.started)

    def host_count(self) -> int:
        """Return the number of connected daemons."""
        return len(self._shell.core.state.hosts)

    def slot_use(self) -> tuple[int, int]:
        """Return (jobs assigned to daemons, their slots), summed over every daemon.

        The same sums as over :meth:`list_hosts`, without building a view per
        host and job: the service's status line asks every second, and at 5,000
        daemons the views cost ~50 ms of the loop each time.
        """
        running = slots = 0
        for host in self._shell.core.state.hosts.values():
            running += len(host.jobs)
            slots += host.max_jobs
        return running, slots

    def job_count(self) -> int:
        """Return the number of known jobs (queued, assigned and compiling)."""
        return len(self._shell.core.state.jobs)

    def total_jobs(self) -> int:
        """Return the last job id handed out (remote and local jobs count)."""
        return self._shell.core.state.last_job_id

    def jobs_queued(self) -> int:
        """Return the number of jobs waiting for a compile server (PEND)."""
        return len(self._shell.core.state.queue)

    def jobs_running(self) -> int:
        """Return the number of jobs assigned to a server or compiling (WAIT and COMP)."""
        state = self._shell.core.state
        return len(state.jobs) - len(state.queue)

    def netname(self) -> str:
        """Return the network name this scheduler serves."""
        return self._shell.core.config.netname

    def started_at(self) -> float:
        """Return the clock time at which the scheduler started."""
        return self._shell.core.started

    # --- lists ------------------------------------------------------------------------

    def _job_view(self, job: Job) -> JobView:
        hosts = self._shell.core.state.hosts
        submitter = hosts.get(job.submitter)
        server = hosts.get(job.server) if job.server is not None else None
        queued_at, started_at = self._events.times(job.job_id)
        return JobView(
            id=job.job_id,
            state=job.state.value,
            submitter=submitter.nodename if submitter is not None else "<>",
            server=server.nodename if server is not None else "<unknown>",
            filename=job.filename,
            queued_at=queued_at,
            started_at=started_at,
        )

    def list_hosts(self) -> list[HostView]:
        """Return every connected daemon in login order, with the jobs assigned to it."""
        state = self._shell.core.state
        now = self._shell.now()
        views = []
        for host in state.hosts.values():
            busy = host.busy_installing_since
            views.append(
                HostView(
                    nodename=host.nodename,
                    ip=host.ip,
                    port=host.port,
                    platform=host.platform,
                    speed=server_speed(host),
                    jobs_assigned=len(host.jobs),
                    max_jobs=host.max_jobs,
                    load=host.load,
                    busy_installing_since=None if busy is None else int(now - busy),
                    jobs=[self._job_view(state.jobs[job_id]) for job_id in host.jobs],
                    protocol=host.protocol,
                    no_remote=host.noremote,
                    environments=tuple((env.platform, env.name) for env in host.envs),
                    blocked=state.is_blocked(host),
                    draining=state.is_drained(host),
                    auth=host.auth,
                )
            )
        return views

    def list_jobs(self) -> list[JobView]:
        """Return every known job ordered by id.

        A view is made again only for a job whose state, server or times changed
        since the last call (its other fields never change), so that listing
        20,000 queued jobs does not rebuild 20,000 views on the event loop each
        time.  An unchanged job keeps its view *object*: the telnet and D-Bus
        renderers keep their lines and structs by that identity (issue 19 item 4).
        """
        jobs = self._shell.core.state.jobs
        times = self._events.times
        old = self._job_views
        new: dict[int, tuple[object, int | None, tuple[float | None, float | None], JobView]] = {}
        views = []
        for job_id in sorted(jobs):
            job = jobs[job_id]
            hit = old.get(job_id)
            when = times(job_id)
            if hit is None or hit[0] is not job.state or hit[1] != job.server or hit[2] != when:
                hit = (job.state, job.server, when, self._job_view(job))
            new[job_id] = hit
            views.append(hit[3])
        self._job_views = new
        return views

    def blocked(self) -> list[str]:
        """Return the block list in the order names were added."""
        return list(self._shell.core.state.blocked)

    def drained(self) -> list[str]:
        """Return the drain list in the order names were added."""
        return list(self._shell.core.state.drained)

    # --- actions ----------------------------------------------------------------------

    def remove_hosts(self, names: Iterable[str]) -> list[str]:
        """Disconnect the first daemon matching each name; return the names that matched."""
        matched, effects = self._shell.core.remove_hosts(names, self._shell.now())
        self._shell.apply(effects)
        return matched

    def block_hosts(self, names: Iterable[str]) -> list[str]:
        """Block each name and disconnect a daemon matching it; return the names that matched."""
        matched, effects = self._shell.core.remove_hosts(names, self._shell.now(), block=True)
        self._shell.apply(effects)
        return matched

    def unblock_hosts(self, names: Iterable[str]) -> None:
        """Remove one exact occurrence of each name from the block list."""
        self._shell.apply(self._shell.core.unblock_hosts(names, self._shell.now()))
        self._events.changed()

    def drain_hosts(self, names: Iterable[str]) -> list[str]:
        """Give the daemons of these names no new jobs (their running jobs finish).

        Returns the names that match a connected daemon.  The names stay on the
        drain list, also across reconnects, until :meth:`resume_hosts`.
        """
        matched, effects = self._shell.core.drain_hosts(names, self._shell.now())
        self._shell.apply(effects)
        self._events.changed()
        return matched

    def resume_hosts(self, names: Iterable[str]) -> None:
        """Take each name off the drain list."""
        self._shell.apply(self._shell.core.resume_hosts(names, self._shell.now()))
        self._events.changed()

    # --- events -----------------------------------------------------------------------

    def add_observer(self, observer: ClusterObserver) -> None:
        """Call *observer* on daemons joining and leaving, jobs starting and finishing."""
        self._events.add_observer(observer)

    def remove_observer(self, observer: ClusterObserver) -> None:
        """Stop calling *observer*."""
        self._events.remove_observer(observer)

    def keep_finished_jobs(self, count: int) -> None:
        """Remember the last *count* jobs that finished after they started (for the web view)."""
        self._events.keep_finished(count)

    def finished_jobs(self) -> list[tuple[JobView, float, int]]:
        """Return the remembered finished jobs, oldest first: (view, end time, exit code)."""
        return self._events.finished()

    def observe(self, effects: list[Effect]) -> None:
        """Note a batch of effects the shell has just carried out (the shell calls this)."""
        now = self._shell.now()
        self._events.feed(self._shell.core.state, effects, now)
        self._metrics.feed(effects, now)

    def metrics(self) -> MetricsView:
        """Return the running totals (counters and histograms) for ``/metrics``."""
        return self._metrics.view(self._shell.now())

    async def internals(self, names: Iterable[str]) -> list[str]:
        """Return each matching daemon's internals text, or ``<nodename> not reporting``.

        With no names every daemon is asked.  Answers are in login order.
        """
        hosts, effects = self._shell.core.request_internals(names)
        loop = asyncio.get_running_loop()
        futures = []
        for host in hosts:
            future: asyncio.Future[str] = loop.create_future()
            self._waiting.setdefault(host.host_id, []).append(future)
            futures.append(future)
        self._shell.apply(effects)
        if futures:
            await asyncio.wait(futures, timeout=self._internals_timeout)
        texts = []
        for host, future in zip(hosts, futures, strict=True):
            if future.done() and not future.cancelled():
                texts.append(future.result())
            else:
                future.cancel()
                self._forget(host.host_id, future)
                texts.append(f"{host.nodename} not reporting\n")
        return texts

    def deliver_internals(self, host_id: int, text: str) -> None:
        """Hand a daemon's STATUS_TEXT answer to the oldest ``internals`` call waiting for it."""
        waiting = self._waiting.get(host_id, [])
        while waiting:
            future = waiting.pop(0)
            if not future.done():
                future.set_result(text)
                break
        if not waiting:
            self._waiting.pop(host_id, None)

    def _forget(self, host_id: int, future: asyncio.Future[str]) -> None:
        waiting = self._waiting.get(host_id, [])
        if future in waiting:
            waiting.remove(future)
        if not waiting:
            self._waiting.pop(host_id, None)
