"""Tests of the scheduler core: every message, monitor event, timer and control action."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scheduler.builders import NATIVE, T0, add_host, get_cs, login, new_core, sends, to_monitors

from iceserv._version import VERSION
from iceserv.errors import RemoteProtocolError
from iceserv.protocol import (
    ICESERV_MARK,
    BlacklistHostEnv,
    ConfCS,
    GetInternalStatus,
    HostAddresses,
    JobBegin,
    JobDone,
    JobDoneFlag,
    Login,
    MonLogin,
    MonStats,
    NoCS,
    Ping,
    PushQuery,
    PushTargets,
    Stats,
    StatusText,
    UseCS,
)
from iceserv.protocol.discovery import SchedulerInfo
from iceserv.scheduler import placement
from iceserv.scheduler.effects import (
    Announce,
    Close,
    HostsSkipped,
    InternalsReply,
    JobsWaiting,
    StartProbe,
    StopReading,
)
from iceserv.scheduler.handlers import MAX_DECLARED_ADDRESSES, Scheduler, checked_addresses
from iceserv.scheduler.state import IPV4, IPV6, ClusterState

#: CS_CONF's bench_source from our scheduler (1.4 sends "").
ICESERV_CONF = ICESERV_MARK + VERSION

STATS_A = (
    "Name:a\nIP:10.0.0.1\nMaxJobs:4\nNoRemote:false\nPlatform:x86_64\nVersion:43\n"
    "Features:env_xz env_zstd\nSpeed:0.000000\nLoad:1000\n"
)


class TestLogin:
    def test_login_confirms_and_tells_monitors(self):
        """LOGIN gets CS_CONF(3, 36, ""), monitors get MON_STATS with Load:1000."""
        core = new_core()
        effects = login(core, 1, "a", load=None)
        assert sends(effects, 1) == [ConfCS(3, 36, ICESERV_CONF)]
        assert to_monitors(effects) == [MonStats(1, STATS_A)]

    def test_no_cs_conf_below_24(self):
        """Daemons below protocol 24 get no CS_CONF."""
        core = new_core()
        assert sends(login(core, 1, "a", protocol=23, version=23, load=None)) == []

    def test_version_is_announced_maximum_and_nodename_defaults_to_ip(self):
        """Version: is the daemon's maximum protocol; an empty nodename becomes the IP."""
        core = new_core()
        effects = login(core, 1, "", version=50, protocol=43, load=None)
        text = to_monitors(effects)[0].statmsg
        assert "Name:10.0.0.1\n" in text
        assert "Version:50\n" in text

    def test_host_ids_never_reused(self):
        """A daemon that logs in again gets a new host id."""
        core = new_core()
        login(core, 1, "a")
        core.connection_lost(1, T0)
        login(core, 2, "a")
        assert [h.host_id for h in core.state.hosts.values()] == [2]

    def test_blocked_daemon_is_refused(self):
        """A LOGIN from a blocked nodename is closed (and uses up a host id, as 1.4)."""
        core = new_core()
        core.remove_hosts(["a"], T0, block=True)
        effects = login(core, 1, "a", load=None)
        assert Close(1) in effects
        assert to_monitors(effects) == [MonStats(1, "State:Offline\n")]
        assert not core.state.hosts
        login(core, 2, "b")
        assert list(core.state.hosts) == [2]

    def test_stale_connection_of_same_daemon_removed(self):
        """A new LOGIN with the same IP and nodename replaces the old connection."""
        core = new_core()
        login(core, 1, "a", ip="10.9.9.9")
        effects = login(core, 2, "a", ip="10.9.9.9", load=None)
        assert Close(1) in effects
        assert MonStats(1, "State:Offline\n") in to_monitors(effects)
        assert [h.conn_id for h in core.state.hosts.values()] == [2]

    def test_first_message_must_be_a_login(self):
        """Anything but LOGIN or MON_LOGIN first is a protocol error."""
        core = new_core()
        core.peer_connected(1, "10.0.0.1", 43, 43)
        with pytest.raises(RemoteProtocolError):
            core.handle_message(1, Stats(), T0)

    def test_unexpected_daemon_message(self):
        """A daemon sending a scheduler-to-daemon message breaks the protocol."""
        core = new_core()
        login(core, 1, "a")
        with pytest.raises(RemoteProtocolError):
            core.handle_message(1, UseCS(), T0)


class TestMonitors:
    def test_mon_login_gets_every_host_and_is_never_read(self):
        """MON_LOGIN: stop reading, then one MON_STATS per daemon (current load)."""
        core = new_core()
        login(core, 1, "a", load=250)
        login(core, 2, "b", load=None)
        core.peer_connected(9, "10.0.0.9", 43, 43)
        effects = core.handle_message(9, MonLogin(), T0)
        assert effects[0] == StopReading(9)
        stats = sends(effects, 9)
        assert [m.host_id for m in stats] == [1, 2]
        assert "Load:250\n" in stats[0].statmsg
        assert core.monitors == (9,)
        with pytest.raises(RemoteProtocolError):
            core.handle_message(9, MonLogin(), T0)
        core.connection_lost(9, T0)
        assert core.monitors == ()

    def test_stats_text_with_load_details(self):
        """A STATS produces MON_STATS with Load and the four extra keys."""
        core = new_core()
        login(core, 1, "a", load=None)
        effects = core.handle_message(1, Stats(120, 1500, 1200, 900, 2048), T0)
        text = to_monitors(effects)[0].statmsg
        assert text.endswith("Speed:0.000000\nLoad:120\nLoadAvg1:1500\nLoadAvg5:1200\n"
                             "LoadAvg10:900\nFreeMem:2048\n")  # fmt: skip


class TestOneHost:
    """Several daemons logged in from 127.0.0.1 (scheduler and daemons on one host)."""

    def setup_method(self):
        self.core = new_core()
        login(self.core, 1, "nodeA", ip="127.0.0.1", max_kids=0)
        login(self.core, 2, "nodeB", ip="127.0.0.1", port=10246, max_kids=3)

    def test_use_cs_names_another_daemon_on_127_0_0_1_localhost(self):
        """Clients read USE_CS to 127.0.0.1 as "compile it yourself": the server is localhost."""
        (use,) = sends(get_cs(self.core, 1), 1)
        assert use == UseCS(1, 10246, "localhost", "x86_64", got_env=False, client_id=7)

    def test_own_job_keeps_127_0_0_1(self):
        """A daemon told about itself below protocol 37 still hears its own address."""
        core = new_core()
        login(core, 1, "old", ip="127.0.0.1", protocol=36, version=36)
        (use,) = sends(get_cs(core, 1))
        assert use.hostname == "127.0.0.1"

    def test_blacklist_by_localhost_names_the_127_0_0_1_server(self):
        """BLACKLIST_HOST_ENV with the name the client was given applies to that server."""
        self.core.handle_message(1, BlacklistHostEnv("native", "x86_64", "localhost"), T0)
        assert self.core.state.hosts[1].blacklist[2] == [("x86_64", "native")]

    def test_a_transfer_that_never_happened_leaves_no_host_installing(self):
        """The job ends before the server re-announces its environments: not installing."""
        get_cs(self.core, 1)
        node_b = self.core.state.hosts[2]
        assert node_b.busy_installing_since == T0
        cancel = JobDone(1, 0, flags=int(JobDoneFlag.FROM_SUBMITTER))
        self.core.handle_message(1, cancel, T0 + 1)
        assert (node_b.busy_installing_since, node_b.installing_for) == (None, None)
        assert node_b.jobs == []
        (use,) = sends(get_cs(self.core, 1, now=T0 + 2), 1)  # placed again at once
        assert use.hostname == "localhost"

    def test_the_install_of_another_job_is_kept(self):
        """Only the job that made the server install clears it; another job's end does not."""
        get_cs(self.core, 1)  # job 1: nodeB installs for it
        self.core.handle_message(2, Login(envs=NATIVE), T0)  # installed
        get_cs(self.core, 1, client_id=8)  # job 2 has the environment there
        self.core.state.hosts[2].busy_installing_since = T0 + 5  # pretend another install runs
        self.core.handle_message(1, JobDone(2, 0, flags=int(JobDoneFlag.FROM_SUBMITTER)), T0 + 6)
        assert self.core.state.hosts[2].busy_installing_since == T0 + 5


FULL_LOAD_TEXT = "reports full load (1000; before its first STATS too)"


class TestWaitingReport:
    def test_a_waiting_job_is_reported_after_2_s_then_every_10_s(self):
        """The oldest job's wait is reported with every daemon's reason, at most every 10 s."""
        core = new_core()
        login(core, 1, "nodeA", max_kids=0)
        login(core, 2, "nodeB", max_kids=3, load=None)  # no STATS yet
        login(core, 3, "nodeC", max_kids=3, noremote=True)
        assert not [e for e in get_cs(core, 1) if isinstance(e, JobsWaiting)]
        assert not [e for e in core.handle_timer(T0 + 1.9) if isinstance(e, JobsWaiting)]
        assert core.get_timer() == T0 + 2
        (report,) = [e for e in core.handle_timer(T0 + 2) if isinstance(e, JobsWaiting)]
        assert report == JobsWaiting(count=1, job_id=1, filename="proj/src/a.c", waited=2.0,
                                     reasons=(("nodeA", "has no job slots (-m 0)"),
                                              ("nodeB", FULL_LOAD_TEXT),
                                              ("nodeC", "takes no remote jobs (--no-remote)")),
                                     )  # fmt: skip
        assert core.get_timer() == T0 + 12
        assert not [e for e in core.handle_timer(T0 + 11) if isinstance(e, JobsWaiting)]
        assert [e for e in core.handle_timer(T0 + 12) if isinstance(e, JobsWaiting)]

    def test_a_busy_installing_server_is_named(self):
        """A job waiting for a server that installs an environment says so."""
        core = new_core()
        login(core, 1, "sub", max_kids=0)
        login(core, 2, "cs", max_kids=1)
        get_cs(core, 1)  # cs installs for job 1
        get_cs(core, 1, client_id=8)
        (report,) = [e for e in core.handle_timer(T0 + 3) if isinstance(e, JobsWaiting)]
        assert report.job_id == 2
        assert dict(report.reasons)["cs"] == "is busy installing an environment (since 3 s)"

    def test_no_report_once_the_queue_is_empty(self):
        """Nothing is reported while every job is placed."""
        core = new_core()
        login(core, 1, "sub")
        login(core, 2, "cs")
        get_cs(core, 1)
        assert not [e for e in core.handle_timer(T0 + 30) if isinstance(e, JobsWaiting)]


class TestInternals:
    def test_request_and_reply(self):
        """GET_INTERNALS goes to matching daemons; their STATUS_TEXT comes back once."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "b")
        hosts, effects = core.request_internals(["b"])
        assert [h.nodename for h in hosts] == ["b"]
        assert sends(effects, 2) == [GetInternalStatus()]
        assert core.handle_message(2, StatusText("dump"), T0) == [InternalsReply(2, "dump")]
        with pytest.raises(RemoteProtocolError):
            core.handle_message(2, StatusText("again"), T0)
        hosts, _ = core.request_internals([])
        assert len(hosts) == 2


class TestTimers:
    def test_announce_at_start_and_every_120s(self):
        """The scheduler announces itself at start and then every 120 s."""
        core = new_core()
        assert core.get_timer() == T0
        assert Announce(SchedulerInfo(43, int(T0), "ICECREAM")) in core.handle_timer(T0)
        assert core.get_timer() == T0 + 120
        assert not any(isinstance(e, Announce) for e in core.handle_timer(T0 + 119))

    def test_probe_cycle(self):
        """Daemons are probed at once, again after 60 s; failures back off and exclude them."""
        core = new_core()
        core.handle_timer(T0)
        login(core, 1, "a")
        assert core.get_timer() == T0
        assert StartProbe(1, "10.0.0.1", 10245) in core.handle_timer(T0)
        assert StartProbe(1, "10.0.0.1", 10245) not in core.handle_timer(T0)
        core.probe_finished(1, ok=False, now=T0 + 5)
        host = core.state.hosts[1]
        assert not host.probe.accepting
        assert core.get_timer() == T0 + 7
        core.handle_timer(T0 + 7)
        core.probe_finished(1, ok=True, now=T0 + 8)
        assert host.probe.accepting
        assert host.probe.next_at == T0 + 68

    def test_no_probe_for_no_remote(self):
        """No-remote daemons (port 0) are never probed."""
        core = new_core()
        core.handle_timer(T0)
        login(core, 1, "a", port=0, noremote=True)
        assert not any(isinstance(e, StartProbe) for e in core.handle_timer(T0 + 1000))

    def test_busy_installing_too_long_drops_daemon(self):
        """A daemon busy installing for 120 s is dropped."""
        core = new_core()
        login(core, 1, "sub", max_kids=0)
        login(core, 2, "cs")
        get_cs(core, 1)
        assert core.state.hosts[2].busy_installing_since == T0
        assert Close(2) not in core.handle_timer(T0 + 119)
        assert Close(2) in core.handle_timer(T0 + 120)

    def test_pings_below_27(self):
        """Old daemons are pinged after 36 s of silence, excluded meanwhile, dropped if mute."""
        core = new_core()
        login(core, 1, "old", protocol=26, version=26)
        assert sends(core.handle_timer(T0 + 36), 1) == [Ping()]
        assert core.state.hosts[1].ping_deadline == T0 + 42
        core.handle_message(1, Ping(), T0 + 40)
        assert core.state.hosts[1].ping_deadline is None
        core.handle_timer(T0 + 76)
        assert Close(1) in core.handle_timer(T0 + 82)

    def test_no_pings_from_27(self):
        """Daemons of protocol 27 and later are never pinged."""
        core = new_core()
        login(core, 1, "a")
        assert sends(core.handle_timer(T0 + 3600), 1) == []


class TestAnnouncements:
    def setup_method(self):
        self.core = new_core(netname="NET")
        login(self.core, 1, "a")
        self.core.peer_connected(9, "10.0.0.9", 43, 43)
        self.core.handle_message(9, MonLogin(), T0)

    def test_better_scheduler_takes_everyone(self):
        """An older scheduler of our net makes us close every daemon and monitor."""
        effects = self.core.handle_announcement(SchedulerInfo(43, int(T0) - 10, "NET"), T0)
        assert Close(1) in effects
        assert Close(9) in effects
        assert not self.core.state.hosts
        assert self.core.monitors == ()

    @pytest.mark.parametrize(
        "info",
        [SchedulerInfo(43, int(T0), "NET"), SchedulerInfo(43, int(T0) + 5, "NET"),
         SchedulerInfo(42, 0, "NET"), SchedulerInfo(44, 0, "net"), SchedulerInfo(35, 0, "NET")],
    )  # fmt: skip
    def test_others_ignored(self, info):
        """Ourselves, younger or older-version schedulers, other nets, versions < 36: ignored."""
        higher_other_net = info.netname == "net"
        assert self.core.handle_announcement(info, T0) == [] or higher_other_net
        assert self.core.state.hosts

    def test_persistent_keeps_clients(self):
        """With -r nothing is dropped."""
        core = new_core(netname="NET", persistent=True)
        login(core, 1, "a")
        assert core.handle_announcement(SchedulerInfo(44, 0, "NET"), T0) == []


class TestControlActions:
    def test_remove_block_unblock(self):
        """removecs/blockcs disconnect the first match per name; unblock removes one entry."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "b")
        matched, effects = core.remove_hosts(["a", "zz", "10.0.0.2"], T0)
        assert matched == ["a", "10.0.0.2"]
        assert Close(1) in effects
        assert Close(2) in effects
        core.remove_hosts(["x", "x"], T0, block=True)
        core.unblock_hosts(["x"], T0)
        assert core.state.blocked == ["x"]

    def test_drain_lets_running_jobs_finish_and_sends_new_ones_elsewhere(self):
        """A drained daemon keeps its job until JOB_DONE but is not given the next one."""
        core = new_core()
        login(core, 1, "sub", max_kids=0)
        login(core, 2, "a")
        login(core, 3, "b")
        (first,) = sends(get_cs(core, 1, preferred_host="a"), 1)
        assert first.hostname == "10.0.0.2"
        matched, effects = core.drain_hosts(["a", "gone"], T0)
        assert matched == ["a"]
        assert not [e for e in effects if isinstance(e, Close)]
        assert core.state.jobs[first.job_id].server == 2
        for _ in range(5):
            (msg,) = sends(get_cs(core, 1), 1)
            assert msg.hostname == "10.0.0.3"
            core.handle_message(3, JobDone(msg.job_id), T0)
            core.handle_message(3, Login(envs=NATIVE), T0)  # its install is done
        core.handle_message(2, JobBegin(first.job_id, 1, 1), T0)
        core.handle_message(2, JobDone(first.job_id), T0)
        assert first.job_id not in core.state.jobs

    def test_drain_outlives_the_connection_and_resume_places_queued_jobs(self):
        """A drained daemon stays drained when it reconnects; resuming it serves the queue."""
        core = new_core()
        login(core, 1, "sub", max_kids=0)
        core.drain_hosts(["a"], T0)
        login(core, 2, "a")
        login(core, 3, "busy", load=1000)  # could take the job later: the job waits
        assert sends(get_cs(core, 1)) == []
        core.connection_lost(2, T0)
        assert sends(login(core, 4, "a")) == [ConfCS(bench_source=ICESERV_CONF)]
        assert core.state.drained == ["a"]
        effects = core.resume_hosts(["a", "never"], T0)
        assert [(m.hostname, m.client_id) for m in sends(effects, 1)] == [("10.0.0.4", 7)]
        assert core.state.drained == []


def _fresh_timer(core) -> float:
    """get_timer's value recomputed from scratch: the announcement and every host's deadlines."""
    deadlines = [core._next_announce]
    for host in core.state.hosts.values():
        if host.probed and not host.probe.in_progress:
            deadlines.append(host.probe.next_at)
        if host.busy_installing_since is not None:
            deadlines.append(host.busy_installing_since + 120)
        if host.protocol < 27:
            deadlines.append(host.ping_deadline or host.last_talk + 36)
    if (head := core.state.queue.first()) is not None:  # the report of waiting jobs
        deadlines.append(max(head.queued_at + 2, core._next_wait_report))
    return min(deadlines)


_TIMER_OPS = st.lists(
    st.tuples(
        st.sampled_from(["login", "old login", "get_cs", "done", "stats", "probe ok",
                         "probe failed", "timer", "lost", "relogin"]),
        st.integers(1, 4),
        st.floats(0, 50),
    ),
    max_size=40,
)  # fmt: skip


def _job_done(core, conn: int, host, now: float) -> None:
    if host.jobs:
        done = JobDone(job_id=host.jobs[0], flags=int(JobDoneFlag.FROM_SERVER))
        core.handle_message(conn, done, now)


#: What each step of TestTimerCache's event sequences does on a logged-in daemon's connection.
_HOST_OPS = {
    "get_cs": lambda core, conn, _host, now: get_cs(core, conn, now),
    "done": _job_done,
    "stats": lambda core, conn, _host, now: core.handle_message(conn, Stats(load=0), now),
    "probe ok": lambda core, _conn, host, now: core.probe_finished(host.host_id, ok=True, now=now),
    "probe failed": lambda core, _conn, host, now: core.probe_finished(
        host.host_id, ok=False, now=now
    ),
    "lost": lambda core, conn, _host, now: core.connection_lost(conn, now),
    "relogin": lambda core, conn, _host, now: core.handle_message(
        conn, Login(port=10245, max_kids=4, nodename=f"h{conn}", host_platform="x86_64"), now
    ),
}


def _timer_op(core, op: str, conn: int, now: float) -> None:
    """Carry out one step of TestTimerCache's event sequences on daemon connection *conn*."""
    host = core.host_by_conn(conn)
    if op in ("login", "old login"):
        if conn not in core._peers:
            version = 43 if op == "login" else 26
            login(core, conn, f"h{conn}", now=now, protocol=version, version=version)
    elif op == "timer":
        core.handle_timer(now)
    elif host is not None:
        _HOST_OPS[op](core, conn, host, now)


class TestTimerCache:
    @settings(max_examples=400)
    @given(ops=_TIMER_OPS)
    @example(ops=[("login", 1, 1.0), ("timer", 1, 1.0), ("probe failed", 1, 1.0)])
    @example(ops=[("login", 1, 1.0), ("timer", 1, 1.0), ("login", 2, 1.0)])
    def test_never_later_than_the_truth_and_exact_after_a_run(self, ops):
        """The cached deadline never misses one; after a timer run it is the exact minimum."""
        core = new_core()
        now = T0
        for op, conn, step in ops:
            now += step
            _timer_op(core, op, conn, now)
            if op == "timer":
                assert core.get_timer() == _fresh_timer(core)
            assert core.get_timer() <= _fresh_timer(core)


class TestAddressFamilies:
    """The 1.4 floor: an IPv6 address in USE_CS only for a submitter that came over IPv6."""

    def test_ipv4_submitter_never_gets_an_ipv6_server(self):
        """A job from a daemon that logged in over IPv4 skips an IPv6-only server, and says why."""
        core = new_core()
        login(core, 1, "old", ip="10.0.0.1", max_kids=0)
        login(core, 2, "six", ip="fd00::2", max_kids=4)
        assert sends(get_cs(core, 1), 1) == [NoCS(1, 7)]  # nobody else: compile it yourself
        login(core, 3, "busy", ip="10.0.0.3", max_kids=4, load=1000)
        assert not sends(get_cs(core, 1, client_id=8), 1)  # waits for "busy", not "six"
        (report,) = [e for e in core.handle_timer(T0 + 2) if isinstance(e, JobsWaiting)]
        assert dict(report.reasons)["busy"] == FULL_LOAD_TEXT
        assert dict(report.reasons)["six"] == (
            "is known only by the IPv6 address fd00::2 and the submitter logged in over IPv4"
            " (icecream 1.4 clients cannot reach IPv6)"
        )

    def test_ipv4_submitter_goes_to_the_ipv4_server(self):
        """With an IPv4 and an IPv6 server, every job of an IPv4 submitter goes to IPv4."""
        core = new_core()
        login(core, 1, "old", ip="10.0.0.1", max_kids=0)
        login(core, 2, "six", ip="fd00::2", max_kids=4, envs=NATIVE)
        login(core, 3, "four", ip="10.0.0.3", max_kids=4, envs=NATIVE)
        hosts = set()
        for client_id in range(1, 5):
            (use,) = sends(get_cs(core, 1, client_id=client_id), 1)
            hosts.add(use.hostname)
        assert hosts == {"10.0.0.3"}

    def test_ipv6_submitter_gets_the_ipv6_address(self):
        """A submitter that logged in over IPv6 is iceserv: it is told the server's IPv6 address."""
        core = new_core()
        login(core, 1, "new", ip="fd00::1", max_kids=0)
        login(core, 2, "six", ip="fd00::2", max_kids=4)
        (use,) = sends(get_cs(core, 1), 1)
        assert (use.hostname, use.port) == ("fd00::2", 10245)

    def test_ipv6_loopback_server_is_localhost(self):
        """A server logged in from ::1 is named localhost, which every client (1.4 too) parses."""
        core = new_core()
        login(core, 1, "old", ip="127.0.0.1", max_kids=0)
        login(core, 2, "six", ip="::1", port=10246, max_kids=4)
        (use,) = sends(get_cs(core, 1), 1)
        assert (use.hostname, use.port) == ("localhost", 10246)

    def test_link_local_server_is_never_named(self):
        """A server that logged in from fe80::…%zone is skipped even for IPv6 submitters."""
        core = new_core()
        login(core, 1, "new", ip="fd00::1", max_kids=0)
        login(core, 2, "link", ip="fe80::2%eth0", max_kids=4)
        login(core, 3, "busy", ip="fd00::3", max_kids=4, load=1000)
        assert not sends(get_cs(core, 1), 1)
        (report,) = [e for e in core.handle_timer(T0 + 2) if isinstance(e, JobsWaiting)]
        assert dict(report.reasons)["link"] == (
            "is known only by the link-local address fe80::2%eth0, of no use to other hosts"
        )

    def test_the_count_of_ipv6_hosts_follows_logins(self):
        """The state counts hosts known by IPv6 (the index defers to the scan while any exist)."""
        core = new_core()
        login(core, 1, "six", ip="fd00::2")
        login(core, 2, "four", ip="10.0.0.2")
        login(core, 3, "loop", ip="::1")
        assert core.state.family_limited == 1
        core.connection_lost(1, T0)
        assert core.state.family_limited == 0


def declare(core: Scheduler, conn_id: int, *addresses: str, families: tuple[str, ...] = ()) -> list:
    return core.handle_message(conn_id, HostAddresses(addresses, families), T0)


def use_cs(core: Scheduler, conn_id: int, client_id: int = 7) -> UseCS:
    (use,) = sends(get_cs(core, conn_id, client_id=client_id), conn_id)
    assert isinstance(use, UseCS)
    return use


class TestFamilyAwarePlacement:
    """HOST_ADDRESSES: each daemon's addresses of both families and its clients' families."""

    def test_dual_stack_daemon_logged_in_over_ipv6_serves_ipv4_submitters(self):
        """Known by fd00::2 from its login, it declared 10.0.0.2: a 1.4 submitter is sent there."""
        core = new_core()
        login(core, 1, "old", ip="10.0.0.1", max_kids=0)
        login(core, 2, "dual", ip="fd00::2", envs=NATIVE)
        declare(core, 2, "10.0.0.2", "fd00::2", families=("ipv4", "ipv6"))
        use = use_cs(core, 1)
        assert (use.hostname, use.port) == ("10.0.0.2", 10245)

    def test_without_the_declaration_the_ipv6_login_keeps_it_from_ipv4_submitters(self):
        core = new_core()
        login(core, 1, "old", ip="10.0.0.1", max_kids=0)
        login(core, 2, "six", ip="fd00::2", envs=NATIVE)
        assert sends(get_cs(core, 1), 1) == [NoCS(1, 7)]  # compile it yourself

    def test_ipv4_first_when_both_would_do(self):
        """A dual-stack submitter is told the IPv4 address: a 1.4 client behind it parses it."""
        core = new_core()
        login(core, 1, "me", ip="fd00::1", max_kids=0)
        declare(core, 1, "10.0.0.1", families=("ipv4", "ipv6"))
        login(core, 2, "dual", ip="fd00::2", envs=NATIVE)
        declare(core, 2, "10.0.0.2", families=("ipv4", "ipv6"))
        assert use_cs(core, 1).hostname == "10.0.0.2"

    def test_ipv6_only_submitter_gets_the_declared_ipv6_address(self):
        """Logged in over IPv4, it declared fd00::2: an IPv6-only submitter is sent there."""
        core = new_core()
        login(core, 1, "six", ip="fd00::1", max_kids=0)
        declare(core, 1, "fd00::1", families=("ipv6",))
        login(core, 2, "dual", ip="10.0.0.2", envs=NATIVE)
        declare(core, 2, "10.0.0.2", "fd00::2", families=("ipv4", "ipv6"))
        assert use_cs(core, 1).hostname == "fd00::2"

    def test_ipv6_only_submitter_never_gets_an_ipv4_only_server(self):
        """An IPv4-only server is never named to an IPv6-only submitter; the log says why."""
        core = new_core()
        login(core, 1, "six", ip="fd00::1", max_kids=0)
        declare(core, 1, "fd00::1", families=("ipv6",))
        login(core, 2, "four", ip="10.0.0.2", envs=NATIVE)
        login(core, 3, "busy", ip="fd00::3", envs=NATIVE, load=1000)
        effects = get_cs(core, 1)
        assert not sends(effects, 1)
        (skipped,) = [e for e in effects if isinstance(e, HostsSkipped)]
        assert skipped.submitter == "six"
        assert dict(skipped.reasons) == {
            "four": "has no address the submitter's clients can reach: it offers 10.0.0.2 (IPv4),"
            " they reach IPv6 only"
        }
        (report,) = [e for e in core.handle_timer(T0 + 2) if isinstance(e, JobsWaiting)]
        assert dict(report.reasons)["four"] == dict(skipped.reasons)["four"]

    def test_skipped_hosts_are_logged_once_per_pair(self):
        core = new_core()
        login(core, 1, "old", ip="10.0.0.1", max_kids=0)
        login(core, 2, "six", ip="fd00::2", envs=NATIVE)
        login(core, 3, "four", ip="10.0.0.3", envs=NATIVE)
        first = [e for e in get_cs(core, 1, client_id=1) if isinstance(e, HostsSkipped)]
        assert [dict(e.reasons) for e in first] == [
            {
                "six": "is known only by the IPv6 address fd00::2 and the submitter logged in"
                " over IPv4 (icecream 1.4 clients cannot reach IPv6)"
            }
        ]
        assert not [e for e in get_cs(core, 1, client_id=2) if isinstance(e, HostsSkipped)]
        assert {use_cs(core, 1, c).hostname for c in range(3, 6)} == {"10.0.0.3"}

    def test_link_local_login_uses_the_declared_routable_address(self):
        core = new_core()
        login(core, 1, "new", ip="fd00::1", max_kids=0)
        login(core, 2, "link", ip="fe80::2%eth0", envs=NATIVE)
        assert sends(get_cs(core, 1, client_id=1), 1) == [NoCS(1, 1)]  # the scheduler's zone
        declare(core, 2, "fe80::2", "fd00::2")  # the link-local one is dropped
        assert use_cs(core, 1).hostname == "fd00::2"

    def test_family_limited_count_follows_declarations(self):
        core = new_core()
        login(core, 1, "six", ip="fd00::2")
        assert core.state.family_limited == 1
        declare(core, 1, "10.0.0.2", families=("ipv4", "ipv6"))
        assert core.state.family_limited == 0
        declare(core, 1, families=("ipv6",))
        assert core.state.family_limited == 1
        core.connection_lost(1, T0)
        assert core.state.family_limited == 0

    def test_push_targets_name_the_address_the_asker_reaches(self):
        core = new_core()
        login(core, 1, "asker", ip="10.0.0.1")
        login(core, 2, "dual", ip="fd00::2")
        declare(core, 2, "10.0.0.2", families=("ipv4", "ipv6"))
        query = PushQuery(platform="x86_64", environment="e.tar.zst", required_features=0)
        (answer,) = sends(core.handle_message(1, query, T0), 1)
        assert isinstance(answer, PushTargets)
        assert answer.hosts == ("10.0.0.2:10245",)


class TestFamilyRules:
    def test_reachable_and_address_for(self):
        state = ClusterState()
        four = add_host(state, "four", ip="10.0.0.1")
        six = add_host(state, "six", ip="fd00::2", addresses=("fd00::2",), declared_reach=IPV6)
        dual = add_host(state, "dual", ip="fd00::3", addresses=("10.0.0.3",))
        loop = add_host(state, "loop", ip="127.0.0.1")
        assert (dual.v4, dual.v6, dual.offers, dual.reach) == ("10.0.0.3", "fd00::3", 3, 3)
        assert placement.reachable(four, dual)
        assert placement.address_for(four, dual) == "10.0.0.3"
        assert placement.address_for(six, dual) == "fd00::3"
        assert not placement.reachable(six, four)
        assert not placement.reachable(four, six)
        assert placement.reachable(six, loop)
        assert placement.address_for(six, loop) == "127.0.0.1"  # jobs names it localhost
        assert placement.reachable(six, six)
        assert four.reach == IPV4

    def test_checked_addresses(self):
        assert checked_addresses(
            ["10.0.0.2", "::ffff:10.0.0.3", "FD00::0:2", "127.0.0.1", "::1", "fe80::1",
             "fd00::5%eth0", "0.0.0.0", "::",  # noqa: S104 - not bound, refused "ff02::1", "224.0.0.1", "nonsense", "x" * 100,
             "10.0.0.2"]
        ) == ("10.0.0.2", "10.0.0.3", "fd00::2")  # fmt: skip
        many = [f"10.0.1.{i}" for i in range(50)]
        assert len(checked_addresses(many)) == MAX_DECLARED_ADDRESSES

    def test_unknown_family_names_are_ignored(self):
        core = new_core()
        login(core, 1, "h", ip="10.0.0.1")
        declare(core, 1, families=("ipx", "ipv6"))
        assert core.state.hosts[1].reach == IPV6
        assert IPV4 | IPV6 == 3
