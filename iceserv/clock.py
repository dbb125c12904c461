"""The clock seam: what I/O code asks for the time (STYLE.md convention 7).

This module owns the :class:`Clock` protocol that the services' asyncio
shells take.  ``app/`` passes the running program's clock
(``iceserv.app.program.WallClock``) and tests pass
``iceserv.testing.FakeClock``.  Pure code never takes a clock: it receives
``now``.  No implementation lives here.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Clock"]


class Clock(Protocol):
    """Wall-clock seconds (``time.time`` or ``testing.FakeClock``)."""

    def now(self) -> float:
        """Return the current time in seconds."""
        ...
