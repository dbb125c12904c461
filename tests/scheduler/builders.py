"""Builders for scheduler tests: hosts and jobs in a ClusterState, logged-in peers in a core."""

from __future__ import annotations

import random
from typing import Any

from iceserv.protocol import EnvEntry, GetCS, Login, Stats
from iceserv.scheduler.effects import Effect, Send, ToMonitors
from iceserv.scheduler.handlers import Scheduler, SchedulerConfig
from iceserv.scheduler.state import ClusterState, Host, Job

T0 = 1_700_000_000.0
NATIVE = (EnvEntry("x86_64", "native"),)


def add_host(state: ClusterState, name: str, **kwargs: Any) -> Host:
    """Add a logged-in host with sensible defaults (idle, reachable, load 0)."""
    host_id = state.new_host_id()
    values: dict[str, Any] = {
        "host_id": host_id, "conn_id": 100 + host_id, "ip": f"10.0.0.{host_id}",
        "port": 10245, "nodename": name, "platform": "x86_64", "max_jobs": 4,
        "noremote": False, "chroot_possible": True, "features": 3, "version": 43,
        "protocol": 43, "envs": (), "last_talk": T0, "load": 0,
    }  # fmt: skip
    values.update(kwargs)
    host = Host(**values)
    state.hosts[host_id] = host
    return host


def add_job(state: ClusterState, submitter: Host, **kwargs: Any) -> Job:
    """Queue a job of *submitter* (native x86_64 environment by default)."""
    values: dict[str, Any] = {
        "job_id": state.new_job_id(), "submitter": submitter.host_id, "client_id": 1,
        "envs": NATIVE, "target": "x86_64", "filename": "src/a.c", "lang": 0,
        "arg_flags": 0, "preferred_host": "", "minimal_host_version": 21,
        "required_features": 0, "niceness": 0,
    }  # fmt: skip
    values.update(kwargs)
    job = Job(**values)
    state.jobs[job.job_id] = job
    state.queue.enqueue(job)
    submitter.submitted += 1
    return job


def new_core(*, seed: int = 1, persistent: bool = False, netname: str = "ICECREAM") -> Scheduler:
    """A core started at T0."""
    config = SchedulerConfig(start_time=int(T0), netname=netname, persistent_clients=persistent)
    rng = random.Random(seed)  # noqa: S311 - seeded on purpose
    return Scheduler(config, rng, T0)


def login(  # noqa: PLR0913 - test convenience: every LOGIN field has a default
    core: Scheduler,
    conn_id: int,
    name: str,
    *,
    ip: str = "",
    now: float = T0,
    protocol: int = 43,
    version: int = 43,
    load: int | None = 0,
    **fields: Any,
) -> list[Effect]:
    """Connect *conn_id*, log it in as daemon *name*; with *load*, also send STATS."""
    core.peer_connected(conn_id, ip or f"10.0.0.{conn_id}", protocol, version)
    values: dict[str, Any] = {"port": 10245, "max_kids": 4, "nodename": name,
                              "host_platform": "x86_64", "chroot_possible": True,
                              "supported_features": 3}  # fmt: skip
    values.update(fields)
    effects = core.handle_message(conn_id, Login(**values), now)
    if load is not None:
        effects += core.handle_message(conn_id, Stats(load=load), now)
    return effects


def get_cs(core: Scheduler, conn_id: int, now: float = T0, **fields: Any) -> list[Effect]:
    """Send a GET_CS for one native C job from *conn_id*."""
    values: dict[str, Any] = {"versions": NATIVE, "filename": "proj/src/a.c", "count": 1,
                              "target": "x86_64", "client_id": 7,
                              "minimal_host_version": 21}  # fmt: skip
    values.update(fields)
    return core.handle_message(conn_id, GetCS(**values), now)


def sends(effects: list[Effect], conn_id: int | None = None) -> list[Any]:
    """The messages sent (to *conn_id*, or to anyone)."""
    return [e.message for e in effects
            if isinstance(e, Send) and (conn_id is None or e.conn_id == conn_id)]  # fmt: skip


def to_monitors(effects: list[Effect]) -> list[Any]:
    """The messages broadcast to monitors."""
    return [e.message for e in effects if isinstance(e, ToMonitors)]
