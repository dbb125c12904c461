"""``icecc --slots`` / ``iceserv slots`` on namespace clusters with real 1.4 peers (issue 17.4).

One namespace host runs two clusters side by side:

* our scheduler (127.0.0.1:8765) with our daemons nodeA (``-m 2``), nodeB
  (``-m 3``), nodeC (``-m 4 --no-remote``) and a real 1.4 ``iceccd`` nodeR
  (``-m 5``);
* a real 1.4 ``icecc-scheduler`` (127.0.0.1:8775) with our daemon nodeD
  (``-m 2``).

Asked through nodeA, the count is nodeA's, nodeB's and nodeR's slots (10):
nodeC takes no remote jobs.  ``--free`` is 10 on the idle cluster and drops
while a job is held.  Through nodeD, whose scheduler is 1.4, the answer is
nodeD's own 2 with the reason on stderr.  Through nodeR (a 1.4 local
daemon) the client sends nothing and counts the CPUs.  The 1.4 programs must
never see iceserv's message types: nodeR stays logged in to our scheduler
and nodeD to the real one, and neither 1.4 log shows a protocol error.
Each call's wall time is logged (the <= 50 ms target is reported by
``bench/slots.py``, not asserted here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest
from testbed import (
    NetnsBed,
    OurDaemon,
    OurScheduler,
    RealDaemon,
    RealScheduler,
    SchedulerMonitor,
    wait_for,
)
from testbed.procs import make_workdir

from iceserv.protocol import EnvEntry, GetCS, UseCS
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from collections.abc import Iterator

    from testbed import NetnsHost

pytestmark = [pytest.mark.live, pytest.mark.netns]
log = logging.getLogger(__name__)

_REPO: Final = Path(__file__).resolve().parents[2]
_OUR_CLIENT: Final = (
    "#!{python}\nimport sys\nsys.path.insert(0, {repo!r})\n"
    "from iceserv.client.main import main\nsys.exit(main())\n"
)
_LOGIN_TIMEOUT: Final = 60.0
#: 1.4 log lines that would mean it received bytes it could not parse.
_PROTOCOL_ERRORS: Final = ("protocol error", "unknown message", "unknown scheduler type")


@dataclass
class Bed:
    """The running clusters and how to ask them."""

    host: NetnsHost
    workdir: Path
    icecc: str
    node_a: OurDaemon
    node_d: OurDaemon
    node_r: RealDaemon
    real_scheduler: RealScheduler
    monitor: SchedulerMonitor

    def ask(self, daemon: OurDaemon | RealDaemon, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``icecc --slots ARGS`` against *daemon*'s socket; log how long it took."""
        return self.run([self.icecc, "--slots", *args], daemon)

    def run(
        self, argv: list[str], daemon: OurDaemon | RealDaemon
    ) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir),
               "ICECC_TEST_SOCKET": str(daemon.socket_path)}  # fmt: skip
        started = time.monotonic()
        done = self.host.run(argv, env=env, check=False, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        took = time.monotonic() - started
        log.info("%s via %s: %r %r in %.1f ms", argv[1:], daemon.name, done.stdout,
                 done.stderr, took * 1000)  # fmt: skip
        return done


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    """Both clusters, everyone logged in and reporting load."""
    workdir = make_workdir("slots")
    icecc = workdir / "icecc"
    icecc.write_text(_OUR_CLIENT.format(python=sys.executable, repo=str(_REPO)))
    icecc.chmod(0o755)
    try:
        with NetnsBed(1) as netns, contextlib.ExitStack() as stack:
            host = netns[0]
            ours = OurScheduler(host=host, port=8765, loopback_only=False)
            real = RealScheduler(host=host, port=8775)
            for scheduler in (ours, real):
                scheduler.start()
                stack.callback(scheduler.stop)
            # Before the daemons: a monitor hears of STATS only as they come.
            monitor = stack.enter_context(SchedulerMonitor(host, ("127.0.0.1", 8765)))
            ours_at, real_at = "127.0.0.1:8765", "127.0.0.1:8775"
            plans = (
                (OurDaemon, "nodeA", 2, 10245, False, ours_at, ours.netname),
                (OurDaemon, "nodeB", 3, 10246, False, ours_at, ours.netname),
                (OurDaemon, "nodeC", 4, None, True, ours_at, ours.netname),
                (RealDaemon, "nodeR", 5, 10248, False, ours_at, ours.netname),
                (OurDaemon, "nodeD", 2, 10249, False, real_at, real.netname),
            )
            daemons: dict[str, OurDaemon | RealDaemon] = {}
            for cls, name, jobs, port, no_remote, at, netname in plans:
                daemon = cls(name, host=host, max_jobs=jobs, port=port, no_remote=no_remote,
                             scheduler=at, netname=netname)  # fmt: skip
                daemons[name] = daemon.start()
                stack.callback(daemon.stop)
            monitor.wait_online(["nodeA", "nodeB", "nodeC", "nodeR"], _LOGIN_TIMEOUT)
            wait_for(lambda: "nodeD" in real.host_names(), _LOGIN_TIMEOUT, "nodeD at 1.4")
            node_a, node_d, node_r = daemons["nodeA"], daemons["nodeD"], daemons["nodeR"]
            assert isinstance(node_a, OurDaemon)
            assert isinstance(node_d, OurDaemon)
            assert isinstance(node_r, RealDaemon)
            yield Bed(host, workdir, str(icecc), node_a, node_d, node_r, real, monitor)
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False, timeout=60)


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _hold_job(bed: Bed) -> BlockingChannel:
    """Ask nodeA for a compile server as a client would, and keep the job (no JOB_DONE)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(bed.node_a.socket_path))
    channel = BlockingChannel(sock, timeout=10.0)
    channel.send(GetCS(versions=(EnvEntry("x86_64", "slotsenv"),), filename="held.c",
                       target="x86_64", count=1, minimal_host_version=21))  # fmt: skip
    assert isinstance(channel.receive(), UseCS)
    return channel


class TestOurCluster:
    def test_counts_usable_hosts_including_1_4_daemons(self, bed: Bed):
        """nodeA + nodeB + real nodeR = 10; --no-remote nodeC is left out; nothing on stderr."""
        done = bed.ask(bed.node_a)
        assert (done.returncode, done.stdout, done.stderr) == (0, "10\n", "")

    def test_iceserv_slots_says_the_same(self, bed: Bed):
        """``iceserv slots`` prints the same number."""
        done = bed.run([sys.executable, "-m", "iceserv.app.cli", "slots"], bed.node_a)
        assert (done.returncode, done.stdout, done.stderr) == (0, "10\n", "")

    def test_free_drops_while_a_job_is_held(self, bed: Bed):
        """--free: all 10 on the idle cluster, fewer while a job holds a slot, 10 again after."""

        def free() -> int:
            done = bed.ask(bed.node_a, "--free")
            assert done.returncode == 0, done.stderr
            return int(done.stdout)

        wait_for(lambda: free() == 10, 30.0, "10 free slots")
        channel = _hold_job(bed)
        try:
            held = free()
        finally:
            channel.close()
        assert held < 10
        wait_for(lambda: free() == 10, 30.0, "the slot freed again")


class TestOneFourPeers:
    def test_a_1_4_scheduler_gives_the_local_count(self, bed: Bed):
        """nodeD's scheduler is 1.4: nodeD's own 2 slots, and the reason on stderr."""
        done = bed.ask(bed.node_d)
        assert (done.returncode, done.stdout) == (0, "2\n")
        assert done.stderr == (
            "icecc: the scheduler is icecream 1.4; counting this host's slots only\n"
        )

    def test_a_1_4_local_daemon_is_sent_nothing(self, bed: Bed):
        """Through a real iceccd: the CPU count, the reason on stderr."""
        done = bed.ask(bed.node_r, "--free")
        assert (done.returncode, done.stdout) == (0, f"{_cpus()}\n")
        assert done.stderr.startswith("icecc: the local daemon is not iceserv")

    def test_1_4_programs_saw_nothing_they_cannot_parse(self, bed: Bed):
        """After all the questions, nodeR and nodeD are still logged in; no 1.4 protocol error."""
        for args in ((), ("--free",)):
            assert bed.ask(bed.node_a, *args).returncode == 0
            assert bed.ask(bed.node_d, *args).returncode == 0
            assert bed.ask(bed.node_r, *args).returncode == 0
        assert "nodeR" in bed.monitor.online()
        assert "nodeD" in bed.real_scheduler.host_names()
        for path in (bed.node_r.log_path, bed.real_scheduler.log_path):
            text = path.read_text(errors="replace").lower()
            assert not [e for e in _PROTOCOL_ERRORS if e in text], path
