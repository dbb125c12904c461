"""The job life cycle (scheduler/jobs.py), driven through the core as daemons drive it."""

from __future__ import annotations

import pytest
from scheduler.builders import NATIVE, T0, get_cs, login, new_core, sends, to_monitors

from iceserv._version import VERSION
from iceserv.errors import RemoteProtocolError
from iceserv.protocol import (
    ICESERV_MARK,
    BlacklistHostEnv,
    ConfCS,
    End,
    EnvEntry,
    JobBegin,
    JobDone,
    JobDoneFlag,
    JobLocalBegin,
    JobLocalDone,
    Login,
    MonGetCS,
    MonJobBegin,
    MonJobDone,
    MonLocalJobBegin,
    MonStats,
    NoCS,
    Stats,
    UseCS,
)
from iceserv.scheduler.effects import (
    Close,
)
from iceserv.scheduler.state import JobState

STATS_A = (
    "Name:a\nIP:10.0.0.1\nMaxJobs:4\nNoRemote:false\nPlatform:x86_64\nVersion:43\n"
    "Features:env_xz env_zstd\nSpeed:0.000000\nLoad:1000\n"
)

#: CS_CONF's bench_source from our scheduler (1.4 sends "").
ICESERV_CONF = ICESERV_MARK + VERSION


class TestJobs:
    def setup_method(self):
        self.core = new_core()
        login(self.core, 1, "sub")
        login(self.core, 2, "cs")

    def test_remote_job_life(self):
        """GET_CS -> USE_CS to a remote, JOB_BEGIN -> COMP, JOB_DONE -> stats and gone."""
        self.core.state.hosts[1].max_jobs = 0  # only "cs" can take it
        effects = get_cs(self.core, 1, filename="/home/u/proj/src/a.c")
        assert to_monitors(effects) == [MonGetCS("proj/src/a.c", 0, 1, 1)]
        use_cs = UseCS(1, 10245, "10.0.0.2", "x86_64", got_env=False, client_id=7)
        assert sends(effects, 1) == [use_cs]
        job = self.core.state.jobs[1]
        cs = self.core.state.hosts[2]
        assert (job.state, job.server, cs.jobs) == (JobState.WAIT, 2, [1])
        assert cs.busy_installing_since == T0
        effects = self.core.handle_message(2, JobBegin(1, 1234, 3), T0)
        assert to_monitors(effects) == [MonJobBegin(1, 1234, 2)]
        assert job.state is JobState.COMP
        done = JobDone(1, 0, 50, 40, 5, 100, 10, 20, 8000, 8000, 0, 2)
        effects = self.core.handle_message(2, done, T0)
        assert to_monitors(effects) == [MonJobDone(1, 0, 50, 40, 5, 100, 10, 20, 8000, 8000, 0, 2)]
        assert not self.core.state.jobs
        assert cs.jobs == []
        assert len(cs.compiled) == 1
        assert self.core.state.hosts[1].submitted == 0

    def test_no_cs_for_own_job(self):
        """When the submitter compiles itself (protocol >= 37) it gets NO_CS."""
        self.core.state.hosts[2].load = 1000
        effects = get_cs(self.core, 1)
        assert sends(effects, 1) == [NoCS(1, 7)]

    def test_use_cs_to_self_below_37(self):
        """A submitter below protocol 37 is told USE_CS with its own address."""
        core = new_core()
        login(core, 1, "old", protocol=36, version=36)
        (msg,) = sends(get_cs(core, 1))
        assert msg == UseCS(1, 10245, "10.0.0.1", "x86_64", got_env=True, client_id=7)

    def test_job_done_from_wrong_server_kicks(self):
        """A FROM_SERVER JOB_DONE from a daemon not serving the job is a protocol error."""
        self.core.state.hosts[1].max_jobs = 0
        get_cs(self.core, 1)
        with pytest.raises(RemoteProtocolError):
            self.core.handle_message(1, JobDone(1), T0)

    def test_job_done_from_wrong_submitter_kicks(self):
        """A FROM_SUBMITTER JOB_DONE from a daemon that did not submit is a protocol error."""
        self.core.state.hosts[1].max_jobs = 0
        get_cs(self.core, 1)
        with pytest.raises(RemoteProtocolError):
            self.core.handle_message(2, JobDone(1, flags=JobDoneFlag.FROM_SUBMITTER), T0)

    def test_unknown_job_id_cancels_queued_job(self):
        """UnknownJobId: job_id is the client id; the queued job is cancelled by its id."""
        self.core.state.hosts[1].max_jobs = 0
        self.core.state.hosts[2].load = 1000  # could take it later: the job waits
        get_cs(self.core, 1, client_id=5)
        assert self.core.state.jobs[1].state is JobState.PEND
        flags = JobDoneFlag.FROM_SUBMITTER | JobDoneFlag.UNKNOWN_JOB_ID
        effects = self.core.handle_message(1, JobDone(5, 255, flags=flags), T0)
        assert to_monitors(effects) == [MonJobDone(1, 255, flags=flags)]
        assert not self.core.state.jobs
        assert not self.core.state.queue

    def test_unknown_job_ignored(self):
        """JOB_BEGIN and JOB_DONE for unknown jobs are ignored, as 1.4 does."""
        assert self.core.handle_message(2, JobBegin(77), T0) == []
        assert self.core.handle_message(2, JobDone(77), T0) == []

    def test_daemon_loss_aborts_its_jobs(self):
        """A vanished server aborts its jobs (exit 255) and frees the submitter's blacklist."""
        self.core.state.hosts[1].max_jobs = 0
        get_cs(self.core, 1)
        self.core.handle_message(1, BlacklistHostEnv("e", "x86_64", "10.0.0.2"), T0)
        effects = self.core.connection_lost(2, T0)
        assert to_monitors(effects) == [MonStats(2, "State:Offline\n"), MonJobDone(1, 255)]
        assert not self.core.state.jobs
        assert self.core.state.hosts[1].blacklist == {}

    def test_submitter_loss_aborts_queued_and_assigned(self):
        """A vanished submitter aborts its queued and its assigned jobs."""
        self.core.state.hosts[1].max_jobs = 0
        get_cs(self.core, 1, count=1)
        self.core.state.hosts[2].load = 1000
        get_cs(self.core, 1)
        assert [j.state for j in self.core.state.jobs.values()] == [JobState.WAIT, JobState.PEND]
        effects = self.core.connection_lost(1, T0)
        assert to_monitors(effects) == [MonStats(1, "State:Offline\n"), MonJobDone(2, 255),
                                        MonJobDone(1, 255)]  # fmt: skip
        assert self.core.state.hosts[2].jobs == []
        assert self.core.state.hosts[2].busy_installing_since is None

    def test_local_jobs_share_the_counter(self):
        """JOB_LOCAL_BEGIN takes a scheduler job id; JOB_LOCAL_DONE reports it."""
        self.core.state.hosts[1].max_jobs = 0
        get_cs(self.core, 1)
        effects = self.core.handle_message(1, JobLocalBegin(99, "/w/x/y/z.o", 3), T0)
        assert to_monitors(effects) == [MonLocalJobBegin(1, 2, 99, "x/y/z.o")]
        effects = self.core.handle_message(1, JobLocalDone(3), T0)
        assert to_monitors(effects) == [JobLocalDone(2)]
        assert self.core.state.last_job_id == 2
        assert list(self.core.state.jobs) == [1]

    def test_stats_make_a_daemon_eligible(self):
        """A daemon is full (load 1000) until its first STATS."""
        core = new_core()
        login(core, 1, "sub", max_kids=0)
        login(core, 2, "cs", load=None)
        assert sends(get_cs(core, 1), 1) == []
        effects = core.handle_message(2, Stats(load=10), T0)
        assert [type(m) for m in sends(effects, 1)] == [UseCS]

    def test_relogin_clears_installing_and_updates_envs(self):
        """A re-LOGIN after an install updates the envs, clears busy installing, gets CS_CONF."""
        self.core.state.hosts[1].max_jobs = 0
        get_cs(self.core, 1)
        assert self.core.state.hosts[2].busy_installing_since is not None
        envs = (EnvEntry("x86_64", "native"),)
        effects = self.core.handle_message(2, Login(envs=envs), T0)
        assert sends(effects, 2) == [ConfCS(bench_source=ICESERV_CONF)]
        assert self.core.state.hosts[2].busy_installing_since is None
        assert self.core.state.hosts[2].envs == envs

    def test_blacklist_steers_jobs_away(self):
        """After BLACKLIST_HOST_ENV the submitter's jobs with that env avoid that host."""
        core = new_core()
        login(core, 1, "sub", max_kids=0)
        login(core, 2, "bad")
        login(core, 3, "good")
        core.handle_message(1, BlacklistHostEnv("native", "x86_64", "10.0.0.2"), T0)
        for _ in range(10):
            (msg,) = sends(get_cs(core, 1), 1)
            assert msg.hostname == "10.0.0.3"
            core.handle_message(3, JobDone(msg.job_id), T0)
            core.handle_message(3, Login(envs=NATIVE), T0)

    def test_niceness_priority(self):
        """A less nice request is placed before an earlier nicer one."""
        core = new_core()
        login(core, 1, "a", max_kids=0)
        login(core, 2, "b", max_kids=0)
        login(core, 3, "cs", load=1000, max_kids=1)
        get_cs(core, 1, niceness=10)
        get_cs(core, 2, niceness=0)
        effects = core.handle_message(3, Stats(load=0), T0)
        assert [m.job_id for m in sends(effects)] == [2]

    def test_repeat_siblings_follow_first_platform(self):
        """The other jobs of a count-3 request keep only the env of the chosen platform."""
        core = new_core()
        login(core, 1, "sub", max_kids=0)
        login(core, 2, "arm", host_platform="aarch64", max_kids=1)
        envs = (EnvEntry("x86_64", "nat"), EnvEntry("aarch64", "cross"))
        get_cs(core, 1, versions=envs, count=3)
        siblings = [core.state.jobs[i] for i in (2, 3)]
        assert all(j.envs == (EnvEntry("aarch64", "cross"),) for j in siblings)

    def test_too_many_jobs_in_one_request(self):
        """A GET_CS asking for absurdly many jobs is refused."""
        with pytest.raises(RemoteProtocolError):
            get_cs(self.core, 1, count=10_000)

    def test_end_removes_daemon(self):
        """END from a daemon closes it like a disconnect."""
        effects = self.core.handle_message(2, End(), T0)
        assert Close(2) in effects
        assert list(self.core.state.hosts) == [1]
