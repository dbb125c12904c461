"""The states of a daemon client and what their end means to the scheduler (pure).

This module owns the client state machine's vocabulary, the read time-out
of each state and 1.4's rule (upstream ``daemon/main.cpp``,
``Daemon::handle_end``) for what the scheduler is told when a client goes
away in each state.  :mod:`iceserv.daemon.core` drives the machine; this
module does no I/O and does not log.

Theory of operation
-------------------
::

    NEW --GET_NATIVE_ENV--> WAIT_NATIVE --NATIVE_ENV sent--> NEW
    NEW --GET_CS--> WAIT_FOR_CS --USE_CS (other host)--> WAIT_COMPILE --END--> (bye)
                         |--NO_CS / USE_CS (us) / no scheduler--> PENDING_USE_CS
    PENDING_USE_CS --slot--> CLIENT_WORK (USE_CS 127.0.0.1 sent) --JOB_DONE--> JOB_DONE
    NEW --JOB_LOCAL_BEGIN--> LINK_WAIT --slot--> CLIENT_WORK (go sent) --EOF--> (gone)
    NEW --TRANFER_ENV--> [INSTALL_WAIT --transfer slot-->] INSTALLING --END, unpacked--> NEW
    NEW --VERIFY_ENV--> NEW (VERIFY_ENV_RESULT sent)
    NEW --COMPILE_FILE--> TO_COMPILE --slot--> COMPILING --result sent--> NEW
    NEW --SLOTS_QUERY--> [WAIT_SLOTS --answer or SLOTS_WAIT-->] NEW (SLOTS_ANSWER sent)

FILE_CHUNK and END belong to the install or the compile job while one is
receiving; END anywhere else says good bye.  Every state waits for the
client's next message only so long (:func:`read_timeout`): the client waits
up to 40 minutes for some answers, so waiting states have long but finite
limits, and a stream being received allows 60 s between chunks.  When a
client goes (END, EOF, time-out, protocol error), :func:`end_report` says
what to send the scheduler: JOB_DONE from the submitter for a job it
placed, from the server for a compile that never started, with the client
id (UnknownJobId) while the scheduler had not answered yet, JOB_LOCAL_DONE
for a local job, nothing otherwise.  A running compile reports its own end.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

from iceserv.protocol import JobDone, JobDoneFlag, JobLocalDone

if TYPE_CHECKING:
    from iceserv.daemon.settings import ServerSettings

__all__ = [
    "EXIT_CLIENT_KILLED",
    "EXIT_COMPILER_MISSING",
    "EXIT_ENV_FAILED",
    "EXIT_GOOD_BYE",
    "EXIT_IO_ERROR",
    "EXIT_NATIVE_FAILED",
    "EXIT_NO_HOSTS",
    "EXIT_OUT_OF_MEMORY",
    "EXIT_PROTOCOL",
    "SLOTS_WAIT",
    "State",
    "end_report",
    "read_timeout",
]

# The exit codes 1.4 reports in JOB_DONE (and records per client).
#: The compiler ran out of memory.
EXIT_OUT_OF_MEMORY: Final = 105
#: Input failed (no source in time, EOF or a stray message before END): the client rebuilds.
EXIT_IO_ERROR: Final = 107
#: The environment has no usable compiler.
EXIT_COMPILER_MISSING: Final = 110
#: The scheduler went away: clients depending on it are dropped.
EXIT_NO_HOSTS: Final = 116
#: The client cancelled or left.
EXIT_CLIENT_KILLED: Final = 118
#: A client ended with END (a "real good bye").
EXIT_GOOD_BYE: Final = 119
#: The client broke the protocol.
EXIT_PROTOCOL: Final = 120
#: Seconds a client's SLOTS_QUERY waits for the scheduler before the daemon answers alone.
SLOTS_WAIT: Final = 0.25
#: Building the native environment failed.
EXIT_NATIVE_FAILED: Final = 121
#: An environment transfer failed.
EXIT_ENV_FAILED: Final = 137


class State(enum.Enum):
    """Where a client is (see the theory of operation)."""

    NEW = "new"
    WAIT_NATIVE = "waiting for the native environment"
    WAIT_FOR_CS = "waiting for the scheduler"
    PENDING_USE_CS = "waiting for a slot to compile itself"
    CLIENT_WORK = "compiling locally"
    WAIT_COMPILE = "compiling remotely"
    LINK_WAIT = "waiting for a slot for a local job"
    INSTALL_WAIT = "waiting to receive an environment"
    INSTALLING = "receiving an environment"
    TO_COMPILE = "waiting for a slot to compile"
    COMPILING = "compiling for the client"
    JOB_DONE = "done"
    WAIT_SLOTS = "waiting for the scheduler's slot count"


_STREAMING: Final = frozenset((State.INSTALLING, State.TO_COMPILE, State.COMPILING))


def read_timeout(
    state: State, settings: ServerSettings, *, stream_ended: bool, paused: bool = False
) -> float:
    """How long a client in *state* may stay silent before the daemon gives up on it.

    A client whose input the daemon stopped reading (*paused*: its queued
    job's buffer is full) waits as if its stream had ended.
    """
    if state in _STREAMING and not stream_ended and not paused:
        return settings.source_gap_timeout
    if state in (State.TO_COMPILE, State.COMPILING):
        return settings.compile_timeout + settings.source_gap_timeout
    if state is State.CLIENT_WORK:
        return settings.local_job_timeout
    if state is State.WAIT_SLOTS:
        return SLOTS_WAIT
    if state in (State.NEW, State.JOB_DONE):
        return settings.idle_timeout
    return settings.wait_timeout


def end_report(
    state: State, exit_code: int, *, job_id: int, client_id: int, client_count: int
) -> JobDone | JobLocalDone | None:
    """Return what the scheduler hears when a client in *state* ends with *exit_code*.

    *job_id* is the scheduler's job id the client holds (0: none).  A job
    still waiting in TO_COMPILE is reported by the job itself (it knows its
    statistics), so it is not covered here.
    """
    if state is State.WAIT_FOR_CS:
        return JobDone(
            job_id=client_id,
            exitcode=exit_code,
            client_count=client_count,
            flags=JobDoneFlag.FROM_SUBMITTER | JobDoneFlag.UNKNOWN_JOB_ID,
        )
    if state is State.WAIT_COMPILE and exit_code == EXIT_GOOD_BYE:
        return None  # the client compiled remotely and said good bye: all fine
    if state in (State.WAIT_COMPILE, State.PENDING_USE_CS, State.CLIENT_WORK) and job_id:
        return JobDone(
            job_id=job_id,
            exitcode=exit_code,
            flags=JobDoneFlag.FROM_SUBMITTER,
            client_count=client_count,
        )
    if state is State.CLIENT_WORK:
        return JobLocalDone(job_id=client_id)  # a local job (link, icerun) without a job id
    return None
