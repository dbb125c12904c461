"""Why a queued job waits: each daemon's reason, in placement's order of rules."""

from __future__ import annotations

from scheduler.builders import T0, add_host, add_job

from iceserv.scheduler.state import ClusterState
from iceserv.scheduler.waiting import reasons


class TestReasons:
    def test_each_rule_names_itself(self):
        """Every daemon gets the first rule that keeps it from the job, or that it could take it."""
        state = ClusterState()
        sub = add_host(state, "sub", max_jobs=0)
        add_host(state, "remote-off", noremote=True)
        add_host(state, "no-chroot", chroot_possible=False)
        add_host(state, "arm", platform="aarch64")
        add_host(state, "old", version=30)
        add_host(state, "installing", busy_installing_since=T0 - 7)
        add_host(state, "fresh", load=1000)
        full = add_host(state, "full", max_jobs=1)
        full.jobs.extend([91, 92])
        add_host(state, "free")
        job = add_job(state, sub, minimal_host_version=35)
        assert dict(reasons(state, job, T0)) == {
            "sub": "has no job slots (-m 0)",
            "remote-off": "takes no remote jobs (--no-remote)",
            "no-chroot": "cannot chroot, so takes only its own jobs",
            "arm": "runs aarch64, no environment of the job fits (or it is blacklisted)",
            "old": "speaks protocol 30, the job needs 35",
            "installing": "is busy installing an environment (since 7 s)",
            "fresh": "reports full load (1000; before its first STATS too)",
            "full": "has all its slots busy (2 jobs for 1 slots)",
            "free": "could take it (placed with the next event)",
        }

    def test_preferred_host_and_drain(self):
        """A job for one preferred host names it; a drained daemon says so."""
        state = ClusterState()
        sub = add_host(state, "sub", max_jobs=0)
        add_host(state, "other")
        state.drained.append("other")
        assert dict(reasons(state, add_job(state, sub), T0))["other"] == "is drained"
        job = add_job(state, sub, preferred_host="elsewhere")
        assert dict(reasons(state, job, T0))["other"] == "not the preferred host elsewhere"
