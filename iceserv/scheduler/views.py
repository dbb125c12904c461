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
    as 1.4's ``dump_job`` prints it.  ``queued_at`` and ``started_at`` are the
    scheduler's clock when GET_CS queued the job and when JOB_BEGIN arrived
    (``None``: not seen).
    """

    id: int
    state: JobState
    submitter: str
    server: str
    filename: str
    queued_at: float | None
    started_at: float | None


@dataclass(frozen=True, slots=True)
class HostView:
    """One connected daemon (compile server), in login order.

    ``jobs_assigned`` counts its WAIT and COMP jobs, which ``jobs`` lists;
    ``busy_installing_since`` is how many whole seconds ago it started
    installing an environment, or ``None``.  (``jobs`` is a list, as the facade
    promises; treat it as read-only.)  ``protocol`` is the negotiated protocol
    version, ``environments`` the installed ``(platform, name)`` pairs from its
    LOGIN; ``blocked`` and ``draining`` say whether its nodename or IP is on
    the block or drain list; ``auth`` is what it proved before LOGIN (``off``,
    ``authenticated`` or ``unauthenticated``, issue 14).
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
    protocol: int
    no_remote: bool
    environments: tuple[tuple[str, str], ...]
    blocked: bool
    draining: bool
    auth: str = "off"
