"""Tests of iceserv.sim.real: the simulator really drives iceserv's scheduler core."""

from __future__ import annotations

import pytest
from sim.helpers import ENV, job, quiet_cluster

from iceserv.scheduler import placement as scheduler_placement
from iceserv.sim import HostSpec, SimInputError, Simulation
from iceserv.sim.real import RealPlacement, host_ip


class TestRealPlacement:
    def test_placement_goes_through_the_scheduler_core(self, monkeypatch):
        """Every placement decision comes from iceserv.scheduler.placement.empty_queue."""
        calls = []
        real = scheduler_placement.empty_queue

        def spy(state, rng):
            calls.append(len(state.queue))
            return real(state, rng)

        monkeypatch.setattr(scheduler_placement, "empty_queue", spy)
        cluster = quiet_cluster(HostSpec("a", 1.0, 1, envs=(ENV,)))
        placement = RealPlacement(seed=1)
        Simulation([job(0, 1.0) for _ in range(4)], cluster, placement).run()
        assert len(calls) >= 4
        assert max(calls) == 2  # jobs 3 and 4 queued behind the slot and the preload slot

    def test_statistics_reach_the_core(self):
        """JOB_BEGIN and JOB_DONE reach the core: jobs are gone, the host is rated."""
        cluster = quiet_cluster(HostSpec("a", 1.0, 2, envs=(ENV,)))
        placement = RealPlacement(seed=1)
        Simulation([job(0, 1.0), job(1, 1.0)], cluster, placement).run()
        state = placement._core.state
        assert not state.jobs
        (host,) = [h for h in state.hosts.values() if h.nodename == "a"]
        assert len(host.compiled) == 2
        assert host.load == 0

    def test_message_before_login(self):
        """A daemon that never logged in cannot send anything."""
        with pytest.raises(SimInputError, match="before logging in"):
            RealPlacement(seed=1).stats("ghost", 0, 0.0)

    def test_addresses_are_documentation_ranges(self):
        """Simulated hosts get distinct addresses from the documentation ranges."""
        ips = {host_ip(i) for i in range(300)}
        assert len(ips) == 300
        assert all(ip.startswith(("192.0.2.", "198.51.100.")) for ip in ips)
