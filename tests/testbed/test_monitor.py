"""Self-tests of the scheduler monitor: it waits for the jobs a caller knows ran."""

from __future__ import annotations

import threading

import pytest
from testbed.errors import WaitTimeoutError
from testbed.hosts import LOOPBACK
from testbed.monitor import MonitorEvent, SchedulerMonitor


def _job(job_id: int) -> list[MonitorEvent]:
    return [MonitorEvent("MON_GET_CS", host_id=1, job_id=job_id),
            MonitorEvent("MON_JOB_BEGIN", host_id=2, job_id=job_id),
            MonitorEvent("MON_JOB_DONE", host_id=2, job_id=job_id, exitcode=0)]  # fmt: skip


def _monitor(*jobs: int) -> SchedulerMonitor:
    monitor = SchedulerMonitor(LOOPBACK, ("127.0.0.1", 1))
    monitor.events.append(MonitorEvent("MON_STATS", host_id=2, text="Name:nodeB\nLoadAvg1:0"))
    for job in jobs:
        monitor.events.extend(_job(job))
    return monitor


def test_settled_with_fewer_jobs_than_expected_is_not_settled():
    """Two jobs seen, three compiled: the third job's events are still on their way."""
    with pytest.raises(WaitTimeoutError, match="at least 3"):
        _monitor(1, 2).wait_settled(0, 0.2, jobs=3)


def test_a_trailing_job_is_waited_for_and_counted():
    """The 1.4 scheduler forwards job 3 after its client is done: the wait sees it arrive."""
    monitor = _monitor(1, 2)
    late = threading.Timer(0.1, lambda: monitor.events.extend(_job(3)))
    late.start()
    try:
        monitor.wait_settled(0, 10.0, jobs=3)
    finally:
        late.join()
    assert monitor.placement().began == {"nodeB": 3}
    assert monitor.placement().requested == 3


def test_a_begun_job_without_its_done_is_not_settled():
    """JOB_DONE trails the build: a begun job must be done before the placement is read."""
    monitor = _monitor(1)
    monitor.events.append(MonitorEvent("MON_JOB_BEGIN", host_id=2, job_id=2))
    with pytest.raises(WaitTimeoutError):
        monitor.wait_settled(0, 0.2)
