"""What the D-Bus interfaces need from the scheduler and the daemon: facade Protocols.

This module owns the typing seam between :mod:`iceserv.service.dbus` and the
programs it exposes: the scheduler's control object
(:class:`SchedulerFacade`, satisfied by ``iceserv.scheduler.ClusterControl``),
the views it returns (:class:`HostLike`, :class:`JobLike`) and the observer
it calls (:class:`ClusterListener`); and the daemon's (:class:`DaemonFacade`,
which ``app`` implements on top of ``iceserv.daemon`` and the configuration,
with :class:`DaemonStatusLike` and :class:`EnvironmentLike`).  They are structural
``typing.Protocol`` types: ``app`` passes the concrete objects in and mypy
checks them there.  This module must not import ``iceserv.scheduler`` or
``iceserv.daemon``, do I/O or hold state.

Method parameters are positional-only so an implementation may name them as
it likes; sequences are returned as ``Sequence`` so it may return lists or
tuples.  Times are the service's clock in seconds since the epoch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "ClusterListener",
    "DaemonFacade",
    "DaemonStatusLike",
    "EnvironmentLike",
    "HostLike",
    "JobLike",
    "SchedulerFacade",
]


class JobLike(Protocol):
    """A job known to the scheduler.

    A view never changes once handed out: a changed job is a new object.
    ``ListJobs`` reuses a job's struct while the object is the same.
    """

    @property
    def id(self) -> int:
        """The job id the scheduler handed out."""
        ...

    @property
    def state(self) -> str:
        """``PEND`` (queued), ``WAIT`` (assigned, client not yet there) or ``COMP``."""
        ...

    @property
    def submitter(self) -> str:
        """Nodename of the daemon that asked for the job."""
        ...

    @property
    def server(self) -> str:
        """Nodename of the compile server, or ``<unknown>`` while the job is queued."""
        ...

    @property
    def filename(self) -> str:
        """The source file name the client reported."""
        ...

    @property
    def queued_at(self) -> float | None:
        """When the job was queued, if seen."""
        ...

    @property
    def started_at(self) -> float | None:
        """When the compile server reported the start, if it did."""
        ...


class HostLike(Protocol):
    """A logged-in daemon (compile server)."""

    @property
    def nodename(self) -> str:
        """The name the daemon logged in with."""
        ...

    @property
    def ip(self) -> str:
        """The daemon's IP address as the scheduler saw the connection."""
        ...

    @property
    def port(self) -> int:
        """The port the daemon accepts compile jobs on (0 if it accepts none)."""
        ...

    @property
    def platform(self) -> str:
        """The daemon's host platform, e.g. ``x86_64``."""
        ...

    @property
    def protocol(self) -> int:
        """The protocol version negotiated with the daemon."""
        ...

    @property
    def max_jobs(self) -> int:
        """How many jobs the daemon takes at once (its slots)."""
        ...

    @property
    def jobs_assigned(self) -> int:
        """Jobs assigned to the daemon (WAIT and COMP)."""
        ...

    @property
    def load(self) -> int:
        """The load the daemon last reported (0..1000)."""
        ...

    @property
    def speed(self) -> float:
        """The scheduler's speed rating of the daemon."""
        ...

    @property
    def no_remote(self) -> bool:
        """Whether the daemon refuses other daemons' jobs (``--no-remote``)."""
        ...

    @property
    def blocked(self) -> bool:
        """Whether its nodename or IP is on the block list."""
        ...

    @property
    def draining(self) -> bool:
        """Whether its nodename or IP is on the drain list."""
        ...

    @property
    def environments(self) -> Sequence[tuple[str, str]]:
        """Installed environments as ``(platform, name)`` pairs."""
        ...

    @property
    def auth(self) -> str:
        """What it proved before LOGIN: ``off``, ``authenticated``, ``unauthenticated``."""
        ...


class ClusterListener(Protocol):
    """What the scheduler calls when the cluster changes (the D-Bus signals' source)."""

    def host_joined(self, nodename: str, ip: str, /) -> None:
        """Hear that a daemon logged in."""
        ...

    def host_left(self, nodename: str, ip: str, /) -> None:
        """Hear that a daemon went away."""
        ...

    def job_started(self, job: JobLike, /) -> None:
        """Hear that a compile server started *job*."""
        ...

    def job_finished(self, job: JobLike, exitcode: int, /) -> None:
        """Hear that *job* ended with *exitcode* (255: aborted)."""
        ...

    def cluster_changed(self) -> None:
        """Hear that counts or lists may have changed."""
        ...


class SchedulerFacade(Protocol):
    """The scheduler operations the D-Bus interface exposes."""

    def started_at(self) -> float:
        """Return when the scheduler started."""
        ...

    def uptime_seconds(self) -> int:
        """Return the whole seconds since the scheduler started."""
        ...

    def netname(self) -> str:
        """Return the network name the scheduler serves."""
        ...

    def host_count(self) -> int:
        """Return the number of logged-in daemons."""
        ...

    def jobs_running(self) -> int:
        """Return the number of jobs assigned or compiling."""
        ...

    def jobs_queued(self) -> int:
        """Return the number of jobs waiting for a compile server."""
        ...

    def total_jobs(self) -> int:
        """Return the last job id handed out."""
        ...

    def list_hosts(self) -> Sequence[HostLike]:
        """Return every logged-in daemon, in login order."""
        ...

    def list_jobs(self) -> Sequence[JobLike]:
        """Return every known job, ordered by id."""
        ...

    def blocked(self) -> Sequence[str]:
        """Return the block list."""
        ...

    def drained(self) -> Sequence[str]:
        """Return the drain list."""
        ...

    def remove_hosts(self, names: list[str], /) -> Sequence[str]:
        """Disconnect the first daemon matching each name; return the names that matched."""
        ...

    def block_hosts(self, names: list[str], /) -> Sequence[str]:
        """Block the names and disconnect matching daemons; return the names that matched."""
        ...

    def unblock_hosts(self, names: list[str], /) -> None:
        """Take each name off the block list."""
        ...

    def drain_hosts(self, names: list[str], /) -> Sequence[str]:
        """Give these daemons no new jobs; return the names matching a connected daemon."""
        ...

    def resume_hosts(self, names: list[str], /) -> None:
        """Take each name off the drain list."""
        ...

    def add_observer(self, observer: ClusterListener, /) -> None:
        """Call *observer* on cluster events."""
        ...

    def remove_observer(self, observer: ClusterListener, /) -> None:
        """Stop calling *observer*."""
        ...


class EnvironmentLike(Protocol):
    """One environment in the daemon's cache."""

    @property
    def key(self) -> str:
        """``target/name``, or ``native:<key>`` for a native environment."""
        ...

    @property
    def size(self) -> int:
        """Bytes on disk."""
        ...

    @property
    def idle_seconds(self) -> int:
        """Seconds since a job last used it."""
        ...

    @property
    def in_use(self) -> int:
        """Jobs using it now."""
        ...

    @property
    def native(self) -> bool:
        """Whether the daemon built it from its own compiler."""
        ...


class DaemonStatusLike(Protocol):
    """A snapshot of the daemon."""

    @property
    def slots_used(self) -> int:
        """Slots in use (remote compiles, installs and local jobs)."""
        ...

    @property
    def waiting(self) -> int:
        """Clients waiting for a slot."""
        ...

    @property
    def clients(self) -> int:
        """Connected clients."""
        ...

    @property
    def scheduler(self) -> str | None:
        """``host:port`` of the scheduler while logged in, else None."""
        ...

    @property
    def scheduler_state(self) -> str:
        """What the scheduler link is doing (``logged in``, ``discovering`` ...)."""
        ...

    @property
    def load(self) -> int:
        """The load last computed for STATS (0..1000)."""
        ...

    @property
    def cache_size(self) -> int:
        """Bytes of environments on disk."""
        ...

    @property
    def environments(self) -> Sequence[EnvironmentLike]:
        """The cached environments."""
        ...


class DaemonFacade(Protocol):
    """The daemon operations the D-Bus interface exposes.

    The setters take the same path as a configuration reload and last until
    the next reload or restart; they raise ``ValueError`` for a value the
    configuration would refuse and ``OSError`` when it cannot be applied.
    """

    def status(self) -> DaemonStatusLike:
        """Return a snapshot of the daemon."""
        ...

    def max_processes(self) -> int:
        """Return the configured number of parallel jobs (0: no remote jobs)."""
        ...

    def jobs_running(self) -> int:
        """Return the remote compiles and environment installs running."""
        ...

    def allow_remote(self) -> bool:
        """Return whether remote jobs are accepted (setting and chroot both allow it)."""
        ...

    def draining(self) -> bool:
        """Return whether the daemon is draining."""
        ...

    async def set_max_processes(self, count: int, /) -> None:
        """Change the number of parallel jobs as a reload would."""
        ...

    async def set_allow_remote(self, allow: bool, /) -> None:  # noqa: FBT001 - mirrors the setting
        """Accept remote jobs or not, as a reload would."""
        ...

    def drain(self) -> None:
        """Take no new remote jobs; running ones finish."""
        ...

    def resume(self) -> None:
        """Take remote jobs again."""
        ...
