"""The daemon's ``/metrics``: families, fixed series, and the metrics-only endpoint's routes.

A :class:`~iceserv.daemon.metrics.DaemonMetrics` tally fed by hand and a
:class:`~iceserv.daemon.control.MetricsView` stand in for a running daemon;
the endpoint runs on 127.0.0.1, port 0, on a loop in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from web.webbed import metrics, value

from iceserv.daemon.control import MetricsView
from iceserv.daemon.effects import CompileFinished, CompileReport, StartCompile, Unpacked
from iceserv.daemon.metrics import DaemonMetrics
from iceserv.protocol import CompileFile
from iceserv.web.daemon_exposition import SERIES, make_daemon_registry
from iceserv.web.exposition import render
from iceserv.web.server import HttpEndpoint

if TYPE_CHECKING:
    from collections.abc import Iterator


class _Daemon:
    """What ``DaemonControl`` gives ``/metrics``, with settable parts."""

    def __init__(self) -> None:
        self.tally = DaemonMetrics()
        self.state = MetricsView(
            nodename="node1",
            platform="x86_64",
            slots_total=4,
            slots_used=3,
            remote_running=1,
            local_running=1,
            installs_running=1,
            remote_waiting=2,
            local_waiting=0,
            clients=5,
            load=250,
            scheduler_connected=True,
            draining=False,
            environments=2,
            native_environments=1,
            cache_bytes=123_456,
            cache_limit_bytes=256 << 20,
            totals=self.tally.view(),
        )

    def metrics(self) -> MetricsView:
        return dataclasses.replace(self.state, totals=self.tally.view())


def _scrape(daemon: _Daemon) -> dict[Any, float]:
    return metrics(render(make_daemon_registry(daemon, version="9.9")).decode())


class TestCollector:
    def test_gauges_read_the_daemon_at_scrape_time(self):
        """Each gauge shows the facade's figure; free slots are total - used."""
        samples = _scrape(_Daemon())
        assert value(samples, "iceserv_daemon_slots", state="free") == 1
        assert value(samples, "iceserv_daemon_jobs", kind="remote", state="waiting") == 2
        assert value(samples, "iceserv_daemon_environments", kind="native") == 1
        assert value(samples, "iceserv_daemon_cache_bytes") == 123_456
        assert value(samples, "iceserv_daemon_load") == 250
        info = {"nodename": "node1", "platform": "x86_64", "version": "9.9"}
        assert value(samples, "iceserv_daemon_info", **info) == 1

    def test_series_stay_fixed_as_work_is_done(self):
        """Jobs and installs change values, never the set of series (no per-job labels)."""
        daemon = _Daemon()
        before = _scrape(daemon)
        job = CompileFile(job_id=1, environment="gcc", target="x86_64")
        for conn_id in range(1, 50):
            daemon.tally.effects([StartCompile(conn_id, job, 43)], 0.0)
            daemon.tally.event(CompileFinished(conn_id, CompileReport(real_msec=conn_id)), 1.0)
        daemon.tally.event(Unpacked(77, 10, 10), 2.0)
        after = _scrape(daemon)
        ours = [key for key in after if "_process_" not in key[0]]
        assert len(ours) == SERIES
        assert set(after) == set(before)
        assert value(after, "iceserv_daemon_jobs_finished_total") == 49
        assert value(after, "iceserv_daemon_compile_seconds_count") == 49
        assert value(after, "iceserv_daemon_compile_seconds_bucket", le="0.05") == 49
        assert value(after, "iceserv_daemon_env_installs_total", result="ok") == 1


class _Running:
    def __init__(self, endpoint: HttpEndpoint) -> None:
        self.endpoint = endpoint
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(endpoint.start("127.0.0.1", 0), self.loop).result(30)
        self.port = endpoint.address[1]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.endpoint.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def running() -> Iterator[_Running]:
    endpoint = HttpEndpoint.metrics_only(make_daemon_registry(_Daemon(), version="9.9"))
    bed = _Running(endpoint)
    try:
        yield bed
    finally:
        bed.close()


def _status(port: int, path: str, method: str = "GET") -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - loopback
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


class TestMetricsOnlyEndpoint:
    def test_only_metrics_is_served(self, running):
        """/metrics answers 200; the scheduler's page, stream and API are not there (404)."""
        assert _status(running.port, "/metrics") == 200
        for path in ("/", "/app.js", "/events", "/api/cluster"):
            assert _status(running.port, path) == 404, path
        assert _status(running.port, "/metrics", "POST") == 405

    def test_needs_a_scheduler_or_a_registry(self):
        """An endpoint with neither is a programming error, said at once."""
        with pytest.raises(ValueError, match="scheduler or a registry"):
            HttpEndpoint(None, version="x")
