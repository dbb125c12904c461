"""A read-only facade over a running daemon, for D-Bus, status lines and tests.

This module owns :class:`DaemonControl` and the immutable views it returns
(:class:`DaemonStatus`, :class:`EnvironmentView`).  Callers (the D-Bus
adapter in ``iceserv.app.daemon_bus``, sd_notify ``STATUS=`` lines, tests)
depend on these values, never on the daemon's internals; the facade changes
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from iceserv.daemon.environments import CachedEnvironment as EnvironmentView

if TYPE_CHECKING:
    from iceserv.daemon.server import Daemon

__all__ = ["DaemonControl", "DaemonStatus", "EnvironmentView"]


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
            scheduler=f"{address[0]}:{address[1]}" if address and daemon.link.connected else None,
            scheduler_state=daemon.link.state.value,
            load=daemon.tracker.current_load,
            cache_size=daemon.cache.size,
            environments=daemon.cache.describe(),
        )
