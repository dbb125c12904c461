"""D-Bus control of our ``iceccd``, driven by the real busctl on a private system bus.

Our scheduler and our daemon run as programs on the same private
``<type>system</type>`` bus (see ``testbed.dbusbed``); what the daemon's
``org.icecream.Daemon1`` says and does is checked from outside with busctl,
and its effect on the cluster through the scheduler's ``ListHosts``:
``SetMaxProcesses`` and ``SetAllowRemote`` reach the scheduler through the
reload path (a new LOGIN), ``Drain`` makes the scheduler see a full load.
Access control, the man page's examples and running without a bus too.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
from typing import TYPE_CHECKING, Any

import pytest
from testbed import OurScheduler, wait_for
from testbed.dbusbed import NOBODY, ROOT, Monitor, OurDaemon, SystemBus, as_user, busctl

from iceserv.service.dbus import (
    DAEMON_INTERFACE,
    DAEMON_PATH,
    DAEMON_READ_METHODS,
    SCHEDULER_INTERFACE,
    SCHEDULER_PATH,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.live  # the daemon runs compile jobs as the icecc user of bin/setup

D = DAEMON_INTERFACE
DP = DAEMON_PATH
STAFF_GID = 50
MUTATING = {"SetMaxProcesses": ["u", "3"], "SetAllowRemote": ["b", "true"], "Drain": [],
            "Resume": []}  # fmt: skip


@pytest.fixture(scope="module")
def cluster(system_bus: SystemBus) -> Iterator[tuple[OurScheduler, OurDaemon]]:
    """Our scheduler and our daemon on the bus, the daemon logged in (module-wide)."""
    scheduler = OurScheduler(extra_env={"DBUS_SYSTEM_BUS_ADDRESS": system_bus.address}).start()
    # No environment prebuilt at start (--native-compilers ""): the properties below are a
    # fresh daemon's, with an empty cache, whenever the test reads them.
    daemon = OurDaemon("dbusnode", scheduler.address, system_bus.address,
                       extra_args=("--native-compilers", ""))  # fmt: skip
    try:
        daemon.start()
        wait_for(lambda: get(system_bus.address, "SchedulerState") == "logged in", 20,
                 "the daemon to log in", context=daemon.log_tail)  # fmt: skip
        yield scheduler, daemon
    finally:
        assert daemon.stop() == 0, daemon.log_tail()
        assert scheduler.stop() == 0


def get(address: str, name: str, prefix: tuple[str, ...] = ()) -> Any:
    """``busctl get-property`` one Daemon1 property."""
    result = busctl(address, "--json=short", "get-property", D, DP, D, name, prefix=prefix)
    assert result.returncode == 0, f"{name}: {result.stderr}"
    return json.loads(result.stdout)["data"]


def call(address: str, member: str, *args: str, prefix: tuple[str, ...] = ()) -> Any:
    """``busctl call`` a Daemon1 method; return the decoded reply (None if empty)."""
    result = busctl(address, "--json=short", "call", D, DP, D, member, *args, prefix=prefix)
    assert result.returncode == 0, f"{member}: {result.stderr}"
    return json.loads(result.stdout)["data"] if result.stdout.strip() else None


def listed(address: str, name: str) -> list[Any] | None:
    """Our daemon's row in the scheduler's ListHosts, if it is logged in."""
    result = busctl(address, "--json=short", "call", SCHEDULER_INTERFACE, SCHEDULER_PATH,
                    SCHEDULER_INTERFACE, "ListHosts")  # fmt: skip
    rows = json.loads(result.stdout)["data"][0]
    return next((row for row in rows if row[0] == name), None)


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:*port*."""
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class TestDaemonProperties:
    def test_properties_of_a_logged_in_daemon(self, system_bus, cluster):
        """Slots, scheduler, remote jobs and cache as a freshly started daemon reports them."""
        scheduler, _ = cluster
        address = system_bus.address
        assert get(address, "Version") == "0.1.0"
        assert get(address, "Scheduler") == scheduler.address
        assert (get(address, "MaxProcesses"), get(address, "SlotsUsed")) == (2, 0)
        assert (get(address, "JobsRunning"), get(address, "JobsWaiting")) == (0, 0)
        assert (get(address, "AllowRemote"), get(address, "Draining")) == (True, False)
        assert (get(address, "EnvironmentCount"), get(address, "CacheSize")) == (0, 0)
        assert 0 <= get(address, "Load") <= 1000
        assert call(address, "ListEnvironments") == [[]]
        listing = busctl(address, "introspect", D, DP, D).stdout
        assert ".ListEnvironments" in listing
        assert "a(stuub)" in listing


class TestDaemonMethods:
    def test_set_max_processes_reaches_the_scheduler(self, system_bus, cluster):
        """SetMaxProcesses: the property, a PropertiesChanged, and the scheduler's slots change."""
        _, daemon = cluster
        address = system_bus.address
        monitor = Monitor(address)
        try:
            monitor.wait_started(address)
            call(address, "SetMaxProcesses", "u", "5")
            assert get(address, "MaxProcesses") == 5
            monitor.wait_for("PropertiesChanged", lambda d: d[1].get("MaxProcesses",
                             {}).get("data") == 5, 10, "MaxProcesses 5")  # fmt: skip
            wait_for(lambda: (listed(address, daemon.name) or [0] * 6)[5] == 5, 20,
                     "the scheduler to list 5 slots", context=daemon.log_tail)  # fmt: skip
        finally:
            monitor.stop()
            call(address, "SetMaxProcesses", "u", "2")
        assert daemon.events("setting_changed")[0]["setting"] == "max_processes"

    def test_set_allow_remote_closes_and_reopens_the_port(self, system_bus, cluster):
        """SetAllowRemote false closes the compile port and the scheduler sees no-remote."""
        _, daemon = cluster
        address = system_bus.address
        assert port_open(daemon.port)
        call(address, "SetAllowRemote", "b", "false")
        try:
            assert get(address, "AllowRemote") is False
            assert not port_open(daemon.port)
            wait_for(lambda: (listed(address, daemon.name) or [0] * 10)[9] is True, 20,
                     "the scheduler to list the daemon as no-remote")  # fmt: skip
        finally:
            call(address, "SetAllowRemote", "b", "true")
        assert get(address, "AllowRemote") is True
        assert port_open(daemon.port)
        wait_for(lambda: (listed(address, daemon.name) or [0] * 10)[9] is False, 20,
                 "the scheduler to list the daemon as taking remote jobs")  # fmt: skip

    def test_drain_shows_full_load_at_the_scheduler(self, system_bus, cluster):
        """Drain: the scheduler is told load 1000 at once; Resume: the real load again."""
        _, daemon = cluster
        address = system_bus.address
        call(address, "Drain")
        try:
            assert get(address, "Draining") is True
            wait_for(lambda: (listed(address, daemon.name) or [0] * 8)[7] == 1000, 20,
                     "the scheduler to see load 1000")  # fmt: skip
        finally:
            call(address, "Resume")
        assert get(address, "Draining") is False
        # The real load is whatever this machine's CPUs say (1000 when they are saturated).
        wait_for(lambda: abs((listed(address, daemon.name) or [0] * 8)[7]
                             - get(address, "Load")) < 100, 20,
                 "the scheduler to see the daemon's real load")  # fmt: skip
        assert daemon.events("daemon_draining")
        assert daemon.events("daemon_resumed")


class TestDaemonAccessControl:
    def test_everyone_reads_only_root_and_the_group_change(self, system_bus, cluster):
        """nobody reads and lists; every mutating method is refused to nobody, not to staff."""
        assert cluster
        address = system_bus.address
        nobody = tuple(as_user(NOBODY, NOBODY))
        staff = tuple(as_user(NOBODY, NOBODY, [STAFF_GID]))
        assert get(address, "MaxProcesses", prefix=nobody) == 2
        for member in DAEMON_READ_METHODS:
            call(address, member, prefix=nobody)
        listing = busctl(address, "introspect", D, DP, D).stdout
        methods = {line.split()[0][1:] for line in listing.splitlines()
                   if line.split()[1:2] == ["method"]}  # fmt: skip
        assert methods - set(DAEMON_READ_METHODS) == MUTATING.keys()
        for member, args in MUTATING.items():
            refused = busctl(address, "call", D, DP, D, member, *args, prefix=nobody)
            assert "Access denied" in refused.stderr, (member, refused.stderr)
        call(address, "Drain", prefix=staff)
        call(address, "Resume", prefix=staff)


def dbus_section(page: str) -> str:
    """The D-BUS section of a man page's scdoc source."""
    text = (ROOT / "man" / f"{page}.scd").read_text()
    start = text.index("# D-BUS\n")
    return text[start : text.index("\n# ", start + 1)]


class TestDaemonManPage:
    def test_every_member_documented_and_every_example_works(self, system_bus, cluster):
        """iceccd(8) names every Daemon1 member in bold; each busctl example line runs."""
        assert cluster
        address = system_bus.address
        section = dbus_section("iceccd.8")
        listing = busctl(address, "introspect", D, DP, D).stdout
        for member in (line.split()[0][1:] for line in listing.splitlines()[1:]):
            assert f"*{member}*" in section, f"{member} is not documented"
            assert f" {member}" in section.replace("*", " "), member
        lines = [line.strip() for line in section.splitlines()
                 if line.strip().startswith("busctl ")]  # fmt: skip
        assert len(lines) >= len(MUTATING)
        for line in lines:
            argv = shlex.split(line.replace("$D", D).replace("$P", DP))[1:]
            if argv[0] == "monitor":
                proc = subprocess.Popen(
                    ["busctl", f"--address={address}", *argv],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    with pytest.raises(subprocess.TimeoutExpired):
                        proc.wait(0.3)
                finally:
                    proc.terminate()
                    proc.wait(5)
                continue
            result = busctl(address, *argv)
            assert result.returncode == 0, (line, result.stderr)
        call(address, "SetMaxProcesses", "u", "2")
        call(address, "Resume")


class TestDaemonWithoutDBus:
    def test_no_bus_one_line_and_the_daemon_works(self, cluster):
        """Without a bus our iceccd starts, logs dbus_unavailable once and logs in."""
        scheduler, _ = cluster
        daemon = OurDaemon("nobusnode", scheduler.address, "unix:path=/nonexistent/bus")
        try:
            daemon.start()
            (line,) = daemon.events("dbus_unavailable")
            assert (line["level"], line["name"]) == ("warning", D)
            wait_for(lambda: any(e["nodename"] == "nobusnode"
                                 for e in scheduler.events("daemon_logged_in")), 20,
                     "the daemon to log in", context=daemon.log_tail)  # fmt: skip
        finally:
            assert daemon.stop() == 0, daemon.log_tail()
