"""The environment cache under the env base dir: layout, installs, size accounting, eviction.

This module owns ``<basedir>/target=<target>/<name>/`` (received compiler
environments), ``<basedir>/native/`` (tarballs built for local clients, see
:mod:`iceserv.daemon.native`) and ``<basedir>/.staging/`` (installs in
progress).  An install (:class:`~iceserv.daemon.env_transfer.Installer`)
unpacks into a staging directory; :meth:`EnvironmentCache.commit` then
moves the finished tree into place, makes it read-only for that user
(root daemon), adds ``tmp`` (mode 01775, the only place a job may write)
and accounts its size.  Environments in use are never removed; beyond
``--cache-limit`` the least recently used ones go, as upstream
``daemon/main.cpp`` (``Daemon::check_cache_size``) does: broken ones first,
received ones idle for 200 s, native ones idle for a day (200 s once five
exist).  Names and targets are validated like 1.4's (printable ASCII, no
blank, no ``/``) and never ``.``/``..``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.daemon.tarballs import UnpackLimits
from iceserv.errors import IceservError
from iceserv.protocol import EnvEntry

if TYPE_CHECKING:
    from iceserv.clock import Clock
    from iceserv.daemon.sandbox import RunAs

__all__ = [
    "CachedEnvironment",
    "EnvInstallError",
    "EnvironmentCache",
    "check_name",
]

TMP_MODE: Final = 0o1775
#: Received environments used within this many seconds are never evicted.
KEEP_RECEIVED: Final = 200.0
KEEP_NATIVE: Final = 24 * 3600.0
_MANY_NATIVE: Final = 5
_MAX_NAME: Final = 255


class EnvInstallError(IceservError, ValueError):
    """An environment could not be installed; ``str()`` is the text for the client."""


def check_name(value: str, what: str) -> str:
    """Return *value* if it is a valid environment name or target, else raise EnvInstallError."""
    if (
        not value
        or len(value) > _MAX_NAME
        or value in (".", "..")
        or any(not (0x20 < ord(c) < 0x7F) or c == "/" for c in value)
    ):
        msg = f"invalid environment {what} {value!r}"
        raise EnvInstallError(msg)
    return value


@dataclass(frozen=True, slots=True)
class CachedEnvironment:
    """One cached environment: ``target/name`` (or ``native:<key>``), size, idle time, users."""

    key: str
    size: int
    idle_seconds: int
    in_use: int
    native: bool


@dataclass(slots=True)
class _Env:
    path: Path
    size: int
    last_use: float
    native: bool = False
    in_use: int = 0
    building: bool = False


@dataclass
class EnvironmentCache:
    """The environments on disk and their bookkeeping; see the module docstring."""

    basedir: Path
    limit: int
    run_as: RunAs
    clock: Clock
    nice: int = 5
    unpack_limits: UnpackLimits = field(default_factory=UnpackLimits)
    io_timeout: float = 60.0  # for installs: one chunk, or the unpacker's verdict
    _envs: dict[str, _Env] = field(default_factory=dict, init=False)

    # --- layout ----------------------------------------------------------------------

    def env_dir(self, target: str, name: str) -> Path:
        """Where environment *name* for *target* lives (validated names only)."""
        return self.basedir / f"target={check_name(target, 'target')}" / check_name(name, "name")

    @property
    def native_dir(self) -> Path:
        """Where native environment tarballs are built."""
        return self.basedir / "native"

    @property
    def size(self) -> int:
        """Bytes used by all cached environments."""
        return sum(env.size for env in self._envs.values())

    def wipe(self, *, keep_native: bool = False) -> None:
        """Start empty, as 1.4 does: remove our subdirectories of the base dir (never others).

        With *keep_native* the native tarballs stay (the daemon keeps them
        across restarts and checks them itself: :mod:`iceserv.daemon.native`).
        """
        self.basedir.mkdir(mode=0o755, parents=True, exist_ok=True)
        remove = (".staging",) if keep_native else ("native", ".staging")
        for entry in self.basedir.iterdir():
            if entry.name.startswith("target=") or entry.name in remove:
                _remove_tree(entry)
        self._envs.clear()

    # --- queries ---------------------------------------------------------------------

    def usable(self, target: str, name: str) -> bool:
        """Whether the environment is installed and has an executable ``usr/bin/as``."""
        try:
            root = self.env_dir(target, name)
        except EnvInstallError:
            return False
        return _executable_inside(root, "usr/bin/as")

    def installed(self) -> tuple[EnvEntry, ...]:
        """``(target, name)`` of every usable received environment, for LOGIN."""
        found = []
        for key, env in sorted(self._envs.items()):
            if not env.native:
                target, _, name = key.partition("/")
                if self.usable(target, name):
                    found.append(EnvEntry(target, name))
        return tuple(found)

    def describe(self) -> tuple[CachedEnvironment, ...]:
        """Return one record per environment, for the control facade and GET_INTERNALS."""
        now = self.clock.now()
        return tuple(
            CachedEnvironment(
                key=key,
                size=env.size,
                idle_seconds=round(now - env.last_use),
                in_use=env.in_use,
                native=env.native,
            )
            for key, env in sorted(self._envs.items())
        )

    # --- use -------------------------------------------------------------------------

    def acquire(self, target: str, name: str) -> None:
        """Mark a received environment as used by one more job (it cannot be evicted)."""
        env = self._envs.get(f"{target}/{name}")
        if env is not None:
            env.in_use += 1
            env.last_use = self.clock.now()

    def release(self, target: str, name: str) -> None:
        """One job stopped using the environment."""
        env = self._envs.get(f"{target}/{name}")
        if env is not None:
            env.in_use = max(0, env.in_use - 1)
            env.last_use = self.clock.now()

    def remove(self, target: str, name: str) -> bool:
        """Delete a received environment (e.g. found broken) unless it is in use."""
        key = f"{target}/{name}"
        env = self._envs.get(key)
        if env is None or env.in_use:
            return False
        _remove_tree(env.path)
        del self._envs[key]
        return True

    # --- native tarballs -------------------------------------------------------------

    def add_native(self, key: str, path: Path, *, building: bool = False) -> None:
        """Account a native tarball (size 0 while it is being built)."""
        size = path.stat().st_size if not building and path.is_file() else 0
        self._envs[f"native:{key}"] = _Env(
            path, size, self.clock.now(), native=True, building=building
        )

    def drop_native(self, key: str) -> None:
        """Forget (and delete) a native tarball."""
        env = self._envs.pop(f"native:{key}", None)
        if env is not None and not env.building:
            with contextlib.suppress(FileNotFoundError):
                env.path.unlink()

    def touch_native(self, key: str) -> None:
        """Record that a client just got this native tarball."""
        env = self._envs.get(f"native:{key}")
        if env is not None:
            env.last_use = self.clock.now()

    # --- eviction --------------------------------------------------------------------

    def evict(self, keep: str = "") -> list[str]:
        """Remove least recently used environments until the cache fits; return their keys."""
        removed: list[str] = []
        while self.size > self.limit:
            victim = self._victim(keep)
            if victim is None:
                break
            env = self._envs.pop(victim)
            if env.native:
                with contextlib.suppress(FileNotFoundError):
                    env.path.unlink()
            else:
                _remove_tree(env.path)
            removed.append(victim)
        return removed

    def _victim(self, keep: str) -> str | None:
        now = self.clock.now()
        natives = sum(1 for env in self._envs.values() if env.native)
        native_keep = KEEP_RECEIVED if natives >= _MANY_NATIVE else KEEP_NATIVE
        best: tuple[float, str] | None = None
        for key, env in self._envs.items():
            if key == keep or env.in_use or env.building:
                continue
            if not env.native and not _executable_inside(env.path, "usr/bin/as"):
                return key  # broken: always first
            idle = now - env.last_use
            if idle <= (native_keep if env.native else KEEP_RECEIVED):
                continue
            if best is None or env.last_use < best[0]:
                best = (env.last_use, key)
        return None if best is None else best[1]

    # --- installing ------------------------------------------------------------------

    def new_staging(self) -> Path:
        """Return a fresh empty directory for an install, writable by the job user."""
        staging_root = self.basedir / ".staging"
        staging_root.mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = staging_root / uuid.uuid4().hex
        staging.mkdir(mode=0o755)
        if self.run_as.switch:
            os.chown(staging, self.run_as.uid, self.run_as.gid)
        return staging

    def discard(self, staging: Path) -> None:
        """Remove an abandoned staging directory."""
        _remove_tree(staging)

    def commit(self, key: str, final: Path, staging: Path) -> int:
        """Move a finished staging tree into place; return its size."""
        if self.run_as.switch:
            _own_tree(staging, 0, 0)  # jobs must not modify what later jobs will run
        existing = self._envs.get(key)
        if existing is not None and existing.in_use:
            _remove_tree(staging)  # same name, same content: keep the one in use
            return existing.size
        final.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if final.exists() or final.is_symlink():
            _remove_tree(final)
        staging.rename(final)
        tmp = final / "tmp"
        if tmp.is_symlink() or (tmp.exists() and not tmp.is_dir()):
            tmp.unlink()
        tmp.mkdir(exist_ok=True)
        if self.run_as.switch:
            os.chown(tmp, self.run_as.uid, self.run_as.gid)
        tmp.chmod(TMP_MODE)
        size = _tree_size(final)
        self._envs[key] = _Env(final, size, self.clock.now())
        return size


def _executable_inside(root: Path, relative: str) -> bool:
    """Tell whether *relative* is an executable regular file that stays inside *root*."""
    path = root / relative
    try:
        resolved = Path(os.path.realpath(path))
        real_root = Path(os.path.realpath(root))
        info = resolved.stat()
    except OSError:
        return False
    return (
        resolved.is_relative_to(real_root)
        and stat.S_ISREG(info.st_mode)
        and bool(info.st_mode & 0o111)
    )


def _tree_size(root: Path) -> int:
    """Sum of the regular files below *root* (links not followed), like 1.4's ``sumup_dir``."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(dirpath, name))  # noqa: PTH118 - os.walk gives strings
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
    return total


def _own_tree(root: Path, uid: int, gid: int) -> None:
    """``lchown`` everything below *root* (never following links)."""
    os.lchown(root, uid, gid)
    for dirpath, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.lchown(os.path.join(dirpath, name), uid, gid)  # noqa: PTH118


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
