"""The build summary: one line per compile in a record, and the report made from it.

This module owns ``ICECC_SUMMARY`` and ``icecc --summary``.  With
``ICECC_SUMMARY`` set (``1``: the default record
``$XDG_CACHE_HOME/iceserv/summary.jsonl``; a path: that file) every
wrapper run appends one JSON line: when it started, how long it took, the
source and output file, where the job ran (the compile server, or
``local``), why it fell back to a local build, and the exit status.
``icecc --summary CMD ARGS`` runs a whole build with a fresh record and
prints the report to stderr at the end (make, ninja and CMake's
``CMAKE_<LANG>_COMPILER_LAUNCHER=icecc`` all pass the variable on).
``iceserv summary`` prints the report of a record.

It sits on the wrapper's hot path: without the variable it costs one
environment lookup; it imports only what the wrapper already loaded, plus
``json`` when it writes (lazily).  Where a job ran and why it stayed local
are read off the wrapper's own diagnostics as they are made (the messages
of 1.4's client: ``Have to use host``, ``building locally``, ``local build
forced``, ``building myself``), so the flow in :mod:`iceserv.client.main`
needs no change.  Each record line stays under ``PIPE_BUF`` bytes, so
parallel compiles append whole lines.  It must never fail a build: an
unwritable record is skipped.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any, Protocol

    class _Log(Protocol):
        def error(self, text: str) -> None: ...
        def warning(self, text: str) -> None: ...
        def info(self, text: str) -> None: ...
        def debug(self, text: str) -> None: ...

    class _Runnable(Protocol):
        argv: list[str]
        diag: Any
        may_replace: bool

        def run(self) -> int: ...


__all__ = ["default_record", "read_record", "recorded", "render"]

_VARIABLE = "ICECC_SUMMARY"
_SOURCES = (
    ".c",
    ".cc",
    ".cpp",
    ".cxx",
    ".c++",
    ".cp",
    ".C",
    ".m",
    ".mm",
    ".M",
    ".i",
    ".ii",
    ".s",
    ".S",
    ".sx",
    ".cu",
)
_LINE_LIMIT = 3500  # below PIPE_BUF (4096): appends of parallel compiles never interleave
_FIELD_LIMIT = 600


def default_record(environ: dict[str, str] | os._Environ[str]) -> str:
    """Return the record ``ICECC_SUMMARY=1`` writes to."""
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME", "/tmp"), ".cache")  # noqa: PTH118, S108 - pathlib costs import time; /tmp is only a fallback
    return os.path.join(cache, "iceserv", "summary.jsonl")  # noqa: PTH118 - likewise


class _Recorder:
    """Passes diagnostics on to the wrapper's log and notes where the job went."""

    __slots__ = ("_log", "host", "why")

    def __init__(self, log: _Log) -> None:
        self._log = log
        self.host = ""
        self.why = ""

    def _note(self, text: str) -> None:
        if text.startswith("Have to use host "):
            self.host = text[len("Have to use host ") :].partition(" ")[0].rpartition(":")[0]
        elif text.startswith("building myself"):
            self.host, self.why = "", self.why or "the scheduler chose the local host"
        elif text.startswith(
            ("building locally: ", "local build forced", "no local daemon", "local daemon unusable")
        ):
            self.host, self.why = "", text

    def error(self, text: str) -> None:
        self._note(text)
        self._log.error(text)

    def warning(self, text: str) -> None:
        self._note(text)
        self._log.warning(text)

    def info(self, text: str) -> None:
        self._note(text)
        self._log.info(text)

    def debug(self, text: str) -> None:
        self._note(text)
        self._log.debug(text)


def _source(argv: Sequence[str]) -> tuple[str, str]:
    source = output = ""
    for index, arg in enumerate(argv[1:], 1):
        if arg == "-o" and index + 1 < len(argv):
            output = argv[index + 1]
        elif arg.startswith("-o") and len(arg) > 2:
            output = arg[2:]
        elif not arg.startswith("-") and arg.endswith(_SOURCES):
            source = arg
    return source, output


def recorded(run: _Runnable) -> int:
    """Run the wrapper invocation *run*, recording it when ``ICECC_SUMMARY`` asks for it."""
    if run.argv[1:2] == ["--summary"] and run.argv[0].rpartition("/")[2] == "icecc":
        return _wrap_build(run.argv[2:])
    target = os.environ.get(_VARIABLE)
    if not target or target == "0":
        return run.run()
    recorder = _Recorder(run.diag)
    run.diag = recorder
    run.may_replace = False  # the record is written after the compiler returns
    started = time.time()
    status = 1
    try:
        status = run.run()
    finally:
        _append(target, run.argv, recorder, started, status)
    return status


def _append(
    target: str, argv: Sequence[str], recorder: _Recorder, started: float, status: int
) -> None:
    import json  # noqa: PLC0415 - only when recording

    source, output = _source(argv)
    entry = {
        "t": round(started, 3),
        "dur": round(time.time() - started, 4),
        "src": source[-_FIELD_LIMIT:],
        "out": output[-_FIELD_LIMIT:],
        "where": recorder.host or "local",
        "why": recorder.why[:_FIELD_LIMIT],
        "rc": status,
        "cwd": os.getcwd()[-_FIELD_LIMIT:],  # noqa: PTH109 - pathlib costs import time
    }
    line = json.dumps(entry, separators=(",", ":"))[:_LINE_LIMIT] + "\n"
    path = default_record(os.environ) if target == "1" else target
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except FileNotFoundError:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)  # noqa: PTH103, PTH120 - import time
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            return
    except OSError:
        return
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    except OSError:
        pass  # a full disk must not fail the build
    finally:
        os.close(fd)


def _wrap_build(command: Sequence[str]) -> int:
    """``icecc --summary CMD ARGS``: run CMD with a fresh record, then print the report."""
    import subprocess  # noqa: PLC0415 - this path runs once per build
    import tempfile  # noqa: PLC0415

    if not command:
        sys.stderr.write("usage: icecc --summary COMMAND [ARGS...]\n")
        return 2
    fd, path = tempfile.mkstemp(prefix="icecc-summary-", suffix=".jsonl")
    os.close(fd)
    started = time.time()
    try:
        status = subprocess.call(list(command), env={**os.environ, _VARIABLE: path})  # noqa: S603 - the user's own build command
    except OSError as exc:
        sys.stderr.write(f"icecc --summary: {command[0]}: {exc.strerror}\n")
        status = 127
    try:
        entries = read_record(path)
    finally:
        os.unlink(path)  # noqa: PTH108 - pathlib costs import time
    sys.stderr.write(render(entries, wall=time.time() - started))
    return status


def read_record(path: str) -> list[dict[str, Any]]:
    """Return the entries of a record (lines that are not JSON objects are skipped)."""
    import json  # noqa: PLC0415

    entries = []
    with open(path, encoding="utf-8", errors="replace") as record:  # noqa: PTH123 - import time
        for line in record:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def _count(values: Iterable[str]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def render(entries: list[dict[str, Any]], *, wall: float | None = None, slowest: int = 5) -> str:
    """Return the report: where jobs ran, local fallbacks and why, failures, slowest units."""
    if not entries:
        return "icecc summary: no compiles recorded\n"
    if wall is None:
        wall = max(e.get("t", 0) + e.get("dur", 0) for e in entries) - min(
            e.get("t", 0) for e in entries
        )
    remote = [e for e in entries if e.get("where", "local") != "local"]
    local = [e for e in entries if e.get("where", "local") == "local"]
    busy = sum(float(e.get("dur", 0)) for e in entries)
    places = _count(str(e.get("where", "local")) for e in entries)
    lines = [
        (
            f"icecc summary: {len(entries)} compiles in {wall:.1f} s "
            f"({busy:.1f} s of compiler time), {len(remote)} remote, {len(local)} local"
        ),
        "  where:  " + "  ".join(f"{host} {n}" for host, n in places),
    ]
    fallbacks = [e for e in local if e.get("why")]
    if fallbacks:
        lines.append(f"  fell back to local: {len(fallbacks)}")
        lines += [f"    {n:>5}  {why}" for why, n in _count(str(e["why"]) for e in fallbacks)]
    failed = [e for e in entries if e.get("rc")]
    if failed:
        lines.append(f"  failed: {len(failed)}")
    lines.append(f"  slowest {min(slowest, len(entries))}:")
    for e in sorted(entries, key=lambda e: -float(e.get("dur", 0)))[:slowest]:
        unit = e.get("src") or e.get("out") or "?"
        lines.append(f"    {float(e.get('dur', 0)):7.2f} s  {unit}  ({e.get('where', 'local')})")
    return "\n".join(lines) + "\n"
