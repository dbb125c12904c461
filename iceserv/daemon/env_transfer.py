"""Receiving one environment from a client: the unpacker process and the install.

This module owns :class:`Installer`, what the shell runs for the core's
``StartUnpack``/``FeedUnpack``/``FinishUnpack``/``AbortUnpack`` (upstream
``daemon/main.cpp``: ``handle_transfer_env``, ``handle_file_chunk_env``,
``finish_transfer_env``): it streams the chunks into a separate unpacker
process running as the job user (:mod:`iceserv.daemon._unpack`), and on
the end installs the finished tree in the cache.  Any failure raises
:class:`~iceserv.daemon.environments.EnvInstallError`; the caller then
aborts, which removes what was written.  Whether a transfer may start, the
slot it holds, what the client and the scheduler hear: that is the core's
(:mod:`iceserv.daemon.core`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING, Final

from iceserv.daemon.environments import EnvInstallError

if TYPE_CHECKING:
    from iceserv.daemon.environments import EnvironmentCache

__all__ = ["Installer"]

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
        argv = [
            sys.executable,
            "-P",
            "-m",
            "iceserv.daemon._unpack",
            str(self.staging),
            str(limits.max_bytes),
            str(limits.max_members),
            str(self.cache.nice),
            str(_UNPACK_MEMORY),
            *self._identity(),
        ]
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=self.staging,
            env=env,
            process_group=0,
        )

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
