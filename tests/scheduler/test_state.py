"""Tests of the scheduler's records: queue order, statistics windows, probes, id counters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scheduler.builders import add_host, add_job

from iceserv.scheduler.state import (
    PROBE_BACKOFF,
    ClusterState,
    JobQueue,
    JobStat,
    ProbeState,
    StatWindow,
)


class TestJobQueue:
    def test_lower_niceness_first(self):
        """Groups are served by niceness, lower first, whatever the arrival order."""
        state = ClusterState()
        a, b = add_host(state, "a"), add_host(state, "b")
        nice = add_job(state, a, niceness=10)
        urgent = add_job(state, b, niceness=0)
        assert list(state.queue) == [urgent, nice]

    def test_round_robin_within_niceness(self):
        """Taking a job moves its group behind the other groups of the same niceness."""
        state = ClusterState()
        a, b = add_host(state, "a"), add_host(state, "b")
        a1, a2 = add_job(state, a), add_job(state, a)
        b1 = add_job(state, b)
        low = add_job(state, b, niceness=5)
        state.queue.take(a1)
        assert list(state.queue) == [b1, a2, low]
        state.queue.take(b1)
        assert list(state.queue) == [a2, low]

    def test_group_per_submitter_and_niceness(self):
        """The same submitter at two niceness levels has two groups."""
        state = ClusterState()
        a = add_host(state, "a")
        j5 = add_job(state, a, niceness=5)
        j0 = add_job(state, a, niceness=0)
        j5b = add_job(state, a, niceness=5)
        assert list(state.queue) == [j0, j5, j5b]

    def test_discard_keeps_group_place(self):
        """A cancelled job leaves without rotating its group."""
        state = ClusterState()
        a, b = add_host(state, "a"), add_host(state, "b")
        a1, a2 = add_job(state, a), add_job(state, a)
        b1 = add_job(state, b)
        state.queue.discard(a1)
        assert list(state.queue) == [a2, b1]
        state.queue.discard(a2)
        assert list(state.queue) == [b1]
        assert len(state.queue) == 1

    def test_drop_submitter(self):
        """Every queued job of a vanished submitter is removed and returned."""
        state = ClusterState()
        a, b = add_host(state, "a"), add_host(state, "b")
        a1 = add_job(state, a)
        b1 = add_job(state, b)
        a2 = add_job(state, a, niceness=3)
        assert state.queue.drop_submitter(a.host_id) == [a1, a2]
        assert list(state.queue) == [b1]

    def test_empty(self):
        """An empty queue is falsy and has no first job."""
        queue = JobQueue()
        assert not queue
        assert queue.first() is None

    @given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 20)), max_size=30))
    def test_takes_every_job_in_niceness_order(self, specs):
        """Taking the head repeatedly yields every job once, niceness never decreasing."""
        state = ClusterState()
        hosts = [add_host(state, f"h{i}") for i in range(4)]
        jobs = [add_job(state, hosts[h], niceness=n) for h, n in specs]
        taken = []
        while (head := state.queue.first()) is not None:
            state.queue.take(head)
            taken.append(head)
        assert sorted(j.job_id for j in taken) == sorted(j.job_id for j in jobs)
        assert [j.niceness for j in taken] == sorted(j.niceness for j in taken)

    @given(
        st.lists(
            st.tuples(st.sampled_from(["enqueue", "take", "discard", "drop"]), st.integers(0, 3)),
            max_size=60,
        )
    )
    def test_length_follows_every_change(self, steps):
        """len() (a kept count) equals the jobs iterated after any mix of the four changes."""
        state = ClusterState()
        hosts = [add_host(state, f"h{i}") for i in range(4)]
        for what, which in steps:
            queued = list(state.queue)
            if what == "enqueue":
                add_job(state, hosts[which], niceness=which % 2)
            elif what == "drop":
                state.queue.drop_submitter(hosts[which].host_id)
            elif queued:
                job = queued[which % len(queued)]
                (state.queue.take if what == "take" else state.queue.discard)(job)
            assert len(state.queue) == len(list(state.queue))
            assert bool(state.queue) == (len(state.queue) > 0)


class TestStatWindow:
    def test_sums_and_limit(self):
        """The window keeps the last N records and their sums."""
        window = StatWindow(2)
        for i in range(1, 4):
            window.add(JobStat(i, 100 * i, 10 * i))
        assert len(window) == 2
        assert (window.output_sum, window.user_sum) == (500, 50)
        assert window.oldest_ids(5) == [2, 3]

    @given(
        st.integers(1, 40),
        st.lists(st.integers(1, 10**9), max_size=120),
        st.integers(0, 25),
    )
    def test_oldest_ids_follow_the_records(self, limit, ids, count):
        """The kept oldest ids equal the ids of the oldest records, for any limit and count."""
        window = StatWindow(limit)
        kept: list[int] = []
        assert window.oldest_ids(count) == []
        for job_id in ids:
            window.add(JobStat(job_id, 1, 1))
            kept = [*kept, job_id][-limit:]
            assert window.oldest_ids(count) == kept[:count]
            assert window.oldest_ids(17) == kept[:17]
        assert len(window) == len(kept)

    @given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**5)), max_size=50))
    def test_sums_match_contents(self, stats):
        """Running sums always equal the sums of the kept records."""
        window = StatWindow(7)
        for i, (size, user) in enumerate(stats):
            window.add(JobStat(i, size, user))
        kept = stats[-7:]
        assert window.output_sum == sum(s for s, _ in kept)
        assert window.user_sum == sum(u for _, u in kept)


class TestProbeState:
    def test_success_rechecks_after_a_minute(self):
        """A daemon that accepted is probed again 60 s later."""
        probe = ProbeState()
        probe.in_progress = True
        probe.record(ok=True, now=100.0)
        assert (probe.accepting, probe.in_progress, probe.next_at) == (True, False, 160.0)

    def test_backoff_doubles_and_caps(self):
        """Failures back off 2, 4, 8 ... 4096 s and stay at 4096 (1.4 reads past its table)."""
        probe = ProbeState()
        delays = []
        for _ in range(15):
            probe.record(ok=False, now=0.0)
            delays.append(probe.next_at)
        assert delays[:12] == list(PROBE_BACKOFF)
        assert delays[12:] == [4096, 4096, 4096]
        assert not probe.accepting
        probe.record(ok=True, now=0.0)
        probe.record(ok=False, now=0.0)
        assert probe.next_at == 2


class TestCounters:
    def test_ids_never_reused(self):
        """Host ids and job ids only grow."""
        state = ClusterState()
        assert [state.new_host_id() for _ in range(3)] == [1, 2, 3]
        assert [state.new_job_id() for _ in range(2)] == [1, 2]

    def test_block_and_find(self):
        """Hosts match by nodename or IP, for the block list and for lookups."""
        state = ClusterState()
        host = add_host(state, "alpha", ip="10.1.1.1")
        state.blocked.append("10.1.1.1")
        assert state.is_blocked(host)
        assert state.find_host("alpha") is host
        assert state.find_host("10.1.1.1") is host
        assert state.find_host("beta") is None

    def test_drain_list_matches_name_or_ip(self):
        """A host is drained when its nodename or IP is on the drain list."""
        state = ClusterState()
        host = add_host(state, "alpha", ip="10.1.1.1")
        assert not state.is_drained(host)
        state.drained.append("10.1.1.1")
        assert state.is_drained(host)
        state.drained[:] = ["alpha"]
        assert state.is_drained(host)
