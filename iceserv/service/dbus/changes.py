"""Coalesced ``PropertiesChanged``: many changes, at most one signal per interval.

This module owns :class:`ChangeCoalescer`.  An interface calls
:meth:`ChangeCoalescer.poke` whenever its properties may have changed (a
scheduler event, a method call); the coalescer then takes a snapshot of the
property values, at the earliest *interval* seconds after the previous
signal, and emits only the values that differ from the last ones sent.  A
busy cluster changes its job counts hundreds of times a second; listeners
(``busctl monitor``, desktop applets) need the current value, not every
step.  Pokes in one event-loop turn always collapse into one snapshot.
A property left out of the snapshot says so in introspection
(:func:`declare_emits_changed`), so proxies know not to wait for a signal.

It must not know which interface it serves or hold a bus; the interface
passes its snapshot and emit functions in.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

    from dbus_fast.introspection import Property

__all__ = ["DEFAULT_INTERVAL", "ChangeCoalescer", "declare_emits_changed"]

#: Seconds between two ``PropertiesChanged`` signals of one interface.
DEFAULT_INTERVAL: Final = 0.5
_EMITS_CHANGED_SIGNAL: Final = "org.freedesktop.DBus.Property.EmitsChangedSignal"


def declare_emits_changed(prop: Property, emits: Literal["const", "false"]) -> None:
    """Say in *prop*'s introspection that no ``PropertiesChanged`` carries it.

    ``const``: the value never changes, busctl and proxies may cache it;
    ``false``: it changes without a signal, so they must read it again.
    """
    prop.annotations[_EMITS_CHANGED_SIGNAL] = emits


class ChangeCoalescer:
    """Emit changed property values at most once per *interval* seconds.

    *snapshot* returns the current values by D-Bus property name; *emit*
    sends a ``PropertiesChanged`` with the values that changed.  The first
    snapshot is taken at construction, so only later changes are signalled.
    """

    def __init__(
        self,
        snapshot: Callable[[], dict[str, Any]],
        emit: Callable[[dict[str, Any]], None],
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self._snapshot = snapshot
        self._emit = emit
        self.interval = interval
        self._last = snapshot()
        self._last_emit = float("-inf")
        self._pending: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        """Note that values may have changed; a snapshot follows soon."""
        if self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last_emit + self.interval - loop.time())
        self._pending = loop.call_later(delay, self._flush)

    def close(self) -> None:
        """Drop a pending snapshot (the interface is going away)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _flush(self) -> None:
        self._pending = None
        current = self._snapshot()
        changed = {key: value for key, value in current.items() if self._last.get(key) != value}
        self._last = current
        if changed:
            self._last_emit = asyncio.get_running_loop().time()
            self._emit(changed)
