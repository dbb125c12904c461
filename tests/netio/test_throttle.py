"""Tests for iceserv.netio.throttle: one log record per interval, with a count."""

from __future__ import annotations

from iceserv.netio import Throttle


class TestThrottle:
    def test_first_occurrence_is_reported(self):
        """The first occurrence is reported at once."""
        assert Throttle(10.0).note(100.0) == 1

    def test_occurrences_within_the_interval_are_counted_then_reported(self):
        """Occurrences inside the interval stay quiet and are summed into the next report."""
        throttle = Throttle(10.0)
        throttle.note(0.0)
        assert [throttle.note(t) for t in (1.0, 2.0, 9.9)] == [0, 0, 0]
        assert throttle.note(10.0) == 4

    def test_a_burst_yields_one_report(self):
        """Ten thousand occurrences in one second make one report."""
        throttle = Throttle(10.0)
        reports = [n for i in range(10_000) if (n := throttle.note(i / 10_000))]
        assert reports == [1]
