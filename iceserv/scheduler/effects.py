"""What the pure scheduler core asks its I/O shell to do.

This module owns the effect values returned by
:class:`iceserv.scheduler.handlers.Scheduler`.  The shell
(:mod:`iceserv.scheduler.server`) carries them out in order; the core never
touches a socket.  Effects are plain frozen data and must stay free of
behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

from iceserv.protocol import Message  # noqa: TC001 - dataclass fields are resolved at runtime
from iceserv.protocol.discovery import SchedulerInfo  # noqa: TC001 - likewise

__all__ = [
    "Announce",
    "Close",
    "Effect",
    "HostsSkipped",
    "InternalsReply",
    "JobsWaiting",
    "Send",
    "StartProbe",
    "StopReading",
    "ToMonitors",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Send *message* on connection *conn_id* (then drain)."""

    conn_id: int
    message: Message


@dataclass(frozen=True, slots=True)
class Close:
    """Close connection *conn_id*; the core has already forgotten it."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class ToMonitors:
    """Send *message* to every monitor without blocking; drop monitors that cannot keep up."""

    message: Message


@dataclass(frozen=True, slots=True)
class StopReading:
    """Never read from connection *conn_id* again (a monitor after MON_LOGIN)."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class StartProbe:
    """Check that host *host_id* accepts TCP connections on *ip*:*port*.

    Report the outcome with ``Scheduler.probe_finished``.
    """

    host_id: int
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class Announce:
    """Broadcast the scheduler announcements (``ICE`` and ``ICF``) for *info*."""

    info: SchedulerInfo


@dataclass(frozen=True, slots=True)
class InternalsReply:
    """Host *host_id* answered GET_INTERNALS with *text*."""

    host_id: int
    text: str


@dataclass(frozen=True, slots=True)
class JobsWaiting:
    """Log that *count* jobs wait and why the oldest, *job_id*, cannot be placed yet.

    *reasons* is ``(nodename, why)`` per logged-in daemon; *waited* is in seconds.
    """

    count: int
    job_id: int
    filename: str
    waited: float
    reasons: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class HostsSkipped:
    """Log that jobs of *submitter* (a nodename) never go to some hosts, and why.

    *reasons* is ``(nodename, why)`` per host its clients cannot reach (no
    address of a family they can connect over); said once per pair of hosts.
    """

    job_id: int
    submitter: str
    reasons: tuple[tuple[str, str], ...]


Effect = (
    Send
    | Close
    | ToMonitors
    | StopReading
    | StartProbe
    | Announce
    | InternalsReply
    | JobsWaiting
    | HostsSkipped
)
