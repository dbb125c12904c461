"""The daemon's ``/metrics``: slots, jobs, environments and durations in Prometheus' text format.

This module owns :class:`DaemonCollector`, a ``prometheus_client``
collector that reads the daemon's control facade at scrape time (one
snapshot per scrape; nothing is kept between scrapes), and
:func:`make_daemon_registry`, which adds ``prometheus_client``'s own process
collector (CPU seconds, resident memory, open descriptors, start time).
Metric names are listed in ``man/iceccd.8.scd``.

Label sets are fixed: ``state``, ``kind``, ``reason`` and ``result`` take a
handful of values each, so every scrape has the same :data:`SERIES` series
(plus the process collector's).  No job ids, no environment names, no file
names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from iceserv.web.exposition import histogram_family

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from prometheus_client.core import Metric

    from iceserv.web.facade import DaemonLike, DaemonMetricsLike

__all__ = ["SERIES", "DaemonCollector", "make_daemon_registry"]

#: Series per scrape from :class:`DaemonCollector` (histograms count buckets, sum and count).
SERIES: Final = 63


def _labelled(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, count in values.items():
        family.add_metric([value], count)
    return family


class DaemonCollector:
    """Reads *control* at each scrape and yields the daemon's metric families."""

    def __init__(self, control: DaemonLike, *, version: str) -> None:
        self._control = control
        self._version = version

    def describe(self) -> list[Metric]:
        """Return nothing: the registry must not collect at registration time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield every family (see ``iceccd(8)`` for their meaning)."""
        view = self._control.metrics()
        info = InfoMetricFamily("iceserv_daemon", "The daemon's version, node name and platform")
        info.add_metric(
            [], {"version": self._version, "nodename": view.nodename, "platform": view.platform}
        )
        yield info
        yield from self._gauges(view)
        yield from self._totals(view)

    def _gauges(self, view: DaemonMetricsLike) -> Iterator[Metric]:
        slots = GaugeMetricFamily("iceserv_daemon_slots", "Job slots", labels=["state"])
        slots.add_metric(["total"], view.slots_total)
        slots.add_metric(["used"], view.slots_used)
        slots.add_metric(["free"], max(0, view.slots_total - view.slots_used))
        yield slots
        jobs = GaugeMetricFamily(
            "iceserv_daemon_jobs",
            "Jobs running or waiting for a slot: remote compiles we run, local jobs of clients",
            labels=["kind", "state"],
        )
        jobs.add_metric(["remote", "running"], view.remote_running)
        jobs.add_metric(["remote", "waiting"], view.remote_waiting)
        jobs.add_metric(["local", "running"], view.local_running)
        jobs.add_metric(["local", "waiting"], view.local_waiting)
        yield jobs
        for name, doc, value in (
            (
                "iceserv_daemon_installs_running",
                "Environment installs running",
                view.installs_running,
            ),
            ("iceserv_daemon_clients", "Connected clients", view.clients),
            ("iceserv_daemon_load", "Load as sent to the scheduler, 0 to 1000", view.load),
            (
                "iceserv_daemon_scheduler_connected",
                "1 while logged in to a scheduler",
                int(view.scheduler_connected),
            ),
            ("iceserv_daemon_draining", "1 while taking no new remote jobs", int(view.draining)),
            ("iceserv_daemon_cache_bytes", "Bytes of cached environments", view.cache_bytes),
            (
                "iceserv_daemon_cache_limit_bytes",
                "The environment cache's limit",
                view.cache_limit_bytes,
            ),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        envs = GaugeMetricFamily(
            "iceserv_daemon_environments",
            "Cached environments: received from clients, or native ones made here",
            labels=["kind"],
        )
        envs.add_metric(["received"], view.environments)
        envs.add_metric(["native"], view.native_environments)
        yield envs

    def _totals(self, view: DaemonMetricsLike) -> Iterator[Metric]:
        totals = view.totals
        yield _labelled(
            "iceserv_daemon_jobs_started",
            "Slots granted: remote compiles, local jobs, clients told to compile themselves",
            "kind",
            totals.jobs_started,
        )
        yield CounterMetricFamily(
            "iceserv_daemon_jobs_finished", "Remote compiles that ended", value=totals.jobs_finished
        )
        yield _labelled(
            "iceserv_daemon_jobs_failed",
            "Remote compiles that ended without an object file",
            "reason",
            totals.jobs_failed,
        )
        yield _labelled(
            "iceserv_daemon_env_installs", "Environment installs", "result", totals.installs
        )
        yield CounterMetricFamily(
            "iceserv_daemon_env_evictions",
            "Environments evicted to stay under the cache limit",
            value=totals.evictions,
        )
        yield _labelled(
            "iceserv_daemon_native_env_builds",
            "Native environments asked for by local clients",
            "result",
            totals.native_builds,
        )
        yield _labelled(
            "iceserv_daemon_job_tickets",
            "Connections by what became of their job ticket (network key, issue 14)",
            "result",
            totals.tickets,
        )
        yield histogram_family(
            "iceserv_daemon_compile_seconds",
            "Compile time of remote compiles (the compiler's wall time)",
            totals.compile_time,
        )
        yield histogram_family(
            "iceserv_daemon_env_install_seconds",
            "Environment transfer and unpack: first tarball byte to installed",
            totals.install_time,
        )


def make_daemon_registry(control: DaemonLike, *, version: str) -> CollectorRegistry:
    """Return a registry (not the process-global one) for the daemon's ``/metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(control, version=version))
    ProcessCollector(namespace="iceserv_daemon", registry=registry)
    return registry
