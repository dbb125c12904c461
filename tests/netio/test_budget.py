"""Tests for iceserv.netio.budget: host keys and per-host/total connection counting."""

from __future__ import annotations

import pytest

from iceserv.netio import Admission, ConnectionBudget, host_key


class TestHostKey:
    @pytest.mark.parametrize(
        ("address", "key"),
        [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
            ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
            ("fe80::1%eth0", "fe80::/64"),
            ("?", "?"),
        ],
    )
    def test_keys(self, address, key):
        """IPv4 counts per address, IPv6 per /64, mapped IPv4 as IPv4, anything else as is."""
        assert host_key(address) == key


class TestConnectionBudget:
    def test_per_host_limit(self):
        """A host over its limit is refused while others still fit."""
        budget = ConnectionBudget(total=10, per_host=2)
        assert [budget.admit("a") for _ in range(3)] == [
            Admission.ADMITTED, Admission.ADMITTED, Admission.HOST_FULL,
        ]  # fmt: skip
        assert budget.admit("b") is Admission.ADMITTED
        assert (budget.count, budget.count_of("a"), budget.count_of("b")) == (3, 2, 1)

    def test_total_limit(self):
        """Once the total is reached every host is refused."""
        budget = ConnectionBudget(total=2, per_host=5)
        assert budget.admit("a") is Admission.ADMITTED
        assert budget.admit("b") is Admission.ADMITTED
        assert budget.admit("c") is Admission.TOTAL_FULL
        assert budget.count == 2

    def test_release_frees_a_place(self):
        """release() gives the place back, to the same host or another."""
        budget = ConnectionBudget(total=1, per_host=1)
        budget.admit("a")
        assert budget.check("b") is Admission.TOTAL_FULL
        budget.release("a")
        assert budget.check("b") is Admission.ADMITTED
        assert (budget.count, budget.count_of("a")) == (0, 0)

    def test_release_without_admit_is_an_error(self):
        """A release that was never admitted is a bug in the caller, not a silent miscount."""
        budget = ConnectionBudget(total=1, per_host=1)
        with pytest.raises(ValueError, match="without admit"):
            budget.release("a")

    def test_check_takes_no_place(self):
        """check() answers without counting."""
        budget = ConnectionBudget(total=1, per_host=1)
        assert budget.check("a") is Admission.ADMITTED
        assert budget.count == 0

    def test_zero_admits_nothing(self):
        """A limit of 0 refuses every connection."""
        assert ConnectionBudget(total=5, per_host=0).admit("a") is Admission.HOST_FULL
        assert ConnectionBudget(total=0, per_host=5).admit("a") is Admission.TOTAL_FULL

    def test_negative_limits_are_rejected(self):
        """Negative limits are a configuration error."""
        with pytest.raises(ValueError, match="negative"):
            ConnectionBudget(total=-1, per_host=1)
