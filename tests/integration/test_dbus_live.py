"""D-Bus signals and lists while real icecream 1.4 daemons and a real compile use our scheduler.

Our scheduler program runs on a private system bus (see ``testbed.dbusbed``); real
``iceccd`` daemons log in to it, a real ``icecc`` compile goes from daemon A
through the scheduler to daemon B, and ``busctl monitor``/``busctl call``
see it all: HostJoined, PropertiesChanged, JobStarted, JobFinished,
ListHosts with what the daemons announced, HostLeft when one stops.  A
second test runs the daemons on separate network-namespace hosts, so the
listed addresses are real and distinct.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from typing import TYPE_CHECKING, Any

import pytest
from testbed import OurScheduler, RealDaemon, wait_for
from testbed.dbusbed import Monitor, busctl

from iceserv.service.dbus import SCHEDULER_INTERFACE, SCHEDULER_PATH

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.live

N = SCHEDULER_INTERFACE
P = SCHEDULER_PATH
HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'


def call(address: str, member: str, *args: str) -> Any:
    """``busctl call`` a Scheduler1 method; return the decoded reply."""
    result = busctl(address, "--json=short", "call", N, P, N, member, *args)
    assert result.returncode == 0, f"{member}: {result.stderr}"
    return json.loads(result.stdout)["data"]


def hosts(address: str) -> dict[str, list[Any]]:
    """ListHosts by name."""
    return {row[0]: row for row in call(address, "ListHosts")[0]}


class TestRealCluster:
    def test_real_daemons_and_a_real_compile_on_the_bus(self, system_bus, tmp_path: Path):
        """Joins, load reports, a remote compile's start and end, and a leave, as seen on D-Bus."""
        address = system_bus.address
        tag = f"{os.getpid()}"
        name_a, name_b = f"a{tag}", f"b{tag}"
        monitor = Monitor(address)
        with contextlib.ExitStack() as stack:
            stack.callback(monitor.stop)
            monitor.wait_started(address)
            ours = OurScheduler(extra_env={"DBUS_SYSTEM_BUS_ADDRESS": address}).start()
            stack.callback(lambda: _stopped_cleanly(ours))
            daemon_a = stack.enter_context(RealDaemon(name_a, scheduler=ours.address))
            daemon_b = stack.enter_context(RealDaemon(name_b, scheduler=ours.address))
            for daemon in (daemon_a, daemon_b):
                monitor.wait_for("HostJoined", lambda d, n=daemon.name: d[0] == n, 30,
                                 f"{daemon.name} joining")  # fmt: skip
            # A real daemon is full (load 1000) until its first STATS.
            wait_for(lambda: all(row[7] < 1000 for row in hosts(address).values())
                     and len(hosts(address)) == 2, 30, "both daemons to report their load",
                     interval=0.3, between=lambda: (daemon_a.poke(), daemon_b.poke()))  # fmt: skip
            row = hosts(address)[name_b]
            assert row[1:4] == ["127.0.0.1", daemon_b.port, "x86_64"]
            assert row[5] == 2  # -m 2
            assert row[9:12] == [False, False, False]

            (tmp_path / "hello.c").write_text(HELLO_C)
            env = daemon_a.client_env({"ICECC_PREFERRED_HOST": name_b,
                                       "ICECC_TEST_REMOTEBUILD": "1"})  # fmt: skip
            subprocess.run(["icecc", "gcc", "-c", "hello.c", "-o", "remote.o"], cwd=tmp_path,
                           env=env, check=True, timeout=120)  # fmt: skip
            started = monitor.wait_for("JobStarted", lambda d: d[2] == name_b, 30, "the compile")
            assert started[1] == name_a
            assert started[3].endswith("hello.c")
            finished = monitor.wait_for("JobFinished", lambda d: d[0] == started[0], 30,
                                        "the compile's end")  # fmt: skip
            assert finished == [*started, 0]
            assert call(address, "ListJobs") == [[]]

            daemon_b.stop()
            monitor.wait_for("HostLeft", lambda d: d[0] == name_b, 30, f"{name_b} leaving")
            assert list(hosts(address)) == [name_a]


class TestNamespaceCluster:
    def test_hosts_on_separate_machines_are_listed_with_their_addresses(
        self, system_bus, netns_hosts
    ):
        """Daemons on two namespace hosts join a scheduler on a third; D-Bus shows their IPs."""
        address = system_bus.address
        scheduler_host, host_a, host_b = netns_hosts(3)
        monitor = Monitor(address)
        with contextlib.ExitStack() as stack:
            stack.callback(monitor.stop)
            monitor.wait_started(address)
            # The bus socket is a path: reachable from every network namespace.
            ours = OurScheduler(host=scheduler_host, port=8765, loopback_only=False,
                                extra_env={"DBUS_SYSTEM_BUS_ADDRESS": address}).start()  # fmt: skip
            stack.callback(lambda: _stopped_cleanly(ours))
            names = {}
            for host in (host_a, host_b):
                name = f"{host.label}-{os.getpid()}"
                stack.enter_context(RealDaemon(name, scheduler=ours.address, host=host))
                names[name] = host.ip
            for name, ip in names.items():
                monitor.wait_for("HostJoined", lambda d, n=name, i=ip: d == [n, i], 40,
                                 f"{name} joining from {ip}")  # fmt: skip
            listed = {row[0]: row[1] for row in call(address, "ListHosts")[0]}
            assert listed == names
            assert call(address, "DrainHost", "s", host_a.ip) == [True]  # by address
            drained = {row[0]: row[11] for row in call(address, "ListHosts")[0]}
            assert drained == {name: ip == host_a.ip for name, ip in names.items()}


def _stopped_cleanly(ours: OurScheduler) -> None:
    tail = ours.log_tail()
    assert ours.stop() == 0, tail
