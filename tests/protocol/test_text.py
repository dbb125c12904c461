"""Tests of iceserv.protocol.text: the telnet text channel's line rules (reference §1.7)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iceserv.errors import RemoteProtocolError
from iceserv.protocol.text import MAX_LINE, LineSplitter, format_text


def feed_all(*reads: bytes, max_line: int = MAX_LINE) -> list[list[str]]:
    """The lines each read produces, read by read."""
    splitter = LineSplitter(max_line)
    return [splitter.feed(r) for r in reads]


class TestLineSplitter:
    """Received bytes to lines."""

    def test_crlf_in_one_read(self):
        """``\\r\\n`` arriving together ends one line."""
        assert feed_all(b"listcs\r\n") == [["listcs"]]

    def test_cr_and_lf_in_separate_reads(self):
        """``\\r`` and ``\\n`` in separate reads make an extra empty line, as in 1.4."""
        assert feed_all(b"listcs\r", b"\n") == [["listcs"], [""]]

    @pytest.mark.parametrize(
        "end", [b"\0", b"\t", b"\x01", b"\x1f", b"\r", b"\n", b"\x80", b"\xff"]
    )
    def test_any_control_byte_ends_a_line(self, end):
        """Every byte below 0x20 (NUL and TAB included) or above 0x7f ends a line."""
        assert feed_all(b"a" + end + b"b\n") == [["a", "b"]]

    @pytest.mark.parametrize("byte", [b" ", b"~", b"\x7f"])
    def test_other_bytes_do_not(self, byte):
        """Space, DEL and high bytes are part of the line."""
        (lines,) = feed_all(b"a" + byte + b"b\n")
        assert len(lines) == 1
        assert lines[0].encode("utf-8", "surrogateescape") == b"a" + byte + b"b"

    def test_control_run_skipped(self):
        """Control bytes right after a line in the same read are skipped, not empty lines."""
        assert feed_all(b"a\r\n\r\n\n\0b\n") == [["a", "b"]]

    def test_leading_control_byte_is_an_empty_line(self):
        """A read that starts with a control byte ends an empty line."""
        assert feed_all(b"\nabc\n") == [["", "abc"]]

    def test_partial_lines_wait(self):
        """A line split across reads comes out when its end arrives."""
        assert feed_all(b"lis", b"tc", b"s\r\nhelp") == [[], [], ["listcs"]]

    def test_several_lines_in_one_read(self):
        """One read may finish several lines."""
        assert feed_all(b"a\nb\nc") == [["a", "b"]]

    def test_leading_non_ascii_makes_an_empty_line(self):
        """Non-ASCII bytes first in a read end an empty line, as 1.4's Invalid command ''."""
        assert feed_all(b"\xff\xfeab\n") == [["", "ab"]]

    def test_longest_line(self):
        """A line of exactly the limit is accepted, however it arrives."""
        assert feed_all(b"x" * 8, b"\n", max_line=8) == [[], ["x" * 8]]
        assert feed_all(b"x" * 8 + b"\n", max_line=8) == [["x" * 8]]

    def test_over_long_unterminated_line(self):
        """Buffering more than the limit without a line end is the peer's error."""
        splitter = LineSplitter(8)
        splitter.feed(b"x" * 8)
        with pytest.raises(RemoteProtocolError):
            splitter.feed(b"x")

    def test_over_long_line_in_one_read(self):
        """A line over the limit is refused even when it arrives complete in one read."""
        with pytest.raises(RemoteProtocolError):
            LineSplitter(8).feed(b"x" * 9 + b"\n")

    def test_non_ascii_bytes_end_a_line_like_1_4(self):
        """Bytes >= 0x80 end a line as in 1.4 (signed char): 'caf\\xc3\\xa9 x' is two commands."""
        assert LineSplitter().feed(b"caf\xc3\xa9 x\r\n") == ["caf", " x"]

    def test_default_limit(self):
        """The default limit is MAX_LINE bytes."""
        with pytest.raises(RemoteProtocolError):
            LineSplitter().feed(b"x" * (MAX_LINE + 1))

    @settings(max_examples=200, deadline=None)
    @given(
        lines=st.lists(
            st.binary(max_size=20).map(lambda b: bytes((c & 0x5F) | 0x20 for c in b)), max_size=8
        ),
        ends=st.lists(st.sampled_from([b"\n", b"\r\n", b"\0", b"\t\n"]), min_size=8, max_size=8),
        cuts=st.lists(st.integers(0, 250), max_size=10),
    )
    def test_splitting_only_adds_empty_lines(self, lines, ends, cuts):
        """However the bytes are cut, the non-empty lines are the same and in order."""
        stream = b"".join(line + end for line, end in zip(lines, ends, strict=False))
        whole = [x for x in LineSplitter(MAX_LINE).feed(stream) if x]
        splitter = LineSplitter(MAX_LINE)
        points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
        pieces = [stream[a:b] for a, b in itertools.pairwise(points)]
        cut = [x for piece in pieces for x in splitter.feed(piece) if x]
        expected = [line.decode("utf-8", "surrogateescape") for line in lines if line]
        assert whole == cut == expected


class TestFormatText:
    """Outgoing text gets a newline unless it has one."""

    @pytest.mark.parametrize(
        ("text", "wire"),
        [
            ("200 done", b"200 done\n"),
            ("200 done\n", b"200 done\n"),
            ("", b"\n"),
            ("a\n\n", b"a\n\n"),
            ("a\r", b"a\r\n"),
            ("é", b"\xc3\xa9\n"),
            ("\udcff", b"\xff\n"),
        ],
    )
    def test_format(self, text, wire):
        """``\\n`` is appended only when missing; text is UTF-8 with escapes."""
        assert format_text(text) == wire
