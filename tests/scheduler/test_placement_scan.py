"""The fast host scan of pick_server decides exactly as the plain statement of its rule.

``placement._pick_fastest`` inlines the eligibility tests and rates each host
once, because it runs over every daemon for every job (a profile at 1,000
daemons put two thirds of the scheduler's time there).  ``reference_pick`` below
is the readable statement of the rule it must keep: 1.4's ``pick_server`` loop
(``scheduler.cpp``) written with :func:`eligible_now`, :func:`can_install`,
:func:`envs_match` and :func:`server_speed`, with iceserv's one change to it
(``takes_lead``: where a job would queue, the sooner expected finish decides).
Hypothesis builds clusters in which every one of those tests can go either way.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scheduler.builders import add_host, add_job

from iceserv.protocol import EnvEntry
from iceserv.scheduler import placement
from iceserv.scheduler.state import ClusterState, Host, Job, JobStat

PLATFORMS = ("x86_64", "i686", "ppc", "ppc64")
ENVS = tuple(EnvEntry(platform, name) for platform in PLATFORMS[:3] for name in ("a", "b"))


def faster(leader: Host, host: Host, job: Job) -> bool:
    """1.4: only a leader with statistics can be beaten, by a higher rating."""
    return bool(len(leader.compiled)) and (
        placement.server_speed(leader, job) < placement.server_speed(host, job)
    )


def queues_at(host: Host) -> bool:
    """A job given to *host* now would wait for a slot (preload)."""
    return len(host.jobs) >= host.max_jobs


def rated(host: Host) -> bool:
    """*host* has a rating to estimate with."""
    return host.compiled.output_sum > 0 and host.compiled.user_sum > 0


def takes_lead(leader: Host, host: Host, job: Job) -> bool:
    """1.4 takes a faster host with a free slot; where either would queue, the sooner finish."""
    if rated(leader) and rated(host) and (queues_at(leader) or queues_at(host)):
        return placement._expected_finish(host, job) < placement._expected_finish(leader, job)
    return not queues_at(host) and faster(leader, host, job)


def reference_pick(state: ClusterState, job: Job, hosts: list[Host]) -> Host | None:
    """1.4's scan, literally: usable hosts in login order, early returns, leaders by speed.

    The one change is iceserv's: ``takes_lead`` instead of "faster and a free slot".
    """
    best = best_uninstalled = best_preload = None
    for host in hosts:
        own = host.host_id == job.submitter
        usable = (
            placement.eligible_now(state, host, job)
            and placement.can_install(state, host, job)
            and (host.chroot_possible or own)
            and (not host.noremote or own)
        )
        if not usable:
            continue
        installed = bool(placement.envs_match(host, job))
        if not host.last_picked_id:
            return host
        if not len(host.compiled) and not host.jobs and host.max_jobs > 0:
            return host if installed else best or host
        if job.job_id - host.last_picked_id > 20 * len(hosts):
            return host
        leader = best if installed else best_uninstalled
        if leader is None or takes_lead(leader, host, job):
            leader = host
        elif queues_at(host) and faster(leader, host, job):
            best_preload = host
        if installed:
            best = leader
        else:
            best_uninstalled = leader
    return best or best_uninstalled or best_preload


def _mostly(usual: object, rare: object) -> st.SearchStrategy[object]:
    """*usual* four times in five: a host must pass a dozen tests to be usable at all."""
    return st.sampled_from([usual, usual, usual, usual, rare])


_RARELY = st.sampled_from([False, False, False, False, True])
_USUALLY = st.sampled_from([True, True, True, True, False])
_HOST = st.fixed_dictionaries({
    "platform": _mostly("x86_64", "ppc64"),
    "max_jobs": st.sampled_from([0, 1, 2, 4, 4, 8]),
    "running": st.sampled_from([0, 1, 1, 2, 2, 3, 4, 5, 11]),
    "load": st.sampled_from([0, 0, 250, 999, 1000]),
    "installing": _RARELY,
    "pinged": _RARELY,
    "chroot_possible": _USUALLY,
    "noremote": _RARELY,
    "version": _mostly(43, 21),
    "features": _mostly(3, 0),
    "accepting": _USUALLY,
    "envs": st.lists(st.sampled_from(ENVS), max_size=3, unique=True),
    "last_picked_id": st.sampled_from([0, 150, 241, 261, 290, 290, 290]),
    "stats": st.lists(st.tuples(st.integers(0, 90_000), st.integers(0, 900)), max_size=9),
    "client_count": st.integers(0, 9),
    "drained": _RARELY,
})  # fmt: skip


#: A busy cluster in its steady state: every host rated, picked lately, reachable and able
#: to run the job, so only slots, load, environments and speed decide (the leader logic).
_STEADY = {"platform": "x86_64", "installing": False, "pinged": False, "chroot_possible": True,
           "noremote": False, "version": 43, "features": 3, "accepting": True,
           "last_picked_id": 290, "drained": False}  # fmt: skip


def _build(data: st.DataObject, *, steady: bool = False) -> tuple[ClusterState, Job]:
    state = ClusterState()
    specs = data.draw(st.lists(_HOST, min_size=1, max_size=7), label="hosts")
    if steady:
        specs = [{**spec, **_STEADY, "stats": spec["stats"] or [(50_000, 100)]} for spec in specs]
    hosts = []
    for i, spec in enumerate(specs):
        host = add_host(
            state, f"h{i}", platform=spec["platform"], max_jobs=spec["max_jobs"],
            jobs=list(range(1000 * (i + 1), 1000 * (i + 1) + spec["running"])),
            load=spec["load"], busy_installing_since=1.0 if spec["installing"] else None,
            ping_deadline=5.0 if spec["pinged"] else None,
            chroot_possible=spec["chroot_possible"], noremote=spec["noremote"],
            version=spec["version"], features=spec["features"], envs=tuple(spec["envs"]),
            last_picked_id=spec["last_picked_id"], client_count=spec["client_count"],
        )  # fmt: skip
        host.probe.accepting = spec["accepting"]
        for n, (size, user) in enumerate(spec["stats"]):
            host.compiled.add(JobStat(n + 1, size, user))
        if spec["drained"]:
            state.drained.append(host.nodename)
        hosts.append(host)
    submitter = data.draw(st.sampled_from(hosts), label="submitter")
    for victim in data.draw(st.lists(st.sampled_from(hosts), max_size=2), label="blacklisted"):
        env = data.draw(st.sampled_from(ENVS), label="blacklisted env")
        submitter.blacklist.setdefault(victim.host_id, []).append((env.platform, env.name))
    state.last_job_id = 300 if steady else data.draw(_mostly(300, 0), label="job id base")
    job = add_job(
        state, submitter,
        envs=tuple(data.draw(st.lists(st.sampled_from(ENVS), min_size=1, max_size=3,
                                      unique=True), label="job envs")),
        target=data.draw(st.sampled_from(PLATFORMS[:3]), label="target"),
        minimal_host_version=data.draw(_mostly(21, 43), label="min version"),
        required_features=data.draw(_mostly(0, 2), label="required features"),
    )  # fmt: skip
    state.all_stats.add(JobStat(1, 10_000, 10))
    return state, job


class TestFastScan:
    @settings(max_examples=1500)
    @given(data=st.data())
    def test_same_host_as_the_literal_loop(self, data):
        """For any cluster, the fast scan returns the very host 1.4's loop returns."""
        state, job = _build(data)
        hosts = list(state.hosts.values())
        assert placement._pick_fastest(state, job, hosts) is reference_pick(state, job, hosts)

    @settings(max_examples=1500)
    @given(data=st.data())
    def test_same_host_in_a_steady_cluster(self, data):
        """Among rated, recently picked hosts, the leaders by speed, slots and preload agree."""
        state, job = _build(data, steady=True)
        hosts = list(state.hosts.values())
        assert placement._pick_fastest(state, job, hosts) is reference_pick(state, job, hosts)

    def test_a_higher_rating_that_would_finish_later_does_not_lead(self):
        """A barely rated host's boosted rating beats the leader's, but its queue loses."""
        state = ClusterState()
        sub = add_host(state, "sub", max_jobs=0)
        steady = add_host(state, "steady", max_jobs=1, last_picked_id=290)
        boosted = add_host(state, "boosted", max_jobs=1, jobs=[7], last_picked_id=290)
        for n in range(8):
            steady.compiled.add(JobStat(n + 1, 1000, 10))  # rating 100
        boosted.compiled.add(JobStat(9, 1000, 10))  # rating 100, x4 for one stat, x0.5 busy
        state.all_stats.add(JobStat(1, 10_000, 10))
        state.last_job_id = 300
        job = add_job(state, sub)
        assert placement.server_speed(boosted, job) > placement.server_speed(steady, job)
        hosts = list(state.hosts.values())
        assert placement._pick_fastest(state, job, hosts) is steady
        assert reference_pick(state, job, hosts) is steady

    def test_the_generator_reaches_every_outcome(self):
        """The clusters above are not all trivial: each kind of answer occurs."""
        outcomes: set[str] = set()

        @settings(max_examples=1000, database=None, derandomize=True)
        @given(data=st.data())
        def collect(data):
            state, job = _build(data)
            host = reference_pick(state, job, list(state.hosts.values()))
            if host is None:
                outcomes.add("none")
            elif host.host_id == job.submitter:
                outcomes.add("submitter")
            elif len(host.compiled):
                outcomes.add("rated server")
            else:
                outcomes.add("unrated server")

        collect()
        assert outcomes == {"none", "submitter", "rated server", "unrated server"}
