"""How many compile slots of the cluster could run a daemon's native environment (pure).

This module owns :func:`count_slots`, the scheduler's answer to iceserv's
``SLOTS_QUERY`` (``icecc --slots``: a number for ``make -j``).  A host
counts when placement could ever give it a job built for the asking
daemon's platform (:func:`~iceserv.scheduler.placement.eligible_ever`'s
job-independent rules): it has slots, answers pings, its compile port
accepts, it can chroot, takes remote jobs, is neither blocked nor drained,
and its platform runs environments of that platform.  The asking daemon's
own host always counts (its jobs may run there, as placement lets the
submitter compile itself).  Free slots are those of counted hosts below full
load and not busy installing, minus their jobs.  No I/O, logging or clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from iceserv.protocol import SlotsAnswer
from iceserv.scheduler import placement

if TYPE_CHECKING:
    from iceserv.scheduler.state import ClusterState, Host

__all__ = ["CLUSTER_SOURCE", "count_slots"]

#: SLOTS_ANSWER's ``source`` when the scheduler counted the slots.
CLUSTER_SOURCE: Final = "cluster"


def _counts(state: ClusterState, host: Host, asker: Host, platform: str) -> bool:
    own = host.host_id == asker.host_id
    return (
        host.max_jobs > 0
        and host.ping_deadline is None
        and (own or host.probe.accepting)
        and (own or host.chroot_possible)
        and (own or not host.noremote)
        and (own or not state.is_drained(host))
        and not state.is_blocked(host)
        and (own or placement.platforms_compatible(host, platform))
    )


def _free(host: Host) -> int:
    if host.load >= placement.FULL_LOAD or host.busy_installing_since is not None:
        return 0
    return max(0, host.max_jobs - len(host.jobs))


def count_slots(state: ClusterState, asker: Host, platform: str) -> SlotsAnswer:
    """Return the slots of the hosts that could compile *asker*'s jobs for *platform*.

    An empty *platform* stands for the asker's own.
    """
    platform = platform or asker.platform
    counted = [h for h in state.hosts.values() if _counts(state, h, asker, platform)]
    return SlotsAnswer(
        total=sum(h.max_jobs for h in counted),
        free=sum(_free(h) for h in counted),
        hosts=len(counted),
        source=CLUSTER_SOURCE,
    )
