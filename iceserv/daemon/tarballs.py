"""Unpacking untrusted environment tarballs (TRANFER_ENV) into one directory, and nothing else.

This module owns the checks that make a client's compiler tarball safe to
unpack: it accepts gzip, bzip2, xz, zstd or uncompressed tar (detected by
magic bytes, as libarchive does for 1.4), and refuses -- with a
:class:`TarballError` naming the member -- absolute member names, ``..``,
links whose target is absolute or resolves outside the directory, devices,
FIFOs, sparse and other special members, setuid/setgid bits, more members
or more bytes than the limits allow, corrupt, truncated or unknown data.

Every member is checked before anything is written for it, links are
resolved against what is already on disk (so a chain of innocent-looking
symlinks cannot lead a later member outside), files are created with
``O_EXCL | O_NOFOLLOW`` after removing whatever was at that name, and the
decompressed stream is counted so a compression bomb stops at the limit.
It is synchronous and does no logging; the daemon runs it in a separate
unprivileged process (:mod:`iceserv.daemon._unpack`) as a second line of
defence.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import lzma
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Final, Protocol, Self

from iceserv.errors import IceservError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Readable", "TarballError", "UnpackLimits", "detect_compression", "unpack"]

_MAGIC: Final = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_COPY_SIZE: Final = 1 << 16
#: What ``tarfile`` raises for the zero block that ends an archive (typeshed omits the name).
_END_MARKER: Final[type[Exception]] = vars(tarfile)["EOFHeaderError"]
_DIR_MODE: Final = 0o755
#: Permission bits kept from the archive: no setuid/setgid/sticky, no group/other write.
_KEEP_MODE: Final = 0o755


class Readable(Protocol):
    """Anything with ``read(size) -> bytes`` (a pipe, a file, a decompressor)."""

    def read(self, size: int = -1, /) -> bytes:
        """Return up to *size* bytes; ``b""`` at the end."""
        ...


class TarballError(IceservError, ValueError):
    """The environment tarball is unusable or hostile; the text is sent to the client."""


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    """Caps on one environment: unpacked bytes (file data plus headers) and members."""

    max_bytes: int = 2 << 30
    max_members: int = 50_000


def detect_compression(head: bytes) -> str:
    """Name the compression of a stream starting with *head* ("none" for plain tar)."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return "none"


class _Counted(io.RawIOBase):
    """A read-only stream that fails once more than *limit* bytes were read through it."""

    def __init__(self, inner: Readable, limit: int) -> None:
        super().__init__()
        self._inner = inner
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        self.count += len(data)
        if self.count > self._limit:
            msg = f"environment unpacks to more than {self._limit} bytes"
            raise TarballError(msg)
        buffer[: len(data)] = data
        return len(data)


class _Prefixed(io.RawIOBase):
    """*head* followed by the rest of *inner* (we peek at the magic bytes of a pipe)."""

    def __init__(self, head: bytes, inner: Readable) -> None:
        super().__init__()
        self._head = head
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _decompressor(kind: str, raw: io.BufferedReader[_Prefixed]) -> Readable:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(raw, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    if kind == "zstd":
        import zstandard  # noqa: PLC0415 - only environments compressed with zstd need it

        reader: Readable = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return reader
    return raw


def unpack(source: Readable, dest: Path, limits: UnpackLimits | None = None) -> int:
    """Unpack the tarball read from *source* into the existing empty directory *dest*.

    Returns the total size of the regular files written.  Raises
    :class:`TarballError` for anything refused; the caller removes *dest*
    then (this function may have written part of the archive into it, but
    never anything outside).
    """
    limits = limits or UnpackLimits()
    head = source.read(6)
    kind = detect_compression(head)
    raw = io.BufferedReader(_Prefixed(head, source))
    try:
        stream = io.BufferedReader(_Counted(_decompressor(kind, raw), limits.max_bytes))
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_StrictTarInfo) as archive:
            size = _Unpacker(dest, limits).run(archive)
        _check_end(stream)
    except TarballError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            msg = "no space left on the daemon's disk for the environment"
            raise TarballError(msg) from None
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename:
            msg = f"cannot write the environment: {exc.strerror}"
            raise TarballError(msg) from None
        msg = f"environment is not a valid {kind if kind != 'none' else 'uncompressed'} tar: {exc}"
        raise TarballError(msg) from None
    return size


class _StrictTarInfo(tarfile.TarInfo):
    """Headers as ``tarfile`` reads them, except that a damaged one after the first is an error.

    ``tarfile`` takes a bad checksum, a short or a missing header after the
    first member for the end of the archive and stops there, so a tarball
    damaged in the middle would install as whatever came before the damage
    (libarchive, and so 1.4, reports "Damaged tar archive").  Only the end
    marker (a zero block) ends an archive here.  This is ``tarfile``'s own
    hook for header parsing (``tarfile.open(tarinfo=...)``).
    """

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        """Read the next header from *archive*; raise TarballError if it is damaged."""
        try:
            return super().fromtarfile(archive)
        except tarfile.HeaderError as exc:
            if archive.offset == 0 or isinstance(exc, _END_MARKER):
                raise  # not a tar at all (tarfile says so), or the end marker
            msg = f"environment is damaged after {archive.offset} bytes: {exc}"
            raise TarballError(msg) from None


def _check_end(stream: Readable) -> None:
    """Read the rest of the stream after the archive's end: only zero padding may follow.

    Reading to the end also makes the decompressor check its trailer (gzip's
    CRC and length, xz's and bzip2's checks), which catches corruption in file
    data that the tar headers cannot show.
    """
    while piece := stream.read(_COPY_SIZE):
        if piece.strip(b"\0"):
            msg = "environment is damaged: data follows the end of the tar archive"
            raise TarballError(msg)


class _Unpacker:
    def __init__(self, dest: Path, limits: UnpackLimits) -> None:
        self.root = Path(os.path.realpath(dest))
        self.limits = limits
        self.members = 0
        self.size = 0

    def run(self, archive: tarfile.TarFile) -> int:
        handlers: dict[str, Callable[[tarfile.TarInfo, Path, IO[bytes] | None], None]] = {
            "dir": self._directory,
            "file": self._file,
            "symlink": self._symlink,
            "hardlink": self._hardlink,
        }
        for member in archive:
            self.members += 1
            if self.members > self.limits.max_members:
                msg = f"environment has more than {self.limits.max_members} members"
                raise TarballError(msg)
            kind = self._check(member)
            relative = _relative_name(member.name)
            if relative is None:
                continue  # the archive's root directory ("." or "./")
            target = self.root / relative
            data = archive.extractfile(member) if kind == "file" else None
            handlers[kind](member, target, data)
        return self.size

    def _check(self, member: tarfile.TarInfo) -> str:
        name = member.name
        if "\0" in name or "\0" in member.linkname:
            msg = f"member name {name!r} contains a NUL byte"
            raise TarballError(msg)
        if name.startswith("/"):
            msg = f"member {name!r} has an absolute path"
            raise TarballError(msg)
        if ".." in PurePosixPath(name).parts:
            msg = f"member {name!r} contains '..'"
            raise TarballError(msg)
        if member.mode & (stat.S_ISUID | stat.S_ISGID):
            msg = f"member {name!r} is setuid or setgid"
            raise TarballError(msg)
        return self._kind(member)

    def _kind(self, member: tarfile.TarInfo) -> str:
        name = member.name
        if member.issparse():
            msg = f"member {name!r} is a sparse file"
            raise TarballError(msg)
        if member.isdir():
            return "dir"
        if member.issym():
            return "symlink"
        if member.islnk():
            return "hardlink"
        if member.isreg():
            self.size += member.size
            if self.size > self.limits.max_bytes:
                msg = f"environment unpacks to more than {self.limits.max_bytes} bytes"
                raise TarballError(msg)
            return "file"
        what = "a FIFO" if member.isfifo() else "a device" if member.isdev() else "special"
        msg = f"member {name!r} is {what}, which an environment must not contain"
        raise TarballError(msg)

    # --- writing ----------------------------------------------------------------------

    def _inside(self, path: Path) -> bool:
        resolved = os.path.realpath(path)
        return resolved == str(self.root) or resolved.startswith(str(self.root) + os.sep)

    def _parent(self, target: Path, name: str) -> Path:
        """Create (if needed) and return *target*'s directory, refusing any escape."""
        parent = target.parent
        # Check every existing ancestor before creating the missing ones: an
        # earlier member may have made one of them a symlink.
        probe = parent
        while not probe.exists() and probe != self.root:
            probe = probe.parent
        if not self._inside(probe):
            msg = f"member {name!r} would be written through a link outside the environment"
            raise TarballError(msg)
        parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        if not self._inside(parent) or not parent.is_dir():
            msg = f"member {name!r} would be written outside the environment"
            raise TarballError(msg)
        return parent

    def _clear(self, target: Path) -> None:
        """Remove whatever an earlier member left at *target* (never following links)."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(target.lstat().st_mode):
                msg = f"member {target.name!r} would replace a directory"
                raise TarballError(msg)
            target.unlink()

    def _directory(self, member: tarfile.TarInfo, target: Path, _: IO[bytes] | None) -> None:
        self._parent(target, member.name)
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            msg = f"directory {member.name!r} would replace a file or link"
            raise TarballError(msg)
        target.mkdir(mode=_DIR_MODE, exist_ok=True)
        target.chmod((member.mode & _KEEP_MODE) | 0o700)

    def _file(self, member: tarfile.TarInfo, target: Path, data: IO[bytes] | None) -> None:
        self._parent(target, member.name)
        self._clear(target)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            remaining = member.size
            while remaining > 0 and data is not None:
                piece = data.read(min(_COPY_SIZE, remaining))
                if not piece:
                    msg = f"environment is truncated inside member {member.name!r}"
                    raise TarballError(msg)
                out.write(piece)
                remaining -= len(piece)
            os.fchmod(out.fileno(), (member.mode & _KEEP_MODE) | 0o400)
        with contextlib.suppress(OSError, OverflowError, ValueError):
            os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)

    def _symlink(self, member: tarfile.TarInfo, target: Path, _: IO[bytes] | None) -> None:
        link = member.linkname
        if not link or link.startswith("/"):
            msg = f"symlink {member.name!r} points to the absolute path {link!r}"
            raise TarballError(msg)
        parent = self._parent(target, member.name)
        if not self._inside(parent / link):
            msg = f"symlink {member.name!r} points outside the environment ({link!r})"
            raise TarballError(msg)
        self._clear(target)
        target.symlink_to(link)

    def _hardlink(self, member: tarfile.TarInfo, target: Path, _: IO[bytes] | None) -> None:
        relative = _relative_name(member.linkname)
        if (
            relative is None
            or member.linkname.startswith("/")
            or ".." in PurePosixPath(member.linkname).parts
        ):
            msg = f"hard link {member.name!r} points outside the environment"
            raise TarballError(msg)
        source = self.root / relative
        try:
            info = source.lstat()
        except FileNotFoundError:
            msg = f"hard link {member.name!r} points to a missing member"
            raise TarballError(msg) from None
        if not stat.S_ISREG(info.st_mode) or not self._inside(source):
            msg = f"hard link {member.name!r} must point to a regular file in the environment"
            raise TarballError(msg)
        self._parent(target, member.name)
        self._clear(target)
        os.link(source, target, follow_symlinks=False)


def _relative_name(name: str) -> PurePosixPath | None:
    """Return the member name without ``./`` prefixes; None for the archive root."""
    parts = [part for part in PurePosixPath(name).parts if part not in (".", "")]
    return PurePosixPath(*parts) if parts else None
