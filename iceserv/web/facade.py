"""What the HTTP endpoints need from the scheduler and the daemon: views, totals, observers.

This module owns the typing seam between :mod:`iceserv.web` and the
scheduler's and the daemon's control facades, as structural
``typing.Protocol`` types: they satisfy them without importing anything from
here.  It must not import ``iceserv.scheduler`` or ``iceserv.daemon``, do I/O
or hold state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "DaemonLike",
    "DaemonMetricsLike",
    "DaemonTotalsLike",
    "HistogramLike",
    "HostLike",
    "JobLike",
    "MetricsLike",
    "Observer",
    "SchedulerLike",
]


class JobLike(Protocol):
    """A queued, assigned or compiling job."""

    @property
    def id(self) -> int:
        """The scheduler's job id."""
        ...

    @property
    def state(self) -> str:
        """``PEND``, ``WAIT`` or ``COMP``."""
        ...

    @property
    def submitter(self) -> str:
        """Nodename of the daemon that asked for the job."""
        ...

    @property
    def server(self) -> str:
        """Nodename of the compile server (``<unknown>`` while queued)."""
        ...

    @property
    def filename(self) -> str:
        """The source file the client reported."""
        ...

    @property
    def queued_at(self) -> float | None:
        """The scheduler's clock when the job was queued, if seen."""
        ...

    @property
    def started_at(self) -> float | None:
        """The scheduler's clock at JOB_BEGIN, if seen."""
        ...


class HostLike(Protocol):
    """A logged-in daemon."""

    @property
    def nodename(self) -> str:
        """The daemon's name."""
        ...

    @property
    def ip(self) -> str:
        """Its address."""
        ...

    @property
    def platform(self) -> str:
        """Its platform (``x86_64``)."""
        ...

    @property
    def speed(self) -> float:
        """The scheduler's speed rating."""
        ...

    @property
    def max_jobs(self) -> int:
        """Its slots."""
        ...

    @property
    def jobs_assigned(self) -> int:
        """Slots in use."""
        ...

    @property
    def load(self) -> int:
        """Its load (0 to 1000)."""
        ...

    @property
    def protocol(self) -> int:
        """The negotiated protocol version."""
        ...

    @property
    def no_remote(self) -> bool:
        """Whether it takes no remote jobs."""
        ...

    @property
    def blocked(self) -> bool:
        """Whether it is on the block list."""
        ...

    @property
    def draining(self) -> bool:
        """Whether it is on the drain list."""
        ...

    @property
    def auth(self) -> str:
        """What it proved before LOGIN: off, authenticated or unauthenticated (issue 14)."""
        ...

    @property
    def jobs(self) -> Sequence[JobLike]:
        """Its assigned and compiling jobs."""
        ...


class HistogramLike(Protocol):
    """Cumulative bucket counts (bounds, then ``+Inf``) and the sum."""

    @property
    def bounds(self) -> tuple[float, ...]:
        """Bucket upper bounds in seconds."""
        ...

    @property
    def cumulative(self) -> tuple[int, ...]:
        """Cumulative counts, one per bound and one for ``+Inf``."""
        ...

    @property
    def total(self) -> float:
        """Sum of the observed values."""
        ...


class MetricsLike(Protocol):
    """The scheduler's running totals."""

    @property
    def jobs_placed(self) -> int:
        """Jobs given a compile server (USE_CS or NO_CS)."""
        ...

    @property
    def jobs_finished(self) -> int:
        """Jobs that ended (JOB_DONE or aborted)."""
        ...

    @property
    def jobs_failed(self) -> Mapping[str, int]:
        """Failed jobs by reason."""
        ...

    @property
    def local_jobs(self) -> int:
        """Local jobs the daemons reported (JOB_LOCAL_BEGIN)."""
        ...

    @property
    def bytes_in(self) -> int:
        """Compressed bytes sent to compile servers."""
        ...

    @property
    def bytes_out(self) -> int:
        """Compressed bytes of results."""
        ...

    @property
    def env_transfers(self) -> int:
        """Placements that made the client send its environment."""
        ...

    @property
    def placement_wait(self) -> HistogramLike:
        """GET_CS → USE_CS."""
        ...

    @property
    def compile_time(self) -> HistogramLike:
        """Compile time the servers reported."""
        ...

    @property
    def turnaround(self) -> HistogramLike:
        """GET_CS → JOB_DONE of successful jobs."""
        ...

    @property
    def jobs_per_second(self) -> float:
        """Finished jobs per second over the last minute."""
        ...


class Observer(Protocol):
    """The calls the scheduler's cluster events make (as D-Bus signals hear them)."""

    def host_joined(self, nodename: str, ip: str, /) -> None:
        """Hear that a daemon logged in."""
        ...

    def host_left(self, nodename: str, ip: str, /) -> None:
        """Hear that a daemon went away."""
        ...

    def job_started(self, job: JobLike, /) -> None:
        """Hear JOB_BEGIN."""
        ...

    def job_finished(self, job: JobLike, exitcode: int, /) -> None:
        """Hear JOB_DONE or an abort."""
        ...

    def cluster_changed(self) -> None:
        """Hear that counts or lists may have changed."""
        ...


class SchedulerLike(Protocol):
    """The scheduler's control facade as the HTTP endpoint uses it."""

    def netname(self) -> str:
        """Return the network name."""
        ...

    def uptime_seconds(self) -> int:
        """Return seconds since start."""
        ...

    def list_hosts(self) -> Sequence[HostLike]:
        """Return the connected daemons in login order."""
        ...

    def list_jobs(self) -> Sequence[JobLike]:
        """Return the known jobs by id."""
        ...

    def jobs_queued(self) -> int:
        """Return how many jobs are queued."""
        ...

    def jobs_running(self) -> int:
        """Return how many jobs are assigned or compiling."""
        ...

    def blocked(self) -> Sequence[str]:
        """Return the block list."""
        ...

    def metrics(self) -> MetricsLike:
        """Return the running totals."""
        ...

    def add_observer(self, observer: Observer, /) -> None:
        """Start calling *observer*."""
        ...

    def remove_observer(self, observer: Observer, /) -> None:
        """Stop calling *observer*."""
        ...

    def keep_finished_jobs(self, count: int, /) -> None:
        """Remember the last *count* jobs that finished after they started."""
        ...

    def finished_jobs(self) -> Sequence[tuple[JobLike, float, int]]:
        """Return the remembered finished jobs, oldest first: (job, end time, exit code)."""
        ...


class DaemonTotalsLike(Protocol):
    """The daemon's running totals (every count only grows)."""

    @property
    def jobs_started(self) -> Mapping[str, int]:
        """Slots granted by kind (``remote``, ``local``, ``self``)."""
        ...

    @property
    def jobs_finished(self) -> int:
        """Remote compiles that ended."""
        ...

    @property
    def jobs_failed(self) -> Mapping[str, int]:
        """Remote compiles that failed, by reason."""
        ...

    @property
    def installs(self) -> Mapping[str, int]:
        """Environment installs by result (``ok``, ``failed``, ``aborted``)."""
        ...

    @property
    def evictions(self) -> int:
        """Environments evicted from the cache."""
        ...

    @property
    def native_builds(self) -> Mapping[str, int]:
        """Native environments made for local clients, by result (``ok``, ``failed``)."""
        ...

    @property
    def tickets(self) -> Mapping[str, int]:
        """Connections by what became of their job ticket (accepted, refused, missing)."""
        ...

    @property
    def compile_time(self) -> HistogramLike:
        """Compile time of remote compiles that ran."""
        ...

    @property
    def install_time(self) -> HistogramLike:
        """First tarball byte to the environment in the cache."""
        ...


class DaemonMetricsLike(Protocol):
    """The daemon's state now and its totals."""

    @property
    def nodename(self) -> str:
        """The daemon's node name."""
        ...

    @property
    def platform(self) -> str:
        """Its platform (``x86_64``)."""
        ...

    @property
    def slots_total(self) -> int:
        """Its slots."""
        ...

    @property
    def slots_used(self) -> int:
        """Slots in use (jobs and installs)."""
        ...

    @property
    def remote_running(self) -> int:
        """Remote compiles running."""
        ...

    @property
    def local_running(self) -> int:
        """Clients running a job themselves under a slot."""
        ...

    @property
    def installs_running(self) -> int:
        """Environment installs running."""
        ...

    @property
    def remote_waiting(self) -> int:
        """Remote compiles waiting for a slot."""
        ...

    @property
    def local_waiting(self) -> int:
        """Local jobs waiting for a slot."""
        ...

    @property
    def clients(self) -> int:
        """Connected clients."""
        ...

    @property
    def load(self) -> int:
        """Its load as sent in STATS (0 to 1000)."""
        ...

    @property
    def scheduler_connected(self) -> bool:
        """Whether it is logged in to a scheduler."""
        ...

    @property
    def draining(self) -> bool:
        """Whether it takes no new remote jobs."""
        ...

    @property
    def environments(self) -> int:
        """Environments received from clients in the cache."""
        ...

    @property
    def native_environments(self) -> int:
        """Native environments made for local clients."""
        ...

    @property
    def cache_bytes(self) -> int:
        """Bytes the cached environments use."""
        ...

    @property
    def cache_limit_bytes(self) -> int:
        """The cache's size limit in bytes."""
        ...

    @property
    def totals(self) -> DaemonTotalsLike:
        """The running totals."""
        ...


class DaemonLike(Protocol):
    """The daemon's control facade as its ``/metrics`` uses it."""

    def metrics(self) -> DaemonMetricsLike:
        """Return the state now and the totals."""
        ...
