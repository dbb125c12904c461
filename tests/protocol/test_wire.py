"""Tests of iceserv.protocol.wire: the primitive encodings of reference §1.6."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iceserv.errors import LocalProtocolError, RemoteProtocolError
from iceserv.protocol.wire import EnvEntry, Reader, Writer, decode_text, encode_text


def h(text: str) -> bytes:
    """Bytes from hex with any whitespace."""
    return bytes.fromhex(text)


def written(*calls) -> bytes:
    """The bytes a Writer produces for ``(method, value)`` calls."""
    w = Writer()
    for method, value in calls:
        getattr(w, method)(value)
    return w.getvalue()


class TestWriter:
    """Writer: field encodings."""

    @pytest.mark.parametrize(
        ("value", "wire"),
        [(0, "00000000"), (1, "00000001"), (10245, "00002805"), (2**32 - 1, "ffffffff")],
    )
    def test_u32_big_endian(self, value, wire):
        """A u32 is 4 bytes, most significant first."""
        assert written(("u32", value)) == h(wire)

    @pytest.mark.parametrize("value", [-1, 2**32, 2**40])
    def test_u32_out_of_range(self, value):
        """A value outside 0..2^32-1 is our mistake, not something to truncate."""
        with pytest.raises(LocalProtocolError):
            written(("u32", value))

    @pytest.mark.parametrize(
        ("value", "wire"),
        [(0, "00000000"), (-1, "ffffffff"), (-(2**31), "80000000"), (2**31 - 1, "7fffffff")],
    )
    def test_i32_twos_complement(self, value, wire):
        """A signed int is sent as its 32-bit two's-complement pattern."""
        assert written(("i32", value)) == h(wire)

    @pytest.mark.parametrize("value", [-(2**31) - 1, 2**31, 2**32])
    def test_i32_out_of_range(self, value):
        """A value that fits no 32-bit pattern is refused."""
        with pytest.raises(LocalProtocolError):
            written(("i32", value))

    def test_bool(self):
        """A bool is a u32 0 or 1."""
        assert written(("boolean", True), ("boolean", False)) == h("00000001 00000000")

    @pytest.mark.parametrize(
        ("value", "wire"),
        [("", "00000001 00"), ("gcc", "00000004 67636300"), ("é", "00000003 c3a900")],
    )
    def test_string_counts_its_nul(self, value, wire):
        """A string is its length including the NUL, the UTF-8 bytes, then the NUL."""
        assert written(("string", value)) == h(wire)

    def test_string_escaped_bytes(self):
        """A surrogate-escaped byte goes out as that byte."""
        assert written(("string", "a\udcff")) == h("00000003 61ff00")

    def test_string_with_nul_refused(self):
        """The wire cannot carry a NUL inside a string."""
        with pytest.raises(LocalProtocolError):
            written(("string", "a\0b"))

    @pytest.mark.parametrize("code", [0xD800, 0xDC7F, 0xDFFF])
    def test_string_with_lone_surrogate_refused(self, code):
        """A lone surrogate that escapes no byte cannot be encoded."""
        with pytest.raises(LocalProtocolError):
            written(("string", chr(code)))

    def test_string_list(self):
        """A string list is a count then the strings."""
        assert written(("strings", ("-c", ""))) == h("00000002 00000003 2d6300 00000001 00")
        assert written(("strings", ())) == h("00000000")

    def test_env_list(self):
        """An environment list is a count then (platform, name) string pairs."""
        wire = h("00000001 00000002 6100 00000002 6200")
        assert written(("envs", (EnvEntry("a", "b"),))) == wire

    def test_raw(self):
        """Raw bytes are appended unchanged."""
        assert written(("raw", b"\x00\xff"), ("u32", 1)) == h("00ff 00000001")


class TestReader:
    """Reader: field decodings and the frame boundary."""

    def test_u32_and_i32(self):
        """The same four bytes read as u32 or i32."""
        r = Reader(h("ffffffff ffffffff 00002805"))
        assert r.u32() == 2**32 - 1
        assert r.i32() == -1
        assert r.u32() == 10245
        r.finish()

    @pytest.mark.parametrize(
        ("wire", "value"),
        [("00000000", False), ("00000001", True), ("00000002", True), ("80000000", True)],
    )
    def test_bool_any_nonzero_is_true(self, wire, value):
        """Like 1.4, any non-zero word is true."""
        assert Reader(h(wire)).boolean() is value

    def test_string(self):
        """A string is read up to its NUL, consuming its whole length."""
        r = Reader(h("00000004 67636300 00000007"))
        assert r.string() == "gcc"
        assert r.u32() == 7

    def test_string_stops_at_first_nul(self):
        """Bytes after the first NUL are consumed but not part of the value."""
        r = Reader(h("00000005 61006200 00"))
        assert r.string() == "a"
        r.finish()

    def test_string_without_nul(self):
        """A string whose bytes lack the NUL is still read in full."""
        r = Reader(h("00000002 6162"))
        assert r.string() == "ab"
        r.finish()

    def test_string_length_zero(self):
        """A length of 0 is the empty string and consumes nothing more (§1.6)."""
        r = Reader(h("00000000 00000009"))
        assert r.string() == ""
        assert r.u32() == 9

    def test_string_past_frame(self):
        """A string length beyond the frame is the peer's error."""
        with pytest.raises(RemoteProtocolError):
            Reader(h("00000005 616200")).string()

    def test_string_invalid_utf8(self):
        """Bytes that are not UTF-8 are kept as escapes."""
        assert Reader(h("00000003 ff6100")).string() == "\udcffa"

    @pytest.mark.parametrize("count", ["00000002", "40000000", "ffffffff"])
    def test_string_list_count_past_frame(self, count):
        """A list count that cannot fit in the rest of the frame is rejected."""
        with pytest.raises(RemoteProtocolError):
            Reader(h(f"{count} 00000001 00")).strings()

    @pytest.mark.parametrize("count", ["00000002", "20000000", "ffffffff"])
    def test_env_list_count_past_frame(self, count):
        """An environment count that cannot fit in the rest of the frame is rejected."""
        with pytest.raises(RemoteProtocolError):
            Reader(h(f"{count} 00000001 00 00000001 00")).envs()

    def test_env_list(self):
        """An environment list reads as EnvEntry pairs."""
        r = Reader(h("00000001 00000002 6100 00000002 6200"))
        assert r.envs() == (EnvEntry("a", "b"),)
        r.finish()

    @pytest.mark.parametrize("wire", ["", "00", "000000"])
    def test_truncated_integer(self, wire):
        """Fewer than four bytes left is not an integer."""
        with pytest.raises(RemoteProtocolError):
            Reader(h(wire)).u32()
        with pytest.raises(RemoteProtocolError):
            Reader(h(wire)).i32()

    def test_raw(self):
        """raw reads exactly the bytes asked for, and no more than there are."""
        r = Reader(h("0102 03"))
        assert r.raw(2) == h("0102")
        assert r.remaining == 1
        with pytest.raises(RemoteProtocolError):
            r.raw(2)

    def test_finish_rejects_trailing_bytes(self):
        """Unread bytes at the end of a frame are fatal (§1.5)."""
        r = Reader(h("00000001 00"), msg_type=0x4F)
        r.u32()
        with pytest.raises(RemoteProtocolError) as info:
            r.finish()
        assert info.value.msg_type == 0x4F

    def test_remote_error_is_a_value_error(self):
        """RemoteProtocolError is also a ValueError, for callers that catch builtins."""
        with pytest.raises(ValueError):
            Reader(b"").u32()


READS = st.sampled_from(["u32", "i32", "boolean", "string", "strings", "envs", "raw", "finish"])


class TestReaderHostile:
    """Arbitrary bytes read as arbitrary fields."""

    @settings(max_examples=400, deadline=None)
    @given(data=st.binary(max_size=64), ops=st.lists(READS, max_size=12), n=st.integers(-2, 70))
    def test_only_remote_protocol_error(self, data, ops, n):
        """Whatever the bytes and the reads, the only exception is RemoteProtocolError."""
        r = Reader(data)
        try:
            for op in ops:
                if op == "raw":
                    r.raw(n)
                else:
                    getattr(r, op)()
                assert 0 <= r.remaining <= len(data)
        except RemoteProtocolError:
            pass


class TestText:
    """encode_text / decode_text: UTF-8 with surrogateescape."""

    @settings(max_examples=200, deadline=None)
    @given(st.binary())
    def test_any_bytes_round_trip(self, raw):
        """Every byte string survives decode then encode."""
        assert encode_text(decode_text(raw)) == raw

    def test_lone_surrogate(self):
        """A surrogate outside U+DC80..U+DCFF is our error."""
        with pytest.raises(LocalProtocolError):
            encode_text("\ud83d")
