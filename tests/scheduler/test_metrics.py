"""ClusterMetrics: counters and histograms read off the effects the shell applied."""

from __future__ import annotations

from iceserv.protocol import JobDoneFlag, MonGetCS, MonJobDone, MonLocalJobBegin, NoCS, UseCS
from iceserv.scheduler.effects import Close, Send, ToMonitors
from iceserv.scheduler.metrics import FAIL_REASONS, ClusterMetrics, fail_reason


def queued(job_id: int) -> ToMonitors:
    return ToMonitors(MonGetCS("src/a.c", 0, job_id, 1))


def use(job_id: int, *, got_env: bool = True) -> Send:
    return Send(1, UseCS(job_id=job_id, port=10245, hostname="10.0.0.2", got_env=got_env))


def done(job_id: int, **fields: int) -> ToMonitors:
    return ToMonitors(MonJobDone(job_id=job_id, **fields))


class TestClusterMetrics:
    def test_a_placed_and_finished_job(self):
        """GET_CS, USE_CS, JOB_DONE: placed, finished, bytes, wait, compile and turnaround."""
        metrics = ClusterMetrics()
        metrics.feed([queued(7)], 100.0)
        metrics.feed([use(7, got_env=False)], 100.02)
        metrics.feed([done(7, real_msec=1500, in_compressed=4000, out_compressed=900)], 102.0)
        view = metrics.view(102.0)
        assert (view.jobs_placed, view.jobs_finished, view.env_transfers) == (1, 1, 1)
        assert (view.bytes_in, view.bytes_out) == (4000, 900)
        assert sum(view.jobs_failed.values()) == 0
        assert view.placement_wait.count == 1
        assert abs(view.placement_wait.total - 0.02) < 1e-9
        # 0.02 s falls in the 0.025 bucket and every bucket after it.
        assert view.placement_wait.cumulative[:5] == (0, 0, 0, 1, 1)
        assert view.compile_time.total == 1.5
        assert view.turnaround.total == 2.0
        assert view.jobs_per_second == 1 / 60

    def test_failures_by_reason(self):
        """Compile errors, cancellations, aborts and unknown jobs count under their reason."""
        metrics = ClusterMetrics()
        metrics.feed([done(1, exitcode=1, real_msec=5, in_compressed=9)], 1.0)
        metrics.feed([done(2, exitcode=1, flags=int(JobDoneFlag.FROM_SUBMITTER))], 1.0)
        metrics.feed([done(3, exitcode=255)], 1.0)
        metrics.feed([done(4, flags=int(JobDoneFlag.UNKNOWN_JOB_ID))], 1.0)
        assert metrics.view(1.0).jobs_failed == dict.fromkeys(FAIL_REASONS, 1)
        assert metrics.view(1.0).turnaround.count == 0

    def test_local_jobs_and_placements_on_the_submitter(self):
        """JOB_LOCAL_BEGIN counts local jobs; NO_CS is a placement on the submitter."""
        metrics = ClusterMetrics()
        metrics.feed([ToMonitors(MonLocalJobBegin(1, 5, 0, "x.c")), Send(1, NoCS(6, 1))], 0.0)
        view = metrics.view(0.0)
        assert (view.local_jobs, view.jobs_placed, view.jobs_placed_on_submitter) == (1, 1, 1)

    def test_other_effects_and_old_finishes_leave_no_trace(self):
        """Closes count nothing, and the rate forgets finishes older than a minute."""
        metrics = ClusterMetrics()
        metrics.feed([Close(3), done(1)], 0.0)
        assert metrics.view(61.0).jobs_per_second == 0
        assert metrics.view(61.0).jobs_finished == 1

    def test_success_has_no_reason(self):
        """A clean JOB_DONE is no failure."""
        assert fail_reason(MonJobDone(job_id=1, exitcode=0)) is None
