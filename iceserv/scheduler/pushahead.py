"""Which hosts should get a daemon's native environment before any job needs it (pure).

This module owns :func:`push_targets`, the scheduler's answer to iceserv's
``PUSH_QUERY`` (issue 17: a cold cluster's first compile should not wait for
the environment's transfer and unpack on the remote host).  A daemon that has
just built (or kept) its native environment asks which hosts lack it; it then
sends the environment to them itself, as a client would (TRANFER_ENV,
FILE_CHUNKs, VERIFY_ENV), and each host's re-LOGIN tells the scheduler it has
it, so the first job's USE_CS says ``got_env``.

A host is named when placement could ever give it a job of the asker built for
that platform (the job-independent rules of
:func:`~iceserv.scheduler.placement.eligible_ever`, as for ``SLOTS_QUERY``):
it has slots, answers pings, its compile port accepts, it can chroot, takes
remote jobs, is neither blocked nor drained, runs environments of that
platform and unpacks their compression (LOGIN's environment features); and
it is not the asker, does not list the environment in its LOGIN, the asker
did not blacklist it for that environment, and no other daemon was
sent to it for the same environment within :data:`PROMISE_SECONDS` (two
daemons with the same compiler build environments of the same name).  Idle
hosts come first (not installing, fewest jobs, lowest load), then the fastest;
at most :data:`MAX_TARGETS`.  A query stands while its daemon is connected:
a host that logs in later is named to it at once (:func:`targets_joining`).
No I/O, logging or clock: *now* is passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from iceserv.protocol import PushQuery, PushTargets
from iceserv.protocol.records import replace
from iceserv.scheduler import placement

if TYPE_CHECKING:
    from iceserv.scheduler.state import ClusterState, Host

__all__ = [
    "MAX_PROMISES",
    "MAX_TARGETS",
    "MAX_WANTS",
    "PROMISE_SECONDS",
    "push_targets",
    "targets_joining",
]

#: Hosts named in one PUSH_TARGETS, at most.
MAX_TARGETS: Final = 8
#: Seconds a host named for an environment is not named again for it (the push runs).
PROMISE_SECONDS: Final = 120.0
#: Environments one daemon's queries are remembered for, at most (its native ones: a few).
MAX_WANTS: Final = 16
#: Live promises per host, at most: a host with more is not named (a daemon flooding
#: PUSH_QUERYs with new names cannot make the scheduler hold more).
MAX_PROMISES: Final = 256


def _lacks(host: Host, target: str, name: str, now: float) -> bool:
    if any(env.platform == target and env.name == name for env in host.envs):
        return False
    if len(host.pushes) >= MAX_PROMISES:
        host.pushes = {k: v for k, v in host.pushes.items() if v > now}
        if len(host.pushes) >= MAX_PROMISES:
            return False
    until = host.pushes.get((target, name))
    return until is None or until <= now


def _may_take(state: ClusterState, host: Host, asker: Host, query: PushQuery) -> bool:
    target, name, features = query.platform, query.environment, query.required_features
    return (
        host.host_id != asker.host_id
        and host.features & features == features
        and host.max_jobs > 0
        and host.port > 0
        and host.ping_deadline is None
        and host.probe.accepting
        and host.chroot_possible
        and not host.noremote
        and not state.is_drained(host)
        and not state.is_blocked(host)
        and placement.platforms_compatible(host, target)
        and (target, name) not in asker.blacklist.get(host.host_id, ())
        and placement.reachable(asker, host)  # an address the asker's pusher can reach
    )


def _address(asker: Host, host: Host) -> str:
    """``ip:port``, or ``[v6]:port``: *host*'s address that *asker* reaches (IPv4 first)."""
    ip = placement.address_for(asker, host)
    return f"[{ip}]:{host.port}" if ":" in ip else f"{ip}:{host.port}"


def _idle_first(host: Host) -> tuple[bool, int, int, float]:
    return (
        host.busy_installing_since is not None,
        len(host.jobs),
        host.load,
        -placement.server_rating(host),
    )


def push_targets(state: ClusterState, asker: Host, query: PushQuery, now: float) -> PushTargets:
    """Return the hosts *asker* should push the environment of *query* to.

    The query's empty ``platform`` stands for the asker's own; a host must
    announce its ``required_features`` (the compression) to unpack it.  The
    hosts named are remembered as promised (:data:`PROMISE_SECONDS`), so
    another daemon asking for the same environment meanwhile is not sent to
    them too.
    """
    target, name = query.platform or asker.platform, query.environment
    query = replace(query, platform=target)
    if not name:
        return PushTargets(environment=name, target=target)
    if (target, name) in asker.push_wants or len(asker.push_wants) < MAX_WANTS:
        asker.push_wants[target, name] = query
        state.pushers[asker.host_id] = asker
    chosen = sorted(
        (
            h
            for h in state.hosts.values()
            if _may_take(state, h, asker, query) and _lacks(h, target, name, now)
        ),
        key=_idle_first,
    )[:MAX_TARGETS]
    for host in chosen:
        host.pushes[target, name] = now + PROMISE_SECONDS
    return PushTargets(
        environment=name, target=target, hosts=tuple(_address(asker, h) for h in chosen)
    )


def _login_order(host: Host) -> int:
    return host.host_id  # ids grow with each login: the order of ``state.hosts``


def targets_joining(
    state: ClusterState, newcomer: Host, now: float
) -> list[tuple[Host, PushTargets]]:
    """Return the PUSH_TARGETS naming *newcomer*, which just logged in, for each daemon that asked.

    A daemon's query stands while it is connected: a host that logs in later
    (a cold cluster's daemons start together, and one's prebuild may end
    before the others are in) is named to it as soon as it is known.
    """
    answers: list[tuple[Host, PushTargets]] = []
    for gone in [i for i, h in state.pushers.items() if state.hosts.get(i) is not h]:
        del state.pushers[gone]
    for asker in sorted(state.pushers.values(), key=_login_order):
        for (target, name), query in asker.push_wants.items():
            if _may_take(state, newcomer, asker, query) and _lacks(newcomer, target, name, now):
                newcomer.pushes[target, name] = now + PROMISE_SECONDS
                hosts = (_address(asker, newcomer),)
                answers.append((asker, PushTargets(environment=name, target=target, hosts=hosts)))
    return answers
