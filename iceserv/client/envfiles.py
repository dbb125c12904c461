"""The file set of an environment tarball, and the deterministic tarball itself.

Owns :class:`EnvFiles` (1.4 ``icecc-create-env``'s ``add_file``: paths in
the environment mapped to files on this machine, shared libraries found with
``ldd``, copies stripped with ``objcopy``, ``ldconfig -r``, the md5 name) and
:func:`write_tarball`.  Used only by :mod:`iceserv.client.createenv`.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import os
import re
import shutil
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

__all__ = ["EnvFiles", "elf_machine", "write_tarball"]


class _Compressor(Protocol):
    """What zlib, bz2, lzma and zstandard compression objects have in common."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


_LDD_PATH: Final = re.compile(r"^[^/]*(/[^ ]*)", re.MULTILINE)
_TIMEOUT: Final = 120.0
#: mtime of files the tool generates (ld.so.cache, ld.so.conf, proc/cpuinfo): fixed,
#: so the same toolchain gives the same bytes (2000-01-01, well before any compiler).
GENERATED_MTIME: Final = 946_684_800
_GZIP_LEVEL: Final = 6  # gzip(1)'s default
_XZ_PRESET: Final = 6  # xz(1)'s default
_ZSTD_LEVEL: Final = 3  # zstd(1)'s default


def elf_machine(path: str) -> int | None:
    """Return the ELF ``e_machine`` of *path*, or None if it is not an ELF file."""
    try:
        with open(path, "rb") as handle:  # noqa: PTH123
            head = handle.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "<" if head[5] == 1 else ">"
    return int(struct.unpack_from(order + "H", head, 18)[0])


class EnvFiles:
    """Environment paths (absolute, as in the chroot) mapped to source files, in order.

    *root* is the scratch directory the files are copied to; *echo* prints
    1.4's ``adding file`` lines.  ``strip_prefix`` is the install prefix of
    a compiler outside ``/usr``, replaced by ``/usr`` in environment paths.
    """

    def __init__(self, root: str, *, echo: bool = True) -> None:
        self.root = root
        self.echo = echo
        self.strip_prefix = ""
        self.files: dict[str, str] = {}  # environment path -> source path
        self.generated: set[str] = set()
        self._seen: set[str] = set()  # names already requested (1.4 add_file_duplicates)

    def add(
        self, path: str, name: str = "", *, skip_ldd: bool = False, generated: bool = False
    ) -> None:
        """1.4 ``add_file``: add *path* as *name* (default: itself), and its libraries."""
        name = name or path
        if not name or name in self._seen:
            return
        self._seen.add(name)
        source = os.path.realpath(path)
        name = _normalise(name)
        if self.strip_prefix:
            name = name.replace(self.strip_prefix, "/usr", 1)
        if name in self.files or (name == source and source in self.files.values()):
            return  # 1.4 is_contained: this name, or this file under another name
        if self.echo:
            shown = source if name == source else f"{name}={source}"
            print(f"adding file {shown}", flush=True)  # noqa: T201 - the tool's output
        self.files[name] = source
        if generated:
            self.generated.add(name)
        if skip_ldd or not os.access(source, os.X_OK) or elf_machine(source) is None:
            return
        for lib in self._libraries(source):
            self._add_library(lib)

    @staticmethod
    def _libraries(path: str) -> list[str]:
        done = subprocess.run(  # noqa: S603 - fixed program, a file we chose
            ["ldd", path],  # noqa: S607 - ldd from PATH, as 1.4's icecc-create-env
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            return []  # static, or not something the loader understands
        return [lib for lib in _LDD_PATH.findall(done.stdout) if Path(lib).is_file()]

    def _add_library(self, lib: str) -> None:
        # Prefer the same library in the top directory ("/lib/libc.so.6" over
        # "/lib/x86_64-linux-gnu/libc.so.6") when it is for the same machine.
        head, _, rest = lib[1:].partition("/")
        base = "/" + head + "/" + rest.rpartition("/")[2] if "/" in rest else lib
        if base != lib and Path(base).is_file() and elf_machine(base) == elf_machine(lib):
            self.add(base)
        else:
            self.add(lib, skip_ldd=True)
        if "/haswell/" in lib or "/avx512_1/" in lib:
            plain = lib.replace("/avx512_1/", "/", 1)
            for variant in (plain, plain.replace("/haswell/", "/", 1)):
                if variant != lib and Path(variant).is_file():
                    self.add(variant)

    def copy_all(self) -> None:
        """Copy every file into the scratch root, stripping executables as 1.4 does."""
        for name, source in self.files.items():
            target = self.root + name
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            if os.access(source, os.X_OK) and (
                _objcopy(["--strip-unneeded"], source, target) or _objcopy(["-g"], source, target)
            ):
                continue
            shutil.copy2(source, target)

    def run_ldconfig(self) -> None:
        """``ldconfig -r``: the loader cache of the environment, added to the files."""
        ldconfig = "/sbin/ldconfig"
        if not os.access(ldconfig, os.X_OK):
            return
        Path(self.root, "var/cache/ldconfig").mkdir(parents=True, exist_ok=True)
        subprocess.run(  # noqa: S603 - fixed program, our own scratch directory
            [ldconfig, "-r", self.root], capture_output=True, timeout=_TIMEOUT, check=False
        )
        for candidate in ("/etc/ld.so.cache", "/var/cache/ldconfig/ld.so.cache"):
            if Path(self.root + candidate).exists():
                self.files[candidate] = self.root + candidate
                self.generated.add(candidate)
                return

    def names(self) -> list[str]:
        """Environment paths in the archive's order (sorted, as the script's ``sort``)."""
        return sorted(self.files)

    def md5(self) -> str:
        """Return the environment name: md5 of the sorted ``"<md5> /<path>"`` lines."""
        lines = "".join(f"{_file_md5(self.root + name)} {name}\n" for name in self.names())
        return hashlib.md5(lines.encode(), usedforsecurity=False).hexdigest()


def _normalise(name: str) -> str:
    """1.4 ``convert_path_cdup``: fold ``..`` in the directory part (logically)."""
    directory, _, base = name.rpartition("/")
    if not Path(directory or "/").is_dir():
        return "/" + base  # the script's failed "cd" leaves the directory empty
    return os.path.normpath(directory or "/").rstrip("/") + "/" + base


def _objcopy(options: list[str], source: str, target: str) -> bool:
    done = subprocess.run(  # noqa: S603 - fixed program, files we chose
        ["objcopy", "-p", *options, source, target],  # noqa: S607 - the toolchain's objcopy
        capture_output=True,
        timeout=_TIMEOUT,
        check=False,
    )
    return done.returncode == 0


def _file_md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:  # noqa: PTH123
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _members(files: EnvFiles) -> Iterator[tuple[tarfile.TarInfo, str]]:
    for name in files.names():
        path = files.root + name
        st = os.stat(path)  # noqa: PTH116
        info = tarfile.TarInfo(name[1:])
        info.size = st.st_size
        # Generated files get a fixed mode too: the script's mktemp made ld.so.conf 0600.
        info.mode = 0o644 if name in files.generated else st.st_mode & 0o7777
        info.mtime = GENERATED_MTIME if name in files.generated else int(st.st_mtime)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        yield info, path


class _Compressing:
    """A write-only stream that compresses into *raw*: all tarfile needs for ``mode="w"``."""

    def __init__(self, raw: BinaryIO, compressor: _Compressor | None) -> None:
        self._raw, self._compressor, self._written = raw, compressor, 0

    def write(self, data: bytes, /) -> int:
        self._written += len(data)
        self._raw.write(self._compressor.compress(data) if self._compressor else data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def read(self, _size: int, /) -> bytes:
        msg = "write-only stream"
        raise io.UnsupportedOperation(msg)

    def seek(self, _pos: int, /) -> int:
        msg = "write-only stream"
        raise io.UnsupportedOperation(msg)

    def close(self) -> None:
        if self._compressor is not None:
            self._raw.write(self._compressor.flush())


def _compressor(compression: str) -> _Compressor | None:
    """Return a compressor with a fixed level and no timestamps (gzip's mtime is 0)."""
    if compression in ("gzip", "gz"):
        return zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    if compression in ("bzip2", "bz2"):
        return bz2.BZ2Compressor(9)
    if compression == "xz":
        return lzma.LZMACompressor(preset=_XZ_PRESET)
    if compression == "zstd":
        import zstandard  # noqa: PLC0415 - a dependency, loaded only for zstd tarballs

        zstd: _Compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compressobj()
        return zstd
    return None


def write_tarball(files: EnvFiles, path: str, compression: str) -> None:
    """Write the archive of *files* to *path* (atomically: a temporary name, then rename)."""
    temporary = path + ".part"
    with Path(temporary).open("wb") as raw:
        stream = _Compressing(raw, _compressor(compression))
        with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for info, source in _members(files):
                with Path(source).open("rb") as handle:
                    tar.addfile(info, handle)
        stream.close()
    Path(temporary).replace(path)
