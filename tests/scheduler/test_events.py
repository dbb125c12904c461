"""Tests of cluster events: observer calls and job times derived from applied effects."""

from __future__ import annotations

from scheduler.builders import T0, get_cs, login, new_core

from iceserv.protocol import JobBegin, JobDone, Stats
from iceserv.scheduler.events import ClusterEvents


class Recorder:
    """Records every observer call as a tuple."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def host_joined(self, nodename, ip, /):
        self.calls.append(("joined", nodename, ip))

    def host_left(self, nodename, ip, /):
        self.calls.append(("left", nodename, ip))

    def job_started(self, job, /):
        self.calls.append(("started", job))

    def job_finished(self, job, exitcode, /):
        self.calls.append(("finished", job, exitcode))

    def cluster_changed(self):
        self.calls.append(("changed",))

    def named(self, kind):
        return [call for call in self.calls if call[0] == kind]


class Broken(Recorder):
    def host_joined(self, nodename, _ip, /):
        raise RuntimeError(nodename)


def setup():
    core, events, recorder = new_core(), ClusterEvents(), Recorder()
    events.add_observer(recorder)

    def feed(effects, now=T0):
        events.feed(core.state, effects, now)

    return core, events, recorder, feed


class TestHosts:
    def test_join_once_and_leave(self):
        """A login is one join however many STATS follow; losing the daemon is one leave."""
        core, _, recorder, feed = setup()
        feed(login(core, 1, "a"))
        feed(core.handle_message(1, Stats(load=5), T0))
        assert recorder.named("joined") == [("joined", "a", "10.0.0.1")]
        feed(core.connection_lost(1, T0))
        assert recorder.named("left") == [("left", "a", "10.0.0.1")]

    def test_refused_login_is_no_event(self):
        """A blocked daemon's refused login (reported offline to monitors) is neither event."""
        core, _, recorder, feed = setup()
        core.state.blocked.append("bad")
        feed(login(core, 1, "bad", load=None))
        assert not recorder.named("joined")
        assert not recorder.named("left")

    def test_changed_once_per_non_empty_batch(self):
        """Each batch with effects is one 'changed'; an empty batch is none."""
        core, _, recorder, feed = setup()
        feed(login(core, 1, "a"))
        feed([])
        assert recorder.named("changed") == [("changed",)]


class TestJobs:
    def test_life_of_a_job_with_times(self):
        """Queued, started and finished carry client, server, file and the clock times."""
        core, events, recorder, feed = setup()
        feed(login(core, 1, "sub", max_kids=0))
        feed(login(core, 2, "cs"))
        feed(get_cs(core, 1, filename="/src/a.c"), now=T0 + 1)
        assert events.times(1) == (T0 + 1, None)
        feed(core.handle_message(2, JobBegin(1, 0, 1), T0), now=T0 + 2)
        ((_, started),) = recorder.named("started")
        assert (started.id, started.state, started.submitter, started.server) == (
            1,
            "COMP",
            "sub",
            "cs",
        )
        assert (started.filename, started.queued_at, started.started_at) == ("/src/a.c", T0 + 1,
                                                                             T0 + 2)  # fmt: skip
        feed(core.handle_message(2, JobDone(1, exitcode=3), T0), now=T0 + 3)
        ((_, finished, exitcode),) = recorder.named("finished")
        assert (finished, exitcode) == (started, 3)
        assert events.times(1) == (None, None)

    def test_aborted_job_finishes_with_255(self):
        """A job whose submitter vanishes finishes with exit code 255, server as last known."""
        core, _, recorder, feed = setup()
        feed(login(core, 1, "sub", max_kids=0))
        feed(login(core, 2, "cs"))
        feed(get_cs(core, 1))
        feed(core.connection_lost(1, T0))
        ((_, job, exitcode),) = recorder.named("finished")
        assert (job.id, job.state, job.server, exitcode) == (1, "WAIT", "cs", 255)
        assert not recorder.named("started")


class TestObservers:
    def test_failing_observer_does_not_stop_the_others(self):
        """An observer that raises is skipped; later observers still hear the event."""
        core, events, recorder, feed = setup()
        events.remove_observer(recorder)
        events.add_observer(Broken())
        events.add_observer(recorder)
        feed(login(core, 1, "a"))
        assert recorder.named("joined") == [("joined", "a", "10.0.0.1")]

    def test_removed_observer_hears_nothing(self):
        """After remove_observer nothing more is called."""
        core, events, recorder, feed = setup()
        events.remove_observer(recorder)
        events.remove_observer(recorder)  # twice is fine
        feed(login(core, 1, "a"))
        assert recorder.calls == []

    def test_times_are_kept_without_observers(self):
        """With nobody listening job times are still kept; a later observer hears the end."""
        core, events, recorder, feed = setup()
        events.remove_observer(recorder)
        feed(login(core, 1, "sub", max_kids=0))
        feed(login(core, 2, "cs"))
        feed(get_cs(core, 1), now=T0 + 1)
        feed(core.handle_message(2, JobBegin(1, 0, 1), T0), now=T0 + 2)
        assert events.times(1) == (T0 + 1, T0 + 2)
        events.add_observer(recorder)
        feed(core.handle_message(2, JobDone(1, exitcode=0), T0), now=T0 + 3)
        ((_, job, exitcode),) = recorder.named("finished")
        assert (job.id, job.server, job.started_at, exitcode) == (1, "cs", T0 + 2, 0)
        assert events.times(1) == (None, None)


class TestFinished:
    def run_jobs(self, feed, core, count, *, start=True):
        for _ in range(count):
            effects = get_cs(core, 1)
            feed(effects, now=T0)
            job_id = max(core.state.jobs)
            if start:
                feed(core.handle_message(2, JobBegin(job_id, 0, 1), T0), now=T0 + 1)
            feed(core.handle_message(2, JobDone(job_id, exitcode=job_id % 3), T0), now=T0 + job_id)

    def test_nothing_is_kept_unless_asked(self):
        core, events, _, feed = setup()
        feed(login(core, 1, "sub", max_kids=0))
        feed(login(core, 2, "cs"))
        self.run_jobs(feed, core, 3)
        assert events.finished() == []

    def test_the_last_started_jobs_are_kept_with_end_and_exit_code(self):
        """Kept without any observer: the newest *count* jobs that started, oldest first."""
        core, events, recorder, feed = setup()
        events.remove_observer(recorder)
        events.keep_finished(3)
        feed(login(core, 1, "sub", max_kids=0))
        feed(login(core, 2, "cs"))
        self.run_jobs(feed, core, 5)
        self.run_jobs(feed, core, 1, start=False)  # job 6 never started
        kept = events.finished()
        assert [(job.id, end, code) for job, end, code in kept] == [
            (3, T0 + 3, 0), (4, T0 + 4, 1), (5, T0 + 5, 2)]  # fmt: skip
        assert {(job.server, job.submitter, job.started_at) for job, _, _ in kept} == {
            ("cs", "sub", T0 + 1)}  # fmt: skip
        events.keep_finished(2)  # asking again keeps the newest
        assert [job.id for job, _, _ in events.finished()] == [4, 5]
