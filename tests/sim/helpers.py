"""Small builders shared by the simulator tests."""

from __future__ import annotations

from iceserv.sim import ClusterSpec, HostSpec, TraceJob

ENV = "gcc-12"


def job(submit: float, cpu: float, *, submitter: str = "laptop", file: str = "") -> TraceJob:
    """A C job of 100 kB source and 50 kB object, built with -O2."""
    return TraceJob(submit, submitter, 100_000, 50_000, cpu, "c", ENV, ("-O2",), file)


def quiet_cluster(*hosts: HostSpec) -> ClusterSpec:
    """A cluster whose network costs nothing, so times are easy to check by hand."""
    return ClusterSpec(hosts, latency=0.0, wire_ratio=0.0, install_seconds=0.0, env_size=0)
