"""Receiving one environment from a client: TRANFER_ENV, FILE_CHUNK..., END.

This module owns the daemon's side of an environment transfer:
:class:`Installer` streams the chunks into a separate unpacker process
running as the job user (:mod:`iceserv.daemon._unpack`) and hands the
finished tree to the cache; :class:`EnvReceiver` is one session's
transfer (upstream ``daemon/main.cpp``: ``handle_transfer_env``,
``handle_file_chunk_env``, ``finish_transfer_env``): validate the name and
target (an empty target means our own platform), start the unpacker, feed it
chunk by chunk, and on END install the tree, shrink the cache to its limit
and re-announce to the scheduler.  Any failure removes what was written,
tells the client why (STATUS_TEXT) and ends the connection, as 1.4 does.
The install counts against the slots while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING, Final, Protocol

from iceserv.daemon.environments import EnvInstallError, check_name

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from iceserv.daemon.environments import EnvironmentCache
    from iceserv.daemon.settings import ServerSettings
    from iceserv.daemon.slots import Slots
    from iceserv.protocol import EnvTransfer

__all__ = ["EXIT_ENV_FAILED", "EnvReceiver", "Installer"]

#: JOB_DONE/exit code 1.4 uses for a failed environment transfer.
EXIT_ENV_FAILED: Final = 137
_UNPACK_MEMORY: Final = 1 << 30
_RESULT_LIMIT: Final = 4096


class Installer:
    """One environment install in progress: an unpacker process fed chunk by chunk."""

    def __init__(self, cache: EnvironmentCache, target: str, name: str) -> None:
        self.cache = cache
        self.key = f"{target}/{name}"
        self.final = cache.env_dir(target, name)
        self.staging = cache.new_staging()
        self.received = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._verdict: dict[str, object] | None = None

    async def start(self) -> None:
        """Start the unpacker process."""
        limits = self.cache.unpack_limits
        argv = [sys.executable, "-P", "-m", "iceserv.daemon._unpack", str(self.staging),
                str(limits.max_bytes), str(limits.max_members), str(self.cache.nice),
                str(_UNPACK_MEMORY), *self._identity()]  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, cwd=self.staging, env=env,
            process_group=0,
        )  # fmt: skip

    def _identity(self) -> tuple[str, str]:
        run_as = self.cache.run_as
        return (str(run_as.uid), str(run_as.gid)) if run_as.switch else ("-1", "-1")

    async def feed(self, data: bytes) -> None:
        """Pass one chunk of the tarball to the unpacker (bounded by the size limit).

        Raises :class:`EnvInstallError` as soon as the unpacker has refused
        the tarball, so a hostile client is stopped before it sent it all.
        Data after the end of the archive (tar's record padding) is dropped.
        """
        proc = self._process()
        self.received += len(data)
        if self.received > self.cache.unpack_limits.max_bytes:
            msg = f"environment tarball is larger than {self.cache.unpack_limits.max_bytes} bytes"
            raise EnvInstallError(msg)
        if proc.returncode is not None:
            _raise_on_error(await self._result())
            return
        assert proc.stdin is not None  # noqa: S101 - checked by _process
        if proc.stdin.is_closing():
            return
        proc.stdin.write(data)
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(self.cache.io_timeout):
                await proc.stdin.drain()

    def _process(self) -> asyncio.subprocess.Process:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            msg = "installer not started"
            raise EnvInstallError(msg)
        return proc

    async def _result(self) -> dict[str, object]:
        """Close the unpacker's input and read its verdict (once)."""
        if self._verdict is not None:
            return self._verdict
        proc = self._process()
        assert proc.stdin is not None  # noqa: S101 - checked by _process
        assert proc.stdout is not None  # noqa: S101
        with contextlib.suppress(ConnectionError):
            proc.stdin.close()
        try:
            async with asyncio.timeout(self.cache.io_timeout):
                line = await proc.stdout.read(_RESULT_LIMIT)
                await proc.wait()
        except TimeoutError:
            msg = "unpacking the environment took too long"
            raise EnvInstallError(msg) from None
        verdict = _parse_result(line)
        if proc.returncode != 0 and "error" not in verdict:
            verdict = {"error": "the environment unpacker failed"}
        self._verdict = verdict
        return verdict

    async def finish(self) -> int:
        """Close the stream, wait for the unpacker, install the tree; return its size."""
        _raise_on_error(await self._result())
        try:
            return self.cache.commit(self.key, self.final, self.staging)
        except OSError as exc:
            msg = f"cannot install the environment: {exc.strerror}"
            raise EnvInstallError(msg) from None

    async def abort(self) -> None:
        """Stop the unpacker (if running) and delete everything this install wrote."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await proc.wait()
        self.cache.discard(self.staging)


def _raise_on_error(verdict: dict[str, object]) -> None:
    if "error" in verdict:
        raise EnvInstallError(str(verdict["error"]))


def _parse_result(line: bytes) -> dict[str, object]:
    try:
        value = json.loads(line.decode(errors="replace"))
    except ValueError:
        return {"error": "the environment unpacker died"}
    return value if isinstance(value, dict) else {"error": "the environment unpacker failed"}


class _Host(Protocol):
    settings: ServerSettings
    slots: Slots
    cache: EnvironmentCache

    def reannounce(self) -> None: ...

    def schedule(self) -> None: ...


class _Client(Protocol):
    client_id: int

    def error_text(self, text: str) -> None: ...

    async def flush(self) -> None: ...

    def close(self) -> None: ...


class EnvReceiver:
    """One environment transfer; :meth:`begin`, then :meth:`chunk`... and :meth:`finish`."""

    def __init__(self, host: _Host, client: _Client, log: FilteringBoundLogger) -> None:
        self._host = host
        self._client = client
        self._log = log
        self._installer: Installer | None = None
        self.key = ""

    @property
    def active(self) -> bool:
        """Whether a transfer is in progress."""
        return self._installer is not None

    async def begin(self, msg: EnvTransfer) -> bool:
        """Start receiving *msg*'s environment; False (client told, closed) on failure."""
        target = msg.target or self._host.settings.platform
        self.key = f"{target}/{msg.name}"
        try:
            check_name(target, "target")
            check_name(msg.name, "name")
            self._installer = Installer(self._host.cache, target, msg.name)
            await self._installer.start()
        except (EnvInstallError, OSError) as exc:
            await self.fail(str(exc))
            return False
        self._host.slots.start_install(self._client.client_id)
        self._log.info("env_transfer_started", env=self.key)
        return True

    async def chunk(self, data: bytes) -> bool:
        """Pass one piece of the tarball on; False after a failure."""
        if self._installer is None:
            return False
        try:
            await self._installer.feed(data)
        except EnvInstallError as exc:
            await self.fail(str(exc))
            return False
        return True

    async def finish(self) -> bool:
        """END arrived: install, evict, re-announce; False after a failure."""
        installer = self._installer
        if installer is None:
            return False
        try:
            size = await installer.finish()
        except EnvInstallError as exc:
            await self.fail(str(exc))
            return False
        self._installer = None
        host = self._host
        host.slots.release(self._client.client_id)
        evicted = host.cache.evict(keep=self.key)
        self._log.info("env_installed", env=self.key, size=size, cache_size=host.cache.size,
                       evicted=evicted)  # fmt: skip
        host.reannounce()
        host.schedule()
        return True

    async def abort(self) -> None:
        """Stop the unpacker and remove its files (the client left), and tell the scheduler."""
        installer, self._installer = self._installer, None
        if installer is not None:
            await installer.abort()
            self._host.slots.release(self._client.client_id)
            self._install_ended()

    async def fail(self, text: str) -> None:
        """Give up: clean up, tell the client and the scheduler, end the connection."""
        if self._installer is None:
            self._install_ended()  # refused before an unpacker started
        await self.abort()
        self._client.error_text(f"environment {self.key or '?'} not installed: {text}")
        await self._client.flush()
        self._client.close()

    def _install_ended(self) -> None:
        """Re-announce the environments after an install that did not complete.

        The scheduler counts this host "busy installing" from the USE_CS that
        sent the client here until it hears a LOGIN, and drops the host after
        120 s of that; 1.4's daemon re-announces after every install, failed or
        not (``handle_transfer_env_done``), and so do we.
        """
        self._host.reannounce()
        self._host.schedule()
