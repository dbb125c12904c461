"""The scheduler on D-Bus: ``org.icecream.Scheduler1`` at ``/org/icecream/Scheduler1``.

This module owns :class:`SchedulerInterface`, the dbus-fast
``ServiceInterface`` over a :class:`~iceserv.service.dbus.facades.SchedulerFacade`:
read-only properties (counts, net name, block and drain lists), ``ListHosts``,
``ListHostAuth`` and ``ListJobs``, the telnet commands' actions (``BlockHost``,
``UnblockHost``, ``RemoveHost``) plus ``DrainHost``/``ResumeHost``, and the
signals ``HostJoined``, ``HostLeft``, ``JobStarted``, ``JobFinished``.  It is
also the scheduler's cluster observer: events become signals at once, and
property changes are coalesced into ``PropertiesChanged``
(:mod:`~iceserv.service.dbus.changes`).  Who may call what is the bus
policy's job (``etc/dbus-1/system.d``); this module enforces nothing.

Member names and signatures are the ``Scheduler1`` API: never change or
remove one; add members, or make a ``Scheduler2``.  No
``from __future__ import annotations`` here: dbus-fast reads the D-Bus
signatures from the annotations at class creation.
"""

from typing import Annotated, Any, Final

from dbus_fast import DBusError, ErrorType, Message, MessageFlag, MessageType, PropertyAccess
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from iceserv.service.dbus.changes import DEFAULT_INTERVAL, ChangeCoalescer, declare_emits_changed
from iceserv.service.dbus.facades import HostLike, JobLike, SchedulerFacade
from iceserv.service.dbus.wire import MAX_ARRAY_BYTES, PrebuiltReply, job_record, struct_array_body

__all__ = [
    "SCHEDULER_INTERFACE",
    "SCHEDULER_PATH",
    "SCHEDULER_READ_METHODS",
    "UNKNOWN_HOST_ERROR",
    "SchedulerInterface",
]

#: Bus name and interface name (the same string), and the object path.
SCHEDULER_INTERFACE: Final = "org.icecream.Scheduler1"
SCHEDULER_PATH: Final = "/org/icecream/Scheduler1"
#: The methods everyone may call (the bus policy allows these; the rest need root/the group).
SCHEDULER_READ_METHODS: Final = ("ListHosts", "ListJobs", "ListHostAuth")
#: RemoveHost found no daemon of that name.
UNKNOWN_HOST_ERROR: Final = f"{SCHEDULER_INTERFACE}.Error.UnknownHost"
_MAX_NAME: Final = 255
#: Entries of jobs that are gone kept in ListJobs' record table before it is pruned.
_SLACK: Final = 1024
_STATES: Final = {"PEND": "queued", "WAIT": "assigned", "COMP": "compiling"}

#: (name, address, port, platform, protocol, slots, jobs, load, speed,
#:  no_remote, blocked, draining, environments as (platform, name))
HostStruct = tuple[
    str, str, int, str, int, int, int, int, float, bool, bool, bool, list[tuple[str, str]]
]
#: (id, client, server, file, state, queued µs, started µs)
JobStruct = tuple[int, str, str, str, str, int, int]
_Hosts = Annotated[list[HostStruct], DBusSignature("a(ssqsuuuudbbba(ss))")]
_JOBS_SIGNATURE: Final = "a(usssstt)"
_Jobs = Annotated[list[JobStruct], DBusSignature(_JOBS_SIGNATURE)]
#: (name, what it proved before LOGIN: off, authenticated or unauthenticated; issue 14)
_HostAuth = Annotated[list[tuple[str, str]], DBusSignature("a(ss)")]
_StrList = Annotated[list[str], DBusSignature("as")]
_TwoStr = Annotated[tuple[str, str], DBusSignature("ss")]
_Started = Annotated[tuple[int, str, str, str], DBusSignature("usss")]
_Finished = Annotated[tuple[int, str, str, str, int], DBusSignature("usssi")]


def _usec(seconds: float | None) -> int:
    """Return *seconds* since the epoch as microseconds (systemd's convention), 0 for None."""
    return 0 if seconds is None else max(0, round(seconds * 1_000_000))


def _host_struct(host: HostLike) -> HostStruct:
    return (
        host.nodename,
        host.ip,
        host.port,
        host.platform,
        host.protocol,
        host.max_jobs,
        host.jobs_assigned,
        host.load,
        host.speed,
        host.no_remote,
        host.blocked,
        host.draining,
        [(platform, name) for platform, name in host.environments],
    )


def _server(job: JobLike) -> str:
    return "" if job.server == "<unknown>" else job.server


def _job_struct(job: JobLike) -> JobStruct:
    return (
        job.id,
        job.submitter,
        _server(job),
        job.filename,
        _STATES.get(job.state, job.state),
        _usec(job.queued_at),
        _usec(job.started_at),
    )


def _check_name(name: str) -> str:
    if not name or len(name) > _MAX_NAME:
        raise DBusError(
            ErrorType.INVALID_ARGS, f"a host name or IP address of 1 to {_MAX_NAME} characters"
        )
    return name


class SchedulerInterface(ServiceInterface):
    """``org.icecream.Scheduler1`` over *control*; also its cluster observer.

    *version* is the program version for the ``Version`` property; changes are
    signalled at most every *interval* seconds.  Call :meth:`attach` once the
    interface may emit signals and :meth:`detach` before dropping it.
    """

    def __init__(
        self, control: SchedulerFacade, *, version: str, interval: float = DEFAULT_INTERVAL
    ) -> None:
        super().__init__(SCHEDULER_INTERFACE)
        self._control = control
        self._version = version
        self._changes = ChangeCoalescer(
            self._snapshot, self.emit_properties_changed, interval=interval
        )
        # ListJobs' structs by job id, with the view each was made from: the control hands
        # out the same view until the job changes, so only changed jobs are converted again.
        self._job_structs: dict[int, tuple[JobLike, JobStruct]] = {}
        # The same for the marshalled structs of the replies built here (answer_directly).
        self._job_records: dict[int, tuple[JobLike, bytes]] = {}
        self._strings: dict[str, bytes] = {}  # marshalled names and states (wire.job_record)

    def attach(self) -> None:
        """Start observing the scheduler: signals and ``PropertiesChanged`` from now on."""
        self._control.add_observer(self)

    def detach(self) -> None:
        """Stop observing and drop a pending ``PropertiesChanged``."""
        self._control.remove_observer(self)
        self._changes.close()

    def _snapshot(self) -> dict[str, Any]:
        control = self._control
        return {
            "HostCount": control.host_count(),
            "JobsRunning": control.jobs_running(),
            "JobsQueued": control.jobs_queued(),
            "TotalJobs": control.total_jobs(),
            "BlockedHosts": list(control.blocked()),
            "DrainedHosts": list(control.drained()),
        }

    # --- the cluster observer (called by the scheduler) -------------------------------

    def host_joined(self, nodename: str, ip: str, /) -> None:
        """Emit ``HostJoined``."""
        self._host_joined(nodename, ip)

    def host_left(self, nodename: str, ip: str, /) -> None:
        """Emit ``HostLeft``."""
        self._host_left(nodename, ip)

    def job_started(self, job: JobLike, /) -> None:
        """Emit ``JobStarted``."""
        self._job_started(job.id, job.submitter, _server(job), job.filename)

    def job_finished(self, job: JobLike, exitcode: int, /) -> None:
        """Emit ``JobFinished``."""
        self._job_finished(job.id, job.submitter, _server(job), job.filename, exitcode)

    def cluster_changed(self) -> None:
        """Schedule a coalesced ``PropertiesChanged``."""
        self._changes.poke()

    # --- properties -------------------------------------------------------------------

    @dbus_property(PropertyAccess.READ, name="Version")
    def version(self) -> DBusStr:
        """Return the program version, e.g. ``0.1.0``."""
        return self._version

    @dbus_property(PropertyAccess.READ, name="NetName")
    def net_name(self) -> DBusStr:
        """Return the network name the scheduler serves (``ICECREAM`` by default)."""
        return self._control.netname()

    @dbus_property(PropertyAccess.READ, name="StartTime")
    def start_time(self) -> DBusUInt64:
        """Return when the scheduler started, in microseconds since the epoch."""
        return _usec(self._control.started_at())

    @dbus_property(PropertyAccess.READ, name="Uptime")
    def uptime(self) -> DBusUInt64:
        """Return whole seconds since the scheduler started (never signalled as changed)."""
        return max(0, self._control.uptime_seconds())

    @dbus_property(PropertyAccess.READ, name="HostCount")
    def host_count(self) -> DBusUInt32:
        """Return the number of logged-in daemons."""
        return self._control.host_count()

    @dbus_property(PropertyAccess.READ, name="JobsRunning")
    def jobs_running(self) -> DBusUInt32:
        """Return the number of jobs assigned to a compile server or compiling."""
        return self._control.jobs_running()

    @dbus_property(PropertyAccess.READ, name="JobsQueued")
    def jobs_queued(self) -> DBusUInt32:
        """Return the number of jobs waiting for a compile server."""
        return self._control.jobs_queued()

    @dbus_property(PropertyAccess.READ, name="TotalJobs")
    def total_jobs(self) -> DBusUInt32:
        """Return the last job id handed out (remote and local jobs)."""
        return self._control.total_jobs()

    @dbus_property(PropertyAccess.READ, name="BlockedHosts")
    def blocked_hosts(self) -> _StrList:
        """Return the names and addresses refused at login, in the order blocked."""
        return list(self._control.blocked())

    @dbus_property(PropertyAccess.READ, name="DrainedHosts")
    def drained_hosts(self) -> _StrList:
        """Return the names and addresses given no new jobs, in the order drained."""
        return list(self._control.drained())

    # --- methods ----------------------------------------------------------------------

    @dbus_method(name="ListHosts")
    def list_hosts(self) -> _Hosts:
        """Return every logged-in daemon in login order (see ``HostStruct``)."""
        return [_host_struct(host) for host in self._control.list_hosts()]

    @dbus_method(name="ListHostAuth")
    def list_host_auth(self) -> _HostAuth:
        """Return each daemon's name and authentication state, in ``ListHosts``' order.

        A method of its own: ``ListHosts``' signature is part of the API and
        never changes (``off``, ``authenticated``, ``unauthenticated``; issue 14).
        """
        return [(host.nodename, host.auth) for host in self._control.list_hosts()]

    @dbus_method(name="ListJobs")
    def list_jobs(self) -> _Jobs:
        """Return every known job by id (see ``JobStruct``)."""
        old = self._job_structs
        new: dict[int, tuple[JobLike, JobStruct]] = {}
        structs = []
        for job in self._control.list_jobs():
            hit = old.get(job.id)
            if hit is None or hit[0] is not job:
                hit = (job, _job_struct(job))
            new[job.id] = hit
            structs.append(hit[1])
        self._job_structs = new
        return structs

    def answer_directly(self, bus: MessageBus, path: str, call: Message) -> bool:
        """Answer a ``ListJobs`` call at *path* with a body marshalled here; False: not one.

        The reply is byte for byte dbus-fast's, from marshalled structs kept per
        job view, so a long list costs a join instead of marshalling every job
        on the event loop (:mod:`~iceserv.service.dbus.wire`).  Other calls, and
        ``ListJobs`` with arguments or without a reply wanted, take dbus-fast's
        way (False).
        """
        if (
            call.message_type is not MessageType.METHOD_CALL
            or call.member != "ListJobs"
            or call.interface != SCHEDULER_INTERFACE
            or call.path != path
            or call.signature
            or call.flags & MessageFlag.NO_REPLY_EXPECTED
        ):
            return False
        body = struct_array_body(self._list_job_records())
        if len(body) > MAX_ARRAY_BYTES:
            return False  # dbus-fast's way, and its error
        bus.send(PrebuiltReply.to(call, _JOBS_SIGNATURE, body))
        return True

    def _list_job_records(self) -> list[bytes]:
        """Each job's marshalled struct, made again only for a job whose view changed.

        The table is updated in place; the jobs that are gone are dropped
        once it holds twice as many entries as there are jobs (and 1,024 more).
        """
        kept = self._job_records
        strings = self._strings
        records = []
        jobs = self._control.list_jobs()
        for job in jobs:
            hit = kept.get(job.id)
            if hit is None or hit[0] is not job:
                hit = kept[job.id] = (job, job_record(_job_struct(job), strings))
            records.append(hit[1])
        if len(kept) > 2 * len(records) + _SLACK:
            self._job_records = {job.id: kept[job.id] for job in jobs}
        return records

    @dbus_method(name="BlockHost")
    def block_host(self, name: DBusStr) -> DBusBool:
        """Refuse *name* at login and disconnect it; return whether it was connected.

        Unlike telnet's ``blockcs``, blocking a blocked name does not list it twice.
        """
        if _check_name(name) in self._control.blocked():
            matched = self._control.remove_hosts([name])
        else:
            matched = self._control.block_hosts([name])
        self._changes.poke()
        return bool(matched)

    @dbus_method(name="UnblockHost")
    def unblock_host(self, name: DBusStr) -> DBusBool:
        """Take *name* off the block list; return whether it was on it."""
        listed = _check_name(name) in self._control.blocked()
        self._control.unblock_hosts([name])
        self._changes.poke()
        return listed

    @dbus_method(name="RemoveHost")
    def remove_host(self, name: DBusStr) -> None:
        """Disconnect the daemon *name* (it may log in again); error if none is connected."""
        if not self._control.remove_hosts([_check_name(name)]):
            raise DBusError(UNKNOWN_HOST_ERROR, f"no daemon named {name!r} is connected")
        self._changes.poke()

    @dbus_method(name="DrainHost")
    def drain_host(self, name: DBusStr) -> DBusBool:
        """Give *name* no new jobs, let its jobs finish; return whether it is connected."""
        matched = self._control.drain_hosts([_check_name(name)])
        self._changes.poke()
        return bool(matched)

    @dbus_method(name="ResumeHost")
    def resume_host(self, name: DBusStr) -> DBusBool:
        """Take *name* off the drain list; return whether it was on it."""
        listed = _check_name(name) in self._control.drained()
        self._control.resume_hosts([name])
        self._changes.poke()
        return listed

    # --- signals ----------------------------------------------------------------------

    @dbus_signal(name="HostJoined")
    def _host_joined(self, name: str, address: str) -> _TwoStr:
        return name, address

    @dbus_signal(name="HostLeft")
    def _host_left(self, name: str, address: str) -> _TwoStr:
        return name, address

    @dbus_signal(name="JobStarted")
    def _job_started(self, job_id: int, client: str, server: str, file: str) -> _Started:
        return job_id, client, server, file

    @dbus_signal(name="JobFinished")
    def _job_finished(
        self, job_id: int, client: str, server: str, file: str, exit_code: int
    ) -> _Finished:
        return job_id, client, server, file, exit_code


for _const in (
    SchedulerInterface.version,
    SchedulerInterface.net_name,
    SchedulerInterface.start_time,
):
    declare_emits_changed(_const.introspection, "const")
declare_emits_changed(SchedulerInterface.uptime.introspection, "false")
