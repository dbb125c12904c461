"""``/metrics``: the scheduler's gauges, counters and histograms in Prometheus' text format.

This module owns :class:`SchedulerCollector`, a ``prometheus_client``
collector that reads the control facade at scrape time (nothing is kept
between scrapes, so a scrape costs O(hosts) and never touches the placement
loop), and :func:`render`.  Metric names are listed in
``man/icecc-scheduler.8.scd``.

Label sets are bounded: ``host`` (a connected daemon's nodename; at most
:data:`MAX_HOST_SERIES` hosts are listed), ``state`` and ``reason`` and
``direction`` take a fixed handful of values.  No job ids, no file names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.core import Metric

    from iceserv.web.facade import HistogramLike, HostLike, SchedulerLike

__all__ = [
    "CONTENT_TYPE",
    "MAX_HOST_SERIES",
    "SchedulerCollector",
    "histogram_family",
    "make_registry",
    "render",
]

#: The text exposition format's content type.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Per-host series are written for at most this many hosts (in login order).
MAX_HOST_SERIES: Final = 1000


def histogram_family(name: str, doc: str, histogram: HistogramLike) -> HistogramMetricFamily:
    """Return *histogram* as a Prometheus histogram family (bucket bounds in seconds)."""
    buckets = [
        (format(bound, "g"), count)
        for bound, count in zip(histogram.bounds, histogram.cumulative, strict=False)
    ]
    buckets.append(("+Inf", histogram.cumulative[-1]))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=histogram.total)


class SchedulerCollector:
    """Reads *control* at each scrape and yields the metric families."""

    def __init__(self, control: SchedulerLike, *, version: str) -> None:
        self._control = control
        self._version = version

    def describe(self) -> list[Metric]:
        """Return nothing: the registry must not collect at registration time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield every family (see the man page for their meaning)."""
        control = self._control
        hosts = list(control.list_hosts())
        info = InfoMetricFamily("iceserv_scheduler", "The scheduler's version and network name")
        info.add_metric([], {"version": self._version, "netname": control.netname()})
        yield info
        yield GaugeMetricFamily(
            "iceserv_scheduler_uptime_seconds",
            "Seconds since the scheduler started",
            value=control.uptime_seconds(),
        )
        yield from self._hosts(hosts)
        jobs = GaugeMetricFamily("iceserv_jobs", "Jobs queued and running", labels=["state"])
        jobs.add_metric(["queued"], control.jobs_queued())
        jobs.add_metric(["running"], control.jobs_running())
        yield jobs
        yield from self._totals()

    def _hosts(self, hosts: list[HostLike]) -> Iterator[Metric]:
        counts = GaugeMetricFamily(
            "iceserv_hosts",
            "Daemons connected, names on the block list, daemons draining",
            labels=["state"],
        )
        counts.add_metric(["connected"], len(hosts))
        counts.add_metric(["blocked"], len(self._control.blocked()))
        counts.add_metric(["draining"], sum(host.draining for host in hosts))
        yield counts
        total = sum(host.max_jobs for host in hosts)
        used = sum(host.jobs_assigned for host in hosts)
        slots = GaugeMetricFamily("iceserv_slots", "Compile slots of all daemons", labels=["state"])
        slots.add_metric(["total"], total)
        slots.add_metric(["used"], used)
        slots.add_metric(["free"], max(0, total - used))
        yield slots
        listed = hosts[:MAX_HOST_SERIES]
        per_host = GaugeMetricFamily(
            "iceserv_host_slots", "Compile slots per daemon", labels=["host", "state"]
        )
        speed = GaugeMetricFamily("iceserv_host_speed", "Speed rating", labels=["host"])
        load = GaugeMetricFamily("iceserv_host_load", "Load, 0 to 1000", labels=["host"])
        protocol = GaugeMetricFamily(
            "iceserv_host_protocol_version", "Negotiated protocol version", labels=["host"]
        )
        info = InfoMetricFamily("iceserv_host", "A connected daemon", labels=["host"])
        for host in listed:
            name = host.nodename
            per_host.add_metric([name, "total"], host.max_jobs)
            per_host.add_metric([name, "used"], host.jobs_assigned)
            per_host.add_metric([name, "free"], max(0, host.max_jobs - host.jobs_assigned))
            speed.add_metric([name], host.speed)
            load.add_metric([name], host.load)
            protocol.add_metric([name], host.protocol)
            info.add_metric(
                [name],
                {
                    "ip": host.ip,
                    "platform": host.platform,
                    "no_remote": str(host.no_remote).lower(),
                    "blocked": str(host.blocked).lower(),
                    "draining": str(host.draining).lower(),
                    "auth": host.auth,
                },
            )
        yield from (per_host, speed, load, protocol, info)

    def _totals(self) -> Iterator[Metric]:
        totals = self._control.metrics()
        yield CounterMetricFamily(
            "iceserv_jobs_placed", "Jobs given a compile server", value=totals.jobs_placed
        )
        yield CounterMetricFamily(
            "iceserv_jobs_finished", "Jobs that ended", value=totals.jobs_finished
        )
        failed = CounterMetricFamily(
            "iceserv_jobs_failed", "Jobs that ended without a result", labels=["reason"]
        )
        for reason, count in totals.jobs_failed.items():
            failed.add_metric([reason], count)
        yield failed
        yield CounterMetricFamily(
            "iceserv_local_jobs",
            "Local compiles reported by daemons (JOB_LOCAL_BEGIN)",
            value=totals.local_jobs,
        )
        transfer = CounterMetricFamily(
            "iceserv_job_bytes",
            "Compressed bytes of remote jobs: in to servers, out from them",
            labels=["direction"],
        )
        transfer.add_metric(["in"], totals.bytes_in)
        transfer.add_metric(["out"], totals.bytes_out)
        yield transfer
        yield CounterMetricFamily(
            "iceserv_environment_transfers",
            "Placements on a server without the environment",
            value=totals.env_transfers,
        )
        yield histogram_family(
            "iceserv_placement_wait_seconds", "GET_CS to USE_CS", totals.placement_wait
        )
        yield histogram_family(
            "iceserv_compile_seconds", "Compile time the servers reported", totals.compile_time
        )
        yield histogram_family(
            "iceserv_job_turnaround_seconds",
            "GET_CS to JOB_DONE of successful jobs",
            totals.turnaround,
        )


def make_registry(control: SchedulerLike, *, version: str) -> CollectorRegistry:
    """Return a registry (not the process-global one) holding a :class:`SchedulerCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(control, version=version))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """Return the text exposition of *registry*."""
    return generate_latest(registry)
