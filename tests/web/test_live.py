"""LiveFeed: cluster observer calls become Server-Sent Events for the web view."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

from iceserv.scheduler.metrics import ClusterMetrics
from iceserv.scheduler.views import HostView, JobView
from iceserv.web.live import (
    MAX_SUBSCRIBERS,
    QUEUE_LIMIT,
    SNAPSHOT_INTERVAL,
    TIMELINE_JOBS,
    TIMELINE_SECONDS,
    LiveFeed,
)

JOB = JobView(7, "COMP", "laptop", "farm1", "src/a.c", 10.0, 11.0)
HOST = HostView(nodename="farm1", ip="10.0.0.2", port=10245, platform="x86_64", speed=1.5,
                jobs_assigned=1, max_jobs=4, load=120, busy_installing_since=None, jobs=[JOB],
                protocol=43, no_remote=False, environments=(), blocked=False,
                draining=False)  # fmt: skip


class _Control:
    def __init__(self) -> None:
        self.metrics_ = ClusterMetrics()
        self.observers: list[object] = []
        self.finished: deque[tuple[JobView, float, int]] = deque()

    def netname(self) -> str:
        return "lab"

    def uptime_seconds(self) -> int:
        return 5

    def list_hosts(self) -> list[HostView]:
        return [HOST]

    def list_jobs(self) -> list[JobView]:
        return [JOB]

    def jobs_queued(self) -> int:
        return 0

    def jobs_running(self) -> int:
        return 1

    def blocked(self) -> list[str]:
        return []

    def metrics(self) -> Any:
        return self.metrics_.view(0.0)

    def add_observer(self, observer: object, /) -> None:
        self.observers.append(observer)

    def remove_observer(self, observer: object, /) -> None:
        self.observers.remove(observer)

    def keep_finished_jobs(self, count: int, /) -> None:
        self.finished = deque(self.finished, maxlen=count)

    def finished_jobs(self) -> list[tuple[JobView, float, int]]:
        return list(self.finished)


def _events(queue: asyncio.Queue[bytes]) -> list[tuple[str, Any]]:
    out = []
    while not queue.empty():
        text = queue.get_nowait().decode()
        kind, data = text.split("\n")[:2]
        out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


class TestLiveFeed:
    def test_hello_then_events_at_once(self):
        """A new stream starts with the whole view; a job start reaches it without delay."""

        async def run() -> list[tuple[str, Any]]:
            feed = LiveFeed(_Control(), clock=lambda: 12.0)
            subscriber = feed.subscribe()
            assert subscriber is not None
            feed.job_started(JOB)
            feed.host_left("farm2", "10.0.0.3")
            return _events(subscriber.queue)

        events = asyncio.run(run())
        assert [kind for kind, _ in events] == ["hello", "job_started", "host_left"]
        hello = events[0][1]
        assert hello["hosts"][0]["name"] == "farm1"
        assert hello["hosts"][0]["jobs"][0]["file"] == "src/a.c"
        assert events[1][1]["server"] == "farm1"
        assert events[1][1]["started_at"] == 11.0

    def test_changes_are_coalesced(self):
        """Many 'changed' calls in a row give one snapshot per interval."""

        async def run() -> list[str]:
            feed = LiveFeed(_Control(), clock=lambda: 12.0)
            subscriber = feed.subscribe()
            assert subscriber is not None
            for _ in range(100):
                feed.cluster_changed()
            await asyncio.sleep(SNAPSHOT_INTERVAL * 2.5)
            return [kind for kind, _ in _events(subscriber.queue)]

        kinds = asyncio.run(run())
        assert kinds[0] == "hello"
        assert 1 <= kinds.count("snapshot") <= 2

    def test_slow_streams_are_dropped_and_streams_are_bounded(self):
        """A stream QUEUE_LIMIT events behind is dropped; past MAX_SUBSCRIBERS none is made."""

        async def run() -> None:
            feed = LiveFeed(_Control(), clock=lambda: 12.0)
            slow = feed.subscribe()
            assert slow is not None
            for _ in range(QUEUE_LIMIT):
                feed.job_started(JOB)
            assert slow.dropped.is_set()
            assert feed.subscribers() == 0
            streams = [feed.subscribe() for _ in range(MAX_SUBSCRIBERS)]
            assert all(streams)
            assert feed.subscribe() is None
            feed.close()
            assert all(s is not None and s.dropped.is_set() for s in streams)

        asyncio.run(run())

    def test_finished_jobs_are_on_the_next_hello_timeline(self):
        """Jobs that ended before a page connected are on its timeline (kept by the scheduler)."""
        control = _Control()

        async def run() -> dict[str, Any]:
            feed = LiveFeed(control, clock=lambda: 20.0)
            control.finished.append((JOB, 20.0, 0))
            subscriber = feed.subscribe()
            assert subscriber is not None
            return _events(subscriber.queue)[0][1]

        hello = asyncio.run(run())
        assert control.finished.maxlen == TIMELINE_JOBS
        assert hello["timeline"] == [{"id": 7, "host": "farm1", "file": "src/a.c",
                                      "submitter": "laptop", "start": 11.0, "end": 20.0,
                                      "exitcode": 0}]  # fmt: skip

    def test_timeline_leaves_out_jobs_older_than_its_span(self):
        control = _Control()

        async def run() -> list[dict[str, Any]]:
            feed = LiveFeed(control, clock=lambda: 1000.0)
            for end in (1000.0 - TIMELINE_SECONDS - 1, 1000.0 - TIMELINE_SECONDS, 999.0):
                control.finished.append((JOB, end, 1))
            subscriber = feed.subscribe()
            assert subscriber is not None
            return _events(subscriber.queue)[0][1]["timeline"]

        assert [job["end"] for job in asyncio.run(run())] == [1000.0 - TIMELINE_SECONDS, 999.0]

    def test_observes_the_scheduler_only_while_someone_listens(self):
        """No subscriber, no observer calls per job: it registers with the first, leaves with
        the last (also when the last is dropped for falling behind, and on close)."""
        control = _Control()

        async def run() -> None:
            feed = LiveFeed(control, clock=lambda: 12.0)
            assert control.observers == []
            first, second = feed.subscribe(), feed.subscribe()
            assert first is not None
            assert second is not None
            assert control.observers == [feed]
            feed.unsubscribe(first)
            assert control.observers == [feed]
            feed.unsubscribe(second)
            assert control.observers == []
            assert not feed.observing()
            slow = feed.subscribe()
            for _ in range(QUEUE_LIMIT):
                feed.job_started(JOB)
            assert slow is not None
            assert slow.dropped.is_set()
            assert control.observers == []
            assert feed.subscribe() is not None
            feed.close()
            assert control.observers == []

        asyncio.run(run())


class TestAuthState:
    def test_host_auth_state_in_metrics_and_snapshot(self):
        """/metrics' iceserv_host_info and the web snapshot carry each host's auth state."""
        from dataclasses import replace  # noqa: PLC0415 - only here

        from iceserv.web.exposition import make_registry, render  # noqa: PLC0415
        from iceserv.web.live import snapshot  # noqa: PLC0415

        control = _Control()
        host = replace(HOST, auth="unauthenticated")
        control.list_hosts = lambda: [host]  # type: ignore[method-assign]
        text = render(make_registry(control, version="t")).decode()  # type: ignore[arg-type]
        line = next(x for x in text.splitlines() if x.startswith("iceserv_host_info{"))
        assert 'auth="unauthenticated"' in line
        assert snapshot(control, 10.0)["hosts"][0]["auth"] == "unauthenticated"  # type: ignore[arg-type]
