"""Why a queued job is not placed: one reason per daemon, for the scheduler's log.

This module owns :func:`reasons`, which explains for each logged-in daemon
why it cannot take a given job right now, in the order the placement rules
of :mod:`iceserv.scheduler.placement` apply them (reference §7.3).  A job
no daemon could ever take goes back to its submitter at once (1.4's rule);
one waits while some daemon could take it later, e.g. one that is busy
installing, has all slots busy or has not sent its first STATS.  1.4 says
only "No suitable host found, delaying" at debug level, so a wait on a
daemon left busy installing for 120 s looked like a hang.  It is pure: it
reads the state and changes nothing, and it must not decide placement itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from iceserv.scheduler.placement import FULL_LOAD, can_install, reachable
from iceserv.scheduler.state import IPV4, IPV6

if TYPE_CHECKING:
    from iceserv.scheduler.state import ClusterState, Host, Job

__all__ = ["reasons", "why_unreachable"]

#: A server holds this many jobs beyond its slots at most (placement's preload rule).
_PRELOAD_PER_SLOTS: Final = 4


def _address(host: Host) -> str:
    return f"[{host.ip}]:{host.port}" if ":" in host.ip else f"{host.ip}:{host.port}"


_FAMILY_NAMES: Final = {IPV4: "IPv4", IPV6: "IPv6", IPV4 | IPV6: "IPv4 and IPv6", 0: "nothing"}


def why_unreachable(submitter: Host | None, server: Host) -> str:
    """Say why *submitter*'s clients cannot be sent to *server* (:func:`reachable` is False)."""
    if not server.offers and server.link_local:
        return f"is known only by the link-local address {server.ip}, of no use to other hosts"
    offered = ", ".join(a for a in (server.v4, server.v6) if a) or server.ip
    if submitter is not None and not submitter.declared_reach and ":" not in submitter.ip:
        return (
            f"is known only by the IPv6 address {offered} and the submitter logged in"
            " over IPv4 (icecream 1.4 clients cannot reach IPv6)"
        )
    reach = submitter.reach if submitter is not None else 0
    return (
        f"has no address the submitter's clients can reach: it offers {offered}"
        f" ({_FAMILY_NAMES[server.offers]}), they reach {_FAMILY_NAMES[reach]} only"
    )


def _why_not_ever(state: ClusterState, host: Host, job: Job, *, own: bool) -> str | None:
    """Return the first rule that keeps *host* from ever taking *job*, or None."""
    checks = (
        (
            job.preferred_host and not host.matches(job.preferred_host),
            f"not the preferred host {job.preferred_host}",
        ),
        (host.max_jobs <= 0, "has no job slots (-m 0)"),
        (not own and host.noremote, "takes no remote jobs (--no-remote)"),
        (not own and state.is_drained(host), "is drained"),
        (not own and not host.chroot_possible, "cannot chroot, so takes only its own jobs"),
        (host.ping_deadline is not None, "does not answer the scheduler's ping"),
        (
            job.minimal_host_version > host.version,
            f"speaks protocol {host.version}, the job needs {job.minimal_host_version}",
        ),
        (
            host.features & job.required_features != job.required_features,
            "lacks the environment compression the job needs",
        ),
        (not host.probe.accepting, f"its compile port {_address(host)} does not answer"),
        (
            not own and not reachable(state.hosts.get(job.submitter), host),
            why_unreachable(state.hosts.get(job.submitter), host),
        ),
        (
            not can_install(state, host, job, ignore_installing=True),
            f"runs {host.platform}, no environment of the job fits (or it is blacklisted)",
        ),
    )
    return next((text for failed, text in checks if failed), None)


def _why_not_now(host: Host, job: Job, now: float) -> str:
    own = job.submitter == host.host_id
    if host.busy_installing_since is not None:
        since = max(0, int(now - host.busy_installing_since))
        return f"is busy installing an environment (since {since} s)"
    if host.load >= FULL_LOAD:
        return "reports full load (1000; before its first STATS too)"
    limit = host.max_jobs if own else host.max_jobs + 1 + host.max_jobs // _PRELOAD_PER_SLOTS
    if len(host.jobs) >= limit:
        return f"has all its slots busy ({len(host.jobs)} jobs for {host.max_jobs} slots)"
    return "could take it (placed with the next event)"


def reasons(state: ClusterState, job: Job, now: float) -> tuple[tuple[str, str], ...]:
    """``(nodename, why it cannot take *job* now)`` for every logged-in daemon."""
    found = []
    for host in state.hosts.values():
        own = job.submitter == host.host_id
        why = _why_not_ever(state, host, job, own=own)
        found.append((host.nodename, why if why is not None else _why_not_now(host, job, now)))
    return tuple(found)
