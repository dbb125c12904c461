"""Reading and writing the network key file (issue 14).

Owns the rules a key file must meet before a service trusts it: readable,
at least :data:`MIN_KEY_BYTES` bytes, not readable by everyone (the key is
the whole cluster's secret), and not bigger than :data:`MAX_KEY_BYTES`.  Every
failure is a :class:`~iceserv.errors.ConfigError` worded ``path: reason``,
which the programs turn into exit 78 (``EX_CONFIG``).  It also writes new keys
for ``iceserv keygen``.  It must not know what the key is used for (that is
:mod:`iceserv.protocol.auth`).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import secrets
import stat
from typing import TYPE_CHECKING, Final, NoReturn

from iceserv.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["KEY_GROUP", "MAX_KEY_BYTES", "MIN_KEY_BYTES", "read_key", "read_keys", "write_key"]

#: HMAC-SHA256 keys shorter than its output length (32 bytes) weaken it.
MIN_KEY_BYTES: Final = 32
#: A key file is read whole; anything bigger is not a key file.
MAX_KEY_BYTES: Final = 4096
#: ``iceserv keygen`` writes 64 random bytes (twice the minimum).
NEW_KEY_BYTES: Final = 64
#: The group that may read the key (the services' user is in it).
KEY_GROUP: Final = "icecream"
_KEY_MODE: Final = 0o640


def read_key(path: Path) -> bytes:
    """Return the key in *path*; raise ``ConfigError("path: reason")`` if it is unfit."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        reason = "is a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        _fail(path, f"cannot read the network key: {reason}")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        _fail(path, "the network key is not a regular file")
    with os.fdopen(fd, "rb") as file:
        if info.st_mode & stat.S_IROTH or info.st_mode & stat.S_IWOTH:
            _fail(path, f"the network key is world-accessible (mode {info.st_mode & 0o777:04o})")
        try:
            data = file.read(MAX_KEY_BYTES + 1)
        except OSError as exc:
            _fail(path, f"cannot read the network key: {exc.strerror or exc}")
    if len(data) > MAX_KEY_BYTES:
        _fail(path, f"the network key is longer than {MAX_KEY_BYTES} bytes")
    if len(data) < MIN_KEY_BYTES:
        _fail(path, f"the network key is too short ({len(data)} bytes, at least {MIN_KEY_BYTES})")
    return data


def read_keys(key_file: Path | None, previous_key_file: Path | None) -> tuple[bytes, ...]:
    """Return ``(current, previous)`` keys (either may be absent); see :func:`read_key`."""
    if key_file is None:
        if previous_key_file is not None:
            _fail(previous_key_file, "previous_key_file is set but key_file is not")
        return ()
    keys = [read_key(key_file)]
    if previous_key_file is not None:
        keys.append(read_key(previous_key_file))
    return tuple(keys)


def write_key(path: Path, *, size: int = NEW_KEY_BYTES) -> str:
    """Write *size* random bytes to *path* (new file, mode 0640); return the group it got.

    The file is created exclusively (an existing key is never overwritten).
    When run as root and the ``icecream`` group exists it becomes
    ``root:icecream``; otherwise it keeps the caller's group.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _KEY_MODE)
    try:
        os.fchmod(fd, _KEY_MODE)  # whatever the umask said
        group = ""
        with contextlib.suppress(KeyError, PermissionError):
            gid = grp.getgrnam(KEY_GROUP).gr_gid
            os.fchown(fd, -1, gid)
            group = KEY_GROUP
        data = memoryview(secrets.token_bytes(size))
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    if not group:
        gid = path.stat().st_gid
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
    return group


def _fail(path: Path, reason: str) -> NoReturn:
    msg = f"{path}: {reason}"
    raise ConfigError(msg, source=str(path))
