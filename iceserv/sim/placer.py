"""The seam between the simulated cluster and a placement policy.

This module owns :class:`Placement`, the messages a simulated cluster sends a
scheduler (as calls, one per daemon → scheduler message: LOGIN, STATS,
GET_CS, JOB_BEGIN, JOB_DONE), and :class:`Placed`, what comes back (one
USE_CS or NO_CS).  :mod:`iceserv.sim.real` implements it with iceserv's
real scheduler core, :mod:`iceserv.sim.model14` with a model of 1.4.  It
holds no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from iceserv.sim.cluster import HostSpec
    from iceserv.sim.trace import TraceJob

__all__ = ["Placed", "Placement"]


@dataclass(frozen=True, slots=True)
class Placed:
    """The scheduler told *submitter*'s client *client_id*: compile job *job_id* on *server*.

    ``got_env`` is false when the server must first receive the environment.
    """

    submitter: str
    client_id: int
    job_id: int
    server: str
    got_env: bool


class Placement(Protocol):
    """A scheduler as the simulated daemons see it; every call returns the placements it made."""

    name: str

    def login(self, host: HostSpec, envs: tuple[str, ...], now: float) -> list[Placed]:
        """*host*'s daemon logs in with *envs* installed (also the re-LOGIN after an install)."""
        ...

    def stats(self, host: str, load: int, now: float) -> list[Placed]:
        """*host*'s daemon reports its load (STATS)."""
        ...

    def get_cs(
        self, submitter: str, client_id: int, job: TraceJob, client_count: int, now: float
    ) -> list[Placed]:
        """*submitter*'s daemon asks for a compile server for *job* (GET_CS)."""
        ...

    def job_begin(self, host: str, job_id: int, client_count: int, now: float) -> list[Placed]:
        """*host* started compiling *job_id* (JOB_BEGIN)."""
        ...

    def job_done(  # noqa: PLR0913 - the fields of JOB_DONE the statistics use
        self,
        host: str,
        job_id: int,
        *,
        from_submitter: bool,
        user_msec: int,
        out_size: int,
        client_count: int,
        now: float,
    ) -> list[Placed]:
        """*host* finished *job_id* (JOB_DONE; FROM_SUBMITTER for a job it compiled itself)."""
        ...
