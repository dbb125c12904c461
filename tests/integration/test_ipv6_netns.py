"""The 1.4 floor on a namespace bed: an IPv4 1.4 client's jobs never go to an IPv6-only daemon.

Four hosts: our scheduler on h1 (dual-stack, the default), a real icecream
1.4 ``iceccd -m 0`` on h2 that reaches it over IPv4, our daemon on h3 with
``--family ipv6 -i eth0 -s '[fd15::1]:8765'`` (it listens on eth0's IPv6
addresses and ::1 and connects on IPv6 only, a ULA address beside the bed's
IPv4 one), and our daemon on h4 over IPv4.
All three are listed (h3 as ``[fd15::3]:10245``), also by a real
icecream-sundae over IPv4 (MON_STATS tells it ``IP:fd15::3`` as text).  Three compiles by the real
1.4 ``icecc`` through h2 all run on h4: the scheduler never names h3's IPv6
address to a submitter that logged in over IPv4, which a 1.4 client could
neither parse nor reach, and each object equals a local build.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import pytest
from testbed import (
    IdleCpuHost,
    NetnsBed,
    OurDaemon,
    OurScheduler,
    RealDaemon,
    RealSundae,
    SchedulerMonitor,
    freeze_proc_stat,
    wait_for,
)
from testbed.faults import telnet_listcs
from testbed.procs import make_workdir
from testbed.project import (
    build_env,
    build_reference,
    fetch_sdist,
    library_units,
    restrict,
    unpack_project,
)

pytestmark = [pytest.mark.live, pytest.mark.netns]

_SOURCE: Final = """\
#include <stdio.h>
static int cube(int x) { return x * x * x; }
int main(void) { printf("%d\\n", cube(3)); return 0; }
"""
_LOGIN_TIMEOUT: Final = 45.0
_SCHEDULER_V6: Final = "fd15::1"
_SERVER_V6: Final = "fd15::3"
#: The units of zstd's C library the IPv6-only cluster builds.
_UNITS: Final = library_units(
        "common/debug", "common/entropy_common", "common/error_private", "common/xxhash",
        "compress/hist", "decompress/zstd_ddict",
)  # fmt: skip


def test_ipv4_client_jobs_skip_the_ipv6_only_daemon() -> None:
    """Jobs of a real 1.4 client over IPv4 go to the IPv4 daemon, never the IPv6-only one."""
    workdir = make_workdir("ipv6ns")
    try:
        with NetnsBed(4) as bed, contextlib.ExitStack() as stack:
            _run(bed, workdir, stack)
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False, timeout=60)


def _idle(host: object, workdir: Path, name: str) -> IdleCpuHost:
    return IdleCpuHost(host, freeze_proc_stat(workdir / f"stat-{name}"))  # type: ignore[arg-type]


def _run(bed: NetnsBed, workdir: Path, stack: contextlib.ExitStack) -> None:
    h1, h2, h3, h4 = bed
    h1.add_address(_SCHEDULER_V6, 64)
    h3.add_address(_SERVER_V6, 64)
    scheduler = OurScheduler(host=h1, port=8765, loopback_only=False).start()
    stack.callback(scheduler.stop)
    monitor = stack.enter_context(SchedulerMonitor(h1, ("127.0.0.1", 8765)))
    netname = scheduler.netname
    real = RealDaemon("real4", host=_idle(h2, workdir, "real4"), max_jobs=0, port=10245,
                      scheduler=f"{h1.ip}:8765", netname=netname).start()  # fmt: skip
    stack.callback(real.stop)
    six = OurDaemon("six", host=_idle(h3, workdir, "six"), max_jobs=2, port=10245,
                    scheduler=f"[{_SCHEDULER_V6}]:8765", netname=netname,
                    extra_args=["--family", "ipv6", "-i", "eth0"]).start()  # fmt: skip
    stack.callback(six.stop)
    four = OurDaemon("four", host=_idle(h4, workdir, "four"), max_jobs=2, port=10245,
                     scheduler=f"{h1.ip}:8765", netname=netname).start()  # fmt: skip
    stack.callback(four.stop)

    def tails() -> str:
        return "\n".join(p.log_tail() for p in (scheduler, real, six, four))

    monitor.wait_online(["real4", "six", "four"], _LOGIN_TIMEOUT, context=tails)
    listed = {h.name: (h.ip, h.port) for h in telnet_listcs(h1, (_SCHEDULER_V6, 8766))}
    assert listed == {"real4": (h2.ip, 10245), "six": (_SERVER_V6, 10245),
                      "four": (h4.ip, 10245)}, tails()  # fmt: skip
    (login,) = six.wait_events("scheduler_logged_in", 1)[:1]
    assert login["own_ip"] == _SERVER_V6, tails()
    # A 1.4 monitor over IPv4 is told "IP:fd15::3" in MON_STATS (display text) and copes.
    with RealSundae(host=h1, scheduler="127.0.0.1:8765") as sundae:
        for name in ("six", "four", "real4"):
            sundae.wait_for_text(name, timeout=20)
        assert sundae.check_alive(), sundae.log_tail()
    # -i eth0 --family ipv6: eth0's IPv6 addresses (the link-local one with its zone) and ::1.
    (started,) = six.events("daemon_started")
    listen = started["listen"]
    assert listen[0] == f"[{_SERVER_V6}]:10245", listen
    assert listen[-1] == "[::1]:10245", listen
    link_local = [a for a in listen if a.startswith("[fe80:")]
    assert link_local, listen
    assert all("%eth0]" in a for a in link_local), listen
    assert not [a for a in listen if not a.startswith("[")], listen  # no IPv4

    source = workdir / "cube.c"
    source.write_text(_SOURCE)
    argv = ["gcc", "-O2", "-c", "cube.c", "-o"]
    h2.run([*argv, "local.o"], cwd=workdir, env=build_env(), timeout=120)
    env = build_env({"ICECC_TEST_SOCKET": str(real.socket_path), "HOME": str(workdir)})
    for number in range(3):
        done = h2.run(["/usr/bin/icecc", *argv, f"remote{number}.o"], cwd=workdir, env=env,
                      check=False, capture_output=True, timeout=180)  # fmt: skip
        assert done.returncode == 0, f"{done.stderr!r}\n{tails()}"
        assert (workdir / f"remote{number}.o").read_bytes() == (workdir / "local.o").read_bytes()
    monitor.wait_settled(0, 30.0, jobs=3)
    placement = monitor.placement()
    assert placement.began == {"four": 3}, f"{placement}\n{tails()}"
    assert not six.events("job_finished"), tails()
    wait_for(lambda: len([e for e in four.events("job_finished") if e.get("where") == "server"])
             >= 3, 20.0, "four's job records", context=tails)  # fmt: skip


def test_a_name_with_both_families_falls_back_within_a_connect() -> None:
    """-s NAME whose first (IPv6) address never answers reaches the IPv4 one (happy eyeballs).

    ``sched`` resolves (a hosts file in h2's namespace) to ``::1``, where a
    listener with a full accept queue silently drops every SYN, and to the
    scheduler's IPv4 address.  The resolver puts ``::1`` first (RFC 6724
    precedence), so a sequential connect would hang on it until the connect
    time-out and log ``scheduler_connect_failed``; happy eyeballs starts the
    IPv4 attempt 250 ms later and logs in.
    """
    with NetnsBed(2) as bed, contextlib.ExitStack() as stack:
        h1, h2 = bed
        hosts_dir = Path("/etc/netns") / h2.name
        hosts_dir.mkdir(parents=True)
        stack.callback(_remove_netns_etc, hosts_dir)
        (hosts_dir / "hosts").write_text(f"127.0.0.1 localhost\n::1 sched\n{h1.ip} sched\n")
        order = h2.python("import socket; print([a[4][0] for a in socket.getaddrinfo("
                          "'sched', 8765, type=socket.SOCK_STREAM)])",
                          capture_output=True).stdout.decode().strip()  # fmt: skip
        assert order == f"['::1', '{h1.ip}']"
        blocker = h2.socket(socket.AF_INET6)
        blocker.bind(("::1", 8765))
        blocker.listen(0)
        for _ in range(2):  # the accept queue (backlog 0: one) is full; later SYNs are dropped
            filler = h2.socket(socket.AF_INET6)
            filler.setblocking(False)  # noqa: FBT003 - socket API
            filler.connect_ex(("::1", 8765))
        scheduler = OurScheduler(host=h1, port=8765, loopback_only=False).start()
        stack.callback(scheduler.stop)
        daemon = OurDaemon("named", host=h2, max_jobs=1, port=10245, scheduler="sched:8765",
                           netname=scheduler.netname).start()  # fmt: skip
        stack.callback(daemon.stop)
        (record,) = daemon.wait_events("scheduler_logged_in", 1, timeout=30)[:1]
        assert record["address"] == "sched:8765"
        assert record["connected_to"] == f"{h1.ip}:8765", daemon.log_tail()
        assert not daemon.events("scheduler_connect_failed"), daemon.log_tail()
        logins = scheduler.wait_events("daemon_logged_in", 1)
        assert [r["peer"] for r in logins] == [h2.ip]


def _remove_netns_etc(path: Path) -> None:
    (path / "hosts").unlink(missing_ok=True)
    path.rmdir()
    with contextlib.suppress(OSError):  # other beds may use /etc/netns too
        path.parent.rmdir()


_BIND_TENTATIVE: Final = """
import sys
import time
sys.path.insert(0, sys.argv[1])
from iceserv.netio import bind_listeners
flags = [int(row.split()[4], 16) for row in open("/proc/net/if_inet6")
         if row.split()[0] == "fd150000000000000000000000000009"]
(sock,) = bind_listeners(["fd15::9"], 0)
print(bool(flags and flags[0] & 0x40), sock.getsockname()[0])
"""


def test_a_tentative_interface_address_is_bound() -> None:
    """-i binds an IPv6 address still in duplicate address detection (a daemon at boot)."""
    with NetnsBed(1) as bed:
        (host,) = bed
        subprocess.run(["ip", "-n", host.name, "addr", "add", "fd15::9/64", "dev", "eth0"],
                       check=True, timeout=10)  # fmt: skip
        done = host.python(_BIND_TENTATIVE, str(Path(__file__).resolve().parents[2]),
                           capture_output=True)  # fmt: skip
        assert done.stdout.decode().split() == ["True", "fd15::9"], done.stderr


_OUR_CLIENT: Final = (
    "#!{python}\nimport sys\nsys.path.insert(0, {repo!r})\n"
    "from iceserv.client.main import main\nsys.exit(main())\n"
)


def test_ipv6_only_cluster_discovers_and_compiles() -> None:
    """No IPv4 on the links: the hosts find each other by IPv6 multicast and build a C project.

    The three hosts keep only ULA addresses (fd16::N) and link-local ones.
    The daemons get no ``-s``: their requests to ff02::114 leave from their
    ULA addresses, so the scheduler answers from its own and knows them by
    theirs.  Six units of zstd's C library, built with our client through the
    ``-m 0`` daemon, are placed on the other one by its IPv6 address (the
    submitter declared it reaches IPv6 only) and equal a local gcc build.
    """
    workdir = make_workdir("ipv6only")
    repo = Path(__file__).resolve().parents[2]
    try:
        project = restrict(unpack_project(fetch_sdist(), workdir / "zstd"), _UNITS)
        reference = build_reference(project)
        project.clean()
        with NetnsBed(3) as bed, contextlib.ExitStack() as stack:
            for number, host in enumerate(bed, start=1):
                subprocess.run(["ip", "-n", host.name, "-4", "addr", "flush", "dev", "eth0"],
                               check=True, timeout=10)  # fmt: skip
                host.add_address(f"fd16::{number}", 64)
            h1, h2, h3 = bed
            scheduler = OurScheduler(host=h1, port=8765, loopback_only=False).start()
            stack.callback(scheduler.stop)
            netname = scheduler.netname
            sub = OurDaemon("sub6", host=_idle(h2, workdir, "sub6"), max_jobs=0, port=10245,
                            netname=netname).start()  # fmt: skip
            stack.callback(sub.stop)
            srv = OurDaemon("srv6", host=_idle(h3, workdir, "srv6"), max_jobs=2, port=10245,
                            netname=netname).start()  # fmt: skip
            stack.callback(srv.stop)

            def tails() -> str:
                return "\n".join(p.log_tail() for p in (scheduler, sub, srv))

            def listed() -> dict[str, tuple[str, int]]:
                return {h.name: (h.ip, h.port) for h in telnet_listcs(h1, ("::1", 8766))}

            wait_for(lambda: {"sub6", "srv6"} <= set(listed()), _LOGIN_TIMEOUT,
                     "both daemons listed", context=tails)  # fmt: skip
            assert listed() == {"sub6": ("fd16::2", 10245), "srv6": ("fd16::3", 10245)}
            (login,) = srv.wait_events("scheduler_logged_in", 1)[:1]
            assert login["connected_to"] == "[fd16::1]:8765", tails()
            launcher = workdir / "icecc"
            launcher.write_text(_OUR_CLIENT.format(python=sys.executable, repo=str(repo)))
            launcher.chmod(0o755)
            env = build_env({"ICECC_TEST_SOCKET": str(sub.socket_path), "HOME": str(workdir)})
            done = h2.run(project.make_argv(f"{launcher} gcc", 4), cwd=project.root, env=env,
                          check=False, capture_output=True, timeout=300)  # fmt: skip
            assert done.returncode == 0, f"{done.stdout[-3000:]!r}\n{tails()}"
            assert project.compare(reference) == ([], []), tails()
            assigned = [r["server"] for r in sub.events("compile_server_assigned")]
            assert assigned == ["[fd16::3]:10245"] * len(project.sources), tails()
            wait_for(lambda: len([e for e in srv.events("job_finished")
                                  if e.get("where") == "server"]) >= len(project.sources),
                     20.0, "srv6's job records", context=tails)  # fmt: skip
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False, timeout=60)


def test_discovery_prefers_the_dual_stack_scheduler() -> None:
    """Of two schedulers of one netname and version, a daemon picks the dual-stack one.

    The IPv4-only one (``--family ipv4``) starts a second earlier, so 1.4's
    rule (earliest start) would pick it; the other also answers the daemon's
    IPv6 request from its ULA address, which makes it dual-stack.  The daemon
    connects to it over IPv4 (so every submitter can be told its address).
    """
    with NetnsBed(3) as bed, contextlib.ExitStack() as stack:
        h1, h2, h3 = bed
        h2.add_address("fd17::2", 64)
        h3.add_address("fd17::3", 64)
        single = OurScheduler(host=h1, port=8765, loopback_only=False,
                              extra_args=["--family", "ipv4"]).start()  # fmt: skip
        stack.callback(single.stop)
        started = int(time.time())
        wait_for(lambda: int(time.time()) > started, 5.0, "the next second (start times differ)")
        dual = OurScheduler(host=h2, port=8765, loopback_only=False,
                            netname=single.netname).start()  # fmt: skip
        stack.callback(dual.stop)
        daemon = OurDaemon("chooser", host=h3, max_jobs=1, port=10245,
                           netname=single.netname).start()  # fmt: skip
        stack.callback(daemon.stop)
        (login,) = daemon.wait_events("scheduler_logged_in", 1, timeout=_LOGIN_TIMEOUT)[:1]
        assert login["connected_to"] == f"{h2.ip}:8765", daemon.log_tail()
        listed = {h.name for h in telnet_listcs(h2, (h2.ip, 8766))}
        assert listed == {"chooser"}
        assert not telnet_listcs(h1, (h1.ip, 8766))
