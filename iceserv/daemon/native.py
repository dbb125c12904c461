"""Native environments for local clients (GET_NATIVE_ENV → NATIVE_ENV), built once and cached.

This module owns what upstream ``daemon/main.cpp`` does in
``Daemon::handle_get_native_env`` and ``daemon/environment.cpp`` in
``start_create_env``: derive the C and C++ compiler from the client's
compiler path (``g++``↔``gcc``, ``clang++``↔``clang``, ``c++``↔``cc``), key
the cache by ``compression:c_compiler[:extrafile]...``, rebuild when a file's
mtime changed or the tarball vanished, and build with ``icecc --build-native
COMPILER [EXTRA...]`` (ours or the real one) as the job user in
``<basedir>/native/``, reading the tarball's name from file descriptor 5.
Clients asking for the same key while it is built share that one build.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.errors import IceservError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from iceserv.daemon.environments import EnvironmentCache
    from iceserv.daemon.sandbox import RunAs

__all__ = ["NativeEnvError", "NativeEnvironments", "compiler_pair"]

_COUNTERPARTS: Final = (("clang++", "clang"), ("g++", "gcc"), ("c++", "cc"))
_BUILD_TIMEOUT: Final = 300.0
_OUTPUT_LIMIT: Final = 1 << 16
_TARBALL_SUFFIXES: Final = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tar", ".tgz")
_COMPRESSIONS: Final = frozenset(("", "none", "gzip", "bzip2", "zstd", "xz"))


class NativeEnvError(IceservError, RuntimeError):
    """The native environment could not be built (the client gets END and builds locally)."""


def compiler_pair(compiler: str) -> tuple[str, str]:
    """Return ``(c_compiler, cxx_compiler)`` for the compiler path a client sent."""
    directory, _, base = compiler.rpartition("/")
    prefix = directory + "/" if directory else ""
    for cxx, c in _COUNTERPARTS:
        if cxx in base:
            return prefix + base.replace(cxx, c), prefix + base
        if base.endswith(c) or c in base.split("-"):
            return prefix + base, prefix + base.replace(c, cxx)
    return compiler, compiler


@dataclass(slots=True)
class _Native:
    path: Path
    mtimes: dict[str, float]


@dataclass
class NativeEnvironments:
    """Builds and remembers native tarballs.

    *command* is e.g. ``("/usr/bin/icecc", "--build-native")``.
    """

    cache: EnvironmentCache
    command: Sequence[str]
    run_as: RunAs
    base_environ: dict[str, str] = field(default_factory=dict)
    _built: dict[str, _Native] = field(default_factory=dict, init=False)
    _building: dict[str, asyncio.Task[Path]] = field(default_factory=dict, init=False)

    async def get(self, compiler: str, extrafiles: Sequence[str], compression: str) -> Path:
        """Return the tarball for this compiler, building it (once) if needed."""
        if compression not in _COMPRESSIONS:
            msg = f"unknown environment compression {compression!r}"
            raise NativeEnvError(msg)
        if not compiler.startswith("/"):
            compiler = "/usr/bin/" + compiler  # clients before protocol 41 send a bare name
        c_compiler, cxx_compiler = compiler_pair(compiler)
        mtimes = _mtimes(c_compiler, cxx_compiler, extrafiles)
        key = ":".join((compression, c_compiler, *extrafiles))
        known = self._built.get(key)
        if known is not None and (known.mtimes != mtimes or not known.path.is_file()):
            self._built.pop(key)
            self.cache.drop_native(key)
            known = None
        if known is not None:
            self.cache.touch_native(key)
            return known.path
        task = self._building.get(key)
        if task is None:
            task = asyncio.create_task(self._build(key, c_compiler, extrafiles, compression))
            self._building[key] = task
            task.add_done_callback(lambda _: self._building.pop(key, None))
        path = await asyncio.shield(task)
        self._built.setdefault(key, _Native(path, mtimes))
        return path

    async def _build(
        self, key: str, compiler: str, extrafiles: Sequence[str], compression: str
    ) -> Path:
        native_dir = self.cache.native_dir
        native_dir.mkdir(mode=0o775, parents=True, exist_ok=True)
        native_dir.chmod(0o775)
        if self.run_as.switch:
            os.chown(native_dir, self.run_as.uid, self.run_as.gid)
        env = dict(self.base_environ)
        env["PATH"] = "/usr/bin:/bin:/usr/sbin:/sbin"
        env.pop("ICECC_VERSION", None)
        if compression:
            env["ICECC_ENV_COMPRESSION"] = compression
        # icecc-create-env writes the tarball name to descriptor 5 and chatter to stdout:
        # the shell moves fd 5 onto our stdout pipe and stdout onto stderr.
        argv = ["/bin/sh", "-c", 'exec "$@" 5>&1 1>&2', "sh", *self.command, compiler, *extrafiles]
        self.cache.add_native(key, native_dir / "building", building=True)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=native_dir,
                env=env,
                process_group=0,
                **self.run_as.popen_kwargs(),  # type: ignore[arg-type]
            )
            try:
                async with asyncio.timeout(_BUILD_TIMEOUT):
                    out, err = await proc.communicate()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()
                msg = f"building the native environment took over {_BUILD_TIMEOUT:g} s"
                raise NativeEnvError(msg) from None
        except BaseException:
            self.cache.drop_native(key)
            raise
        name = out[:_OUTPUT_LIMIT].decode(errors="replace").strip().splitlines()
        tarball = name[0].strip() if name else ""
        if (
            proc.returncode != 0
            or not tarball
            or "/" in tarball
            or not tarball.endswith(_TARBALL_SUFFIXES)
            or not (native_dir / tarball).is_file()
        ):
            self.cache.drop_native(key)
            tail = err[-_OUTPUT_LIMIT:].decode(errors="replace").strip().splitlines()[-3:]
            msg = f"{' '.join(self.command)} failed (exit {proc.returncode}): {' / '.join(tail)}"
            raise NativeEnvError(msg)
        path = native_dir / tarball
        path.chmod(0o644)
        self.cache.add_native(key, path)
        return path


def _mtimes(c_compiler: str, cxx_compiler: str, extrafiles: Sequence[str]) -> dict[str, float]:
    try:
        times = {c_compiler: Path(c_compiler).stat().st_mtime}
    except OSError:
        msg = f"compiler {c_compiler} for the native environment not found"
        raise NativeEnvError(msg) from None
    with contextlib.suppress(OSError):
        times[cxx_compiler] = Path(cxx_compiler).stat().st_mtime  # optional, as in 1.4
    for extra in extrafiles:
        try:
            times[extra] = Path(extra).stat().st_mtime
        except OSError:
            msg = f"extra file {extra} for the native environment not found"
            raise NativeEnvError(msg) from None
    return times
