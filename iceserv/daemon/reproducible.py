"""Remote gcc objects byte-identical to local ones, ``-g`` included (issue 17, item 5).

Theory of operation
-------------------
For gcc, a 1.4 client (and ours) preprocesses with ``-E -fdirectives-only``
and 1.4's server compiles that stream from stdin with ``-fpreprocessed
-fdirectives-only --param ggc-min-expand=N --param ggc-min-heapsize=M``.
Those options are recorded in ``DW_AT_producer`` (gcc's
``-grecord-gcc-switches``, on by default), so every remote ``-g`` object
differs from the local one.  ``-fdirectives-only`` cannot simply go: without
it, ``-fpreprocessed`` leaves the macros unexpanded; and a fully preprocessed
source changes the columns (``DW_AT_decl_column``) wherever a line held a
macro or several blanks.

What gives the local object exactly (verified with gcc 12 for C and C++,
``-O0``/``-O2``, relative, nested and absolute input names): compile the
directives-only stream as an *ordinary* source file, with

* the predefined macros of its ``<built-in>`` block dropped (the compiler
  defines the same ones itself; keeping them would warn "redefined"), the
  ``<command-line>`` block (``-D``/``-U``) kept;
* the working-directory line marker (``# 1 "/cwd//"``, present with ``-g``)
  dropped: it only means something in preprocessed mode;
* the stream written to the client's input name, below a private job
  directory that mirrors the client's working directory, compiled from
  there, and ``-fdebug-prefix-map=<jobdir>/=/`` (which gcc does not record)
  mapping ``DW_AT_comp_dir`` and absolute names back to the client's;
* ``-nostdinc`` (the stream holds every header; in the chroot, without
  ``/usr/include``, gcc would otherwise fail on its implicit
  ``stdc-predef.h``), which gcc does not record either;
* no ``-fpreprocessed``, no ``-fdirectives-only``, no ggc parameters: the
  compiler's memory is bounded by the job's ``RLIMIT_AS`` instead (the job
  runner sets it from the same memory limit), which is what the ggc
  parameters were for.

The client needs no knowledge of this and no byte on the wire changes: the
server decides from COMPILE_FILE alone (gcc, ``-fdirectives-only`` among the
arguments, a named source that is not already preprocessed), so a real 1.4
peer at either end never sees anything new, and with a real 1.4 server 1.4's
behaviour stays.  Jobs where the two modes are not equivalent keep 1.4's
mode: ``-pedantic`` (line markers in an ordinary source warn; the client
already avoids ``-fdirectives-only`` then), user prefix maps (ours would
hide theirs), input names that leave the job directory, ``.i``/``.ii``
inputs.  ``-g3`` objects still differ in their macro table (the stream's
``#define``s count as the main file's); nothing else is known to.

Owns :func:`applies`, :func:`layout` and :class:`SourceFilter`.  Pure: no
I/O, no logging; :mod:`iceserv.daemon.compile` builds the command line and
writes the file.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from iceserv.protocol import CompileFile

__all__ = ["DIRECTIVES_ONLY", "Layout", "SourceFilter", "applies", "layout"]

DIRECTIVES_ONLY: Final = "-fdirectives-only"
_PREPROCESSED: Final = (".i", ".ii", ".mi", ".mii")
#: Options after which the two modes differ (see the module docstring).
_BLOCKING_PREFIXES: Final = (
    "-pedantic",
    "-Wpedantic",
    "-fdebug-prefix-map=",
    "-ffile-prefix-map=",
    "-fcanon-prefix-map",
)
_HEAD_LIMIT: Final = 1 << 20  # the header blocks are a few hundred lines; never buffer more


def applies(job: CompileFile, compiler_name: str) -> bool:
    """Whether *job* compiles reproducibly (gcc, a directives-only stream, a plain name)."""
    if "clang" in compiler_name or DIRECTIVES_ONLY not in job.args:
        return False
    name = job.input_file
    if not name or name == "-" or name.endswith(_PREPROCESSED) or "\0" in name:
        return False
    if any(arg.startswith(_BLOCKING_PREFIXES) for arg in job.args):
        return False
    return _inside(job) is not None


@dataclass(frozen=True, slots=True)
class Layout:
    """Inside-the-chroot paths of a reproducible job (all below ``tmp_root``)."""

    tmp_root: str
    cwd: str
    source: str  # where the stream is written
    input_arg: str  # the input as the compiler is given it
    output: str  # ``-o``, relative to ``cwd``
    object_file: str
    dwo_file: str


def _inside(job: CompileFile) -> tuple[str, str] | None:
    """Return the client's working directory and input, absolute; None if the input escapes."""
    cwd = posixpath.normpath("/" + (job.working_dir or "/").lstrip("/"))
    name = job.input_file
    joined = posixpath.normpath(posixpath.join(cwd, name))
    if name.startswith("/"):
        if posixpath.normpath(name) != name.rstrip("/") or "/.." in name:
            return None  # the compiler would record the name as written: keep it simple
    else:
        # ".." beyond the root would be clamped by normpath but not by the compiler.
        level = len([part for part in cwd.split("/") if part])
        for part in name.split("/"):
            if part == "..":
                level -= 1
                if level < 0:
                    return None
            elif part not in ("", "."):
                level += 1
    return cwd, joined


def layout(job: CompileFile, tmp_root: str) -> Layout:
    """Paths for *job* below *tmp_root* (``/tmp/icecc-<job>-<unique>`` in the chroot)."""
    found = _inside(job)
    if found is None:
        msg = f"input {job.input_file!r} leaves the job directory"
        raise ValueError(msg)
    cwd, source = found
    name = job.input_file
    input_arg = tmp_root + posixpath.normpath(name) if name.startswith("/") else name
    output = job.output_file or posixpath.basename(name).rsplit(".", 1)[0] + ".o"
    absolute = posixpath.normpath(posixpath.join(cwd, output))
    object_file = tmp_root + absolute
    return Layout(
        tmp_root=tmp_root,
        cwd=tmp_root + cwd,
        source=tmp_root + source,
        input_arg=input_arg,
        output=posixpath.relpath(absolute, cwd),
        object_file=object_file,
        dwo_file=object_file.rsplit(".", 1)[0] + ".dwo",
    )


class SourceFilter:
    """Turns the client's directives-only stream into an ordinary source, chunk by chunk.

    Only the head of the stream changes (the working-directory marker and
    the ``<built-in>`` definitions, replaced by empty lines); once the first
    line marker of a real file follows, everything passes through untouched.
    """

    __slots__ = ("_builtin", "_done", "_head", "_lines")

    def __init__(self) -> None:
        self._head = bytearray()
        self._done = False
        self._builtin = False
        self._lines = 0

    def feed(self, data: bytes) -> bytes:
        """Return the filtered bytes that can be written now."""
        if self._done:
            return data
        self._head += data
        out = bytearray()
        while not self._done:
            end = self._head.find(b"\n")
            if end < 0:
                if len(self._head) > _HEAD_LIMIT:  # no line end in sight: give up filtering
                    out += self._head
                    self._head.clear()
                    self._done = True
                break
            line = bytes(self._head[: end + 1])
            del self._head[: end + 1]
            out += self._line(line)
        if self._done:
            out += self._head
            self._head.clear()
        return bytes(out)

    def finish(self) -> bytes:
        """Return what is left at the end of the stream."""
        rest = bytes(self._head)
        self._head.clear()
        self._done = True
        return rest

    def _line(self, line: bytes) -> bytes:
        self._lines += 1
        if line.startswith(b"# "):
            name = _marker_name(line)
            if name is None:
                return line
            if self._lines <= 2 and name.endswith(b"//"):
                return b"\n"  # the working directory: meaningful only with -fpreprocessed
            self._builtin = name == b"<built-in>"
            if not self._builtin and name != b"<command-line>" and self._lines > 2:
                self._done = True  # a real file begins: the rest is the source as it is
            return line
        if self._builtin and line.startswith(b"#define "):
            return b"\n"
        return line


def _marker_name(line: bytes) -> bytes | None:
    """Return the quoted file name of a ``# N "name" flags`` line marker, or None."""
    parts = line.split(b" ", 2)
    if len(parts) < 3 or not parts[1].isdigit() or not parts[2].startswith(b'"'):
        return None
    end = parts[2].find(b'"', 1)
    return parts[2][1:end] if end > 0 else None
