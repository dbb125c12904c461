"""Tests of the daemon's slot logic (reference §5.3) and the buffered source of queued jobs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iceserv.daemon.slots import FULL_LOAD, Grant, Slots, SourceBuffer, SourceTooLargeError, Work


class TestSlots:
    def test_capacity_is_at_least_one(self):
        """-m 0 still runs the daemon's own jobs one at a time: capacity max(1, max_kids)."""
        assert Slots(0).capacity == 1
        assert Slots(4).capacity == 4

    def test_link_jobs_first_then_use_cs_then_compiles(self):
        """Whatever the arrival order, LINK waiters go first, then USE_CS_SELF, then COMPILE."""
        slots = Slots(3)
        slots.enqueue(1, Work.COMPILE)
        slots.enqueue(2, Work.USE_CS_SELF)
        slots.enqueue(3, Work.LINK)
        assert slots.schedule(load=0) == [
            Grant(3, Work.LINK), Grant(2, Work.USE_CS_SELF), Grant(1, Work.COMPILE),
        ]  # fmt: skip

    def test_fifo_within_a_kind(self):
        """The oldest waiter of a kind is served first."""
        slots = Slots(1)
        for client in (5, 6, 7):
            slots.enqueue(client, Work.LINK)
        assert slots.schedule(0) == [Grant(5, Work.LINK)]
        slots.release(5)
        assert slots.schedule(0) == [Grant(6, Work.LINK)]

    def test_no_more_grants_than_capacity(self):
        """Grants stop when every slot is used; a release lets the next one in."""
        slots = Slots(2)
        for client in range(1, 6):
            slots.enqueue(client, Work.COMPILE)
        assert [g.client_id for g in slots.schedule(0)] == [1, 2]
        assert slots.schedule(0) == []
        assert slots.release(1) is Work.COMPILE
        assert [g.client_id for g in slots.schedule(0)] == [3]
        assert (slots.used, slots.waiting()) == (2, 2)

    def test_full_load_blocks_only_compiles(self):
        """At load 1000 remote compiles wait, but local work is still handed out."""
        slots = Slots(4)
        slots.enqueue(1, Work.COMPILE)
        slots.enqueue(2, Work.LINK)
        slots.enqueue(3, Work.USE_CS_SELF)
        assert [g.client_id for g in slots.schedule(FULL_LOAD)] == [2, 3]
        assert slots.waiting(Work.COMPILE) == 1
        assert slots.schedule(FULL_LOAD - 1) == [Grant(1, Work.COMPILE)]

    def test_installs_take_a_slot_without_waiting(self):
        """An environment install counts as a child at once and can overfill the slots."""
        slots = Slots(1)
        slots.enqueue(1, Work.COMPILE)
        slots.start_install(2)
        assert (slots.children, slots.active, slots.installs) == (1, 0, 1)
        assert slots.schedule(0) == []
        slots.release(2)
        assert slots.schedule(0) == [Grant(1, Work.COMPILE)]

    def test_children_and_active_counts(self):
        """Compiles and installs are children; local go signals and reservations are active."""
        slots = Slots(4)
        slots.enqueue(1, Work.COMPILE)
        slots.enqueue(2, Work.LINK)
        slots.enqueue(3, Work.USE_CS_SELF)
        slots.schedule(0)
        assert (slots.children, slots.active, slots.used) == (1, 2, 3)
        assert slots.running(2) is Work.LINK

    def test_release_of_a_waiter_removes_it_from_its_queue(self):
        """A client that leaves while queued is never granted."""
        slots = Slots(1)
        slots.enqueue(1, Work.LINK)
        slots.enqueue(2, Work.LINK)
        assert slots.release(1) is Work.LINK
        assert slots.schedule(0) == [Grant(2, Work.LINK)]
        assert slots.release(99) is None

    def test_a_client_is_in_one_place_only(self):
        """Queuing a client twice, or while it holds a slot, is a bug of the caller."""
        slots = Slots(1)
        slots.enqueue(1, Work.LINK)
        with pytest.raises(ValueError, match="already"):
            slots.enqueue(1, Work.COMPILE)
        slots.schedule(0)
        with pytest.raises(ValueError, match="already"):
            slots.start_install(1)
        with pytest.raises(ValueError, match="do not wait"):
            slots.enqueue(2, Work.INSTALL)
        with pytest.raises(ValueError, match="negative"):
            Slots(-1)

    @given(st.lists(st.tuples(st.sampled_from(list(Work)[:3]), st.booleans()), max_size=40),
           st.integers(0, 6), st.integers(0, 1000))  # fmt: skip
    def test_never_over_capacity(self, requests, max_kids, load):
        """Any sequence of requests and releases keeps used <= capacity and grants each once."""
        slots = Slots(max_kids)
        granted: set[int] = set()
        for client, (work, release_first) in enumerate(requests, start=1):
            if release_first and granted:
                slots.release(granted.pop())
            slots.enqueue(client, work)
            for grant in slots.schedule(load):
                assert grant.client_id not in granted
                granted.add(grant.client_id)
            assert slots.used <= slots.capacity
            assert slots.used == len(granted)


class TestSourceBuffer:
    def test_preloads_and_counts_statistics(self):
        """Chunks pile up while queued; sizes in and on the wire are counted for JOB_DONE."""
        buffer = SourceBuffer(limit=100)
        buffer.push(b"a" * 40, 10)
        buffer.push(b"b" * 40, 12)
        assert buffer.pending == 80
        assert buffer.take() == [b"a" * 40, b"b" * 40]
        assert (buffer.in_uncompressed, buffer.in_compressed, buffer.pending) == (80, 22, 0)

    def test_limit_applies_to_untaken_bytes_only(self):
        """A running job streams any amount; a queued one may hold at most the limit."""
        buffer = SourceBuffer(limit=100)
        for _ in range(5):
            buffer.push(b"x" * 60, 1)
            buffer.take()
        buffer.push(b"x" * 60, 1)
        with pytest.raises(SourceTooLargeError):
            buffer.push(b"x" * 60, 1)

    def test_no_chunk_after_end(self):
        """END closes the stream; a later chunk is refused."""
        buffer = SourceBuffer(limit=10)
        buffer.end()
        assert buffer.ended
        with pytest.raises(ValueError, match="after the end"):
            buffer.push(b"x", 1)
