"""JobSummaries: the job_finished log event's fields from the monitor stream."""

from __future__ import annotations

from iceserv.protocol import MonGetCS, MonJobBegin, MonJobDone, MonStats
from iceserv.scheduler.joblog import JobSummaries

NAMES = {1: "laptop", 2: "farm1"}.get


def name(host_id: int) -> str:
    return NAMES(host_id) or f"host {host_id}"


class TestJobSummaries:
    def test_a_placed_job_names_submitter_server_and_file(self):
        """Queue, begin and done give one summary with both hosts, the wait and the sizes."""
        log = JobSummaries()
        assert log.observe(MonGetCS("src/a.c", 0, 7, 1), name, 100.0) is None
        assert log.observe(MonJobBegin(7, 0, 2), name, 101.5) is None
        done = MonJobDone(job_id=7, exitcode=0, real_msec=900, user_msec=800,
                          in_uncompressed=5000, out_uncompressed=3000)  # fmt: skip
        assert log.observe(done, name, 103.0) == {
            "job_id": 7, "submitter": "laptop", "server": "farm1", "file": "src/a.c",
            "exitcode": 0, "waited_s": 1.5, "real_msec": 900, "user_msec": 800,
            "in_bytes": 5000, "out_bytes": 3000,
        }  # fmt: skip

    def test_an_aborted_queued_job_has_no_server_and_no_wait(self):
        """A job aborted before JOB_BEGIN is summarised with exit 255 and no server."""
        log = JobSummaries()
        log.observe(MonGetCS("b.c", 0, 3, 1), name, 5.0)
        summary = log.observe(MonJobDone(job_id=3, exitcode=255), name, 9.0)
        assert summary is not None
        assert (summary["server"], summary["waited_s"], summary["exitcode"]) == ("", None, 255)

    def test_done_for_an_unknown_job_still_logs_and_nothing_else_does(self):
        """An unseen job id yields a bare summary; other messages yield nothing."""
        log = JobSummaries()
        assert log.observe(MonStats(1, "Name:x\n"), name, 0.0) is None
        summary = log.observe(MonJobDone(job_id=9, exitcode=1), name, 0.0)
        assert summary is not None
        assert (summary["job_id"], summary["submitter"], summary["exitcode"]) == (9, "", 1)

    def test_open_jobs_are_bounded(self, monkeypatch):
        """Beyond the cap the oldest open job is dropped, so memory stays bounded."""
        monkeypatch.setattr("iceserv.scheduler.joblog.MAX_OPEN_JOBS", 2)
        log = JobSummaries()
        for job_id in (1, 2, 3):
            log.observe(MonGetCS("f.c", 0, job_id, 1), name, 0.0)
        assert log.observe(MonJobDone(job_id=1), name, 0.0)["submitter"] == ""  # type: ignore[index]
        assert log.observe(MonJobDone(job_id=3), name, 0.0)["submitter"] == "laptop"  # type: ignore[index]
