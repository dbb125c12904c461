"""Log throttling: one record per interval for an event that may repeat thousands of times.

A flood of refused connections must not become a flood of log records.
:class:`Throttle` counts occurrences and says when the next record is due
(with how many occurrences it summarises).  It is pure: the caller passes
the time and does the logging.
"""

from __future__ import annotations

__all__ = ["Throttle"]


class Throttle:
    """Counts occurrences; lets one log record through per *interval* seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -float("inf")
        self._pending = 0

    def note(self, now: float) -> int:
        """Count one occurrence at *now*; return how many to report now (0: stay quiet)."""
        self._pending += 1
        if now - self._last < self.interval:
            return 0
        self._last = now
        count, self._pending = self._pending, 0
        return count
