"""Compiler environment tarballs made by the real ``icecc-create-env``.

Owns ``build_real_env`` and ``RealEnv``.  The 1.4 command line, found by
running it (``/usr/bin/icecc-create-env``, a bash script)::

    icecc-create-env COMPILER [--addfile FILE]... [--compression none|gzip|bzip2|zstd|xz]

``COMPILER`` is a gcc or clang binary; for gcc the matching g++ is added by
replacing "gcc" in the resolved path.  It writes ``<md5>.tar<ext>`` into the
current directory (``.gz`` by default; none, ``.bz2``, ``.zst``, ``.xz``),
prints ``adding file ...`` lines and finally ``creating <md5>.tar<ext>`` on
stdout, and exits 0.  The md5 is over the sorted file list and contents, so the
same compiler gives the same name every time; that name without ``.tar...`` is
the environment name the client sends (e.g.
``8b59cf5c35b2033fe114a01a619d2eea`` for Debian 12's gcc 12 with gzip).  A
gcc environment holds ``usr/bin/{gcc,g++,cc1,cc1plus,as,objcopy}``, the
shared libraries they need, ``etc/ld.so.{conf,cache}``, ``bin/true`` and
``liblto_plugin.so``; it takes about 4 s and 30 MB with gzip.

This module must not install environments into daemons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from testbed.errors import TestbedError
from testbed.hosts import LOOPBACK
from testbed.procs import clean_env, require_program

if TYPE_CHECKING:
    from pathlib import Path

CREATE_ENV_PROGRAM: Final = "/usr/bin/icecc-create-env"
_CREATED_RE: Final = re.compile(r"^creating (\S+)$", re.MULTILINE)
_COMPRESSIONS: Final = ("none", "gzip", "bzip2", "zstd", "xz")
_BUILD_TIMEOUT: Final = 300.0


@dataclass(frozen=True)
class RealEnv:
    """A compiler environment tarball: its path and the name icecream calls it by."""

    path: Path
    name: str
    compiler: str


def build_real_env(
    compiler: str = "/usr/bin/gcc", compression: str | None = None, *, dest_dir: Path
) -> RealEnv:
    """Run the real ``icecc-create-env`` for ``compiler`` in ``dest_dir``; return the tarball.

    ``compression`` None keeps the script's default (gzip).
    """
    program = require_program(CREATE_ENV_PROGRAM)
    require_program(compiler)
    argv = [program, compiler]
    if compression is not None:
        if compression not in _COMPRESSIONS:
            msg = f"compression must be one of {_COMPRESSIONS}, not {compression!r}"
            raise ValueError(msg)
        argv += ["--compression", compression]
    dest_dir.mkdir(parents=True, exist_ok=True)
    result = LOOPBACK.run(
        argv,
        timeout=_BUILD_TIMEOUT,
        cwd=dest_dir,
        env=clean_env(),
        capture_output=True,
        check=False,
    )
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    match = _CREATED_RE.search(output)
    if result.returncode != 0 or match is None:
        msg = f"icecc-create-env {compiler} failed ({result.returncode}):\n{output[-3000:]}"
        raise TestbedError(msg)
    path = dest_dir / match.group(1)
    if not path.is_file():
        msg = f"icecc-create-env said it created {path}, but it is not there"
        raise TestbedError(msg)
    return RealEnv(path=path, name=path.name.partition(".tar")[0], compiler=compiler)
