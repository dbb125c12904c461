"""Figures of a simulated replay: makespan, waits, per-host utilisation, and their texts.

This module owns turning a :class:`~iceserv.sim.engine.SimResult` into
:class:`Summary` figures, as a table for people and as plain data for
JSON.  It computes nothing about placement and does no I/O.

Definitions: the *makespan* runs from the first submission to the last
result back at its client; a job's *wait* runs from its GET_CS to the start
of its compile (scheduler queue, transfers, the server's own queue); a
host's *utilisation* is its busy slot-seconds divided by its slots times
the part of the makespan it was logged in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from iceserv.sim.engine import SimResult

__all__ = ["HostFigures", "Summary", "format_comparison", "percentile", "summarize"]


@dataclass(frozen=True, slots=True)
class HostFigures:
    """One host's share: jobs compiled, busy slot-seconds, utilisation (0..1)."""

    name: str
    speed: float
    slots: int
    jobs: int
    busy: float
    utilisation: float


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of one replay."""

    placement: str
    jobs: int
    makespan: float
    mean_wait: float
    p95_wait: float
    max_wait: float
    remote_jobs: int
    installs: int
    hosts: tuple[HostFigures, ...]

    def as_dict(self) -> dict[str, object]:
        """Return the figures as plain data (for JSON)."""
        return asdict(self)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the *fraction* percentile of *values* (nearest rank; 0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(result: SimResult) -> Summary:
    """Compute the figures of *result* (see the module docstring)."""
    runs = result.runs
    start = min(run.submit for run in runs)
    end = max(run.done for run in runs)
    makespan = end - start
    waits = [run.wait for run in runs]
    hosts = []
    for host in result.hosts:
        mine = [run for run in runs if run.server == host.name]
        busy = sum(run.end - run.start for run in mine)
        present = max(0.0, end - max(start, host.join))
        capacity = max(1, host.slots) * present
        utilisation = busy / capacity if capacity > 0 else 0.0
        hosts.append(HostFigures(host.name, host.speed, host.slots, len(mine), busy, utilisation))
    return Summary(
        placement=result.placement,
        jobs=len(runs),
        makespan=makespan,
        mean_wait=sum(waits) / len(waits),
        p95_wait=percentile(waits, 0.95),
        max_wait=max(waits),
        remote_jobs=sum(1 for run in runs if run.server != run.submitter),
        installs=len(result.installs),
        hosts=tuple(hosts),
    )


def format_comparison(summaries: Sequence[Summary]) -> str:
    """Return a table of *summaries* side by side (first column: iceserv, then the others)."""
    width = max(14, *(len(s.placement) for s in summaries))
    head = f"{'':<24}" + "".join(f"{s.placement:>{width + 2}}" for s in summaries)
    rows = [
        ("jobs", [f"{s.jobs}" for s in summaries]),
        ("makespan (s)", [f"{s.makespan:.2f}" for s in summaries]),
        ("mean wait (s)", [f"{s.mean_wait:.3f}" for s in summaries]),
        ("p95 wait (s)", [f"{s.p95_wait:.3f}" for s in summaries]),
        ("max wait (s)", [f"{s.max_wait:.3f}" for s in summaries]),
        ("jobs sent remote", [f"{s.remote_jobs}" for s in summaries]),
        ("environment installs", [f"{s.installs}" for s in summaries]),
    ]
    for index, host in enumerate(summaries[0].hosts):
        label = f"{host.name} x{host.speed:g}/{host.slots}"
        cells = [
            f"{s.hosts[index].jobs:4d} jobs {100 * s.hosts[index].utilisation:5.1f}%"
            for s in summaries
        ]
        rows.append((label, cells))
    lines = [head]
    lines += [
        f"{label:<24}" + "".join(f"{cell:>{width + 2}}" for cell in cells) for label, cells in rows
    ]
    return "\n".join(lines)
