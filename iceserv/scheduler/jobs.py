"""Jobs: requests, begin and end reports, local jobs, placing the queue, dropping a daemon.

This module owns what happens to jobs (reference §5.2, §7.6): GET_CS queues
jobs, JOB_BEGIN/JOB_DONE move and finish them (feeding the speed statistics),
JOB_LOCAL_BEGIN/JOB_LOCAL_DONE number local jobs, :func:`place_jobs` turns
placement decisions into USE_CS/NO_CS, and :func:`remove_host` aborts
everything a vanished daemon was part of.  Each function changes the
:class:`~iceserv.scheduler.state.ClusterState` and returns effects.  It is
pure (no I/O, asyncio, logging or clock) and must not know about
connections; :mod:`iceserv.scheduler.handlers` finds the host for a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from iceserv.errors import RemoteProtocolError
from iceserv.protocol import (
    Feature,
    JobDoneFlag,
    JobLocalDone,
    JobTicket,
    MonGetCS,
    MonJobBegin,
    MonJobDone,
    MonLocalJobBegin,
    MonStats,
    MsgType,
    NoCS,
    UseCS,
)
from iceserv.protocol.features import min_version, supports
from iceserv.protocol.filenames import shorten_filename
from iceserv.protocol.tickets import issue_ticket, ticket_address
from iceserv.scheduler import placement
from iceserv.scheduler.effects import Close, Effect, Send, ToMonitors
from iceserv.scheduler.monitoring import OFFLINE
from iceserv.scheduler.state import IPV6_LOOPBACK, Job, JobState

if TYPE_CHECKING:
    import random

    from iceserv.protocol import GetCS, JobBegin, JobDone, JobLocalBegin
    from iceserv.protocol.auth import KeyRing
    from iceserv.scheduler.state import ClusterState, Host

__all__ = [
    "TICKET_LIFETIME",
    "on_get_cs",
    "on_job_begin",
    "on_job_done",
    "on_job_local_begin",
    "on_job_local_done",
    "place_jobs",
    "remove_host",
    "ticket_for",
]

_MAX_NICENESS: Final = 20
#: GET_CS asks for 1 job (3 for repeat jobs); more is a broken or hostile peer.
_MAX_JOBS_PER_REQUEST: Final = 64
#: Local jobs remembered per daemon (a daemon that never reports them done must not grow us).
_MAX_LOCAL_JOBS: Final = 4096
_ABORTED_EXITCODE: Final = 255
#: A daemon logged in from here shares the submitter's host when the submitter did too.
LOOPBACK_IP: Final = "127.0.0.1"
#: What USE_CS names such a server instead (reference §5.1.2: clients never connect to
#: "127.0.0.1"; they resolve any other name, IPv4 only, and connect).
LOOPBACK_NAME: Final = "localhost"
#: Seconds a job ticket is good for after its placement (issue 14): it is spent when the
#: client reaches the server, within seconds; the rest is room for clock skew.
TICKET_LIFETIME: Final = 300
_AUTHENTICATED: Final = "authenticated"  # iceserv.scheduler.auth.AuthState.AUTHENTICATED
#: JOB_DONE flags as plain ints: ``int & IntFlag`` builds a flag object through enum's code.
_UNKNOWN_JOB_ID: Final = int(JobDoneFlag.UNKNOWN_JOB_ID)
_FROM_SUBMITTER: Final = int(JobDoneFlag.FROM_SUBMITTER)


def on_get_cs(state: ClusterState, host: Host, request: GetCS) -> list[Effect]:
    """GET_CS: queue ``count`` jobs for *host* and tell the monitors (MON_GET_CS)."""
    if request.count > _MAX_JOBS_PER_REQUEST:
        text = f"GET_CS asks for {request.count} jobs"
        raise RemoteProtocolError(text, msg_type=int(MsgType.GET_CS))
    host.client_count = request.client_count
    minimal = request.minimal_host_version
    if request.ignore_unverified:
        # 1.4 raises it to the first version that verifies environments.
        minimal = max(minimal, min_version(Feature.VERIFY_ENV))
    effects: list[Effect] = []
    master: Job | None = None
    for _ in range(request.count):
        job = Job(
            job_id=state.new_job_id(),
            submitter=host.host_id,
            client_id=request.client_id,
            envs=request.versions,
            target=request.target,
            filename=request.filename,
            lang=request.lang,
            arg_flags=request.arg_flags,
            preferred_host=request.preferred_host,
            minimal_host_version=minimal,
            required_features=request.required_features,
            niceness=max(0, min(_MAX_NICENESS, request.niceness)),
        )
        state.jobs[job.job_id] = job
        host.submitted += 1
        state.queue.enqueue(job)
        effects.append(
            ToMonitors(
                MonGetCS(
                    filename=shorten_filename(request.filename),
                    lang=request.lang,
                    job_id=job.job_id,
                    client_id=host.host_id,
                )
            )
        )
        if master is None:
            master = job
        else:
            master.siblings.append(job.job_id)
    return effects


def on_job_begin(state: ClusterState, host: Host, begin: JobBegin) -> list[Effect]:
    """JOB_BEGIN: the server started compiling; the job is COMP (MON_JOB_BEGIN)."""
    job = state.jobs.get(begin.job_id)
    if job is None or job.server != host.host_id:
        return []  # 1.4 ignores a begin for a job this daemon does not serve
    host.client_count = begin.client_count
    job.state = JobState.COMP
    job.stime = begin.stime
    return [ToMonitors(MonJobBegin(begin.job_id, begin.stime, host.host_id))]


def _find_unknown_job(state: ClusterState, host: Host, client_id: int) -> Job | None:
    for job in state.jobs.values():
        if job.server is None and job.submitter == host.host_id and job.client_id == client_id:
            return job
    return None


def on_job_done(state: ClusterState, host: Host, done: JobDone) -> list[Effect]:
    """JOB_DONE: the job is finished or cancelled; record its statistics (MON_JOB_DONE).

    A server reporting a job it does not serve, or a daemon cancelling a job it
    did not submit, breaks the protocol (1.4 kicks it).
    """
    if done.flags & _UNKNOWN_JOB_ID:
        # The submitter gave up before it learnt the job id: job_id is its client id.
        job = _find_unknown_job(state, host, done.job_id)
    else:
        job = state.jobs.get(done.job_id)
    if job is None:
        return []  # already aborted or finished; 1.4 ignores it too
    if done.flags & _FROM_SUBMITTER:
        if job.submitter != host.host_id:
            text = f"JOB_DONE from a daemon that did not submit job {job.job_id}"
            raise RemoteProtocolError(text, msg_type=int(MsgType.JOB_DONE))
    elif job.server != host.host_id:
        text = f"JOB_DONE from a daemon that does not serve job {job.job_id}"
        raise RemoteProtocolError(text, msg_type=int(MsgType.JOB_DONE))
    host.client_count = done.client_count
    server = state.hosts.get(job.server) if job.server is not None else None
    if server is not None:
        server.jobs.remove(job.job_id)
        if server.installing_for == job.job_id:
            # The job ended before the server re-announced its environments: the transfer
            # it was to install never happened (or was abandoned), so nothing is installing.
            server.busy_installing_since = None
            server.installing_for = None
        state.touch(server)
    if job.state is JobState.PEND:
        state.queue.discard(job)
    placement.record_job_stats(
        state,
        job,
        exitcode=done.exitcode,
        out_uncompressed=done.out_uncompressed,
        user_msec=done.user_msec,
    )
    state.forget_job(job)
    return [
        ToMonitors(
            MonJobDone(
                job_id=job.job_id,
                exitcode=done.exitcode,
                real_msec=done.real_msec,
                user_msec=done.user_msec,
                sys_msec=done.sys_msec,
                pfaults=done.pfaults,
                in_compressed=done.in_compressed,
                in_uncompressed=done.in_uncompressed,
                out_compressed=done.out_compressed,
                out_uncompressed=done.out_uncompressed,
                flags=done.flags,
                client_count=done.client_count,
            )
        )
    ]


def on_job_local_begin(state: ClusterState, host: Host, begin: JobLocalBegin) -> list[Effect]:
    """JOB_LOCAL_BEGIN: number a local job from the shared counter (MON_LOCAL_JOB_BEGIN)."""
    job_id = state.new_job_id()
    host.local_jobs.pop(begin.id, None)
    host.local_jobs[begin.id] = job_id
    if len(host.local_jobs) > _MAX_LOCAL_JOBS:
        del host.local_jobs[next(iter(host.local_jobs))]
    return [
        ToMonitors(
            MonLocalJobBegin(host.host_id, job_id, begin.stime, shorten_filename(begin.outfile))
        )
    ]


def on_job_local_done(_state: ClusterState, host: Host, done: JobLocalDone) -> list[Effect]:
    """JOB_LOCAL_DONE: report the local job's scheduler id to the monitors."""
    job_id = host.local_jobs.pop(done.job_id, 0)
    return [ToMonitors(JobLocalDone(job_id))]


def place_jobs(
    state: ClusterState, rng: random.Random, now: float, keys: KeyRing | None = None
) -> list[Effect]:
    """Place queued jobs until nothing more can be placed; return the USE_CS/NO_CS sends.

    With *keys* (``[cluster] auth`` prefer/require), a job placed from an
    authenticated daemon on another authenticated daemon gets a JOB_TICKET
    just before its USE_CS (:func:`ticket_for`).
    """
    effects: list[Effect] = []
    for _ in range(len(state.queue)):
        assignment = placement.empty_queue(state, rng)
        if assignment is None:
            break
        sent = _apply(state, assignment, now)
        if keys is not None and isinstance(sent, Send) and isinstance(sent.message, UseCS):
            ticket = ticket_for(state, assignment, keys, now)
            if ticket is not None:
                effects.append(Send(sent.conn_id, ticket))
        effects.append(sent)
    return effects


def ticket_for(
    state: ClusterState, assignment: placement.Assignment, keys: KeyRing, now: float
) -> JobTicket | None:
    """Return the ticket of *assignment*, or None when nobody in it could use or check one.

    Only an authenticated daemon is sent one (a 1.4 daemon must never see the
    iceserv-only type), and only for a job on another authenticated daemon
    (only such a server checks tickets; an unauthenticated one gets no
    foreign jobs anyway).  It binds the job id, the server's address named in
    USE_CS and the submitter's address of that family (the server compares
    with its own addresses, the client's with the connection's peer), and
    expires after :data:`TICKET_LIFETIME` seconds.
    """
    job, host = assignment.job, assignment.host
    submitter = state.hosts[job.submitter]
    if host is submitter or not keys.keys:
        return None
    if submitter.auth != _AUTHENTICATED or host.auth != _AUTHENTICATED:
        return None
    named = placement.address_for(submitter, host)
    text = issue_ticket(
        keys,
        job_id=job.job_id,
        client=ticket_address(placement.source_for(submitter, named)),
        server=ticket_address(named),
        expires=int(now) + TICKET_LIFETIME,
    )
    # Issue 14 item 4: when both daemons' links are sealed (encrypt = yes somewhere, both
    # can), the job is sealed too: its key rides beside the ticket, over a sealed link only.
    secret = ""
    if submitter.sealed and host.sealed:
        # Only sealed links need it: the cipher library costs a scheduler 6 MiB at rest.
        from iceserv.protocol.sealing import job_key  # noqa: PLC0415

        secret = job_key(keys, text).hex()
    return JobTicket(job_id=job.job_id, client_id=job.client_id, ticket=text, secret=secret)


def _apply(state: ClusterState, assignment: placement.Assignment, now: float) -> Effect:
    job, host = assignment.job, assignment.host
    submitter = state.hosts[job.submitter]
    state.queue.take(job)
    job.state = JobState.WAIT
    job.server = host.host_id
    host.jobs.append(job.job_id)
    host.last_picked_id = job.job_id
    state.touch(host)
    if not assignment.got_env:
        host.busy_installing_since = now  # cleared by its re-LOGIN after the install
        host.installing_for = job.job_id  # ... or by the end of this job, if it never came
    placement.restrict_siblings(state, assignment)
    if host is submitter and supports(submitter.protocol, Feature.NO_CS):
        return Send(submitter.conn_id, NoCS(job.job_id, job.client_id))
    hostname = placement.address_for(submitter, host)
    if hostname in (LOOPBACK_IP, IPV6_LOOPBACK) and host is not submitter:
        # Every client (1.4's too) reads USE_CS to 127.0.0.1 as "compile it yourself" and
        # never contacts the server; a name for the same address makes it connect.  A
        # server logged in from ::1 shares the host too, and the name is IPv4-parsable.
        hostname = LOOPBACK_NAME
    return Send(
        submitter.conn_id,
        UseCS(
            job_id=job.job_id,
            port=host.port,
            hostname=hostname,
            host_platform=assignment.host_platform,
            got_env=assignment.got_env,
            client_id=job.client_id,
            matched_job_id=assignment.matched_job_id,
        ),
    )


def remove_host(state: ClusterState, host: Host) -> list[Effect]:
    """Drop *host*: abort its jobs, forget blacklists naming it, close its connection."""
    state.drop_host(host)
    effects: list[Effect] = [ToMonitors(MonStats(host.host_id, OFFLINE))]
    for job in state.queue.drop_submitter(host.host_id):
        effects.append(ToMonitors(MonJobDone(job.job_id, _ABORTED_EXITCODE)))
        del state.jobs[job.job_id]
    for job in list(state.jobs.values()):
        if host.host_id not in (job.server, job.submitter):
            continue
        effects.append(ToMonitors(MonJobDone(job.job_id, _ABORTED_EXITCODE)))
        server = state.hosts.get(job.server) if job.server is not None else None
        if server is not None:
            server.jobs.remove(job.job_id)
            server.busy_installing_since = None  # as 1.4: it may have been installing for it
            server.installing_for = None
            state.touch(server)
        if job.state is JobState.PEND:
            state.queue.discard(job)
        state.forget_job(job)
    for other_id, other in list(state.blacklisters.items()):
        if state.hosts.get(other_id) is not other:
            del state.blacklisters[other_id]  # it left itself
        else:
            other.blacklist.pop(host.host_id, None)
    effects.append(Close(host.conn_id))
    return effects
