"""What the telnet interface needs from the scheduler: the ``SchedulerControl`` facade.

This module owns the typing seam between the telnet text interface and the
scheduler: read-only views of a compile server (``TelnetHost``) and of a job
(``TelnetJob``), and the control object that answers the commands
(``SchedulerControl``).  They are structural ``typing.Protocol`` types, so the
scheduler satisfies them without importing anything from here, and ``app/``
passes the concrete object in.  This module must not import
``iceserv.scheduler``, do I/O or hold state.

Method parameters are positional-only so an implementation may name them as it
likes; sequences are returned as ``Sequence`` so it may return lists or tuples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["SchedulerControl", "TelnetHost", "TelnetJob"]


class TelnetJob(Protocol):
    """A job as ``listjobs`` and ``listcs`` show it.

    A view never changes once handed out: a changed job is a new object (the
    scheduler's are frozen).  The server's cache of ``listjobs`` lines
    (:class:`~iceserv.telnet.commands.JobLines`) reuses a line while the object is the same.
    """

    @property
    def id(self) -> int:
        """The job id the scheduler handed out (1, 2, …)."""
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


class TelnetHost(Protocol):
    """A logged-in daemon (compile server) as ``listcs`` shows it."""

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
    def speed(self) -> float:
        """The scheduler's speed rating of the daemon (printed with two decimals)."""
        ...

    @property
    def jobs_assigned(self) -> int:
        """Jobs assigned to the daemon (WAIT and COMP)."""
        ...

    @property
    def max_jobs(self) -> int:
        """How many jobs the daemon takes at once."""
        ...

    @property
    def load(self) -> int:
        """The load the daemon last reported (0..1000)."""
        ...

    @property
    def busy_installing_since(self) -> int | None:
        """Seconds since the daemon started installing an environment, ``None`` if it is not."""
        ...

    @property
    def jobs(self) -> Sequence[TelnetJob]:
        """The jobs assigned to the daemon, in the order it got them."""
        ...


class SchedulerControl(Protocol):
    """The scheduler operations behind the telnet commands."""

    def uptime_seconds(self) -> int:
        """Return the whole seconds since the scheduler started."""
        ...

    def host_count(self) -> int:
        """Return the number of logged-in daemons."""
        ...

    def job_count(self) -> int:
        """Return the number of known jobs, queued and running."""
        ...

    def total_jobs(self) -> int:
        """Return the last job id handed out (0 before the first job)."""
        ...

    def list_hosts(self) -> Sequence[TelnetHost]:
        """Every logged-in daemon, in login order."""
        ...

    def list_jobs(self) -> Sequence[TelnetJob]:
        """Every known job, ordered by id."""
        ...

    def blocked(self) -> Sequence[str]:
        """Return the block list (nodenames or IPs refused at login), in the order added."""
        ...

    def remove_hosts(self, names: list[str], /) -> Sequence[str]:
        """Disconnect, for each name, the first daemon whose nodename or IP equals it.

        Returns the names that matched a daemon, in argument order.
        """
        ...

    def block_hosts(self, names: list[str], /) -> Sequence[str]:
        """Add every name to the block list, then remove daemons like :meth:`remove_hosts`."""
        ...

    def unblock_hosts(self, names: list[str], /) -> None:
        """Remove, for each name, its first exact match from the block list."""
        ...

    async def internals(self, names: list[str], /) -> Sequence[str]:
        r"""Ask every daemon (or those matching *names* by nodename/IP) for its status text.

        Returns one text per daemon, each sent as is: the daemon's STATUS_TEXT or
        ``"<nodename> not reporting\n"``.  The implementation bounds the wait for
        each reply (10 s in 1.4, reference §7.8).
        """
        ...
