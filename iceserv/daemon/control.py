"""A read-only facade over a running daemon, for D-Bus, status lines and tests.

This module owns :class:`DaemonControl` and the immutable views it returns
(:class:`DaemonStatus`, :class:`EnvironmentView`, :class:`MetricsView`).
Callers (the D-Bus adapter in ``iceserv.app.daemon_bus``, sd_notify
``STATUS=`` lines, the ``/metrics`` endpoint of :mod:`iceserv.web`, tests)
depend on these values, never on the daemon's internals; the facade changes
nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from iceserv.daemon.environments import CachedEnvironment as EnvironmentView
from iceserv.daemon.slots import Work
from iceserv.netio import host_port

if TYPE_CHECKING:
    from iceserv.daemon.metrics import TotalsView
    from iceserv.daemon.server import Daemon

__all__ = ["DaemonControl", "DaemonStatus", "EnvironmentView", "MetricsView"]


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """A snapshot of the daemon."""

    slots_used: int
    slots_total: int
    waiting: int
    clients: int
    scheduler: str | None
    scheduler_state: str
    load: int
    cache_size: int
    environments: tuple[EnvironmentView, ...]

    def summary(self) -> str:
        """One line for ``STATUS=`` and logs, e.g. ``2/8 jobs, scheduler 10.0.0.2:8765``."""
        where = f"scheduler {self.scheduler}" if self.scheduler else self.scheduler_state
        return f"{self.slots_used}/{self.slots_total} jobs, {where}"


@dataclass(frozen=True, slots=True)
class MetricsView:
    """What ``/metrics`` shows: the daemon's state now and its running totals."""

    nodename: str
    platform: str
    slots_total: int
    slots_used: int
    remote_running: int
    local_running: int
    installs_running: int
    remote_waiting: int
    local_waiting: int
    clients: int
    load: int
    scheduler_connected: bool
    draining: bool
    environments: int
    native_environments: int
    cache_bytes: int
    cache_limit_bytes: int
    totals: TotalsView


class DaemonControl:
    """Read the state of *daemon* without touching it."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def status(self) -> DaemonStatus:
        """Return a snapshot of slots, scheduler connection and environments."""
        daemon = self._daemon
        address = daemon.link.address
        return DaemonStatus(
            slots_used=daemon.slots.used,
            slots_total=daemon.slots.capacity,
            waiting=daemon.slots.waiting(),
            clients=daemon.client_count,
            scheduler=host_port(*address) if address and daemon.link.connected else None,
            scheduler_state=daemon.link.state.value,
            load=daemon.tracker.current_load,
            cache_size=daemon.cache.size,
            environments=daemon.cache.describe(),
        )

    def metrics(self) -> MetricsView:
        """Return the gauges (slots, jobs, cache) and the running totals for ``/metrics``."""
        daemon = self._daemon
        slots = daemon.slots
        environments = daemon.cache.describe()
        native = sum(env.native for env in environments)
        return MetricsView(
            nodename=daemon.settings.nodename or os.uname().nodename,
            platform=daemon.settings.platform,
            slots_total=slots.capacity,
            slots_used=slots.used,
            remote_running=slots.children - slots.installs,
            local_running=slots.active,
            installs_running=slots.installs,
            remote_waiting=slots.waiting(Work.COMPILE),
            local_waiting=slots.waiting(Work.LINK) + slots.waiting(Work.USE_CS_SELF),
            clients=daemon.client_count,
            load=daemon.tracker.current_load,
            scheduler_connected=daemon.scheduler_connected,
            draining=daemon.draining,
            environments=len(environments) - native,
            native_environments=native,
            cache_bytes=daemon.cache.size,
            cache_limit_bytes=daemon.settings.cache_limit,
            totals=daemon.metrics.view(),
        )
