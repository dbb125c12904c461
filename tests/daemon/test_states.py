"""Tests of what the scheduler hears when a client leaves, and of the per-state read limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from iceserv.daemon.settings import ServerSettings
from iceserv.daemon.states import EXIT_GOOD_BYE, State, end_report, read_timeout
from iceserv.protocol import JobDone, JobDoneFlag, JobLocalDone

SUBMITTER = JobDoneFlag.FROM_SUBMITTER


def _report(state: State, exit_code: int, job_id: int = 0):
    return end_report(state, exit_code, job_id=job_id, client_id=4, client_count=2)


class TestEndReport:
    def test_waiting_for_the_scheduler_uses_the_client_id(self):
        """Before USE_CS the job id is unknown: JOB_DONE carries the client id (UnknownJobId)."""
        assert _report(State.WAIT_FOR_CS, 118) == JobDone(
            job_id=4, exitcode=118, flags=SUBMITTER | JobDoneFlag.UNKNOWN_JOB_ID, client_count=2
        )

    @pytest.mark.parametrize("state", [State.WAIT_COMPILE, State.PENDING_USE_CS,
                                       State.CLIENT_WORK])  # fmt: skip
    def test_abandoned_jobs_are_reported_by_the_submitter(self, state):
        """A client that vanishes holding a job id: JOB_DONE(job, exit, FROM_SUBMITTER)."""
        assert _report(state, 118, job_id=9) == JobDone(job_id=9, exitcode=118, flags=SUBMITTER,
                                                        client_count=2)  # fmt: skip

    def test_good_bye_after_a_remote_compile_is_silent(self):
        """END from a client whose remote compile went fine tells the scheduler nothing."""
        assert _report(State.WAIT_COMPILE, EXIT_GOOD_BYE, job_id=9) is None

    def test_local_job_end(self):
        """A link/icerun job (no job id) ends with JOB_LOCAL_DONE(client id)."""
        assert _report(State.CLIENT_WORK, 118) == JobLocalDone(job_id=4)

    @pytest.mark.parametrize("state", [State.NEW, State.JOB_DONE, State.WAIT_NATIVE,
                                       State.INSTALLING, State.LINK_WAIT])  # fmt: skip
    def test_nothing_to_report(self, state):
        """Clients without a job the scheduler knows leave silently."""
        assert _report(state, 118, job_id=0) is None


class TestReadTimeout:
    settings = ServerSettings(unix_socket=Path("/s"), env_basedir=Path("/e"))

    def test_streams_allow_a_minute_between_chunks(self):
        """While source or an environment arrives, 60 s of silence end the client."""
        for state in (State.INSTALLING, State.TO_COMPILE, State.COMPILING):
            assert read_timeout(state, self.settings, stream_ended=False) == 60.0

    def test_waiting_states_are_long_but_finite(self):
        """A client waiting for the scheduler or a slot may wait long, but not forever."""
        assert read_timeout(State.WAIT_FOR_CS, self.settings, stream_ended=False) == 3600.0
        assert read_timeout(State.COMPILING, self.settings, stream_ended=True) == 3660.0
        assert read_timeout(State.CLIENT_WORK, self.settings, stream_ended=False) == 6 * 3600
        assert read_timeout(State.NEW, self.settings, stream_ended=False) == 120.0
