"""Replaying a trace under a named placement: the one entry point of the simulator.

This module owns the names of the placements (``iceserv``: the real
scheduler core; ``1.4``: the model of icecream 1.4) and :func:`replay`,
which builds a fresh placement and simulation for one run.  It holds no
simulation or placement logic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from iceserv.sim.engine import WARMUP, Simulation
from iceserv.sim.model14 import Model14Placement
from iceserv.sim.real import RealPlacement

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from iceserv.sim.cluster import ClusterSpec
    from iceserv.sim.engine import SimResult
    from iceserv.sim.placer import Placement
    from iceserv.sim.trace import TraceJob

__all__ = ["PLACEMENTS", "replay"]

#: Placement names, in report order, and how to build one from a seed and a start time.
PLACEMENTS: Final[dict[str, Callable[[int, float], Placement]]] = {
    "iceserv": RealPlacement,
    "1.4": Model14Placement,
}


def replay(
    trace: Sequence[TraceJob],
    cluster: ClusterSpec,
    *,
    placement: str,
    seed: int = 1,
    make_jobs: int | None = None,
) -> SimResult:
    """Replay *trace* on *cluster* under *placement* (a key of :data:`PLACEMENTS`).

    The same arguments always give the same result.
    """
    try:
        factory = PLACEMENTS[placement]
    except KeyError:
        msg = f"unknown placement {placement!r}; known: {', '.join(PLACEMENTS)}"
        raise ValueError(msg) from None
    return Simulation(trace, cluster, factory(seed, -WARMUP), make_jobs=make_jobs).run()
