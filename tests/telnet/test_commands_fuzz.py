"""Bounded fuzzing of the telnet input path: line splitting, parsing and running commands."""

from __future__ import annotations

import asyncio
import re
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from iceserv.errors import RemoteProtocolError
from iceserv.protocol.text import LineSplitter, format_text
from iceserv.telnet.commands import DONE, GOODBYE, parse, run_command
from telnet.fakes import FakeControl, FakeHost, FakeJob

_WORDS = st.sampled_from(["listcs", "LISTJOBS", "removecs", "blockcs", "unblockcs", "listblocks",
                          "internals", "help", "quit", "exit", "nodeA", "x", ""])  # fmt: skip
_LINES = st.one_of(
    st.text(max_size=80),
    st.lists(st.one_of(_WORDS, st.text(max_size=8)), max_size=6).map(" \t".join),
)


def _control() -> FakeControl:
    job = FakeJob(1, "COMP", "nodeA", "nodeA", "a.c")
    host = FakeHost("nodeA", "10.0.0.1", 10245, "x86_64", 1.0, 1, 4, None, [job])
    return FakeControl(hosts=[host], jobs=[job], total=1, internals_texts={"nodeA": "x\n"})


class TestParseFuzz:
    @settings(max_examples=300, deadline=None)
    @given(_LINES)
    def test_parse_never_fails(self, line):
        """Any line parses: words split on space/tab/newline, the command ASCII-lower-cased."""
        command = parse(line)
        words = [w for w in re.split(r"[ \t\n]+", line) if w]
        assert command.line == line
        assert list(command.args) == words[1:]
        lower = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
        assert command.name == (words[0].translate(lower) if words else "")

    @settings(max_examples=200, deadline=None)
    @given(_LINES)
    def test_every_line_gets_a_complete_answer(self, line):
        """Every line is answered and the answer ends with 200 done (or Good Bye! to close)."""
        reply = asyncio.run(run_command(_control(), line))
        assert reply.texts[-1] == (GOODBYE if reply.close else DONE)
        for text in reply.texts:
            assert format_text(text).endswith(b"\n")


class TestLineSplitterFuzz:
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=8), st.integers(1, 64))
    def test_only_protocol_errors_and_clean_lines(self, reads, cap):
        """Any bytes give lines free of terminators, or a RemoteProtocolError for a long line."""
        splitter = LineSplitter(cap)
        try:
            for data in reads:
                for line in splitter.feed(data):
                    raw = line.encode("utf-8", "surrogateescape")
                    assert len(raw) <= cap
                    assert not re.search(rb"[\x00-\x1f\x80-\xff]", raw)
        except RemoteProtocolError:
            pass
