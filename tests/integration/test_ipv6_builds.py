"""A dual-stack cluster with IPv4-only 1.4 and IPv6-only iceserv peers builds a real C project.

One namespace bed, five hosts, every daemon's jobs checked by the monitor:

* h1: our scheduler, dual-stack (its IPv4 address and ``fd18::1``);
* h2: a real icecream 1.4 ``iceccd -m 0``, IPv4 only (``-s`` the scheduler's IPv4);
* h3: our daemon ``six``, ``--family ipv6 -i eth0``: reachable over IPv6 only;
* h4: our daemon ``dual``, logged in over IPv6 (``-s '[fd18::1]:8765'``) on a
  host with both families: before HOST_ADDRESSES it was out of reach of
  every IPv4 submitter; now it serves them by its IPv4 address;
* h5: our daemon ``front`` (``-m 0``), logged in over IPv6, dual-stack host.

Six units of zstd's C library, built with the real 1.4 ``icecc`` through h2,
all run on ``dual`` (never on ``six``, which the 1.4 client cannot reach) and
equal a local gcc build; the scheduler logs ``hosts_skipped`` with the reason.
Then the real 1.4 ``icecc`` behind ``front`` asks for ``six`` by name
(``ICECC_PREFERRED_HOST``): the scheduler names six's IPv6 address to
``front`` (its host reaches IPv6), and ``front``, whose client did not come
through the iceserv endpoint, has it compile locally instead of forwarding an
address 1.4 cannot parse; our client, asking the same, runs on ``six``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest
from testbed import (
    IdleCpuHost,
    NetnsBed,
    OurDaemon,
    OurScheduler,
    RealDaemon,
    SchedulerMonitor,
    freeze_proc_stat,
    wait_for,
)
from testbed.procs import make_workdir
from testbed.project import (
    Project,
    build_env,
    build_reference,
    fetch_sdist,
    library_units,
    restrict,
    unpack_project,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from testbed.netns import NetnsHost

pytestmark = [pytest.mark.live, pytest.mark.netns]

UNITS: Final = library_units(
        "common/debug", "common/entropy_common", "common/error_private", "common/xxhash",
        "compress/hist", "decompress/zstd_ddict",
)  # fmt: skip
_LOGIN_TIMEOUT: Final = 45.0
_BUILD_TIMEOUT: Final = 300
_SOURCE: Final = """\
#include <stdio.h>
static int cube(int x) { return x * x * x; }
int main(void) { printf("%d\\n", cube(3)); return 0; }
"""
_OUR_CLIENT: Final = (
    "#!{python}\nimport sys\nsys.path.insert(0, {repo!r})\n"
    "from iceserv.client.main import main\nsys.exit(main())\n"
)
_REPO: Final = Path(__file__).resolve().parents[2]


def test_dual_stack_cluster_with_ipv4_and_ipv6_only_peers() -> None:
    """The project builds on ``dual`` only; a 1.4 client is never handed an IPv6 server."""
    workdir = make_workdir("ipv6b")
    try:
        project = restrict(unpack_project(fetch_sdist(), workdir / "zstd"), UNITS)
        reference = build_reference(project)
        project.clean()
        with NetnsBed(5) as bed, contextlib.ExitStack() as stack:
            _run(bed, workdir, stack, project, reference)
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False, timeout=60)


def _idle(host: object, workdir: Path, name: str) -> IdleCpuHost:
    return IdleCpuHost(host, freeze_proc_stat(workdir / f"stat-{name}"))  # type: ignore[arg-type]


def _run(bed: NetnsBed, workdir: Path, stack: contextlib.ExitStack,
         project: Project, reference: dict[str, bytes]) -> None:  # fmt: skip
    h1, h2, h3, h4, h5 = bed
    for number, host in ((1, h1), (3, h3), (4, h4), (5, h5)):
        host.add_address(f"fd18::{number}", 64)
    scheduler = OurScheduler(host=h1, port=8765, loopback_only=False).start()
    stack.callback(scheduler.stop)
    monitor = stack.enter_context(SchedulerMonitor(h1, ("127.0.0.1", 8765)))
    netname = scheduler.netname
    over_six = "[fd18::1]:8765"
    real = RealDaemon("real4", host=_idle(h2, workdir, "real4"), max_jobs=0, port=10245,
                      scheduler=f"{h1.ip}:8765", netname=netname).start()  # fmt: skip
    stack.callback(real.stop)
    six = OurDaemon("six", host=_idle(h3, workdir, "six"), max_jobs=2, port=10245,
                    scheduler=over_six, netname=netname,
                    extra_args=["--family", "ipv6", "-i", "eth0"]).start()  # fmt: skip
    stack.callback(six.stop)
    dual = OurDaemon("dual", host=_idle(h4, workdir, "dual"), max_jobs=2, port=10245,
                     scheduler=over_six, netname=netname).start()  # fmt: skip
    stack.callback(dual.stop)
    front = OurDaemon("front", host=_idle(h5, workdir, "front"), max_jobs=0, port=10245,
                      scheduler=over_six, netname=netname).start()  # fmt: skip
    stack.callback(front.stop)
    programs = (scheduler, real, six, dual, front)

    def tails() -> str:
        return "\n".join(p.log_tail() for p in programs)

    monitor.wait_online(["real4", "six", "dual", "front"], _LOGIN_TIMEOUT, context=tails)
    for daemon in (six, dual, front):
        (login,) = daemon.wait_events("scheduler_logged_in", 1)[:1]
        assert login["connected_to"] == over_six, tails()

    # 1. The real 1.4 client over IPv4 builds the project: only "dual" (by its IPv4 address).
    env = build_env({"ICECC_TEST_SOCKET": str(real.socket_path), "HOME": str(workdir)})
    done = h2.run(project.make_argv("/usr/bin/icecc gcc", 4), cwd=project.root, env=env,
                  check=False, capture_output=True, timeout=_BUILD_TIMEOUT)  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]!r}\n{tails()}"
    different, missing = project.compare(reference)
    assert (different, missing) == ([], []), tails()
    monitor.wait_settled(0, 30.0, jobs=len(UNITS))
    placement = monitor.placement()
    assert placement.began == {"dual": len(UNITS)}, f"{placement}\n{tails()}"
    assert not placement.failed, f"{placement}\n{tails()}"
    skipped = [e for e in scheduler.events("hosts_skipped") if e["submitter"] == "real4"]
    assert len(skipped) == 1, tails()
    (reason,) = [r for r in skipped[0]["reasons"] if r.startswith("six: ")]
    assert reason == (
        "six: is known only by the IPv6 address fd18::3 and the submitter logged in over IPv4"
        " (icecream 1.4 clients cannot reach IPv6)"
    ), skipped
    assert not any(r.startswith("dual: ") for r in skipped[0]["reasons"]), skipped

    _behind_front(h5, workdir / "cube", front, six, tails)


def _behind_front(h5: NetnsHost, work: Path, front: OurDaemon, six: OurDaemon,
                  tails: Callable[[], str]) -> None:  # fmt: skip
    """A real 1.4 client behind "front" (logged in over IPv6) asks for the IPv6-only "six"."""
    work.mkdir()
    (work / "cube.c").write_text(_SOURCE)
    argv = ["gcc", "-O2", "-c", "cube.c", "-o"]
    h5.run([*argv, "local.o"], cwd=work, env=build_env(), timeout=120)
    env = build_env({"ICECC_TEST_SOCKET": str(front.socket_path), "HOME": str(work),
                     "ICECC_PREFERRED_HOST": "six"})  # fmt: skip
    done = h5.run(["/usr/bin/icecc", *argv, "real.o"], cwd=work, env=env, check=False,
                  capture_output=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, f"{done.stderr!r}\n{tails()}"
    assert (work / "real.o").read_bytes() == (work / "local.o").read_bytes()
    (unusable,) = front.wait_events("compile_server_unusable", 1)
    assert unusable["server"] == "[fd18::3]:10245", tails()
    assert not front.events("compile_server_assigned"), tails()
    # Our client, asking the same, came through the endpoint: it is told six's IPv6 address.
    launcher = work / "icecc"
    launcher.write_text(_OUR_CLIENT.format(python=sys.executable, repo=str(_REPO)))
    launcher.chmod(0o755)
    done = h5.run([str(launcher), *argv, "ours.o"], cwd=work, env=env, check=False,
                  capture_output=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, f"{done.stderr!r}\n{tails()}"
    assert (work / "ours.o").read_bytes() == (work / "local.o").read_bytes()
    (assigned,) = front.wait_events("compile_server_assigned", 1)
    assert assigned["server"] == "[fd18::3]:10245", tails()
    wait_for(lambda: [e for e in six.events("job_finished") if e.get("where") == "server"],
             20.0, "six's job record", context=tails)  # fmt: skip
