"""Live updates for the web view: cluster observer calls become Server-Sent Events.

This module owns :class:`LiveFeed`.  While at least one page is
subscribed it is registered with the scheduler's control facade as an
observer, the same calls the D-Bus signals come from: a job that starts or
ends, a host that joins or leaves is sent to every subscriber at once;
"something changed" schedules one full snapshot at most every
:data:`SNAPSHOT_INTERVAL` seconds (slots, load, queue, totals).  With no
subscriber it is not registered at all, so an idle endpoint costs the
scheduler nothing per job but one tuple in the facade's list of finished jobs
(:meth:`keep_finished_jobs`), which the timeline of a page that connects
later is drawn from.

Memory is bounded: at most :data:`MAX_SUBSCRIBERS` streams, each with a queue
of :data:`QUEUE_LIMIT` events (a subscriber that falls behind is dropped, as
1.4 drops slow monitors); the timeline keeps the last :data:`TIMELINE_JOBS`
finished jobs of the last :data:`TIMELINE_SECONDS` seconds.  It must not
change the scheduler's state.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from iceserv.web.facade import HostLike, JobLike, SchedulerLike

__all__ = ["MAX_SUBSCRIBERS", "LiveFeed", "Subscriber", "snapshot"]

#: Seconds between two full snapshots while things change.
SNAPSHOT_INTERVAL: Final = 0.5
#: Streams served at once; more get 503.
MAX_SUBSCRIBERS: Final = 64
#: Events waiting per stream before the stream is dropped.
QUEUE_LIMIT: Final = 512
#: The timeline's memory.
TIMELINE_JOBS: Final = 2000
TIMELINE_SECONDS: Final = 600.0
#: Queued jobs listed in a snapshot (the count is always exact).
QUEUE_SHOWN: Final = 50


def _job(job: JobLike) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state,
        "file": job.filename,
        "submitter": job.submitter,
        "server": job.server,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
    }


def _host(host: HostLike) -> dict[str, Any]:
    return {
        "name": host.nodename,
        "ip": host.ip,
        "platform": host.platform,
        "speed": round(host.speed, 3),
        "load": host.load,
        "max_jobs": host.max_jobs,
        "used": host.jobs_assigned,
        "protocol": host.protocol,
        "no_remote": host.no_remote,
        "blocked": host.blocked,
        "draining": host.draining,
        "auth": host.auth,
        "jobs": [_job(job) for job in host.jobs],
    }


def snapshot(control: SchedulerLike, now: float) -> dict[str, Any]:
    """Return the whole cluster view the page renders (hosts, queue, totals)."""
    totals = control.metrics()
    wait = totals.placement_wait
    placed, local = totals.jobs_placed, totals.local_jobs
    pending = (job for job in control.list_jobs() if job.state == "PEND")
    queue = [_job(job) for job in itertools.islice(pending, QUEUE_SHOWN)]
    return {
        "now": now,
        "netname": control.netname(),
        "uptime": control.uptime_seconds(),
        "hosts": [_host(host) for host in control.list_hosts()],
        "queued": control.jobs_queued(),
        "running": control.jobs_running(),
        "queue": queue,
        "totals": {
            "jobs_per_second": round(totals.jobs_per_second, 3),
            "placed": placed,
            "finished": totals.jobs_finished,
            "failed": sum(totals.jobs_failed.values()),
            "local": local,
            "local_share": round(local / (placed + local), 4) if placed + local else 0.0,
            "mean_wait": round(wait.total / wait.cumulative[-1], 4) if wait.cumulative[-1] else 0,
        },
    }


def encode(event: str, data: object) -> bytes:
    """Return one Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(eq=False, slots=True)
class Subscriber:
    """One event stream: a bounded queue of encoded events."""

    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


class LiveFeed:
    """Fans the scheduler's cluster events out to the web view's event streams."""

    def __init__(self, control: SchedulerLike, *, clock: Callable[[], float]) -> None:
        self._control = control
        self._clock = clock
        self._subscribers: set[Subscriber] = set()
        self._observing = False
        self._pending: asyncio.TimerHandle | None = None
        self._last_snapshot = 0.0
        control.keep_finished_jobs(TIMELINE_JOBS)

    # --- subscribers ------------------------------------------------------------------

    def subscribe(self) -> Subscriber | None:
        """Return a new stream primed with a ``hello`` event, or ``None`` when full."""
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            return None
        subscriber = Subscriber()
        now = self._clock()
        hello = snapshot(self._control, now)
        hello["timeline"] = self._recent(now)
        subscriber.queue.put_nowait(encode("hello", hello))
        self._subscribers.add(subscriber)
        self._observe(observing=True)
        return subscriber

    def subscribers(self) -> int:
        """Return how many streams are open."""
        return len(self._subscribers)

    def observing(self) -> bool:
        """Return whether it is registered with the scheduler (while someone is subscribed)."""
        return self._observing

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget *subscriber*."""
        self._subscribers.discard(subscriber)
        self._observe(observing=bool(self._subscribers))

    def close(self) -> None:
        """Drop every stream, stop observing and cancel a pending snapshot."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        for subscriber in list(self._subscribers):
            self._drop(subscriber)
        self._observe(observing=False)

    def _observe(self, *, observing: bool) -> None:
        if observing and not self._observing:
            self._control.add_observer(self)
        elif not observing and self._observing:
            self._control.remove_observer(self)
        self._observing = observing

    def _recent(self, now: float) -> list[dict[str, Any]]:
        since = now - TIMELINE_SECONDS
        return [
            {
                "id": job.id,
                "host": job.server,
                "file": job.filename,
                "submitter": job.submitter,
                "start": job.started_at,
                "end": end,
                "exitcode": exitcode,
            }
            for job, end, exitcode in self._control.finished_jobs()
            if end >= since
        ]

    def _send(self, data: bytes) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(data)
            except asyncio.QueueFull:
                self._drop(subscriber)

    def _drop(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        subscriber.dropped.set()
        self._observe(observing=bool(self._subscribers))

    # --- the cluster observer ---------------------------------------------------------

    def host_joined(self, nodename: str, ip: str, /) -> None:
        """Send ``host_joined`` (the next snapshot carries its details)."""
        if self._subscribers:
            self._send(encode("host_joined", {"name": nodename, "ip": ip}))
            self.cluster_changed()

    def host_left(self, nodename: str, ip: str, /) -> None:
        """Send ``host_left`` at once."""
        if self._subscribers:
            self._send(encode("host_left", {"name": nodename, "ip": ip}))

    def job_started(self, job: JobLike, /) -> None:
        """Send ``job_started`` at once (the page puts it on its server's row)."""
        if self._subscribers:
            data = _job(job)
            data["now"] = self._clock()
            self._send(encode("job_started", data))

    def job_finished(self, job: JobLike, exitcode: int, /) -> None:
        """Send ``job_finished`` (the timeline of later pages comes from the scheduler)."""
        if self._subscribers:
            self._send(
                encode("job_finished", {**_job(job), "exitcode": exitcode, "now": self._clock()})
            )

    def cluster_changed(self) -> None:
        """Schedule a snapshot (at most one per :data:`SNAPSHOT_INTERVAL`)."""
        if not self._subscribers or self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last_snapshot + SNAPSHOT_INTERVAL - loop.time())
        self._pending = loop.call_later(delay, self._push_snapshot)

    def _push_snapshot(self) -> None:
        self._pending = None
        self._last_snapshot = asyncio.get_running_loop().time()
        if self._subscribers:
            self._send(encode("snapshot", snapshot(self._control, self._clock())))
