"""Tests of iceserv.sim.trace: the JSON-lines trace format."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iceserv.errors import IceservError
from iceserv.sim.trace import SimInputError, TraceJob, arg_flags, parse_trace, read_trace

GOOD = {"submit": 1.5, "submitter": "dev1", "source_size": 10, "object_size": 20, "cpu": 0.5,
        "lang": "c++", "env": "gcc", "flags": ["-g", "-O2"], "file": "a.cc"}  # fmt: skip


def line(**changes: object) -> str:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not None})


class TestParseTrace:
    def test_fields(self):
        """Every field of a line reaches the job; lang gets 1.4's GET_CS code."""
        (job,) = parse_trace(line())
        assert job == TraceJob(1.5, "dev1", 10, 20, 0.5, "c++", "gcc", ("-g", "-O2"), "a.cc")
        assert job.lang_code == 1

    def test_optional_fields(self):
        """flags and file may be left out."""
        (job,) = parse_trace(line(flags=None, file=None))
        assert (job.flags, job.file) == ((), "")

    def test_sorted_by_submit_time_stably(self):
        """Jobs come back in submit order; equal times keep the file's order."""
        text = "\n".join([line(submit=2, file="x"), line(submit=1, file="y"),
                          "", line(submit=1, file="z")])  # fmt: skip
        assert [j.file for j in parse_trace(text)] == ["y", "z", "x"]

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"cpu": None}, "missing cpu"),
            ({"lang": "fortran"}, "lang must be one of"),
            ({"cpu": -1}, "must not be negative"),
            ({"cpu": "1"}, "must be a number"),
            ({"cpu": True}, "must be a number"),
            ({"submitter": ""}, "must not be empty"),
            ({"flags": "-O2"}, "flags must be a list"),
        ],
    )
    def test_bad_line_names_its_place(self, changes, reason):
        """A bad value is reported with file and line number."""
        text = line() + "\n" + line(**changes)
        with pytest.raises(SimInputError, match=rf"^t\.jsonl:2: .*{reason}") as info:
            parse_trace(text, "t.jsonl")
        assert info.value.source == "t.jsonl:2"

    def test_not_json(self):
        """A line that is not JSON is an input error, not a crash."""
        with pytest.raises(SimInputError, match="not JSON"):
            parse_trace("{nope")

    def test_empty(self):
        """A trace without jobs is refused."""
        with pytest.raises(SimInputError, match="no jobs"):
            parse_trace("\n\n")

    def test_read_missing_file(self, tmp_path):
        """A missing file is an input error naming it."""
        with pytest.raises(SimInputError, match="absent"):
            read_trace(tmp_path / "absent")

    @given(st.text(max_size=200))
    def test_only_input_errors_escape(self, text):
        """Any text either parses or raises SimInputError (an IceservError and ValueError)."""
        with contextlib.suppress(SimInputError):
            parse_trace(text)
        assert issubclass(SimInputError, IceservError)
        assert issubclass(SimInputError, ValueError)


class TestArgFlags:
    def test_bits(self):
        """-g, -g3 and the -O levels map to 1.4's CompileJob flags; others add nothing."""
        assert arg_flags(("-g", "-O2")) == 0x9
        assert arg_flags(("-g3", "-Os", "-Wall")) == 0x12
        assert arg_flags(()) == 0
