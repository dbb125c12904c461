"""Tests of iceserv.protocol.tickets: job tickets bound to job, hosts and expiry, single use."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iceserv.protocol.auth import AuthError, KeyRing
from iceserv.protocol.tickets import TicketLedger, issue_ticket, ticket_address, verify_ticket

RING = KeyRing((bytes(range(32)),))
JOB = {"job_id": 42, "client": "10.0.0.2", "server": "10.0.0.3"}


def _ticket(ring: KeyRing = RING, expires: int = 1000) -> str:
    return issue_ticket(ring, expires=expires, **JOB)


class TestTickets:
    def test_valid_ticket(self):
        """A fresh ticket for this job, client and server is accepted; its expiry returned."""
        assert verify_ticket(RING, _ticket(), now=999.0, **JOB) == 1000

    def test_expired(self):
        """After its expiry a ticket is refused."""
        with pytest.raises(AuthError, match="expired"):
            verify_ticket(RING, _ticket(), now=1000.5, **JOB)

    @pytest.mark.parametrize("field", ["job_id", "client", "server"])
    def test_other_job_or_host(self, field):
        """A ticket is good only for its own job id, client host and server host."""
        other = {**JOB, field: 43 if field == "job_id" else "10.0.0.99"}
        with pytest.raises(AuthError, match="another job or host"):
            verify_ticket(RING, _ticket(), now=0.0, **other)

    def test_rotation_and_unknown_key(self):
        """The previous key still verifies; a key we never held does not."""
        old = KeyRing((bytes(range(1, 33)),))
        ticket = _ticket(old)
        assert verify_ticket(KeyRing((RING.keys[0], old.keys[0])), ticket, now=0.0, **JOB)
        with pytest.raises(AuthError, match="key we do not hold"):
            verify_ticket(RING, ticket, now=0.0, **JOB)

    @given(index=st.integers(0, 400), char=st.sampled_from("0123456789abcdefx .-"))
    def test_any_altered_character_fails(self, index, char):
        """Changing any character of a ticket makes it fail (never pass for something else)."""
        ticket = _ticket()
        index %= len(ticket)
        if ticket[index] == char:
            return
        altered = ticket[:index] + char + ticket[index + 1 :]
        with pytest.raises(AuthError):
            verify_ticket(RING, altered, now=0.0, **JOB)

    @pytest.mark.parametrize(
        "respell",
        [
            lambda t: t.replace(" 42 ", " 042 "),
            lambda t: t.replace(" 42 ", " +42 "),
            lambda t: t.replace(" 42 ", " 4_2 "),
            lambda t: t.replace(" 1000 ", " 1_000 "),
            lambda t: t[:-1] + t[-1].upper() if t[-1].isalpha() else t[:-64] + t[-64:].upper(),
            lambda t: t.replace(t.split(" ")[1], t.split(" ")[1].upper()),
        ],
    )
    def test_another_spelling_of_a_valid_ticket_is_refused(self, respell):
        """Only issue_ticket's spelling passes: a respelt ticket (same MAC) cannot dodge the
        ledger, which spends texts (a replay found by the core's Hypothesis test)."""
        ticket = _ticket()
        other = respell(ticket)
        assert other != ticket
        with pytest.raises(AuthError, match="malformed"):
            verify_ticket(RING, other, now=0.0, **JOB)

    @given(st.text(max_size=600))
    def test_garbage(self, text):
        """Arbitrary text is a typed AuthError, never a crash."""
        with pytest.raises(AuthError):
            verify_ticket(RING, text, now=0.0, **JOB)


class TestLedger:
    def test_single_use(self):
        """A spent ticket is refused the second time (a captured ticket cannot be replayed)."""
        ledger = TicketLedger()
        ledger.spend("t", 10, now=0.0)
        with pytest.raises(AuthError, match="replayed"):
            ledger.spend("t", 10, now=1.0)

    def test_bounded_and_fail_closed(self):
        """Full of live tickets it refuses new ones; expired ones make room."""
        ledger = TicketLedger(limit=2)
        ledger.spend("a", 10, now=0.0)
        ledger.spend("b", 20, now=0.0)
        with pytest.raises(AuthError, match="too many"):
            ledger.spend("c", 30, now=5.0)
        ledger.spend("c", 30, now=15.0)  # "a" expired at 10
        assert len(ledger) == 2


class TestTicketAddress:
    @pytest.mark.parametrize(
        ("given", "written"),
        [
            ("10.0.0.2", "10.0.0.2"),
            ("::ffff:10.0.0.2", "10.0.0.2"),
            ("::1", "127.0.0.1"),
            ("localhost", "127.0.0.1"),
            ("fd00:0:0::2", "fd00::2"),
            ("fe80::2%eth0", "fe80::2"),
        ],
    )
    def test_both_ends_spell_an_address_alike(self, given, written):
        """Mapped IPv4, IPv6 spellings, zones and loopback names are written one way."""
        assert ticket_address(given) == written
