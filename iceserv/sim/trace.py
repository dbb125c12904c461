"""Job traces: what a recorded build asked the cluster to compile, and when.

This module owns the trace format the simulator replays, one JSON object
per line::

    {"submit": 0.512, "submitter": "dev1", "source_size": 83275, "object_size": 11184,
     "cpu": 0.0563, "lang": "c", "env": "gcc-12.2.0-x86_64", "flags": ["-g", "-O2"],
     "file": "zlib/adler32.c"}

``submit`` is seconds after the start of the recording, ``source_size`` the
preprocessed source in bytes (what icecc ships), ``object_size`` the object
file, ``cpu`` the compile's CPU seconds on the recording machine (speed
1.0 by definition), ``lang`` one of ``c``, ``c++``, ``objc``, ``objc++``,
``env`` the compiler environment's name.  ``flags`` (the ``-g``/``-O``
flags 1.4's statistics normalise by) and ``file`` are optional.

It only parses and checks; it does no simulation and reads only the file it
is given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from iceserv.errors import IceservError
from iceserv.protocol import ArgFlag

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["LANGUAGES", "SimInputError", "TraceJob", "arg_flags", "parse_trace", "read_trace"]

#: Trace language names and the GET_CS ``lang`` codes of 1.4 (``CompileJob::Language``).
LANGUAGES: Final = {"c": 0, "c++": 1, "objc": 2, "objc++": 3}
#: 1.4's ``CompileJob`` argument flags, as GET_CS carries them (``Flag_g`` ... ``Flag_Ol2``).
_FLAG_BITS: Final = {
    "-g": ArgFlag.G,
    "-g3": ArgFlag.G3,
    "-O": ArgFlag.O,
    "-O1": ArgFlag.O,
    "-O2": ArgFlag.O2,
    "-O3": ArgFlag.OL2,
    "-Os": ArgFlag.OL2,
    "-Ofast": ArgFlag.OL2,
}
_REQUIRED: Final = ("submit", "submitter", "source_size", "object_size", "cpu", "lang", "env")


class SimInputError(IceservError, ValueError):
    """A trace or cluster description is malformed; ``source`` says where (``path:line``)."""

    def __init__(self, message: str, *, source: str = "") -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One compile job of a recorded build (see the module docstring for the fields)."""

    submit: float
    submitter: str
    source_size: int
    object_size: int
    cpu: float
    lang: str
    env: str
    flags: tuple[str, ...] = ()
    file: str = ""

    @property
    def lang_code(self) -> int:
        """The language as GET_CS carries it."""
        return LANGUAGES[self.lang]


def arg_flags(flags: tuple[str, ...]) -> int:
    """Return GET_CS's ``arg_flags`` for compiler *flags* (unknown flags add nothing)."""
    bits = ArgFlag.NONE
    for flag in flags:
        bits |= _FLAG_BITS.get(flag, ArgFlag.NONE)
    return int(bits)


def _number(record: dict[str, object], key: str, where: str) -> float:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        msg = f"{key} must be a number, not {value!r}"
        raise SimInputError(msg, source=where)
    if value < 0:
        msg = f"{key} must not be negative, not {value!r}"
        raise SimInputError(msg, source=where)
    return float(value)


def _text(record: dict[str, object], key: str, where: str) -> str:
    value = record.get(key, "")
    if not isinstance(value, str):
        msg = f"{key} must be a string, not {value!r}"
        raise SimInputError(msg, source=where)
    return value


def _job(record: object, where: str) -> TraceJob:
    if not isinstance(record, dict):
        msg = "a trace line must be a JSON object"
        raise SimInputError(msg, source=where)
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        msg = f"missing {', '.join(missing)}"
        raise SimInputError(msg, source=where)
    lang = _text(record, "lang", where)
    if lang not in LANGUAGES:
        msg = f"lang must be one of {', '.join(LANGUAGES)}, not {lang!r}"
        raise SimInputError(msg, source=where)
    flags = record.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(flag, str) for flag in flags):
        msg = "flags must be a list of strings"
        raise SimInputError(msg, source=where)
    submitter, env = _text(record, "submitter", where), _text(record, "env", where)
    if not submitter or not env:
        msg = "submitter and env must not be empty"
        raise SimInputError(msg, source=where)
    return TraceJob(
        submit=_number(record, "submit", where),
        submitter=submitter,
        source_size=int(_number(record, "source_size", where)),
        object_size=int(_number(record, "object_size", where)),
        cpu=_number(record, "cpu", where),
        lang=lang,
        env=env,
        flags=tuple(flags),
        file=_text(record, "file", where),
    )


def parse_trace(text: str, source: str = "<trace>") -> tuple[TraceJob, ...]:
    """Parse JSON-lines *text*; blank lines are skipped.  Jobs come back sorted by submit time.

    Raises :class:`SimInputError` naming ``source:line`` for the first bad line.
    """
    jobs: list[TraceJob] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            msg = f"not JSON: {exc}"
            raise SimInputError(msg, source=where) from None
        jobs.append(_job(record, where))
    if not jobs:
        msg = "the trace has no jobs"
        raise SimInputError(msg, source=source)
    return tuple(sorted(jobs, key=lambda job: job.submit))


def read_trace(path: Path) -> tuple[TraceJob, ...]:
    """Read and parse the trace file *path*."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read: {exc}"
        raise SimInputError(msg, source=str(path)) from None
    return parse_trace(text, str(path))
