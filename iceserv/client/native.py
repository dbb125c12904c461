"""``-march=native`` and friends made explicit for the compile server (reference §8.4).

The server's CPU is not ours, so 1.4 (``compiler_get_arch_flags`` in
``client/local.cpp``) asks the local compiler which flags ``-march=native``
stands for: it diffs ``<cc> -### -E -`` with and without the flags and
takes the differing arguments of the ``cc1`` (gcc) or ``-cc1`` (clang) line.
This module does the diff, faithfully, and the replacement in a job's
arguments; the caller runs the compiler.  Pure.
"""

from __future__ import annotations

from iceserv.client.job import REST, CompileJob

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["arch_flags", "replace_native"]

_NATIVE = ("-march=native", "-mcpu=native", "-mtune=native")


def _cc1_line(output: str, *, clang: bool) -> str | None:
    marker = '"-cc1"' if clang else "/cc1 "
    at = output.find(marker)
    line = output[at:] if at >= 0 else ""
    newline = line.find("\n")
    if newline < 0:
        # 1.4: clang keeps a line without "\n"; gcc's erase() throws, which means failure.
        return line if clang else None
    return line[:newline]


def arch_flags(normal: str, flagged: str, *, clang: bool) -> list[str] | None:
    """Return the arguments *flagged* has and *normal* lacks; None when they cannot be found.

    *normal* and *flagged* are the stderr texts of ``-### -E -`` without and
    with the ``-m...=native`` flags.  For clang each flag is preceded by
    ``-Xclang``.  An empty list means the flags change nothing.
    """
    base = _cc1_line(normal, clang=clang)
    flags = _cc1_line(flagged, clang=clang)
    if base is None or flags is None:
        return None
    flags_end = len(flags)
    start, end = 0, flags_end
    while start < end and start < len(base) and flags[start] == base[start]:
        start += 1
    if start == end:
        return []
    end_diff = len(base) - end
    end -= 1
    while end > start and 0 <= end + end_diff < len(base) and flags[end] == base[end + end_diff]:
        end -= 1
    start = flags.rfind(" ", 0, start + 1) + 1
    if flags[start : start + 1] != "-" and flags[start + 1 : start + 2] != "-":
        # Clang's '"-target-cpu" "x86-64"': the difference starts at the value.
        start = flags.rfind(" ", 0, max(start - 1, 0)) + 1
    while end < flags_end and flags[end] != " ":
        end += 1
    end += 1
    return _tokens(flags, start, end, clang=clang)


def _tokens(text: str, start: int, end: int, *, clang: bool) -> list[str]:
    out: list[str] = []
    while start < end:
        pos = start
        if text[pos] == '"':
            pos = text.find('"', pos + 1, end)
            pos = end if pos < 0 else pos
            arg, start = text[start + 1 : pos], pos + 2
        else:
            pos = text.find(" ", pos, end)
            pos = end if pos < 0 else pos
            arg, start = text[start:pos], pos + 1
        if clang:
            out.append("-Xclang")
        out.append(arg)
    return out


def replace_native(job: CompileJob, flags: Sequence[str]) -> CompileJob:
    """Put *flags* where the first ``-m...=native`` was and drop every other one."""
    out: list[tuple[str, int]] = []
    done = False
    for arg, kind in job.args:
        if arg in _NATIVE:
            if not done:
                out += [(flag, REST) for flag in flags]
                done = True
            continue
        out.append((arg, kind))
    return job.evolve(args=tuple(out))
