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

Hardening (issue 20, item 4: 1.4 builds whatever compiler a client names, so
a peer that shipped an executable ``usr/bin/gcc`` in an environment could
have it run): every path a client names is looked at by
:class:`PathVetter`, whose one thread has the job user's filesystem
identity (``setfsuid``/``setfsgid``), so nothing is ``stat``'ed as root.
A compiler must be a regular, executable file owned by root and writable
by nobody else, outside the environment cache, and every directory on the
way to it (as named and as resolved) must be owned by root and writable by
nobody else; extra files likewise, without the executable bit.  At most
``max_builds`` native environments are built at once; other requests wait.

Prebuilds and restarts (issue 17, item 1): :meth:`NativeEnvironments.discover`
finds the compilers to build ahead (``[daemon] native_compilers``; gcc and
clang by default) and checks them like a client's; which to build when is
the core's (:mod:`iceserv.daemon.natives`).  A client that asks for no
compression gets ``default_compression`` (zstd: 1.4's gzip takes 4 times as
long).  What was built is listed in ``<basedir>/native.json`` (written by
the daemon, beside the job user's ``native/`` directory, never inside it)
with each tarball's compilers, their mtimes and the tarball's size; at the
next start :meth:`NativeEnvironments.load` keeps the tarballs that still
match and deletes the rest, so only a changed compiler is built again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.daemon.effects import NativeFound, NativeKey
from iceserv.errors import IceservError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from iceserv.daemon.environments import EnvironmentCache
    from iceserv.daemon.sandbox import RunAs

__all__ = ["NativeEnvError", "NativeEnvironments", "PathVetter", "compiler_pair"]

_COUNTERPARTS: Final = (("clang++", "clang"), ("g++", "gcc"), ("c++", "cc"))
_BUILD_TIMEOUT: Final = 300.0
_OUTPUT_LIMIT: Final = 1 << 16
_TARBALL_SUFFIXES: Final = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tar", ".tgz")
_COMPRESSIONS: Final = frozenset(("", "none", "gzip", "bzip2", "zstd", "xz"))
#: Where discovery looks for compilers named without a directory.
SEARCH_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
MANIFEST: Final = "native.json"
_MANIFEST_LIMIT: Final = 1 << 20


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


_WRITABLE_BY_OTHERS: Final = stat.S_IWGRP | stat.S_IWOTH
_EXECUTABLE: Final = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


class PathVetter:
    """Checks the paths a client names from a thread with the job user's filesystem identity.

    *forbidden* is the environment cache: nothing in it may be a compiler or
    an extra file.  Without a user switch (a non-root daemon) the thread
    keeps the daemon's identity, which is not root either.
    """

    def __init__(self, run_as: RunAs, forbidden: Path) -> None:
        self.run_as = run_as
        self.forbidden = Path(os.path.realpath(forbidden))
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._identity_error = ""

    def _become_job_user(self) -> None:
        """Run in the vetting thread: switch its filesystem uid and gid (per thread on Linux)."""
        if not self.run_as.switch:
            return
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.setfsgid(self.run_as.gid)
        libc.setfsuid(self.run_as.uid)
        # Both calls return the previous id; asking again with -1 reads the current one.
        if libc.setfsuid(-1) != self.run_as.uid or libc.setfsgid(-1) != self.run_as.gid:
            self._identity_error = "cannot take the job user's identity to check paths"

    async def resolve(
        self, compiler: str, extrafiles: Sequence[str]
    ) -> tuple[str, dict[str, float]]:
        """Vet *compiler* (its pair) and the extra files; return the C compiler and the mtimes.

        The C compiler is named canonically (its directory resolved:
        ``/bin/gcc`` is ``/usr/bin/gcc``) so that every way of naming one
        compiler finds the same environment.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread(), self._resolve, compiler, tuple(extrafiles)
        )

    def _resolve(self, compiler: str, extrafiles: Sequence[str]) -> tuple[str, dict[str, float]]:
        c_compiler, cxx_compiler = compiler_pair(compiler)
        self._mtimes(c_compiler, cxx_compiler, extrafiles)  # as named: refuse before resolving
        head, _, base = c_compiler.rpartition("/")
        canonical = os.path.join(os.path.realpath(head or "/"), base)  # noqa: PTH118
        c_compiler, cxx_compiler = compiler_pair(canonical)
        return c_compiler, self._mtimes(c_compiler, cxx_compiler, extrafiles)

    def _thread(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="iceccd-paths", initializer=self._become_job_user
            )
        return self._executor

    async def mtimes(
        self, c_compiler: str, cxx_compiler: str, extrafiles: Sequence[str]
    ) -> dict[str, float]:
        """Vet the compilers and extra files; return their mtimes (the cache's key check)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="iceccd-paths", initializer=self._become_job_user
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._mtimes, c_compiler, cxx_compiler, tuple(extrafiles)
        )

    def close(self) -> None:
        """Stop the vetting thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _mtimes(
        self, c_compiler: str, cxx_compiler: str, extrafiles: Sequence[str]
    ) -> dict[str, float]:
        if self._identity_error:
            raise NativeEnvError(self._identity_error)
        times = {c_compiler: self.vet(c_compiler, "compiler", executable=True)}
        if cxx_compiler != c_compiler and os.path.lexists(cxx_compiler):
            times[cxx_compiler] = self.vet(cxx_compiler, "compiler", executable=True)
        for extra in extrafiles:
            times[extra] = self.vet(extra, "extra file", executable=False)
        return times

    def vet(self, path: str, what: str, *, executable: bool) -> float:
        """Return *path*'s mtime if it is safe to hand to ``icecc --build-native``.

        Raises :class:`NativeEnvError` saying why not.  Called in the
        vetting thread (tests call it directly).
        """
        if not path.startswith("/"):
            msg = f"{what} {path} is not an absolute path"
            raise NativeEnvError(msg)
        named = Path(os.path.normpath(path))
        real = Path(os.path.realpath(named))
        if real == self.forbidden or self.forbidden in real.parents:
            msg = f"{what} {path} is inside the environment cache"
            raise NativeEnvError(msg)
        try:
            info = real.stat()
        except OSError as exc:
            msg = f"{what} {path} for the native environment not found: {exc.strerror}"
            raise NativeEnvError(msg) from None
        problem = ""
        if not stat.S_ISREG(info.st_mode):
            problem = "not a regular file"
        elif info.st_uid != 0:
            problem = "not owned by root"
        elif info.st_mode & _WRITABLE_BY_OTHERS:
            problem = "writable by group or others"
        elif executable and not info.st_mode & _EXECUTABLE:
            problem = "not executable"
        if problem:
            msg = f"{what} {path} refused: {problem}"
            raise NativeEnvError(msg)
        for directory in sorted({*named.parents, *real.parents}, key=lambda d: len(d.parts)):
            self._check_directory(directory, path, what)
        return info.st_mtime

    @staticmethod
    def _check_directory(directory: Path, path: str, what: str) -> None:
        try:
            info = directory.stat()
        except OSError as exc:
            msg = f"{what} {path} for the native environment not found: {exc.strerror}"
            raise NativeEnvError(msg) from None
        if info.st_uid != 0 or info.st_mode & _WRITABLE_BY_OTHERS:
            msg = f"{what} {path} refused: {directory} can be changed by users other than root"
            raise NativeEnvError(msg)


@dataclass(slots=True)
class _Native:
    path: Path
    mtimes: dict[str, float]
    size: int = 0


def _remove(path: Path) -> None:
    """Delete a leftover in the native directory (never following a symbolic link)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@dataclass
class NativeEnvironments:
    """Builds and remembers native tarballs.

    *command* is e.g. ``("/usr/bin/icecc", "--build-native")``.
    """

    cache: EnvironmentCache
    command: Sequence[str]
    run_as: RunAs
    base_environ: dict[str, str] = field(default_factory=dict)
    max_builds: int = 1
    default_compression: str = "zstd"
    _built: dict[str, _Native] = field(default_factory=dict, init=False)
    _vetter: PathVetter | None = field(default=None, init=False)
    _slots: asyncio.Semaphore | None = field(default=None, init=False)

    def close(self) -> None:
        """Stop the path-vetting thread."""
        if self._vetter is not None:
            self._vetter.close()

    @property
    def manifest(self) -> Path:
        """The list of built tarballs kept across restarts (owned by the daemon)."""
        return self.cache.basedir / MANIFEST

    # --- across restarts -------------------------------------------------------------

    def load(self) -> int:
        """At start: keep the tarballs of the last run that still match; delete the rest.

        Returns how many were kept.  A tarball is kept when the manifest
        lists it and it is still a regular file of the recorded size; the
        compilers' mtimes are compared when a key is next resolved.
        """
        self._built.clear()
        entries = self._read_manifest()
        native_dir = self.cache.native_dir
        kept: set[str] = set()
        for name, native in entries.items():
            try:
                info = native.path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_size == native.size:
                self._built[name] = native
                self.cache.add_native(name, native.path)
                kept.add(native.path.name)
        with contextlib.suppress(OSError):
            for entry in native_dir.iterdir():
                if entry.name not in kept:
                    _remove(entry)
        self._save()
        return len(self._built)

    def _read_manifest(self) -> dict[str, _Native]:
        try:
            with self.manifest.open("rb") as file:
                data = json.loads(file.read(_MANIFEST_LIMIT))
            natives: dict[str, _Native] = {}
            for item in data["natives"]:
                tarball = str(item["tarball"])
                if "/" in tarball or not tarball.endswith(_TARBALL_SUFFIXES):
                    continue
                mtimes = {str(k): float(v) for k, v in item["mtimes"].items()}
                path = self.cache.native_dir / tarball
                natives[str(item["name"])] = _Native(path, mtimes, int(item["size"]))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}  # none yet, or damaged: build again
        return natives

    def _save(self) -> None:
        data = {
            "natives": [
                {
                    "name": name,
                    "tarball": native.path.name,
                    "size": native.size,
                    "mtimes": native.mtimes,
                }
                for name, native in self._built.items()
            ]
        }
        temporary = self.manifest.with_name(MANIFEST + ".new")
        with contextlib.suppress(OSError):
            temporary.write_text(json.dumps(data, indent=1))
            temporary.chmod(0o644)
            temporary.replace(self.manifest)

    # --- what to build ---------------------------------------------------------------

    async def discover(
        self, compilers: Sequence[str]
    ) -> tuple[list[NativeFound], list[tuple[str, str]]]:
        """Find *compilers* (names on :data:`SEARCH_PATH`, or paths) to have ready.

        Returns what was found (with the tarball kept from before, if it
        still matches) and ``(compiler, why not)`` for the ones skipped.
        Compilers of one environment (``gcc`` and ``g++``) are listed once.
        """
        found: dict[NativeKey, NativeFound] = {}
        skipped: list[tuple[str, str]] = []
        for name in compilers:
            path = name if name.startswith("/") else shutil.which(name, path=SEARCH_PATH)
            if path is None:
                skipped.append((name, "not installed"))
                continue
            try:
                key, tarball = await self.resolve(path, (), "")
            except NativeEnvError as exc:
                skipped.append((name, str(exc)))
                continue
            found.setdefault(key, NativeFound(key, tarball))
        return list(found.values()), skipped

    async def resolve(
        self, compiler: str, extrafiles: Sequence[str], compression: str
    ) -> tuple[NativeKey, str]:
        """Check a request's paths; return its key and the tarball kept for it ("": none).

        Raises :class:`NativeEnvError` when a path is refused.
        """
        if compression not in _COMPRESSIONS:
            msg = f"unknown environment compression {compression!r}"
            raise NativeEnvError(msg)
        if not compiler.startswith("/"):
            compiler = "/usr/bin/" + compiler  # clients before protocol 41 send a bare name
        if self._vetter is None:
            self._vetter = PathVetter(self.run_as, self.cache.basedir)
        c_compiler, mtimes = await self._vetter.resolve(compiler, extrafiles)
        key = NativeKey(
            compression or self.default_compression,
            c_compiler,
            tuple(extrafiles),
            tuple(sorted(mtimes.items())),
        )
        return key, self._lookup(key)

    def _lookup(self, key: NativeKey) -> str:
        known = self._built.get(key.name)
        if known is None:
            return ""
        try:
            regular = stat.S_ISREG(known.path.lstat().st_mode)
        except OSError:
            regular = False
        if known.mtimes != dict(key.mtimes) or not regular:
            # The compiler changed (or the tarball went): this one is stale.
            self._built.pop(key.name)
            self.cache.drop_native(key.name)
            self._save()
            return ""
        self.cache.touch_native(key.name)
        return str(known.path)

    async def get(self, compiler: str, extrafiles: Sequence[str], compression: str) -> Path:
        """Return the tarball for this compiler, building it if needed (no sharing: the core's)."""
        key, tarball = await self.resolve(compiler, extrafiles, compression)
        return Path(tarball) if tarball else await self.build(key)

    async def build(self, key: NativeKey) -> Path:
        """Build *key*'s tarball (at most ``max_builds`` at once) and remember it."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(max(1, self.max_builds))
        async with self._slots:  # at most max_builds at once; the others wait their turn
            path = await self._build_now(key.name, key.compiler, key.extrafiles, key.compression)
        old = self._built.get(key.name)
        if old is not None and old.path != path:
            with contextlib.suppress(FileNotFoundError):
                old.path.unlink()
        self._built[key.name] = _Native(path, dict(key.mtimes), path.stat().st_size)
        self._save()
        return path

    async def _build_now(
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
            except asyncio.CancelledError:  # the daemon stops: the build goes with it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                # Reap it so its transport closes; a second cancel just stops waiting.
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5.0)
                raise
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
