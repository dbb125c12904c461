"""A real C project for end-to-end builds: zstd's library, fetched from PyPI and pinned.

Owns the project the cluster tests build: the sdist of the ``zstd`` Python
bindings (``ZSTD_SDIST``), which bundles the zstd C library (33 translation
units under ``zstd/lib/{common,compress,decompress,legacy}``; the ``.S`` file
is left out and ``-DZSTD_DISABLE_ASM`` keeps the C from wanting it).  The
obvious choice, ``zstandard``, ships a single amalgamated ``zstd.c`` since
0.19, so it is not used.

* ``fetch_sdist``: ``pip download`` with ``--require-hashes`` into
  ``/var/cache/iceserv-test`` (kept across runs on one machine, fetched anew
  on a fresh one); the sha256 is checked again on every use.
* ``unpack_project``: the library sources under ``lib/`` plus a generated
  ``Makefile`` that compiles each ``.c`` with ``$(CC) -O2 -c`` into
  ``obj/`` (no link step: every job is a compile job).
* ``restrict``: the same tree with a Makefile for a subset of the units
  (for tests that build through many clusters and need a shorter build).
* ``build_reference``: the same Makefile with plain ``gcc`` in a tree of the
  same layout.  No ``-g``, so objects carry only relative paths and a
  build through icecream, which compiles ``-fdirectives-only`` output with
  ``-fpreprocessed`` elsewhere, must be byte-identical.  ``reference_build``
  fetches, unpacks and builds in one go (``Reference``).

It must not start icecream programs (``cluster.py`` does).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Final

from testbed.errors import TestbedError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

CACHE_DIR: Final = Path("/var/cache/iceserv-test")
CPPFLAGS: Final = "-Ilib -Ilib/common -Ilib/legacy"
CFLAGS: Final = "-O2 -DZSTD_LEGACY_SUPPORT=1 -DZSTD_DISABLE_ASM"
#: What a build may see of the caller's environment: nothing that changes gcc's output.
BUILD_PATH: Final = "/usr/bin:/bin"


@dataclass(frozen=True)
class Sdist:
    """A source distribution on PyPI, pinned by version and sha256."""

    name: str
    version: str
    sha256: str
    library: str  # directory inside the archive that holds the C library

    @property
    def filename(self) -> str:
        """The archive's file name on PyPI."""
        return f"{self.name}-{self.version}.tar.gz"


ZSTD_SDIST: Final = Sdist(
    name="zstd",
    version="1.5.7.2",
    sha256="6d8684c69009be49e1b18ec251a5eb0d7e24f93624990a8a124a1da66a92fc8a",
    library="zstd-1.5.7.2/zstd/lib",
)
_LIBRARY_DIRS: Final = ("common", "compress", "decompress", "legacy")
_PIP_TIMEOUT: Final = 600.0
_BUILD_TIMEOUT: Final = 300.0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(sdist: Sdist = ZSTD_SDIST, cache_dir: Path = CACHE_DIR) -> Path:
    """Return the cached archive, downloading it with pip first if it is missing or altered."""
    target = cache_dir / sdist.filename
    if target.is_file() and _sha256(target) == sdist.sha256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{sdist.name}=={sdist.version} --hash=sha256:{sdist.sha256}\n")
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                "--require-hashes", "-r", str(requirements), "-d", tmp]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT,
                              check=False)  # fmt: skip
        fetched = Path(tmp) / sdist.filename
        if done.returncode != 0 or not fetched.is_file():
            output = done.stdout[-2000:] + done.stderr[-2000:]
            msg = f"pip could not fetch {sdist.filename}:\n{output}"
            raise TestbedError(msg)
        if (actual := _sha256(fetched)) != sdist.sha256:
            msg = f"{sdist.filename} has sha256 {actual}, pinned {sdist.sha256}"
            raise TestbedError(msg)
        fetched.chmod(0o644)
        fetched.replace(target)  # atomic: a concurrent run sees the old file or the new one
    return target


@dataclass(frozen=True)
class Project:
    """An unpacked tree: ``lib/**.c`` sources, a ``Makefile``, objects built into ``obj/``."""

    root: Path
    sources: tuple[str, ...]  # relative to root, e.g. "lib/common/debug.c"

    @property
    def objects(self) -> tuple[str, ...]:
        """The object files the Makefile produces, relative to ``root``."""
        return tuple(_object_of(source) for source in self.sources)

    def make_argv(self, cc: str, jobs: int) -> list[str]:
        """``make -jN CC=...`` for this project (run with ``cwd=root``)."""
        return ["make", f"-j{jobs}", f"CC={cc}"]

    def read_objects(self) -> dict[str, bytes]:
        """The objects that exist now, by relative path."""
        found = {}
        for name in self.objects:
            path = self.root / name
            if path.is_file():
                found[name] = path.read_bytes()
        return found

    def compare(self, reference: Mapping[str, bytes]) -> tuple[list[str], list[str]]:
        """Objects that differ from ``reference`` and objects that are missing."""
        built = self.read_objects()
        missing = [name for name in self.objects if name not in built]
        different = [name for name, data in built.items() if reference.get(name) != data]
        return different, missing

    def clean(self) -> None:
        """Remove the objects so the next build compiles everything again."""
        shutil.rmtree(self.root / "obj", ignore_errors=True)


def _object_of(source: str) -> str:
    relative = PurePosixPath(source).relative_to("lib").with_suffix(".o")
    return str(PurePosixPath("obj") / relative)


def _makefile(sources: Sequence[str]) -> str:
    objects = " \\\n\t".join(_object_of(source) for source in sources)
    return (
        "# Generated by testbed/project.py: each C file of zstd's lib/ to one object.\n"
        "CC = gcc\n"
        f"CPPFLAGS = {CPPFLAGS}\n"
        f"CFLAGS = {CFLAGS}\n"
        f"OBJECTS = {objects}\n\n"
        "all: $(OBJECTS)\n\n"
        "obj/%.o: lib/%.c\n"
        "\t@mkdir -p $(@D)\n"
        "\t$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@\n\n"
        ".PHONY: all\n"
    )


def unpack_project(tarball: Path, dest: Path, sdist: Sdist = ZSTD_SDIST) -> Project:
    """Unpack the C library of ``tarball`` into ``dest`` (created) with a Makefile."""
    prefix = PurePosixPath(sdist.library)
    dest.mkdir(parents=True, exist_ok=False)
    sources = []
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            path = PurePosixPath(member.name)
            if not member.isfile() or prefix not in path.parents:
                continue
            relative = path.relative_to(prefix)
            if relative.parts[0] not in _LIBRARY_DIRS and len(relative.parts) > 1:
                continue
            if relative.suffix not in {".c", ".h"}:
                continue
            member.name = str(PurePosixPath("lib") / relative)
            archive.extract(member, dest, filter="data")
            if relative.suffix == ".c":
                sources.append(member.name)
    if not sources:
        msg = f"no C sources under {sdist.library} in {tarball}"
        raise TestbedError(msg)
    sources.sort()
    (dest / "Makefile").write_text(_makefile(sources))
    return Project(dest, tuple(sources))


def library_units(*names: str) -> tuple[str, ...]:
    """The sources of zstd's C library named like ``common/debug`` (``lib/common/debug.c``)."""
    return tuple(f"lib/{name}.c" for name in names)


def restrict(project: Project, sources: Sequence[str]) -> Project:
    """The same tree building only ``sources`` (a subset of its units): a new Makefile."""
    unknown = sorted(set(sources) - set(project.sources))
    if unknown:
        msg = f"not units of {project.root}: {unknown}"
        raise TestbedError(msg)
    chosen = tuple(sorted(sources))
    (project.root / "Makefile").write_text(_makefile(chosen))
    return Project(project.root, chosen)


def build_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for ``make``: fixed PATH and locale, nothing of the caller's."""
    return {"PATH": BUILD_PATH, "LANG": "C", "LC_ALL": "C", **(extra or {})}


def build_reference(project: Project, jobs: int = 2) -> dict[str, bytes]:
    """Build ``project`` with plain gcc and return its objects (all of them, or raise)."""
    project.clean()
    done = subprocess.run(project.make_argv("gcc", jobs), cwd=project.root, env=build_env(),
                          capture_output=True, text=True, timeout=_BUILD_TIMEOUT,
                          check=False)  # fmt: skip
    objects = project.read_objects()
    if done.returncode != 0 or len(objects) != len(project.sources):
        msg = f"the local reference build failed ({done.returncode}):\n{done.stderr[-3000:]}"
        raise TestbedError(msg)
    return objects


@dataclass(frozen=True)
class Reference:
    """The pinned sdist and the objects of its local reference build."""

    tarball: Path
    reference: dict[str, bytes]


def reference_build(workdir: Path, sdist: Sdist = ZSTD_SDIST) -> Reference:
    """Fetch (or reuse) *sdist*, unpack it below *workdir* and build the reference there."""
    tarball = fetch_sdist(sdist)
    return Reference(tarball, build_reference(unpack_project(tarball, workdir / "zstd", sdist)))
