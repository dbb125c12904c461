"""Tests for iceserv.netio.limits: raising RLIMIT_NOFILE and fitting budgets under it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from iceserv.netio import fit_budget, raise_nofile_limit

_CHILD = """
import resource, sys
from iceserv.netio import raise_nofile_limit
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
result = raise_nofile_limit()
print(result.before, result.soft, result.hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0],
      repr(result.error))
"""


def _in_child(soft: int, hard: int) -> list[str]:
    """Run raise_nofile_limit in a child with the given limits (ours stay untouched)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(soft), str(hard)], check=True,
                         capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    return out.split()


class TestRaiseNofileLimit:
    def test_soft_goes_up_to_hard(self):
        """A soft limit below the hard one is raised to it."""
        assert _in_child(256, 2048) == ["256", "2048", "2048", "2048", "''"]

    def test_equal_limits_stay(self):
        """Nothing to do when soft already equals hard."""
        assert _in_child(512, 512) == ["512", "512", "512", "512", "''"]

    def test_never_raises(self):
        """In this process the call returns a result whatever the limits are."""
        result = raise_nofile_limit()
        assert result.soft >= result.before


class TestFitBudget:
    @pytest.mark.parametrize(
        ("wanted", "available", "reserve", "fitted"),
        [(4096, 65536, 64, 4096), (4096, 1024, 64, 960), (10, 50, 64, 1), (0, 100, 0, 1)],
    )
    def test_fit(self, wanted, available, reserve, fitted):
        """The budget is lowered to leave the reserve free, but never below 1."""
        assert fit_budget(wanted, available, reserve) == fitted
