"""Simulated clusters: hosts with speeds, slots and join times, and the network between them.

This module owns the description of the cluster a trace is replayed on,
either as a JSON file::

    {"hosts": [{"name": "fast", "speed": 2.0, "slots": 8},
               {"name": "late", "speed": 1.0, "slots": 4, "join": 60}],
     "bandwidth": 125000000, "env_size": 60000000, "install_seconds": 2.0}

or as compact ``NAME:SPEED:SLOTS[@JOIN]`` strings from the command line.
``speed`` is relative to the machine the trace was recorded on (a job of
``cpu`` seconds takes ``cpu / speed`` there); ``slots`` is the daemon's
``max_kids``; ``join`` is when its daemon logs in; ``load`` is the
non-icecream load (0..999) it reports in STATS.  A host listed in ``envs``
has those environments installed from the start; others receive the
submitter's tarball with their first job.

It only describes; :mod:`iceserv.sim.engine` runs the simulation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from iceserv.sim.trace import SimInputError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ClusterSpec", "HostSpec", "parse_cluster", "parse_host", "read_cluster"]

_HOST_KEYS: Final = frozenset({"name", "speed", "slots", "join", "load", "envs"})
_CLUSTER_KEYS: Final = frozenset(
    {"hosts", "bandwidth", "env_size", "install_seconds", "latency", "wire_ratio"}
)
_FULL_LOAD: Final = 1000


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One simulated machine running a daemon."""

    name: str
    speed: float = 1.0
    slots: int = 4
    join: float = 0.0
    load: int = 0
    envs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Reject values no machine has."""
        if not self.name or any(c.isspace() or c == ":" for c in self.name):
            msg = f"host name {self.name!r} must be non-empty, without spaces or ':'"
            raise SimInputError(msg)
        if not (math.isfinite(self.speed) and self.speed > 0):
            msg = f"host {self.name}: speed must be > 0"
            raise SimInputError(msg)
        if self.slots < 0 or not (math.isfinite(self.join) and self.join >= 0):
            msg = f"host {self.name}: slots and join must not be negative"
            raise SimInputError(msg)
        if not 0 <= self.load < _FULL_LOAD:
            msg = f"host {self.name}: load must be in 0..999"
            raise SimInputError(msg)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """The hosts (in login order for equal join times) and the network.

    ``bandwidth`` is bytes per second between any two hosts, ``wire_ratio``
    the size on the wire of source and object data relative to their raw
    size (zstd), ``env_size`` the compressed environment tarball,
    ``install_seconds`` what unpacking it takes, ``latency`` one message's
    delay.
    """

    hosts: tuple[HostSpec, ...]
    bandwidth: float = 125e6
    env_size: int = 60_000_000
    install_seconds: float = 2.0
    latency: float = 0.0005
    wire_ratio: float = 0.25

    def __post_init__(self) -> None:
        """Reject duplicate names and impossible network figures."""
        names = [host.name for host in self.hosts]
        if len(set(names)) != len(names):
            msg = "host names must be unique"
            raise SimInputError(msg)
        if not self.hosts:
            msg = "a cluster needs at least one host"
            raise SimInputError(msg)
        figures = (self.bandwidth, self.install_seconds, self.latency, self.wire_ratio)
        if self.bandwidth <= 0 or not all(math.isfinite(x) and x >= 0 for x in figures):
            msg = "bandwidth must be > 0; install_seconds, latency and wire_ratio >= 0"
            raise SimInputError(msg)

    def host(self, name: str) -> HostSpec | None:
        """Return the host called *name*, if any."""
        return next((host for host in self.hosts if host.name == name), None)


def parse_host(spec: str) -> HostSpec:
    """Parse ``NAME:SPEED:SLOTS[@JOIN]`` (``fast:2:8``, ``late:1:4@60``)."""
    body, _, join = spec.partition("@")
    parts = body.split(":")
    if len(parts) != 3:
        msg = f"host {spec!r} is not NAME:SPEED:SLOTS[@JOIN]"
        raise SimInputError(msg)
    try:
        return HostSpec(parts[0], float(parts[1]), int(parts[2]), float(join or 0))
    except ValueError as exc:
        if isinstance(exc, SimInputError):
            raise
        msg = f"host {spec!r}: {exc}"
        raise SimInputError(msg) from None


def _host(record: object) -> HostSpec:
    if not isinstance(record, dict) or not set(record) <= _HOST_KEYS or "name" not in record:
        msg = f"a host is an object with name and some of {sorted(_HOST_KEYS)}: {record!r}"
        raise SimInputError(msg)
    try:
        return HostSpec(
            name=str(record["name"]),
            speed=float(record.get("speed", 1.0)),
            slots=int(record.get("slots", 4)),
            join=float(record.get("join", 0.0)),
            load=int(record.get("load", 0)),
            envs=tuple(str(env) for env in record.get("envs", ())),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SimInputError):
            raise
        msg = f"host {record.get('name')!r}: {exc}"
        raise SimInputError(msg) from None


def parse_cluster(text: str, source: str = "<cluster>") -> ClusterSpec:
    """Parse a JSON cluster description (see the module docstring)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        msg = f"not JSON: {exc}"
        raise SimInputError(msg, source=source) from None
    if not isinstance(data, dict) or not isinstance(data.get("hosts"), list):
        msg = 'expected {"hosts": [...], ...}'
        raise SimInputError(msg, source=source)
    unknown = set(data) - _CLUSTER_KEYS - {"comment"}
    if unknown:
        msg = f"unknown keys {sorted(unknown)}"
        raise SimInputError(msg, source=source)
    try:
        network = {key: float(data[key]) for key in _CLUSTER_KEYS - {"hosts"} if key in data}
        env_size = int(network.pop("env_size", 60_000_000))
        return ClusterSpec(tuple(_host(h) for h in data["hosts"]), env_size=env_size, **network)
    except (TypeError, ValueError) as exc:
        raise SimInputError(str(exc), source=source) from None


def read_cluster(path: Path) -> ClusterSpec:
    """Read and parse the cluster file *path*."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read: {exc}"
        raise SimInputError(msg, source=str(path)) from None
    return parse_cluster(text, str(path))
