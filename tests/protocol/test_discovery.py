"""Tests of iceserv.protocol.discovery: UDP requests, replies and announcements (reference §4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iceserv.errors import LocalProtocolError
from iceserv.protocol.discovery import (
    SchedulerInfo,
    choose_scheduler,
    decode_announcement,
    decode_reply,
    decode_request,
    encode_announcements,
    encode_reply,
    encode_request,
    is_better,
)

NAME = "494345435245414d"  # "ICECREAM"
INFO = SchedulerInfo(version=43, start_time=0x6B0642D2, netname="ICECREAM")


def h(text: str) -> bytes:
    """Bytes from hex with any whitespace."""
    return bytes.fromhex(text)


def padded(head: str, size: int) -> bytes:
    """*head* followed by zero bytes up to *size*."""
    raw = h(head)
    return raw + bytes(size - len(raw))


#: Replies to each requester version, written out from the §4.3 table.
REPLIES = [
    # >= 38: marker v+3, version u32 BE, start time high and low u32 BE, name at 13; 268 bytes.
    (43, padded(f"2e 0000002b 00000000 6b0642d2 {NAME}", 268)),
    (38, padded(f"29 0000002b 00000000 6b0642d2 {NAME}", 268)),
    # 36..37: marker v+2, version u32 and start time u64 little-endian; 268 bytes.
    (37, padded(f"27 2b000000 d242066b00000000 {NAME}", 268)),
    (36, padded(f"26 2b000000 d242066b00000000 {NAME}", 268)),
    # 33..35: the same in 32 bytes.
    (35, padded(f"25 2b000000 d242066b00000000 {NAME}", 32)),
    (33, padded(f"23 2b000000 d242066b00000000 {NAME}", 32)),
    # < 33: marker v+1, then the name; 16 bytes.
    (32, padded(f"21 {NAME}", 16)),
    (21, padded(f"16 {NAME}", 16)),
]
REPLY_IDS = [f"requester {v}" for v, _ in REPLIES]


class TestRequest:
    """The one-byte request (§4.2)."""

    def test_encode(self):
        """A request is one byte: the requester's version."""
        assert encode_request() == h("2b")
        assert encode_request(21) == h("15")

    @pytest.mark.parametrize("version", [0, 256, -1])
    def test_encode_out_of_range(self, version):
        """A version that is not one byte cannot be requested."""
        with pytest.raises(LocalProtocolError):
            encode_request(version)

    @pytest.mark.parametrize(
        ("datagram", "version"),
        [("2b", 43), ("15", 21), ("80", 128), ("14", None), ("00", None), ("", None),
         ("2b00", None), ("2b2b", None)],
    )  # fmt: skip
    def test_decode(self, datagram, version):
        """Schedulers answer exactly the one-byte datagrams of value 21 and up."""
        assert decode_request(h(datagram)) == version


class TestReply:
    """The scheduler's reply layouts (§4.3) and the requester's acceptance (§4.4)."""

    def test_verified_capture(self):
        """The reply a real scheduler sent to v=43 (§4.3), byte for byte."""
        capture = h("2e 00 00 00 2b 00 00 00 00 6b 06 42 d2 49 43 45 43 52 45 41 4d 00")
        expected = capture + bytes(268 - len(capture))
        assert encode_reply(43, INFO) == expected
        assert decode_reply(expected, 43) == INFO

    @pytest.mark.parametrize(("requester", "reply"), REPLIES, ids=REPLY_IDS)
    def test_encode(self, requester, reply):
        """Each requester version gets its own layout."""
        assert encode_reply(requester, INFO) == reply

    @pytest.mark.parametrize(("requester", "reply"), REPLIES, ids=REPLY_IDS)
    def test_decode_by_matching_requester(self, requester, reply):
        """A requester reads the layout made for its own version; the oldest carries no numbers."""
        expected = INFO if requester >= 33 else SchedulerInfo(32, 0, "ICECREAM")
        assert decode_reply(reply, own_version=requester) == expected

    def test_start_time_high_bits(self):
        """Start times above 32 bits are split high/low (BE) or sent as a u64 (LE)."""
        info = SchedulerInfo(43, 0x1_0000_0002, "x")
        assert encode_reply(43, info)[:14] == h("2e 0000002b 00000001 00000002 78")
        assert encode_reply(37, info)[:14] == h("27 2b000000 0200000001000000 78")
        assert decode_reply(encode_reply(43, info), 43) == info
        assert decode_reply(encode_reply(37, info), 37) == info

    def test_long_netname_truncated(self):
        """A name longer than the layout holds is cut so that a NUL still ends it."""
        info = SchedulerInfo(43, 0, "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        small = encode_reply(32, info)
        assert small == h("21") + b"ABCDEFGHIJKLMN" + b"\0"
        assert decode_reply(small, 32) == SchedulerInfo(32, 0, "ABCDEFGHIJKLMN")
        assert encode_reply(35, info)[13:] == b"ABCDEFGHIJKLMNOPQR\0"

    @pytest.mark.parametrize(
        ("own", "reply", "name"),
        [
            (32, h("21") + b"ABCDEFGHIJKLMNO", "ABCDEFGHIJKLMN"),
            (35, h("25 2b000000 0100000000000000") + b"N" * 19, "N" * 18),
            (43, h("2e 0000002b 00000000 00000001") + b"N" * 255, "N" * 254),
        ],
        ids=["16", "32", "268"],
    )
    def test_last_byte_forced_to_nul(self, own, reply, name):
        """A reply without a NUL loses its last byte, which 1.4 overwrites with one (§4.4)."""
        info = decode_reply(reply, own)
        assert info is not None
        assert info.netname == name

    @pytest.mark.parametrize(
        ("own", "reply"),
        [
            # a 43 requester also accepts the 36..37 layouts: 268 or 32 bytes with marker v+2
            (43, padded(f"2d 2b000000 d242066b00000000 {NAME}", 268)),
            (43, padded(f"2d 2b000000 d242066b00000000 {NAME}", 32)),
            (43, padded(f"2c {NAME}", 16)),
        ],
        ids=["268/v+2", "32/v+2", "16/v+1"],
    )
    def test_accepted_layouts(self, own, reply):
        """A requester accepts the four length/marker combinations of §4.4."""
        info = decode_reply(reply, own)
        assert info is not None
        assert info.netname == "ICECREAM"

    @pytest.mark.parametrize(
        "reply",
        [
            padded(f"2c 0000002b 00000000 6b0642d2 {NAME}", 268),  # 268 with v+1
            padded(f"2f 0000002b 00000000 6b0642d2 {NAME}", 268),  # 268 with v+4
            padded(f"2e 0000002b 00000000 6b0642d2 {NAME}", 267),  # wrong length
            padded(f"2e 0000002b 00000000 6b0642d2 {NAME}", 269),
            padded(f"2e 2b000000 d242066b00000000 {NAME}", 32),  # 32 with v+3
            padded(f"2d {NAME}", 16),  # 16 with v+2
            padded(f"2c {NAME}", 15),
            padded(f"2c {NAME}", 17),
            padded(f"2b {NAME}", 16),  # a requester's own marker
            h("2b"),  # a request, not a reply
            b"",
        ],
    )
    def test_rejected_layouts(self, reply):
        """Any other length or first byte is not a reply."""
        assert decode_reply(reply, 43) is None

    @pytest.mark.parametrize(
        ("version_field", "accepted"),
        [("00000001", True), ("0000007f", True), ("00000080", False), ("000000ff", False),
         ("80000000", False), ("00000000", False)],
    )  # fmt: skip
    def test_version_range_big_endian(self, version_field, accepted):
        """Replies announcing versions >= 128 or < 1 are ignored."""
        reply = padded(f"2e {version_field} 00000000 00000001 {NAME}", 268)
        assert (decode_reply(reply, 43) is not None) is accepted

    @pytest.mark.parametrize(
        ("version_field", "accepted"),
        [("7f000000", True), ("80000000", False), ("00000000", False)],
    )
    def test_version_range_little_endian(self, version_field, accepted):
        """The version range applies to the little-endian layouts too."""
        reply = padded(f"27 {version_field} 0000000000000000 {NAME}", 268)
        assert (decode_reply(reply, 37) is not None) is accepted

    def test_out_of_range_info(self):
        """A start time beyond 64 bits or a requester that is not a byte is refused."""
        with pytest.raises(LocalProtocolError):
            encode_reply(43, SchedulerInfo(43, 1 << 64, "x"))
        with pytest.raises(LocalProtocolError):
            encode_reply(256, INFO)

    def test_marker_wraps_like_1_4(self):
        """Every request decode_request accepts gets a reply; 253 + 3 wraps to marker 0."""
        assert decode_request(bytes([253])) == 253
        assert encode_reply(253, INFO)[0] == 0

    @settings(max_examples=200, deadline=None)
    @given(
        requester=st.integers(21, 43),
        version=st.integers(1, 127),
        start=st.integers(0, 2**64 - 1),
        netname=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=14),
    )
    def test_round_trip(self, requester, version, start, netname):
        """What a scheduler encodes for a requester, that requester decodes."""
        info = SchedulerInfo(version, start, netname)
        got = decode_reply(encode_reply(requester, info), requester)
        assert got == (info if requester >= 33 else SchedulerInfo(32, 0, netname))

    @settings(max_examples=300, deadline=None)
    @given(datagram=st.binary(max_size=300), own=st.integers(21, 43))
    def test_arbitrary_datagrams(self, datagram, own):
        """Random datagrams are either ignored or give a version in 1..127; nothing raises."""
        info = decode_reply(datagram, own)
        assert info is None or 1 <= info.version < 128


class TestChoice:
    """choose_scheduler: the requester's pick among replies (§4.4)."""

    def test_highest_version_wins(self):
        """A higher version beats an earlier start."""
        replies = [
            ("a", SchedulerInfo(42, 1, "ICECREAM")),
            ("b", SchedulerInfo(43, 900, "ICECREAM")),
        ]
        assert choose_scheduler(replies)[0] == "b"

    def test_then_earliest_start(self):
        """Among equal versions the longest-running scheduler wins."""
        replies = [
            ("a", SchedulerInfo(43, 900, "ICECREAM")),
            ("b", SchedulerInfo(43, 5, "ICECREAM")),
            ("c", SchedulerInfo(43, 50, "ICECREAM")),
        ]
        assert choose_scheduler(replies)[0] == "b"

    def test_then_first_received(self):
        """A full tie keeps the first reply."""
        replies = [("a", SchedulerInfo(43, 5, "ICECREAM")), ("b", SchedulerInfo(43, 5, "ICECREAM"))]
        assert choose_scheduler(replies)[0] == "a"

    def test_netname_case_insensitive(self):
        """Net names compare without regard to case."""
        replies = [("a", SchedulerInfo(43, 5, "icecream")), ("b", SchedulerInfo(43, 9, "Build"))]
        assert choose_scheduler(replies) == replies[0]
        assert choose_scheduler(replies, "BUILD") == replies[1]
        assert choose_scheduler(replies, "IceCream") == replies[0]

    def test_other_netnames_ignored(self):
        """A better scheduler on another net name is not chosen."""
        replies = [("a", SchedulerInfo(99, 0, "OTHER")), ("b", SchedulerInfo(30, 9, "ICECREAM"))]
        assert choose_scheduler(replies)[0] == "b"
        assert choose_scheduler(replies[:1]) is None

    def test_default_netname(self):
        """An empty wanted net name means ICECREAM."""
        replies = [("a", SchedulerInfo(43, 5, "ICECREAM"))]
        assert choose_scheduler(replies, "") == replies[0]

    def test_no_replies(self):
        """No reply, no scheduler."""
        assert choose_scheduler([]) is None

    def test_is_better(self):
        """Higher version, else earlier start; a tie is not better."""
        assert is_better(SchedulerInfo(43, 9, "x"), SchedulerInfo(42, 1, "x"))
        assert is_better(SchedulerInfo(43, 1, "x"), SchedulerInfo(43, 9, "x"))
        assert not is_better(SchedulerInfo(43, 1, "x"), SchedulerInfo(43, 1, "x"))
        assert not is_better(SchedulerInfo(42, 1, "x"), SchedulerInfo(43, 9, "x"))


class TestAnnouncements:
    """Scheduler-to-scheduler ICE and ICF datagrams (§4.5)."""

    def test_layouts(self):
        """ICE: 13+len bytes, the name minus its last character; ICF: 268 bytes, name at 12."""
        legacy, current = encode_announcements(INFO)
        assert legacy == h("494345 2b d242066b00000000 08 49434543524541 00")
        assert len(legacy) == 13 + len("ICECREAM")
        assert current == padded(f"494346 2b 00000000 6b0642d2 {NAME}", 268)

    def test_decode(self):
        """An ICF announcement decodes; the legacy ICE one and replies are ignored."""
        legacy, current = encode_announcements(INFO)
        assert decode_announcement(padded(f"494346 2b 00000000 6b0642d2 {NAME}", 268)) == INFO
        assert decode_announcement(current) == INFO
        assert decode_announcement(legacy) is None
        assert decode_announcement(encode_reply(43, INFO)) is None
        assert decode_announcement(padded(f"494347 2b 00000000 6b0642d2 {NAME}", 268)) is None
        assert decode_announcement(current[:-1]) is None
        assert decode_announcement(current + b"\0") is None

    def test_needs_a_netname(self):
        """An empty net name cannot be announced."""
        with pytest.raises(LocalProtocolError):
            encode_announcements(SchedulerInfo(43, 0, ""))

    @settings(max_examples=100, deadline=None)
    @given(
        version=st.integers(0, 255),
        start=st.integers(0, 2**64 - 1),
        netname=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                        max_size=255),
    )  # fmt: skip
    def test_round_trip(self, version, start, netname):
        """An ICF announcement decodes to what was announced (names up to 255 bytes)."""
        _, current = encode_announcements(SchedulerInfo(version, start, netname))
        assert decode_announcement(current) == SchedulerInfo(version, start, netname)
