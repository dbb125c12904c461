"""D-Bus control of our scheduler program, driven by the real busctl on a private system bus.

The bus is a ``<type>system</type>`` dbus-daemon with Debian's default
policy and our policy files (service user and admin group renamed to
``daemon``/``staff``, which exist here), one per test session.  Our
scheduler runs as the user runs it (``python -m iceserv.app.scheduler``,
``DBUS_SYSTEM_BUS_ADDRESS`` pointing at that bus), and everything is
observed from outside: ``busctl call/get-property/introspect`` and
``busctl monitor``.

* Introspection, every property and every method with busctl.
* Signals and property changes while daemons played with our codec
  (``BlockingChannel``, so job timing is under the test's control) log in,
  run, drain, get blocked and removed.
* Access control: ``nobody`` reads but is refused every mutating call,
  the admin group and root may call them, only the service user and root
  may own the names.
* No bus, a taken name, a bus that goes away: the scheduler runs on and
  says so in one log line.

The real 1.4 daemons and a real compile are in ``test_dbus_live.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from testbed import OurDaemon, OurScheduler, wait_for
from testbed.dbusbed import NOBODY, ROOT, Monitor, SystemBus, as_user, busctl, user_ids

from iceserv.protocol import (
    PROTOCOL_VERSION,
    ConfCS,
    EnvEntry,
    GetCS,
    JobBegin,
    JobDone,
    JobDoneFlag,
    Login,
    Stats,
    UseCS,
)
from iceserv.service.dbus import SCHEDULER_INTERFACE, SCHEDULER_PATH, SCHEDULER_READ_METHODS
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from collections.abc import Iterator

N = SCHEDULER_INTERFACE
P = SCHEDULER_PATH
DAEMON_NAME = "org.icecream.Daemon1"
STAND_IN_USER = "daemon"  # plays the service user "icecream"
STAND_IN_GROUP = "staff"  # plays the admin group "icecream"
STAFF_GID = 50
#: A sample argument for every method that changes something (a new one must be added here).
MUTATING = {"BlockHost": ["s", "zz"], "UnblockHost": ["s", "zz"], "RemoveHost": ["s", "zz"],
            "DrainHost": ["s", "zz"], "ResumeHost": ["s", "zz"]}  # fmt: skip


@pytest.fixture(scope="module")
def system_bus() -> Iterator[SystemBus]:
    """A private system bus with our policies, for this module."""
    bus = SystemBus(user=STAND_IN_USER, group=STAND_IN_GROUP).start()
    try:
        yield bus
    finally:
        bus.close()


def start_scheduler(address: str) -> OurScheduler:
    """Our scheduler program on loopback, on the bus at *address*."""
    return OurScheduler(extra_env={"DBUS_SYSTEM_BUS_ADDRESS": address}).start()


@pytest.fixture
def scheduler(system_bus: SystemBus) -> Iterator[OurScheduler]:
    """Our scheduler on the private bus; it must exit 0 at teardown."""
    ours = start_scheduler(system_bus.address)
    try:
        yield ours
    finally:
        tail = ours.log_tail()
        assert ours.stop() == 0, tail


@pytest.fixture
def monitor(system_bus: SystemBus) -> Iterator[Monitor]:
    """``busctl monitor`` on the private bus, started before the test acts."""
    watcher = Monitor(system_bus.address)
    try:
        watcher.wait_started(system_bus.address)
        yield watcher
    finally:
        watcher.stop()


def call(address: str, member: str, *args: str, prefix: tuple[str, ...] = ()) -> Any:
    """``busctl call`` a Scheduler1 method; return the decoded reply (None if empty)."""
    result = busctl(address, "--json=short", "call", N, P, N, member, *args, prefix=prefix)
    assert result.returncode == 0, f"{member}: {result.stderr}"
    return json.loads(result.stdout)["data"] if result.stdout.strip() else None


def get(address: str, name: str, prefix: tuple[str, ...] = ()) -> Any:
    """``busctl get-property`` one Scheduler1 property; return its value."""
    result = busctl(address, "--json=short", "get-property", N, P, N, name, prefix=prefix)
    assert result.returncode == 0, f"{name}: {result.stderr}"
    return json.loads(result.stdout)["data"]


def codec_daemon(scheduler: OurScheduler, nodename: str, *, port: int = 0) -> BlockingChannel:
    """A daemon played with our codec: LOGIN and STATS (load 0); CONF_CS received."""
    channel = BlockingChannel.connect("127.0.0.1", scheduler.port or 0, timeout=10.0)
    channel.send(Login(port=port, max_kids=4 if port else 0, nodename=nodename,
                       host_platform="x86_64", chroot_possible=bool(port), noremote=not port,
                       supported_features=3, envs=(EnvEntry("x86_64", "gcc-13"),)),
                 Stats(load=0, load_avg1=100, free_mem=4096))  # fmt: skip
    assert isinstance(channel.receive(), ConfCS)
    return channel


def listener() -> tuple[socket.socket, int]:
    """A listening socket for a codec daemon's compile port (the scheduler probes it)."""
    sock = socket.create_server(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


class TestIntrospection:
    @pytest.mark.usefixtures("scheduler")
    def test_every_member_is_introspectable(self, system_bus):
        """busctl introspect lists the Scheduler1 properties, methods and signals with types."""
        result = busctl(system_bus.address, "introspect", N, P, N)
        assert result.returncode == 0, result.stderr
        members = {line.split()[0]: line.split()[1:3] for line in result.stdout.splitlines()[1:]}
        assert members == {
            ".BlockHost": ["method", "s"], ".DrainHost": ["method", "s"],
            ".ListHosts": ["method", "-"], ".ListJobs": ["method", "-"],
            ".ListHostAuth": ["method", "-"],
            ".RemoveHost": ["method", "s"], ".ResumeHost": ["method", "s"],
            ".UnblockHost": ["method", "s"],
            ".BlockedHosts": ["property", "as"], ".DrainedHosts": ["property", "as"],
            ".HostCount": ["property", "u"], ".JobsQueued": ["property", "u"],
            ".JobsRunning": ["property", "u"], ".NetName": ["property", "s"],
            ".StartTime": ["property", "t"], ".TotalJobs": ["property", "u"],
            ".Uptime": ["property", "t"], ".Version": ["property", "s"],
            ".HostJoined": ["signal", "ss"], ".HostLeft": ["signal", "ss"],
            ".JobFinished": ["signal", "usssi"], ".JobStarted": ["signal", "usss"],
        }  # fmt: skip
        assert "a(ssqsuuuudbbba(ss))" in result.stdout  # ListHosts' reply
        assert "a(usssstt)" in result.stdout  # ListJobs' reply

    def test_properties_of_an_idle_scheduler(self, system_bus, scheduler):
        """An idle scheduler reports its version, net name, start time and zero counts."""
        address = system_bus.address
        assert get(address, "Version") == "0.1.0"
        assert get(address, "NetName") == scheduler.netname
        start = get(address, "StartTime") / 1e6
        assert abs(start - time.time()) < 60
        assert 0 <= get(address, "Uptime") < 60
        for name in ("HostCount", "JobsRunning", "JobsQueued", "TotalJobs"):
            assert get(address, name) == 0, name
        assert get(address, "BlockedHosts") == []
        assert get(address, "DrainedHosts") == []
        assert call(address, "ListHosts") == [[]]
        assert call(address, "ListJobs") == [[]]


class TestClusterEvents:
    def test_hosts_and_job_life_in_lists_signals_and_properties(
        self, system_bus, scheduler, monitor
    ):
        """Joins, a queued -> assigned -> compiling -> finished job, each seen on the bus."""
        address = system_bus.address
        sock, port = listener()
        farm = codec_daemon(scheduler, "farm1", port=port)
        laptop = codec_daemon(scheduler, "laptop")
        try:
            monitor.wait_for("HostJoined", lambda d: d == ["farm1", "127.0.0.1"], 10, "farm1")
            monitor.wait_for("HostJoined", lambda d: d == ["laptop", "127.0.0.1"], 10, "laptop")
            farm_row, laptop_row = call(address, "ListHosts")[0]
            assert call(address, "ListHostAuth") == [[["farm1", "off"], ["laptop", "off"]]]
            assert farm_row[:8] == ["farm1", "127.0.0.1", port, "x86_64", PROTOCOL_VERSION, 4, 0, 0]
            assert farm_row[9:] == [False, False, False, [["x86_64", "gcc-13"]]]
            assert laptop_row[0] == "laptop"
            assert laptop_row[9] is True  # no remote jobs

            farm.send(Stats(load=1000))  # full: the job must wait
            laptop.send(GetCS(versions=(EnvEntry("x86_64", "gcc-13"),), filename="src/a.c",
                              count=1, target="x86_64", client_id=7, preferred_host="farm1",
                              minimal_host_version=21, client_count=1))  # fmt: skip
            wait_for(lambda: get(address, "JobsQueued") == 1, 10, "JobsQueued 1")
            ((job_id, client, server, file, state, queued, started),) = call(address, "ListJobs")[0]
            assert (client, server, file, state, started) == ("laptop", "", "src/a.c", "queued", 0)
            assert abs(queued / 1e6 - time.time()) < 60

            farm.send(Stats(load=0))
            use = laptop.receive()
            assert isinstance(use, UseCS)
            assert use.job_id == job_id
            assert call(address, "ListJobs")[0][0][1:5] == ["laptop", "farm1", "src/a.c",
                                                            "assigned"]  # fmt: skip
            assert (get(address, "JobsRunning"), get(address, "JobsQueued")) == (1, 0)

            farm.send(JobBegin(job_id=job_id, stime=int(time.time()), client_count=1))
            monitor.wait_for("JobStarted", lambda d: d == [job_id, "laptop", "farm1", "src/a.c"],
                             10, "the job")  # fmt: skip
            (job,) = call(address, "ListJobs")[0]
            assert job[4] == "compiling"
            assert job[6] >= job[5] > 0

            farm.send(JobDone(job_id=job_id, exitcode=1, real_msec=10, user_msec=5,
                              out_uncompressed=100, flags=JobDoneFlag.FROM_SERVER))  # fmt: skip
            monitor.wait_for("JobFinished",
                             lambda d: d == [job_id, "laptop", "farm1", "src/a.c", 1], 10,
                             "the job's end with exit code 1")  # fmt: skip
            assert call(address, "ListJobs") == [[]]
            assert get(address, "TotalJobs") == job_id

            laptop.close()
            monitor.wait_for("HostLeft", lambda d: d == ["laptop", "127.0.0.1"], 10, "laptop")
            # Coalesced: intermediate values may be skipped, the last ones must arrive.
            wait_for(lambda: (_changed(monitor).get("HostCount"),
                              _changed(monitor).get("TotalJobs")) == (1, job_id), 10,
                     "PropertiesChanged with HostCount 1 and TotalJobs")  # fmt: skip
        finally:
            farm.close()
            laptop.close()
            sock.close()

    def test_drained_host_finishes_its_job_and_gets_no_new_one(
        self, system_bus, scheduler, monitor
    ):
        """DrainHost: the running job finishes there, the next job goes elsewhere; ResumeHost."""
        address = system_bus.address
        (sock1, port1), (sock2, port2) = listener(), listener()
        farm1 = codec_daemon(scheduler, "farm1", port=port1)
        farm2 = codec_daemon(scheduler, "farm2", port=port2)
        laptop = codec_daemon(scheduler, "laptop")
        try:
            wait_for(lambda: get(address, "HostCount") == 3, 10, "three hosts")
            laptop.send(_get_cs(client_id=1, preferred_host="farm1"))
            first = laptop.receive()
            assert isinstance(first, UseCS)
            assert first.port == port1
            farm1.send(JobBegin(job_id=first.job_id, stime=int(time.time()), client_count=1))

            assert call(address, "DrainHost", "s", "farm1") == [True]
            assert get(address, "DrainedHosts") == ["farm1"]
            rows = {row[0]: row for row in call(address, "ListHosts")[0]}
            assert (rows["farm1"][11], rows["farm2"][11]) == (True, False)
            monitor.wait_for("PropertiesChanged", lambda d: "DrainedHosts" in d[1], 10,
                             "DrainedHosts changed")  # fmt: skip

            for client_id in (2, 3, 4):
                laptop.send(_get_cs(client_id=client_id))
                use = laptop.receive()
                assert isinstance(use, UseCS)
                assert use.port == port2, "a drained host got a new job"
                farm2.send(JobDone(job_id=use.job_id, flags=JobDoneFlag.FROM_SERVER))
                farm2.send(Login(envs=(EnvEntry("x86_64", "gcc-13"),)))  # install done
            farm1.send(JobDone(job_id=first.job_id, flags=JobDoneFlag.FROM_SERVER))
            monitor.wait_for("JobFinished", lambda d: d[0] == first.job_id and d[2] == "farm1",
                             10, "the drained host's running job to finish")  # fmt: skip

            assert call(address, "ResumeHost", "s", "farm1") == [True]
            assert call(address, "ResumeHost", "s", "farm1") == [False]
            assert get(address, "DrainedHosts") == []
            assert call(address, "DrainHost", "s", "not-yet-here") == [False]
        finally:
            for channel in (farm1, farm2, laptop):
                channel.close()
            sock1.close()
            sock2.close()

    def test_block_unblock_and_remove(self, system_bus, scheduler, monitor):
        """BlockHost/RemoveHost disconnect (HostLeft); a blocked daemon is refused; Unblock."""
        address = system_bus.address
        (sock, port) = listener()
        farm1 = codec_daemon(scheduler, "farm1", port=port)
        farm2 = codec_daemon(scheduler, "farm2")
        try:
            wait_for(lambda: get(address, "HostCount") == 2, 10, "two hosts")
            assert call(address, "BlockHost", "s", "farm1") == [True]
            monitor.wait_for("HostLeft", lambda d: d == ["farm1", "127.0.0.1"], 10, "farm1")
            assert call(address, "BlockHost", "s", "farm1") == [False]  # listed once only
            assert get(address, "BlockedHosts") == ["farm1"]
            assert farm1.sock.recv(1) == b""  # the scheduler closed the connection

            again = BlockingChannel.connect("127.0.0.1", scheduler.port or 0, timeout=10.0)
            again.send(Login(port=port, max_kids=4, nodename="farm1", host_platform="x86_64",
                             chroot_possible=True, supported_features=3))  # fmt: skip
            assert again.sock.recv(1) == b""  # refused at login
            again.close()
            assert get(address, "HostCount") == 1

            assert call(address, "UnblockHost", "s", "farm1") == [True]
            assert call(address, "UnblockHost", "s", "farm1") == [False]
            assert call(address, "RemoveHost", "s", "farm2") is None
            monitor.wait_for("HostLeft", lambda d: d[0] == "farm2", 10, "farm2")
            failed = busctl(address, "call", N, P, N, "RemoveHost", "s", "farm2")
            assert failed.returncode != 0
            assert "no daemon named 'farm2' is connected" in failed.stderr
            assert get(address, "HostCount") == 0
            joined = [d[0] for d in monitor.signals("HostJoined")]
            assert joined == ["farm1", "farm2"]  # the refused login was no join
        finally:
            farm1.close()
            farm2.close()
            sock.close()


def _get_cs(*, client_id: int, preferred_host: str = "") -> GetCS:
    return GetCS(versions=(EnvEntry("x86_64", "gcc-13"),), filename="src/b.c", count=1,
                 target="x86_64", client_id=client_id, preferred_host=preferred_host,
                 minimal_host_version=21, client_count=1)  # fmt: skip


def _changed(monitor: Monitor) -> dict[str, Any]:
    """The latest value of every Scheduler1 property announced in PropertiesChanged."""
    values: dict[str, Any] = {}
    for interface, changed, _ in monitor.signals("PropertiesChanged"):
        if interface == N:
            values.update({name: variant["data"] for name, variant in changed.items()})
    return values


class TestAccessControl:
    @pytest.mark.usefixtures("scheduler")
    def test_everyone_may_read(self, system_bus):
        """nobody may introspect, read properties (Get, GetAll) and call the List methods."""
        nobody = tuple(as_user(NOBODY, NOBODY))
        address = system_bus.address
        assert "ListHosts" in busctl(address, "introspect", N, P, prefix=nobody).stdout
        assert get(address, "HostCount", prefix=nobody) == 0
        result = busctl(address, "call", N, P, "org.freedesktop.DBus.Properties", "GetAll", "s",
                        N, prefix=nobody)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert '"NetName"' in result.stdout
        for member in SCHEDULER_READ_METHODS:
            call(address, member, prefix=nobody)

    def test_everyone_may_follow_the_signals(self, system_bus, scheduler):
        """nobody cannot become a monitor, but gdbus monitor (match rules) sees HostJoined."""
        nobody = as_user(NOBODY, NOBODY)
        address = system_bus.address
        refused = busctl(address, "monitor", prefix=tuple(nobody))
        assert "Access denied" in refused.stderr
        gdbus = shutil.which("gdbus") or pytest.fail("gdbus missing (libglib2.0-bin)")
        watcher = subprocess.Popen([*nobody, "stdbuf", "-oL", gdbus, "monitor", "--address",
                                    address, "--dest", N], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            assert watcher.stdout is not None
            assert "Monitoring signals" in watcher.stdout.readline()
            # gdbus adds its match rule after printing that line: log daemons in (one at a
            # time, each named) until gdbus reports one; a signal sent too early is just missed.
            seen = ""
            deadline = time.monotonic() + 20
            for attempt in itertools.count():
                daemon = codec_daemon(scheduler, f"watched{attempt}")
                wait = time.monotonic() + 2
                while "HostJoined" not in seen and time.monotonic() < wait:
                    ready, _, _ = select.select([watcher.stdout], [], [], 0.2)
                    if ready:
                        seen += watcher.stdout.readline()
                daemon.close()
                if "HostJoined" in seen or time.monotonic() > deadline:
                    break
            assert re.search(r"HostJoined \('watched\d+', '127\.0\.0\.1'\)", seen), seen
        finally:
            watcher.terminate()
            watcher.communicate(timeout=5)

    @pytest.mark.usefixtures("scheduler")
    def test_only_root_and_the_admin_group_may_change_anything(self, system_bus):
        """Every other method is 'Access denied' to nobody, allowed to the group and to root."""
        address = system_bus.address
        listing = busctl(address, "introspect", N, P, N).stdout
        methods = {line.split()[0][1:] for line in listing.splitlines()
                   if line.split()[1:2] == ["method"]}  # fmt: skip
        assert methods - set(SCHEDULER_READ_METHODS) == MUTATING.keys()
        nobody = tuple(as_user(NOBODY, NOBODY))
        staff = tuple(as_user(NOBODY, NOBODY, [STAFF_GID]))
        for member, args in MUTATING.items():
            refused = busctl(address, "call", N, P, N, member, *args, prefix=nobody)
            assert refused.returncode != 0, member
            assert "Access denied" in refused.stderr, (member, refused.stderr)
            if member == "RemoveHost":  # allowed, but "zz" is not connected
                for who in (staff, ()):
                    answer = busctl(address, "call", N, P, N, member, *args, prefix=who)
                    assert "no daemon named" in answer.stderr, answer.stderr
                continue
            call(address, member, *args, prefix=staff)
            call(address, member, *args)
        assert "Rejected send message" in system_bus.log()

    @pytest.mark.parametrize("name", [N, DAEMON_NAME])
    def test_only_the_service_user_and_root_may_own_the_names(self, system_bus, name):
        """RequestName is refused to nobody and granted to the service user and to root."""
        request = ("call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                   "RequestName", "su", name, "4")  # fmt: skip
        refused = busctl(system_bus.address, *request, prefix=tuple(as_user(NOBODY, NOBODY)))
        assert refused.returncode != 0
        assert "Access denied" in refused.stderr, refused.stderr
        uid, gid = user_ids(STAND_IN_USER)
        for prefix in (tuple(as_user(uid, gid)), ()):
            granted = busctl(system_bus.address, *request, prefix=prefix)
            assert granted.stdout.strip() == "u 1", (prefix, granted.stderr)  # PRIMARY_OWNER


class TestWithoutDBus:
    def test_no_bus_one_log_line_and_the_scheduler_works(self):
        """Without a bus the scheduler starts, logs dbus_unavailable once and serves daemons."""
        ours = OurScheduler(extra_env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/bus"})
        ours.start()
        try:
            (line,) = ours.events("dbus_unavailable")
            assert line["level"] == "warning"
            assert line["address"] == "unix:path=/nonexistent/bus"
            assert line["name"] == N
            daemon = codec_daemon(ours, "farm1")
            wait_for(lambda: ours.events("daemon_logged_in"), 10, "the daemon's login")
            daemon.close()
        finally:
            tail = ours.log_tail()
            assert ours.stop() == 0, tail

    def test_name_owned_by_another_scheduler(self, system_bus, scheduler):
        """A second scheduler on the same bus runs without D-Bus and says why in one line."""
        second = start_scheduler(system_bus.address)
        try:
            (line,) = second.events("dbus_unavailable")
            assert "owned by another process" in line["reason"]
            assert get(system_bus.address, "NetName") == scheduler.netname
        finally:
            assert second.stop() == 0

    def test_bus_going_away_is_logged_once(self):
        """When the bus dies under it, the scheduler logs dbus_disconnected and runs on."""
        bus = SystemBus(user=STAND_IN_USER, group=STAND_IN_GROUP).start()
        ours = start_scheduler(bus.address)
        try:
            assert ours.events("dbus_name_acquired")
            bus.close()
            wait_for(lambda: ours.alive() and ours.events("dbus_disconnected"), 10,
                     "dbus_disconnected in the log", context=ours.log_tail)  # fmt: skip
            daemon = codec_daemon(ours, "farm1")
            wait_for(lambda: ours.events("daemon_logged_in"), 10, "the daemon's login")
            daemon.close()
            assert len(ours.events("dbus_disconnected")) == 1
            time.sleep(1)  # a coalesced PropertiesChanged is due by now
            assert not ours.events("observer_failed")  # signals after the loss are no errors
            assert "Traceback" not in ours.log_path.read_text()
        finally:
            bus.close()
            tail = ours.log_tail()
            assert ours.stop() == 0, tail


def dbus_section(page: str) -> str:
    """The D-BUS section of a man page's scdoc source."""
    text = (ROOT / "man" / f"{page}.scd").read_text()
    return text[text.index("# D-BUS\n") : text.index("\n# ", text.index("# D-BUS\n") + 1)]


def examples(section: str) -> list[str]:
    """The busctl command lines of a section's literal blocks."""
    return [line.strip() for line in section.splitlines() if line.strip().startswith("busctl ")]


class TestManPage:
    @pytest.mark.usefixtures("scheduler")
    def test_every_member_is_documented_with_a_busctl_line(self, system_bus):
        """icecc-scheduler(8) names every Scheduler1 member in bold and shows busctl for it."""
        section = dbus_section("icecc-scheduler.8")
        listing = busctl(system_bus.address, "introspect", N, P, N).stdout
        members = [line.split()[0][1:] for line in listing.splitlines()[1:]]
        lines = examples(section)
        for member in members:
            assert f"*{member}*" in section, f"{member} is not documented"
            shown = [line for line in lines if line.split()[-1] == member
                     or f"member={member}" in line or f" {member} " in line]  # fmt: skip
            assert shown, f"no busctl line for {member}"

    def test_every_example_works(self, system_bus, scheduler):
        """Every busctl line of the D-BUS section runs against our scheduler on the bus."""
        address = system_bus.address
        for line in examples(dbus_section("icecc-scheduler.8")):
            argv = shlex.split(line.replace("$N", N).replace("$P", P))[1:]
            if argv[0] == "monitor":  # runs until stopped: it must start and keep running
                proc = subprocess.Popen(["busctl", f"--address={address}", *argv],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)  # fmt: skip
                try:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(0.3)
                    assert proc.poll() is None, (line, proc.stderr and proc.stderr.read())
                finally:
                    proc.terminate()
                    proc.communicate(timeout=5)
                continue
            result = busctl(address, *argv)
            if "RemoveHost" in argv:  # the documented example names no connected daemon
                assert "no daemon named" in result.stderr, (line, result.stderr)
            else:
                assert result.returncode == 0, (line, result.stderr)
        assert scheduler.alive()


def test_each_hosts_auth_state_in_list_host_auth_and_status(system_bus, tmp_path):
    """Under prefer a keyed daemon is authenticated, a LOGIN without proof is not; both shown."""
    key = tmp_path / "network.key"
    key.write_bytes(bytes(range(48)))
    key.chmod(0o600)
    auth = ["--key-file", str(key), "--auth", "prefer"]
    bus_env = {"DBUS_SYSTEM_BUS_ADDRESS": system_bus.address}
    keyed = OurScheduler(extra_args=auth, extra_env=bus_env).start()
    daemon = OurDaemon("authd", keyed.address, native_compilers="", extra_args=auth).start()
    old = codec_daemon(keyed, "old14")
    try:
        wanted = [["authd", "authenticated"], ["old14", "unauthenticated"]]
        wait_for(lambda: sorted(call(system_bus.address, "ListHostAuth")[0]) == wanted, 30,
                 "both hosts listed", context=daemon.log_tail)  # fmt: skip
        env = {"DBUS_SYSTEM_BUS_ADDRESS": system_bus.address, "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-m", "iceserv.app.cli", "status", "--json"],
                              env=env, capture_output=True, text=True, timeout=60,
                              check=True)  # fmt: skip
        hosts = {h["name"]: h["auth"] for h in json.loads(done.stdout)["hosts"]}
        assert hosts == {"authd": "authenticated", "old14": "unauthenticated"}
        text = subprocess.run([sys.executable, "-m", "iceserv.app.cli", "status"], env=env,
                              capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        assert re.search(r"^old14 .*[ ,]unauthenticated$", text.stdout, re.MULTILINE), text
        assert re.search(r"^authd .* authenticated$", text.stdout, re.MULTILINE), text
    finally:
        old.close()
        daemon.stop()
        assert keyed.stop() == 0
