"""Under ``auth = prefer`` with the real icecream 1.4 scheduler (issue 14 item 6).

Item 2 wins over "every combination builds": a keyed iceserv daemon never
logs in to a scheduler that cannot prove the network key (else a rogue 1.4
scheduler could capture it), so the cluster still builds, but not through it:

* h1: the real ``icecc-scheduler`` and a real 1.4 ``iceccd`` (one slot);
* h2: our keyless daemon (``auth = off``): it logs in and takes jobs;
* h3: our keyed daemon under ``prefer``: it names the 1.4 scheduler in one
  warning (``scheduler_unproven``) and is never listed.

A small real C project (zstd units) is built twice: with the real ``icecc``
through the real ``iceccd`` (every job through the 1.4 scheduler, some of
them on our keyless daemon), and with our ``icecc`` through the keyed daemon
(the scheduler hears of no job: every unit compiles on h3).  Both give
objects identical to a local gcc build.  Every wait is bounded.
"""

# ruff: noqa: F811 - keys is test_auth_live's fixture, taken as a parameter
from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Final

import pytest
from integration.test_auth_live import _auth_args, keys  # noqa: F401 - keys is a fixture
from testbed import ClientPlan, Cluster, DaemonPlan, NetnsBed, OurDaemon, RealScheduler
from testbed.errors import WaitTimeoutError
from testbed.project import (
    build_reference,
    fetch_sdist,
    library_units,
    restrict,
    unpack_project,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.live, pytest.mark.netns]

UNITS: Final = library_units(
        "common/debug", "common/entropy_common", "common/error_private", "common/xxhash",
        "common/zstd_common", "compress/hist", "compress/zstd_compress_literals",
        "decompress/zstd_ddict",
)  # fmt: skip
_REFUSAL: Final = "cannot prove the network key (icecream 1.4?); not logging in (auth = prefer)"


def test_a_keyed_prefer_daemon_under_a_real_14_scheduler(keys: dict[str, Path], tmp_path):
    """1.4's jobs go through the 1.4 scheduler; the keyed daemon refuses it and builds locally."""
    project = restrict(unpack_project(fetch_sdist(), tmp_path / "zstd"), UNITS)
    reference = build_reference(project)
    plans = (DaemonPlan("real", max_jobs=1), DaemonPlan("ours", max_jobs=4), None)
    with NetnsBed(3) as bed, Cluster(bed, "real", plans) as cluster:
        scheduler = cluster.scheduler
        assert isinstance(scheduler, RealScheduler)
        keyed = OurDaemon("h3-keyed", host=bed[2], max_jobs=2, netname=cluster.netname,
                          native_compilers="",
                          extra_args=_auth_args(keys["good"], "prefer")).start()  # fmt: skip
        cluster.daemons[2] = keyed  # stopped with the cluster; its socket serves the h3 build
        cluster.daemon_plans = (*plans[:2], DaemonPlan("ours"))

        # The keyed daemon names the 1.4 scheduler it refuses, once.
        (refusal,) = keyed.wait_events("scheduler_unproven", 1, timeout=30)[:1]
        assert refusal["address"] == f"{bed[0].ip}:8765"
        assert refusal["message"] == f"scheduler {bed[0].ip}:8765 {_REFUSAL}"
        assert refusal["level"] == "warning"

        # The real client through the real iceccd: every job through the 1.4 scheduler,
        # some compiled remotely by our keyless daemon.
        running = cluster.start_build(project, reference, ClientPlan("real"), on=0, jobs=4)
        real = running.finish()
        # Our daemon reports a job to the scheduler after answering its client: its
        # JOB_BEGIN may reach the monitor after make exited.  Wait for every unit's.
        monitor = cluster.monitor
        assert monitor is not None
        with contextlib.suppress(WaitTimeoutError):  # the assertion below says what is missing
            monitor.wait_settled(running.mark, 20, jobs=len(UNITS))
        real = dataclasses.replace(real, placement=monitor.placement(since=running.mark))
        problems = real.problems(on=("h2-ours",))
        assert not problems, "\n- ".join([real.summary(), *problems]) + cluster.log_tails()

        # Our client through the keyed daemon: no scheduler to ask, so every unit compiles
        # on h3, and the 1.4 scheduler hears of no job.
        ours = cluster.build(project, reference, ClientPlan("ours"), on=2, jobs=4)
        assert ours.returncode == 0, ours.output[-3000:] + cluster.log_tails()
        assert (ours.different, ours.missing) == ((), ()), ours.summary()
        assert (ours.placement.requested, ours.placement.total) == (0, 0), ours.summary()
        done = keyed.wait_events("job_finished", len(UNITS))
        assert [(e["where"], e["exitcode"]) for e in done] == [("client", 0)] * len(UNITS)

        # Never listed, never logged in, and named in one warning only.
        assert keyed.alive()
        assert "h3-keyed" not in scheduler.host_names()
        assert not keyed.events("scheduler_logged_in")
        assert not keyed.events("scheduler_authenticated")
        told = keyed.events("scheduler_unproven")
        assert [e["level"] for e in told].count("warning") == 1, told
        assert sorted(scheduler.host_names()) == ["h1-real", "h2-ours"]
