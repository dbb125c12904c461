"""Read-only snapshots of the scheduler's hosts and jobs for the telnet interface and D-Bus.

This module owns :class:`HostView` and :class:`JobView`: frozen values built
by :mod:`iceserv.scheduler.control` from the live state.  Renderers (telnet,
D-Bus) format them; they never see the mutable scheduler objects, and this
module must not know how anything is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["HostView", "JobState", "JobView"]

JobState = Literal["PEND", "WAIT", "COMP"]


@dataclass(frozen=True, slots=True)
class JobView:
    """One known job: queued (``PEND``), assigned (``WAIT``) or compiling (``COMP``).

    ``server`` is the server's nodename, or ``"<unknown>"`` while the job is queued,
    as 1.4's ``dump_job`` prints it.
    """

    id: int
    state: JobState
    submitter: str
    server: str
    filename: str


@dataclass(frozen=True, slots=True)
class HostView:
    """One connected daemon (compile server), in login order.

    ``jobs_assigned`` counts its WAIT and COMP jobs, which ``jobs`` lists;
    ``busy_installing_since`` is how many whole seconds ago it started
    installing an environment, or ``None``.  (``jobs`` is a list, as the facade
    promises; treat it as read-only.)
    """

    nodename: str
    ip: str
    port: int
    platform: str
    speed: float
    jobs_assigned: int
    max_jobs: int
    load: int
    busy_installing_since: int | None
    jobs: list[JobView]
