"""Tests of job placement: eligibility, speed rating, pick_server, empty_queue (§7.3-§7.7)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scheduler.builders import add_host, add_job

from iceserv.protocol import EnvEntry
from iceserv.scheduler import placement
from iceserv.scheduler.state import ClusterState, JobStat

RNG = random.Random(4)  # noqa: S311 - seeded on purpose


def rate(host, stats, start_id=1000):
    """Give *host* statistics: (output bytes, user ms) pairs."""
    for i, (size, user) in enumerate(stats):
        host.compiled.add(JobStat(start_id + i, size, user))


def seed_global(state):
    """Make the cluster have statistics, so pick_server leaves its random mode."""
    state.all_stats.add(JobStat(1, 10_000, 10))


class TestPlatforms:
    @pytest.mark.parametrize(
        ("env", "host", "ok"),
        [("x86_64", "x86_64", True), ("i386", "x86_64", True), ("i686", "x86_64", True),
         ("i586", "i686", True), ("x86_64", "i686", False), ("ppc", "ppc64", True),
         ("s390", "s390x", True), ("aarch64", "x86_64", False), ("i686", "i586", False)],
    )  # fmt: skip
    def test_compatibility_table(self, env, host, ok):
        """1.4's table of hosts that run environments of another platform."""
        state = ClusterState()
        h = add_host(state, "h", platform=host)
        assert placement.platforms_compatible(h, env) is ok


class TestEligibility:
    def setup_method(self):
        self.state = ClusterState()
        self.sub = add_host(self.state, "sub")
        self.cs = add_host(self.state, "cs")
        self.job = add_job(self.state, self.sub)

    def eligible(self):
        return placement.eligible_ever(self.state, self.cs, self.job)

    def test_default_is_eligible(self):
        """A reachable chroot-capable host with slots takes remote jobs."""
        assert self.eligible()
        assert placement.eligible_now(self.state, self.cs, self.job)

    @pytest.mark.parametrize(
        "change",
        [{"max_jobs": 0}, {"chroot_possible": False}, {"noremote": True}, {"version": 33},
         {"features": 0}, {"platform": "aarch64"}],
    )  # fmt: skip
    def test_never_eligible(self, change):
        """Max jobs 0, no chroot, no-remote, old protocol, missing features, platform: never."""
        self.job.minimal_host_version = 35
        self.job.required_features = 1
        for key, value in change.items():
            setattr(self.cs, key, value)
        assert not self.eligible()

    def test_submitter_may_compile_without_chroot_or_remote(self):
        """The submitter itself needs neither chroot nor remote jobs enabled."""
        self.sub.chroot_possible = False
        self.sub.noremote = True
        assert placement.eligible_ever(self.state, self.sub, self.job)

    def test_unreachable_host(self):
        """A host whose compile port failed the probe gets nothing."""
        self.cs.probe.accepting = False
        assert not self.eligible()

    def test_now_needs_slot_load_and_no_install(self):
        """Now-eligibility also needs a (preload) slot, load < 1000 and no install running."""
        self.cs.max_jobs = 4  # preload = 1 + 4 // 4 = 2 -> up to 6 assigned jobs
        self.cs.jobs = [90, 91, 92, 93, 94, 95]
        assert self.eligible()
        assert not placement.eligible_now(self.state, self.cs, self.job)
        self.cs.jobs.pop()
        assert placement.eligible_now(self.state, self.cs, self.job)
        self.cs.load = 1000
        assert not placement.eligible_now(self.state, self.cs, self.job)
        self.cs.load = 999
        self.cs.busy_installing_since = 5.0
        assert not placement.eligible_now(self.state, self.cs, self.job)
        assert self.eligible()

    def test_blacklisted_environment(self):
        """The submitter's blacklist hides that environment on that host only."""
        self.sub.blacklist[self.cs.host_id] = [("x86_64", "native")]
        assert not self.eligible()
        other = add_host(self.state, "other")
        assert placement.eligible_ever(self.state, other, self.job)

    def test_can_install_skips_blacklisted_first_env(self):
        """can_install returns the first environment that is runnable and not blacklisted."""
        self.job.envs = (EnvEntry("x86_64", "native"), EnvEntry("i686", "old"))
        self.sub.blacklist[self.cs.host_id] = [("x86_64", "native")]
        assert placement.can_install(self.state, self.cs, self.job) == "i686"

    def test_envs_match(self):
        """An installed env of the job's target with a matching name is found; own host always."""
        assert placement.envs_match(self.cs, self.job) == ""
        self.cs.envs = (EnvEntry("x86_64", "native"),)
        assert placement.envs_match(self.cs, self.job) == "x86_64"
        self.job.target = "aarch64"
        assert placement.envs_match(self.cs, self.job) == ""
        assert placement.envs_match(self.sub, self.job) == "x86_64"


class TestDrain:
    def test_drained_host_takes_only_its_own_jobs(self):
        """A drained host is never eligible for another daemon's job, only for its own."""
        state = ClusterState()
        sub = add_host(state, "sub")
        cs = add_host(state, "cs")
        job = add_job(state, sub)
        state.drained.append("cs")
        assert not placement.eligible_ever(state, cs, job)
        assert not placement.eligible_now(state, cs, job)
        own = add_job(state, cs)
        assert placement.eligible_now(state, cs, own)

    def test_job_for_drained_host_goes_elsewhere(self):
        """With the only other host drained, a job neither waits nor goes there: the submitter."""
        state = ClusterState()
        seed_global(state)
        sub = add_host(state, "sub", max_jobs=0)
        add_host(state, "cs")
        job = add_job(state, sub)
        state.drained.append("cs")
        assert placement.pick_server(state, job, RNG) is None
        assignment = placement.empty_queue(state, RNG)
        assert assignment is not None
        assert (assignment.job, assignment.host) == (job, sub)

    def test_drained_preferred_host_is_not_used(self):
        """ICECC_PREFERRED_HOST naming a drained host does not get the job there."""
        state = ClusterState()
        sub = add_host(state, "sub")
        add_host(state, "pref")
        job = add_job(state, sub, preferred_host="pref")
        state.drained.append("pref")
        assignment = placement.empty_queue(state, RNG)
        assert assignment is not None
        assert (assignment.job, assignment.host) == (job, sub)


class TestSpeed:
    def test_no_stats_is_zero(self):
        """A host without statistics is rated 0."""
        state = ClusterState()
        assert placement.server_speed(add_host(state, "h")) == 0.0

    def test_pessimism_below_seven_stats(self):
        """With n < 7 stats the rating is multiplied by 4.5 - 0.5 n."""
        state = ClusterState()
        host = add_host(state, "h")
        rate(host, [(1000, 10)])
        assert placement.server_speed(host) == pytest.approx(100 * 4.0)
        rate(host, [(1000, 10)] * 6)
        assert placement.server_speed(host) == pytest.approx(100)

    def test_job_adjustments(self):
        """For a job: load scales remote hosts, busy slots halve at most."""
        state = ClusterState()
        sub, host = add_host(state, "sub"), add_host(state, "h", load=500, max_jobs=4)
        rate(host, [(1000, 10)] * 7)
        job = add_job(state, sub)
        assert placement.server_speed(host, job) == pytest.approx(50)
        host.jobs = [1, 2]
        assert placement.server_speed(host, job) == pytest.approx(50 * 0.75)

    @pytest.mark.parametrize(("clients", "factor"), [(5, 0.1), (4, 0.8), (3, 1.0), (2, 1.1)])
    def test_submitter_client_count(self, clients, factor):
        """The submitter is penalised when its clients exceed its slots, preferred when few."""
        state = ClusterState()
        sub = add_host(state, "sub", max_jobs=4, load=900, client_count=clients)
        rate(sub, [(1000, 10)] * 7)
        job = add_job(state, sub)
        assert placement.server_speed(sub, job) == pytest.approx(100 * factor)


class TestRecordJobStats:
    def setup_method(self):
        self.state = ClusterState()
        self.sub = add_host(self.state, "sub")
        self.cs = add_host(self.state, "cs")
        self.job = add_job(self.state, self.sub)
        self.job.server = self.cs.host_id

    def record(self, **kw):
        values = {"exitcode": 0, "out_uncompressed": 36_000, "user_msec": 100} | kw
        return placement.record_job_stats(self.state, self.job, **values)

    def test_ignores_failures_and_small_output(self):
        """Failed jobs and output under 4096 bytes say nothing about speed."""
        assert self.record(exitcode=1) is None
        assert self.record(out_uncompressed=4095) is None
        assert not len(self.state.all_stats)

    def test_recorded_everywhere(self):
        """A stat goes to the server, the submitter and the cluster."""
        stat = self.record()
        assert stat is not None
        assert len(self.cs.compiled) == len(self.sub.requested) == len(self.state.all_stats) == 1

    @pytest.mark.parametrize(("flags", "size"), [(0x1, 10_000), (0x2, 8_000), (0x8, 59_657),
                                                 (0x1 | 0x4, 16_571)])  # fmt: skip
    def test_normalisation(self, flags, size):
        """-g output counts 10/36, -g3 10/45, any -O level 58/35."""
        self.job.arg_flags = flags
        stat = self.record()
        assert stat is not None
        assert stat.output_size == size

    def test_smoothing_after_seven(self):
        """With 7 stats a new job moves the rating by at most a factor 1.2."""
        rate(self.cs, [(1000, 10)] * 7)  # speed 100
        fast = self.record(out_uncompressed=100_000, user_msec=10)  # 10 000 per ms
        assert fast is not None
        assert fast.output_size == 1200  # 100 * 1.2 * 10
        slow = self.record(out_uncompressed=5000, user_msec=1000)
        assert slow is not None
        assert slow.output_size < 100_000


class TestPickServer:
    def test_preferred_host_only(self):
        """A preferred host is used only if eligible now; otherwise nobody."""
        state = ClusterState()
        sub, a, b = add_host(state, "sub"), add_host(state, "a"), add_host(state, "b")
        job = add_job(state, sub, preferred_host="b")
        assert placement.pick_server(state, job, RNG) is b
        job.preferred_host = b.ip
        assert placement.pick_server(state, job, RNG) is b
        b.load = 1000
        assert placement.pick_server(state, job, RNG) is None
        assert a  # a is never taken for a job that prefers b

    def test_random_without_statistics(self):
        """Without cluster statistics every eligible host is chosen sometimes."""
        state = ClusterState()
        sub = add_host(state, "sub")
        hosts = [add_host(state, f"h{i}") for i in range(3)]
        job = add_job(state, sub)
        rng = random.Random(7)  # noqa: S311 - seeded on purpose
        chosen = {placement.pick_server(state, job, rng).nodename for _ in range(200)}
        assert chosen == {"sub", *(h.nodename for h in hosts)}

    def test_new_host_tried_first(self):
        """A host that never compiled and has no jobs gets the job (it needs a rating)."""
        state = ClusterState()
        seed_global(state)
        sub, fast = add_host(state, "sub", max_jobs=0), add_host(state, "fast")
        rate(fast, [(100_000, 10)] * 7)
        fast.last_picked_id = 1
        new = add_host(state, "new")
        job = add_job(state, sub)
        assert placement.pick_server(state, job, RNG) is new

    def test_never_picked_host_beats_installed_submitter(self):
        """A never-picked host is tried even without the env and behind an installed host.

        1.4 keeps the earlier installed host (the submitter always counts as
        installed), so a new host logged in after the submitter is never tried
        while the submitter has room; we pick it.
        """
        state = ClusterState()
        seed_global(state)
        sub = add_host(state, "sub")
        rate(sub, [(100, 10)] * 7)
        sub.last_picked_id = 1
        new = add_host(state, "new")
        job = add_job(state, sub)
        assert placement.pick_server(state, job, RNG) is new
        new.last_picked_id = 1
        new.jobs = [1]
        assert placement.pick_server(state, job, RNG) is sub  # no longer new: ratings decide

    def test_new_host_with_env_beats_earlier_uninstalled(self):
        """The first never-picked host is taken, even when a later one has the env."""
        state = ClusterState()
        seed_global(state)
        sub = add_host(state, "sub", max_jobs=0)
        add_host(state, "a")
        b = add_host(state, "b", envs=(EnvEntry("x86_64", "native"),))
        job = add_job(state, sub)
        chosen = placement.pick_server(state, job, RNG)
        assert chosen is not None
        assert chosen.nodename == "a"  # first new host wins, even without the env
        assert b

    def test_stale_host_is_re_measured(self):
        """A host not picked for 20 x hosts job ids is picked again (ratings keep refreshing).

        Upstream master lost this rule (icecream #657); a slow host would never be re-rated.
        """
        state = ClusterState()
        seed_global(state)
        sub = add_host(state, "sub", max_jobs=0)
        slow, fast = add_host(state, "slow"), add_host(state, "fast")
        for host, size in ((slow, 100), (fast, 100_000)):
            rate(host, [(size, 10)] * 7)
            host.envs = (EnvEntry("x86_64", "native"),)
        state.last_job_id = 500
        slow.last_picked_id = fast.last_picked_id = 500
        job = add_job(state, sub)
        assert placement.pick_server(state, job, RNG) is fast
        job.job_id = 500 + 20 * 3 + 1
        fast.last_picked_id = job.job_id - 1
        assert placement.pick_server(state, job, RNG) is slow

    def test_fastest_installed_wins(self):
        """With stats, the fastest host with a free slot and the env installed wins."""
        state = ClusterState()
        seed_global(state)
        sub = add_host(state, "sub", max_jobs=0)
        env = (EnvEntry("x86_64", "native"),)
        slow = add_host(state, "slow", envs=env)
        fast = add_host(state, "fast", envs=env)
        bare = add_host(state, "bare")
        for host, size in ((slow, 100), (fast, 1000), (bare, 100_000)):
            rate(host, [(size, 10)] * 7)
            host.last_picked_id = 1
        job = add_job(state, sub)
        assert placement.pick_server(state, job, RNG) is fast

    def test_uninstalled_when_nothing_installed(self):
        """Without installed envs the fastest host that can install wins."""
        state = ClusterState()
        seed_global(state)
        sub = add_host(state, "sub", max_jobs=0)
        a, b = add_host(state, "a"), add_host(state, "b")
        rate(a, [(100, 10)] * 7)
        rate(b, [(1000, 10)] * 7)
        a.last_picked_id = b.last_picked_id = 1
        job = add_job(state, sub)
        assert placement.pick_server(state, job, RNG) is b

    def test_short_queue_on_much_faster_host_beats_free_slot(self):
        """A full host that finishes an average job sooner, preload included, wins.

        1.4 always preferred any free slot; with a 1000x faster host one queued
        job's wait is nothing beside compiling on the slow host, in either order.
        """
        state = ClusterState()
        seed_global(state)
        sub = add_host(state, "sub", max_jobs=0)
        env = (EnvEntry("x86_64", "native"),)
        slow = add_host(state, "slow", envs=env)
        fast = add_host(state, "fast", envs=env, max_jobs=2, jobs=[50, 51])
        rate(slow, [(100, 10)] * 7)
        rate(fast, [(100_000, 10)] * 7)
        slow.last_picked_id = fast.last_picked_id = 1
        job = add_job(state, sub)
        assert placement.pick_server(state, job, RNG) is fast
        state.hosts = {h.host_id: h for h in (sub, fast, slow)}  # the full host leads
        assert placement.pick_server(state, job, RNG) is fast

    def test_free_slot_beats_deep_queue_on_slightly_faster_host(self):
        """The estimate counts the jobs queued ahead: (1 + waiting / slots) / rating.

        With rating 14 against 10 and 4 slots, one waiting job (itself) costs
        1.25 / 14 < 1 / 10 of a job; two cost 1.5 / 14 > 1 / 10.
        """
        state = ClusterState()
        seed_global(state)
        sub = add_host(state, "sub", max_jobs=0)
        env = (EnvEntry("x86_64", "native"),)
        slow = add_host(state, "slow", envs=env)
        fast = add_host(state, "fast", envs=env, jobs=[50, 51, 52, 53])
        rate(slow, [(100, 10)] * 7)
        rate(fast, [(140, 10)] * 7)
        slow.last_picked_id = fast.last_picked_id = 1
        job = add_job(state, sub)
        assert placement.pick_server(state, job, RNG) is fast
        fast.jobs.append(54)
        assert placement.pick_server(state, job, RNG) is slow
        slow.load = 1000
        assert placement.pick_server(state, job, RNG) is fast

    def test_queue_estimate_keeps_the_submitters_own_factor(self):
        """A busy submitter's free slot is worth a tenth (1.4's factor) against a queue."""
        state = ClusterState()
        seed_global(state)
        env = (EnvEntry("x86_64", "native"),)
        sub = add_host(state, "sub", client_count=10)
        other = add_host(state, "other", envs=env, jobs=[50, 51, 52, 53])
        rate(sub, [(100, 10)] * 7)
        rate(other, [(100, 10)] * 7)
        sub.last_picked_id = other.last_picked_id = 1
        job = add_job(state, sub)
        assert placement.pick_server(state, job, RNG) is other
        sub.client_count = 1  # few jobs: its own free slot saves the transfer
        assert placement.pick_server(state, job, RNG) is sub

    def test_unrated_full_host_gets_no_queued_job(self):
        """A busy host without statistics is not estimated: 1.4's rules keep the free slot."""
        state = ClusterState()
        seed_global(state)
        sub = add_host(state, "sub", max_jobs=0)
        env = (EnvEntry("x86_64", "native"),)
        slow = add_host(state, "slow", envs=env)
        busy = add_host(state, "busy", envs=env, max_jobs=2, jobs=[50, 51])
        rate(slow, [(100, 10)] * 7)
        slow.last_picked_id = busy.last_picked_id = 1
        job = add_job(state, sub)
        assert placement.pick_server(state, job, RNG) is slow

    def test_no_chroot_host_only_for_itself(self):
        """A host that cannot chroot never compiles others' jobs."""
        state = ClusterState()
        seed_global(state)
        sub = add_host(state, "sub", max_jobs=0)
        add_host(state, "nochroot", chroot_possible=False)
        job = add_job(state, sub)
        assert placement.pick_server(state, job, RNG) is None


class TestEmptyQueue:
    def test_submitter_fallback(self):
        """Nobody else eligible: the submitter with a free slot compiles itself."""
        state = ClusterState()
        sub = add_host(state, "sub", load=1000)
        job = add_job(state, sub)
        assignment = placement.empty_queue(state, RNG)
        assert assignment is not None
        assert (assignment.job, assignment.host, assignment.got_env) == (job, sub, True)
        assert assignment.host_platform == "x86_64"

    def test_delays_while_someone_could_take_it(self):
        """A job waits while a busy but capable host exists and the submitter is full."""
        state = ClusterState()
        sub = add_host(state, "sub", max_jobs=1, jobs=[99], load=1000)
        add_host(state, "busy", load=1000)
        add_job(state, sub)
        assert placement.empty_queue(state, RNG) is None

    def test_assigns_submitter_when_nobody_ever_could(self):
        """If no host could ever take the job it goes to its submitter, even when full."""
        state = ClusterState()
        sub = add_host(state, "sub", max_jobs=1, jobs=[99], chroot_possible=False)
        add_host(state, "arm", platform="aarch64")
        job = add_job(state, sub)
        assignment = placement.empty_queue(state, RNG)
        assert assignment is not None
        assert (assignment.job, assignment.host) == (job, sub)

    def test_later_job_placed_when_head_waits(self):
        """A later job is placed when the head job cannot be."""
        state = ClusterState()
        sub = add_host(state, "sub", max_jobs=0)
        add_host(state, "busy", load=1000, platform="x86_64")
        arm = add_host(state, "arm", platform="aarch64")
        add_job(state, sub)
        second = add_job(state, sub, envs=(EnvEntry("aarch64", "armenv"),), target="aarch64")
        assignment = placement.empty_queue(state, RNG)
        assert assignment is not None
        assert (assignment.job, assignment.host, assignment.got_env) == (second, arm, False)
        assert assignment.host_platform == "aarch64"

    def test_preferred_host_waits(self):
        """A job for a busy preferred host waits instead of going to its submitter."""
        state = ClusterState()
        sub = add_host(state, "sub")
        add_host(state, "pref", load=1000)
        add_job(state, sub, preferred_host="pref")
        assert placement.empty_queue(state, RNG) is None

    def test_preferred_host_absent_goes_to_submitter(self):
        """A preferred host that is not connected cannot ever take it: the submitter does."""
        state = ClusterState()
        sub = add_host(state, "sub")
        job = add_job(state, sub, preferred_host="gone")
        assignment = placement.empty_queue(state, RNG)
        assert assignment is not None
        assert (assignment.job, assignment.host) == (job, sub)

    def test_matched_job_id(self):
        """matched_job_id names a job both the submitter requested and the server compiled."""
        state = ClusterState()
        sub, cs = add_host(state, "sub"), add_host(state, "cs")
        sub.requested.add(JobStat(5, 1, 1))
        cs.compiled.add(JobStat(4, 1, 1))
        assert placement.matched_job_id(sub, cs) == 0
        cs.compiled.add(JobStat(5, 1, 1))
        assert placement.matched_job_id(sub, cs) == 5

    @given(
        st.lists(
            st.fixed_dictionaries({
                "max_jobs": st.integers(0, 4), "load": st.integers(0, 1000),
                "chroot_possible": st.booleans(), "noremote": st.booleans(),
                "platform": st.sampled_from(["x86_64", "aarch64"]),
            }),
            min_size=1, max_size=5,
        ),
        st.lists(st.integers(0, 4), min_size=1, max_size=8),
        st.integers(0, 2**32),
    )  # fmt: skip
    def test_every_assignment_is_eligible_or_own(self, host_specs, submitters, seed):
        """Placement only ever assigns a job to a host eligible now, or to its submitter."""
        state = ClusterState()
        hosts = [add_host(state, f"h{i}", **spec) for i, spec in enumerate(host_specs)]
        for index in submitters:
            add_job(state, hosts[index % len(hosts)])
        rng = random.Random(seed)  # noqa: S311 - seeded on purpose
        for _ in range(len(submitters)):
            assignment = placement.empty_queue(state, rng)
            if assignment is None:
                break
            job, host = assignment.job, assignment.host
            assert host.host_id == job.submitter or placement.eligible_now(state, host, job)
            state.queue.take(job)
            host.jobs.append(job.job_id)


class TestFullClusterShortcut:
    def test_full_cluster_skips_the_queue_scan(self, monkeypatch):
        """With every host at slots + preload, no queued job is examined, and the head waits."""
        state = ClusterState()
        sub = add_host(state, "sub", max_jobs=0)
        for name in ("a", "b"):
            add_host(state, name, max_jobs=4, jobs=list(range(100, 106)))  # 4 + preload 2
        for _ in range(50):
            add_job(state, sub)
        calls = []
        monkeypatch.setattr(placement, "pick_server", lambda *args: calls.append(args))
        assert placement.empty_queue(state, RNG) is None
        assert calls == []

    @given(
        loads=st.lists(st.sampled_from([0, 500, 1000]), min_size=1, max_size=4),
        used=st.lists(st.integers(0, 7), min_size=4, max_size=4),
        jobs=st.integers(1, 6),
        seed=st.integers(0, 3),
    )
    def test_same_decision_as_the_full_scan(self, loads, used, jobs, seed):
        """The shortcut never changes the outcome: it equals scanning every queued job."""

        def build():
            state = ClusterState()
            sub = add_host(state, "sub", max_jobs=1, jobs=list(range(900, 900 + used[0] % 2)))
            for i, load in enumerate(loads):
                add_host(state, f"h{i}", max_jobs=4, load=load,
                         jobs=list(range(100 * (i + 1), 100 * (i + 1) + used[i])))  # fmt: skip
            for _ in range(jobs):
                add_job(state, sub)
            return state

        fast = placement.empty_queue(build(), random.Random(seed))  # noqa: S311
        state = build()
        slow = None
        for job in state.queue:  # the unconditional scan the shortcut may skip
            slow = placement._place(state, job, random.Random(seed))  # noqa: S311
            if slow is not None:
                break
        if slow is None:
            slow = placement.empty_queue(state, random.Random(seed))  # noqa: S311
        describe = lambda a: None if a is None else (a.job.job_id, a.host.nodename)  # noqa: E731
        assert describe(fast) == describe(slow)


class TestReachable:
    """placement.reachable: the guard that keeps IPv6 addresses from IPv4 (maybe 1.4) submitters."""

    def setup_method(self):
        self.state = ClusterState()
        self.four = add_host(self.state, "four", ip="10.0.0.1")
        self.six = add_host(self.state, "six", ip="fd00::2")
        self.loop6 = add_host(self.state, "loop6", ip="::1")
        self.new = add_host(self.state, "new", ip="fd00::1")
        self.link = add_host(self.state, "link", ip="fe80::2%eth0")

    def test_rule(self):
        """IPv6 servers only for IPv6 submitters; ::1 and IPv4 servers for everyone."""
        assert not placement.reachable(self.four, self.six)
        assert placement.reachable(self.new, self.six)
        assert placement.reachable(self.four, self.loop6)
        assert placement.reachable(self.new, self.four)
        assert placement.reachable(self.six, self.six)

    def test_link_local_servers_serve_only_themselves(self):
        """A server known by fe80::…%zone (the scheduler's zone) takes only its own jobs."""
        assert not placement.reachable(self.new, self.link)
        assert not placement.reachable(self.four, self.link)
        assert placement.reachable(self.link, self.link)
        own = add_job(self.state, self.link)
        assert placement.JobFit(self.state, own).usable(self.link)
        other = add_job(self.state, self.new)
        assert not placement.JobFit(self.state, other).usable(self.link)
        assert not placement.eligible_ever(self.state, self.link, other)

    def test_eligibility_and_the_scan_agree(self):
        """eligible_ever, eligible_now and the scan's JobFit all apply the rule."""
        job = add_job(self.state, self.four)
        fit = placement.JobFit(self.state, job)
        assert not placement.eligible_ever(self.state, self.six, job)
        assert not placement.eligible_now(self.state, self.six, job)
        assert not fit.usable(self.six)
        assert fit.usable(self.loop6)
        other = add_job(self.state, self.new)
        assert placement.eligible_now(self.state, self.six, other)
        assert placement.JobFit(self.state, other).usable(self.six)
