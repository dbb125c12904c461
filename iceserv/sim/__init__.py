"""The placement simulator: replay a recorded build on a simulated cluster (``iceserv sim``).

``trace`` reads job traces, ``cluster`` describes hosts and network,
``engine`` is the discrete-event simulation of daemons and clients,
``placer`` the seam to a scheduler, ``real`` drives iceserv's real
scheduler core through it, ``model14`` is an independent model of icecream
1.4's placement, ``replay`` names them, ``report`` computes the figures and
``svg`` draws the timeline.  The package is pure: no asyncio, sockets,
threads or real clock; it may import the scheduler's pure modules and the
protocol, never the daemon, service, telnet or app layers.
"""

from __future__ import annotations

from iceserv.sim.cluster import ClusterSpec, HostSpec, parse_cluster, parse_host, read_cluster
from iceserv.sim.engine import Install, JobRun, SimResult, Simulation, SimulationError
from iceserv.sim.placer import Placed, Placement
from iceserv.sim.replay import PLACEMENTS, replay
from iceserv.sim.report import Summary, format_comparison, summarize
from iceserv.sim.svg import render_timeline
from iceserv.sim.trace import SimInputError, TraceJob, parse_trace, read_trace

__all__ = [
    "PLACEMENTS",
    "ClusterSpec",
    "HostSpec",
    "Install",
    "JobRun",
    "Placed",
    "Placement",
    "SimInputError",
    "SimResult",
    "Simulation",
    "SimulationError",
    "Summary",
    "TraceJob",
    "format_comparison",
    "parse_cluster",
    "parse_host",
    "parse_trace",
    "read_cluster",
    "read_trace",
    "render_timeline",
    "replay",
    "summarize",
]
