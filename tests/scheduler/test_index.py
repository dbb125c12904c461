"""The host index picks exactly the host the scan picks, on random clusters and event streams.

The scan (``placement._pick_fastest``, itself checked against the literal 1.4
loop in ``test_placement_scan.py``) is the oracle.  Two kinds of evidence:
random clusters built directly (every usability test and every early return
can go either way), and random streams of daemon messages, timer runs, probe
results and drain commands through the real :class:`Scheduler` core with the
index's ``check`` on, so that every placement is made by both and a host
the core forgot to re-file shows up as a different pick.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scheduler.builders import T0, add_host, add_job, new_core, sends
from scheduler.test_placement_scan import _build

from iceserv.errors import RemoteProtocolError
from iceserv.protocol import (
    BlacklistHostEnv,
    EnvEntry,
    GetCS,
    JobBegin,
    JobDone,
    JobDoneFlag,
    Login,
    NoCS,
    Ping,
    Stats,
    UseCS,
)
from iceserv.scheduler import placement
from iceserv.scheduler.index import HostIndex, IndexMismatchError
from iceserv.scheduler.state import ClusterState, JobStat

ENVS = (EnvEntry("x86_64", "a"), EnvEntry("x86_64", "b"), EnvEntry("i686", "a"))


def _index_answer(state: ClusterState, job: Any) -> tuple[bool, Any]:
    state.index = HostIndex(state)
    return state.index.pick(job)


class TestRandomClusters:
    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_same_host_as_the_scan(self, data):
        """Whenever the index answers, it names the very host the scan returns."""
        state, job = _build(data)
        answered, host = _index_answer(state, job)
        if answered:
            assert host is placement._pick_fastest(state, job, list(state.hosts.values()))

    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_same_host_in_a_steady_cluster(self, data):
        """In a steady cluster (all rated and recently picked) the index agrees too."""
        state, job = _build(data, steady=True)
        answered, host = _index_answer(state, job)
        if answered:
            assert host is placement._pick_fastest(state, job, list(state.hosts.values()))

    def test_it_answers_every_steady_cluster(self):
        """The index is not a scan in disguise: it hands over only for blacklists, unrated hosts."""
        outcomes = {"answered": 0, "scanned": 0}

        @settings(max_examples=400, deadline=None, database=None, derandomize=True)
        @given(data=st.data())
        def collect(data):
            state, job = _build(data, steady=True)
            fit = placement.JobFit(state, job)
            unrated = any(fit.usable(h) and not placement.rated(h) for h in state.hosts.values())
            blacklist = bool(state.hosts[job.submitter].blacklist)
            answered, _ = _index_answer(state, job)
            assert answered or unrated or blacklist
            outcomes["answered" if answered else "scanned"] += 1

        collect()
        assert outcomes["answered"] > 100

    def test_ties_go_to_the_first_host_in_login_order(self):
        """Equal ratings: the earliest login leads, as in the scan (strictly faster wins)."""
        state = ClusterState()
        sub = add_host(state, "sub", max_jobs=0)
        hosts = [add_host(state, f"h{i}", last_picked_id=290) for i in range(5)]
        for host in hosts:
            for n in range(8):
                host.compiled.add(JobStat(n + 1, 1000, 10))
        state.all_stats.add(JobStat(1, 10_000, 10))
        state.last_job_id = 300
        job = add_job(state, sub)
        assert _index_answer(state, job) == (True, hosts[0])
        hosts[0].jobs.append(7)  # busier: a lower rating
        state.touch(hosts[0])
        assert state.index is not None
        assert state.index.pick(job) == (True, hosts[1])

    def test_a_queueing_host_that_finishes_sooner_leads(self):
        """A fast host that would queue beats a slow free one by its expected finish."""
        state = ClusterState()
        sub = add_host(state, "sub", max_jobs=0)
        slow = add_host(state, "slow", max_jobs=4, last_picked_id=290)
        fast = add_host(state, "fast", max_jobs=4, jobs=[5, 6, 7, 8], last_picked_id=290)
        for n in range(8):
            slow.compiled.add(JobStat(n + 1, 1000, 100))  # rating 10
            fast.compiled.add(JobStat(n + 1, 1000, 10))  # rating 100
        state.all_stats.add(JobStat(1, 10_000, 10))
        state.last_job_id = 300
        job = add_job(state, sub)
        assert _index_answer(state, job) == (True, fast)
        assert placement._pick_fastest(state, job, list(state.hosts.values())) is fast


# --- event streams through the core ---------------------------------------------------------

_LOGIN = st.tuples(st.just("login"), st.integers(0, 9), st.sampled_from([0, 1, 2, 4, 4]),
                   st.lists(st.sampled_from(ENVS), max_size=2, unique=True),
                   st.sampled_from(["x86_64", "x86_64", "x86_64", "i686"]),
                   st.sampled_from([43, 43, 43, 29, 21]),
                   st.sampled_from([False] * 4 + [True]))  # fmt: skip
_OP = st.one_of(
    _LOGIN,
    st.tuples(st.just("stats"), st.integers(0, 9), st.sampled_from([0, 0, 100, 500, 1000])),
    st.tuples(st.just("get_cs"), st.integers(0, 9), st.integers(1, 3),
              st.lists(st.sampled_from(ENVS), min_size=1, max_size=2, unique=True),
              st.sampled_from([0, 0, 0, 43]), st.sampled_from(["", "", "", "", "d1"])),
    st.tuples(st.just("begin"), st.integers(0, 50)),
    st.tuples(st.just("done"), st.integers(0, 50), st.sampled_from([0, 5000, 20_000, 90_000]),
              st.integers(0, 400), st.booleans()),
    st.tuples(st.just("time"), st.sampled_from([1.0, 30.0, 61.0, 130.0])),
    st.tuples(st.just("ping"), st.integers(0, 9)),
    st.tuples(st.just("probe"), st.integers(0, 12), st.booleans()),
    st.tuples(st.just("blacklist"), st.integers(0, 9), st.integers(0, 9)),
    st.tuples(st.just("relogin"), st.integers(0, 9),
              st.lists(st.sampled_from(ENVS), max_size=2, unique=True)),
    st.tuples(st.just("drain"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("leave"), st.integers(0, 9)),
)  # fmt: skip
#: Most of a stream is the steady traffic: requests, begins and ends.
_STREAM_OP = st.one_of(
    _OP,
    st.tuples(st.just("get_cs"), st.integers(0, 9), st.just(1), st.just([ENVS[0]]),
              st.just(0), st.just("")),
    st.tuples(st.just("done"), st.integers(0, 50), st.just(20_000), st.integers(10, 400),
              st.just(value=False)),
)  # fmt: skip


class _Farm:
    """Ten possible daemons on connections 1-10, driving one core with the index checked."""

    def __init__(self) -> None:
        self.core = new_core()
        assert self.core.state.index is not None
        self.core.state.index.check = True
        self.now = T0
        self.logged: dict[int, str] = {}  # conn -> nodename
        self.placed: list[tuple[int, int]] = []  # (job id, server conn)
        self.next_client = 1

    def log_in(self, hosts: int = 10, slots: int = 4) -> None:
        """Log daemons 0..hosts-1 in, alike: x86_64, protocol 43, the first environment."""
        for i in range(hosts):
            self.run(("login", i, slots, [ENVS[0]], "x86_64", 43, False))

    def steady_round(self, round_: int, hosts: int = 10) -> None:
        """One GET_CS from daemon round % hosts, and a JOB_DONE of varying size and time."""
        self.run(("get_cs", round_ % hosts, 1, [ENVS[0]], 0, ""))
        self.run(("done", round_ * 7, 20_000 + 37 * (round_ % 11), 100 + round_ % 13, False))

    def run(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        with contextlib.suppress(RemoteProtocolError):  # a message the core refuses
            getattr(self, "_" + kind)(op[1:])

    def _effects(self, effects: list[Any]) -> None:
        by_ip = {host.ip: host.conn_id for host in self.core.state.hosts.values()}
        for msg in sends(effects):
            if isinstance(msg, UseCS):
                self.placed.append((msg.job_id, by_ip[msg.hostname]))
            elif isinstance(msg, NoCS):
                job = self.core.state.jobs[msg.job_id]
                self.placed.append((msg.job_id, self.core.state.hosts[job.submitter].conn_id))

    def _send(self, conn: int, msg: Any) -> None:
        if conn in self.logged:
            self._effects(self.core.handle_message(conn, msg, self.now))

    def _login(self, args: tuple[Any, ...]) -> None:
        i, kids, envs, platform, version, noremote = args
        conn = i + 1
        if conn in self.logged:
            return
        self.core.peer_connected(conn, f"10.0.0.{conn}", min(version, 43), version)
        login = Login(port=10245, max_kids=kids, envs=tuple(envs), nodename=f"d{i}",
                      host_platform=platform, chroot_possible=True, noremote=noremote,
                      supported_features=3)  # fmt: skip
        self._effects(self.core.handle_message(conn, login, self.now))
        self.logged[conn] = f"d{i}"
        self._send(conn, Stats(load=0))

    def _stats(self, args: tuple[Any, ...]) -> None:
        i, load = args
        self._send(i + 1, Stats(load=load))

    def _get_cs(self, args: tuple[Any, ...]) -> None:
        i, count, envs, min_version, preferred = args
        self.next_client += 1
        self._send(i + 1, GetCS(versions=tuple(envs), filename="a.c", count=count,
                                target="x86_64", client_id=self.next_client,
                                minimal_host_version=min_version,
                                preferred_host=preferred))  # fmt: skip

    def _pick_placed(self, n: int) -> tuple[int, int] | None:
        live = [(j, c) for j, c in self.placed if j in self.core.state.jobs and c in self.logged]
        self.placed = live
        return live[n % len(live)] if live else None

    def _begin(self, args: tuple[Any, ...]) -> None:
        n, = args
        placed = self._pick_placed(n)
        if placed is not None:
            self._send(placed[1], JobBegin(placed[0], int(self.now), 1))

    def _done(self, args: tuple[Any, ...]) -> None:
        n, out, user, from_submitter = args
        placed = self._pick_placed(n)
        if placed is None:
            return
        job_id, server = placed
        conn = server
        flags = JobDoneFlag.FROM_SERVER
        if from_submitter:
            conn = self.core.state.hosts[self.core.state.jobs[job_id].submitter].conn_id
            flags = JobDoneFlag.FROM_SUBMITTER
        self._send(conn, JobDone(job_id=job_id, user_msec=user, out_uncompressed=out,
                                 flags=int(flags)))  # fmt: skip

    def _time(self, args: tuple[Any, ...]) -> None:
        seconds, = args
        self.now += seconds
        while self.core.get_timer() <= self.now:
            self._effects(self.core.handle_timer(self.core.get_timer()))
        self._effects(self.core.handle_timer(self.now))

    def _ping(self, args: tuple[Any, ...]) -> None:
        i, = args
        self._send(i + 1, Ping())

    def _probe(self, args: tuple[Any, ...]) -> None:
        host_id, ok = args
        self._effects(self.core.probe_finished(host_id, ok=ok, now=self.now))

    def _blacklist(self, args: tuple[Any, ...]) -> None:
        i, j = args
        self._send(i + 1, BlacklistHostEnv(environment="a", target="x86_64",
                                           hostname=f"10.0.0.{j + 1}"))  # fmt: skip

    def _relogin(self, args: tuple[Any, ...]) -> None:
        i, envs = args
        if i + 1 in self.logged:
            self._send(i + 1, Login(port=10245, max_kids=4, envs=tuple(envs), nodename=f"d{i}",
                                    host_platform="x86_64", chroot_possible=True,
                                    supported_features=3))  # fmt: skip

    def _drain(self, args: tuple[Any, ...]) -> None:
        i, drain = args
        if drain:
            self._effects(self.core.drain_hosts([f"d{i}"], self.now)[1])
        else:
            self._effects(self.core.resume_hosts([f"d{i}"], self.now))

    def _leave(self, args: tuple[Any, ...]) -> None:
        i, = args
        if self.logged.pop(i + 1, None) is not None:
            self._effects(self.core.connection_lost(i + 1, self.now))


class TestEventStreams:
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(logins=st.lists(_LOGIN, min_size=2, max_size=10),
           ops=st.lists(_STREAM_OP, min_size=20, max_size=160))  # fmt: skip
    def test_every_placement_agrees_with_the_scan(self, logins, ops):
        """Through any stream of events, each pick of the index is the scan's pick."""
        farm = _Farm()
        for op in logins:
            farm.run(op)
        for round_ in range(6):  # some statistics, so that placement is by speed
            farm.run(("get_cs", round_, 1, [ENVS[0]], 0, ""))
            farm.run(("done", 0, 20_000, 100 + round_, False))
        for op in ops:
            farm.run(op)

    def test_a_long_steady_stream_is_answered_by_the_index(self):
        """In a steady farm almost every pick comes from the index, and all agree."""
        farm = _Farm()
        farm.log_in()
        for round_ in range(300):
            farm.steady_round(round_)
        index = farm.core.state.index
        assert index is not None
        assert index.picks > 10 * max(index.scans, 1)

    def test_a_mismatch_is_reported(self):
        """With ``check`` on, a host changed without a touch shows up as an error."""
        farm = _Farm()
        for i in range(3):
            farm.run(("login", i, 4, [ENVS[0]], "x86_64", 43, False))
        for round_ in range(30):
            farm.run(("get_cs", round_ % 3, 1, [ENVS[0]], 0, ""))
            farm.run(("done", 0, 20_000, 100 + round_, False))
        leader = max(farm.core.state.hosts.values(), key=placement.server_rating)
        leader.probe.accepting = False  # behind the index's back
        def ask_five() -> None:
            for round_ in range(5):
                request = GetCS(versions=(ENVS[0],), filename="a.c", target="x86_64",
                                client_id=900 + round_)  # fmt: skip
                farm.core.handle_message(round_ % 3 + 1, request, farm.now)

        with pytest.raises(IndexMismatchError):
            ask_five()


class TestFilingEdges:
    """Edges of the filing structures that random ten-host streams do not reach."""

    def test_login_churn_repacks_the_slots_and_every_pick_agrees(self):
        """Hosts that leave and come back take new slots; running out re-packs them."""
        farm = _Farm()
        farm.log_in()
        for round_ in range(160):
            farm.steady_round(round_)
            if round_ % 2:
                farm.run(("leave", round_ * 3 % 10))
                farm.run(("login", round_ * 3 % 10, 4, [ENVS[0]], "x86_64", 43, False))
        state = farm.core.state
        index = state.index
        assert index is not None
        assert state.last_host_id > 64  # more logins than the first slots
        assert index._next_slot < state.last_host_id  # so the slots were re-packed
        assert index.picks > 10 * max(index.scans, 1)

    def test_host_ids_beyond_the_key_width_widen_the_pick_keys(self):
        """Host ids past 2**32 do not fit the pick keys' low bits: every key is widened."""
        farm = _Farm()
        farm.core.state.last_host_id = 2**32 - 4  # the fifth login crosses it
        farm.log_in()
        index = farm.core.state.index
        assert index is not None
        for round_ in range(200):
            farm.steady_round(round_)
            if round_ % 50 == 49:
                farm.core.state.last_job_id += 1000  # every host stale: the early returns
        assert index._pick_bits > 32
        mask = (1 << index._pick_bits) - 1
        assert index._by_pick == sorted(index._by_pick)
        assert sorted(key & mask for key in index._by_pick) == sorted(farm.core.state.hosts)
        assert index.picks > 10 * max(index.scans, 1)

    def test_a_host_picked_for_an_older_job_is_stale_as_early_as_the_scan_says(self):
        """Its entry in pick order moves back with it (entries never run ahead of the host)."""
        state = ClusterState()
        sub = add_host(state, "sub", max_jobs=0)
        fast = add_host(state, "fast", last_picked_id=290)
        slow = add_host(state, "slow", last_picked_id=250)
        for n in range(8):
            fast.compiled.add(JobStat(n + 1, 1000, 10))
            slow.compiled.add(JobStat(n + 1, 1000, 100))
        state.all_stats.add(JobStat(1, 10_000, 10))
        state.last_job_id = 300
        job = add_job(state, sub)  # 301: picked before 301 - 20 * 3 = 241 is stale
        assert _index_answer(state, job) == (True, fast)
        slow.last_picked_id = 200  # placed an older queued job
        state.touch(slow)
        assert state.index is not None
        assert placement._pick_fastest(state, job, list(state.hosts.values())) is slow
        assert state.index.pick(job) == (True, slow)
        slow.last_picked_id = 299  # and picked again: not stale any more
        state.touch(slow)
        assert state.index.pick(job) == (True, fast)
