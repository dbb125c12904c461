"""Tests of iceserv.sim.engine: hand-checkable replays under both placements."""

from __future__ import annotations

import pytest
from sim.helpers import ENV, job, quiet_cluster

from iceserv.sim import PLACEMENTS, ClusterSpec, HostSpec, Simulation, SimulationError, replay
from iceserv.sim.real import RealPlacement

BOTH = list(PLACEMENTS)


@pytest.mark.parametrize("placement", BOTH)
class TestOneHost:
    def test_one_job_takes_its_cpu_time(self, placement):
        """On a host of speed 1 a job of 2 CPU seconds runs 2 s; its own submitter compiles it."""
        cluster = quiet_cluster(HostSpec("solo", 1.0, 1))
        (run,) = replay([job(0, 2.0, submitter="solo")], cluster, placement=placement).runs
        assert (run.server, run.submit, run.start, run.end, run.done) == ("solo", 0, 0, 2, 2)

    def test_one_slot_runs_jobs_one_after_the_other(self, placement):
        """Three jobs at once on one slot finish at 2, 4 and 6 s; they waited 0, 2 and 4 s."""
        cluster = quiet_cluster(HostSpec("solo", 1.0, 1))
        trace = [job(0, 2.0, submitter="solo") for _ in range(3)]
        runs = replay(trace, cluster, placement=placement).runs
        assert sorted(r.end for r in runs) == [2, 4, 6]
        assert sorted(r.wait for r in runs) == [0, 2, 4]

    def test_speed_scales_compile_time(self, placement):
        """A host twice as fast as the recording machine needs half the CPU time."""
        cluster = quiet_cluster(HostSpec("solo", 2.0, 1))
        (run,) = replay([job(0, 3.0, submitter="solo")], cluster, placement=placement).runs
        assert run.end - run.start == 1.5


@pytest.mark.parametrize("placement", BOTH)
class TestTwoSpeeds:
    def test_faster_host_wins_once_both_are_rated(self, placement):
        """Each host compiles once to be rated; from then on the faster one gets every job.

        Jobs come 10 s apart from a machine without slots, so nothing queues:
        job 1 goes to a random host, job 2 to the one never tried, and jobs
        3-5 to the host of speed 2, in cpu / 2 = 2 s each.
        """
        cluster = quiet_cluster(HostSpec("slow", 1.0, 1, envs=(ENV,)),
                                HostSpec("fast", 2.0, 1, envs=(ENV,)))  # fmt: skip
        trace = [job(10.0 * i, 4.0) for i in range(5)]
        runs = replay(trace, cluster, placement=placement).runs
        assert {runs[0].server, runs[1].server} == {"slow", "fast"}
        assert [r.server for r in runs[2:]] == ["fast"] * 3
        assert [r.end - r.start for r in runs[2:]] == [2.0] * 3
        assert runs[-1].done == 42.0

    def test_environment_shipped_once_per_host(self, placement):
        """A host without the environment gets the tarball with its first job only."""
        cluster = ClusterSpec((HostSpec("a", 1.0, 2),), latency=0.0, wire_ratio=0.0,
                              env_size=125_000_000, install_seconds=1.0)  # fmt: skip
        result = replay([job(0, 1.0), job(5, 1.0)], cluster, placement=placement)
        assert [(i.host, i.start, i.end) for i in result.installs] == [("a", 0.0, 2.0)]
        assert [r.start for r in result.runs] == [2.0, 5.0]


class TestNewHostJoins:
    """A fast host joins a cluster whose only host has the environment (1.4's quirk)."""

    cluster = quiet_cluster(HostSpec("old", 1.0, 2, envs=(ENV,)), HostSpec("new", 2.0, 2, join=50))
    trace = tuple(job(5.0 * i, 2.0) for i in range(20))

    def test_iceserv_tries_the_new_host(self):
        """iceserv picks a never-picked host as soon as it reported its load (join + 3 s)."""
        runs = replay(self.trace, self.cluster, placement="iceserv").runs
        on_new = [r for r in runs if r.server == "new"]
        assert on_new
        assert on_new[0].placed == 55.0  # the first job after its STATS at 53 s

    def test_1_4_never_does(self):
        """1.4 keeps the host that has the environment: the new one is only "best uninstalled"."""
        runs = replay(self.trace, self.cluster, placement="1.4").runs
        assert {r.server for r in runs} == {"old"}


class TestDeterminism:
    @pytest.mark.parametrize("placement", BOTH)
    def test_same_seed_same_result(self, placement):
        """Two replays with the same seed are identical, job by job."""
        cluster = ClusterSpec(tuple(HostSpec(f"h{i}", 1.0 + i / 3, 1 + i % 3) for i in range(5)))
        trace = [job(0.3 * i, 0.5 + (i * 7 % 5) / 2, submitter=f"dev{i % 2}") for i in range(60)]
        first = replay(trace, cluster, placement=placement, seed=7, make_jobs=4)
        second = replay(trace, cluster, placement=placement, seed=7, make_jobs=4)
        assert first == second


class TestMakeJobs:
    def test_one_job_in_flight(self):
        """With make -j1 each job is submitted when the previous result is back."""
        cluster = quiet_cluster(HostSpec("a", 1.0, 4, envs=(ENV,)))
        runs = replay([job(0, 1.0), job(0, 2.0), job(0, 3.0)], cluster,
                      placement="iceserv", make_jobs=1).runs  # fmt: skip
        assert [(r.submit, r.done) for r in runs] == [(0, 1), (1, 3), (3, 6)]

    def test_must_be_positive(self):
        """make_jobs 0 makes no sense."""
        with pytest.raises(ValueError, match="at least 1"):
            Simulation([job(0, 1)], quiet_cluster(HostSpec("a")), RealPlacement(1), make_jobs=0)


class TestStuck:
    def test_never_finished_jobs_are_an_error(self):
        """A placement that never answers makes the simulation fail, not hang."""

        class Silent(RealPlacement):
            def get_cs(self, *_args, **_kwargs):
                return []

        with pytest.raises(SimulationError, match="never finished"):
            Simulation([job(0, 1)], quiet_cluster(HostSpec("a")), Silent(1)).run()
