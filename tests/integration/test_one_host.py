"""A whole cluster on one host: scheduler and two daemons on 127.0.0.1 (issue 13.3).

The setup of issue 13, in a one-host ``NetnsBed`` (its own loopback, so the
default ports are free): a scheduler on 127.0.0.1:8765, ``nodeA -m 0`` (the
client's daemon, port 10245) and ``nodeB -m 3`` (port 10246), both with
``-s 127.0.0.1:8765``, then three sequential ``icecc gcc -c`` of one real
zstd unit through nodeA.  Every daemon logs in from 127.0.0.1, so the
scheduler's USE_CS for nodeB names 127.0.0.1, which every client reads as
"compile it yourself": iceserv then hung for 70 s and left nodeB "busy
installing" (1.4 kicks nodeA off the scheduler and compiles locally after
the first job).  Each combination must compile all three on nodeB (its own
log says so, and the scheduler's monitor), byte-identical to a local gcc
build, the second and third without an environment transfer, and leave no
host busy installing.  Combinations: everything ours with our client (the
issue's), the real scheduler with our daemons (our daemon names nodeB
``localhost`` to the client), our scheduler with real daemons (our scheduler
does), each with the real client.  Nothing pokes the real programs: they
find each other as a user's would.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest
from testbed import (
    IdleCpuHost,
    NetnsBed,
    OurDaemon,
    OurScheduler,
    RealDaemon,
    RealScheduler,
    SchedulerMonitor,
    fetch_sdist,
    freeze_proc_stat,
    unpack_project,
)
from testbed.faults import telnet_listcs
from testbed.procs import make_workdir
from testbed.project import CFLAGS, CPPFLAGS, build_env

if TYPE_CHECKING:
    from collections.abc import Iterator

    from testbed import Project

pytestmark = [pytest.mark.live, pytest.mark.netns]
log = logging.getLogger(__name__)

UNIT: Final = "lib/common/entropy_common.c"
SCHEDULER: Final = "127.0.0.1:8765"
_REPO: Final = Path(__file__).resolve().parents[2]
_OUR_CLIENT: Final = (
    "#!{python}\nimport sys\nsys.path.insert(0, {repo!r})\n"
    "from iceserv.client.main import main\nsys.exit(main())\n"
)
#: After the first job (native environment, transfer, install) a job takes well under a
#: second; a hang, or a fallback after ICECC_SERVER_WAIT (10 s), takes longer.
_LATER_JOB_LIMIT: Final = 8.0
_LOGIN_TIMEOUT: Final = 30.0

COMBINATIONS: Final = [
    pytest.param("ours", "ours", "ours", id="all-ours"),
    pytest.param("real", "ours", "real", id="real-scheduler-our-daemons-real-client"),
    pytest.param("ours", "real", "real", id="our-scheduler-real-daemons-real-client"),
]


@pytest.fixture
def bed() -> Iterator[NetnsBed]:
    """One host with its own loopback."""
    with NetnsBed(1) as made:
        yield made


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """The zstd tree (no reference build: the reference is one local gcc run here)."""
    return unpack_project(fetch_sdist(), tmp_path / "zstd")


def _served_on(daemon: RealDaemon | OurDaemon) -> int:
    """Jobs the daemon says it compiled for a remote client (its own log)."""
    if isinstance(daemon, RealDaemon):
        return daemon.log_path.read_text(errors="replace").count("remote compile for file")
    return sum(1 for e in daemon.events("job_finished") if e.get("where") == "server")


def _client(workdir: Path, kind: str) -> str:
    if kind == "real":
        return "/usr/bin/icecc"
    launcher = workdir / "icecc"
    launcher.write_text(_OUR_CLIENT.format(python=sys.executable, repo=str(_REPO)))
    launcher.chmod(0o755)
    return str(launcher)


@pytest.mark.parametrize(("scheduler_kind", "daemon_kind", "client_kind"), COMBINATIONS)
def test_one_host_cluster_compiles_on_the_other_daemon(
    bed: NetnsBed, project: Project, scheduler_kind: str, daemon_kind: str, client_kind: str
) -> None:
    """Three sequential compiles through nodeA all run on nodeB, quickly after the first."""
    host = bed[0]
    workdir = make_workdir("onehost")
    output = "obj/unit.o"
    argv = ["gcc", *CPPFLAGS.split(), *CFLAGS.split(), "-c", UNIT, "-o", output]
    (project.root / "obj").mkdir()
    subprocess.run(argv, cwd=project.root, env=build_env(), check=True, timeout=120)
    reference = (project.root / output).read_bytes()
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: subprocess.run(["rm", "-rf", str(workdir)], check=False))
        if scheduler_kind == "real":
            scheduler: RealScheduler | OurScheduler = RealScheduler(host=host, port=8765)
        else:
            scheduler = OurScheduler(host=host, port=8765, loopback_only=False)
        scheduler.start()
        stack.callback(scheduler.stop)
        monitor = stack.enter_context(SchedulerMonitor(host, ("127.0.0.1", 8765)))
        daemon_class = RealDaemon if daemon_kind == "real" else OurDaemon
        daemons = []
        for name, max_jobs, port in (("nodeA", 0, 10245), ("nodeB", 3, 10246)):
            idle = IdleCpuHost(host, freeze_proc_stat(workdir / f"stat-{name}"))
            daemon = daemon_class(name, host=idle, max_jobs=max_jobs, port=port,
                                  scheduler=SCHEDULER, netname=scheduler.netname)  # fmt: skip
            daemons.append(daemon.start())
            stack.callback(daemon.stop)
        node_a, node_b = daemons

        def tails() -> str:
            return "\n".join(p.log_tail() for p in (scheduler, node_a, node_b))

        monitor.wait_online(["nodeA", "nodeB"], _LOGIN_TIMEOUT, context=tails)
        env = build_env({"ICECC_TEST_SOCKET": str(node_a.socket_path), "HOME": str(workdir),
                         "ICECC_DEBUG": "debug",
                         "ICECC_LOGFILE": str(workdir / "client.log")})  # fmt: skip
        icecc = _client(workdir, client_kind)
        took = []
        for attempt in range(3):
            (project.root / output).unlink()
            started = time.monotonic()
            done = host.run([icecc, *argv], cwd=project.root, env=env, check=False,
                            capture_output=True, timeout=120)  # fmt: skip
            took.append(time.monotonic() - started)
            client_log = (workdir / "client.log").read_text(errors="replace")[-3000:]
            assert done.returncode == 0, f"{done.stderr!r}\n{client_log}\n{tails()}"
            assert (project.root / output).read_bytes() == reference, attempt
        log.info("one host, %s: compiles took %s s", scheduler_kind,
                 [round(t, 2) for t in took])  # fmt: skip
        assert max(took[1:]) < _LATER_JOB_LIMIT, f"{took}\n{client_log}\n{tails()}"
        monitor.wait_settled(0, 20.0)
        placement = monitor.placement()
        assert placement.began == {"nodeB": 3}, f"{placement}\n{tails()}"
        assert not placement.local, f"{placement}\n{tails()}"
        assert _served_on(node_b) == 3, tails()
        listed = (scheduler.listcs() if isinstance(scheduler, RealScheduler)
                  else telnet_listcs(host, ("127.0.0.1", 8766)))  # fmt: skip
        assert {h.name: h.extra for h in listed} == {"nodeA": "", "nodeB": ""}, tails()
