"""Receiving one environment from a client: the unpacker process and the install.

This module owns :class:`Installer`, what the shell runs for the core's
``StartUnpack``/``FeedUnpack``/``FinishUnpack``/``AbortUnpack`` (upstream
``daemon/main.cpp``: ``handle_transfer_env``, ``handle_file_chunk_env``,
``finish_transfer_env``): it streams the chunks into a separate unpacker
process running as the job user (a child of the unpackers' fork server,
:mod:`iceserv.daemon._unpack`, started through a
:class:`~iceserv.daemon.jobstarter.JobStarter` made by
:func:`unpack_server`), and on the end installs the finished tree in the
cache.  Any failure raises
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
from iceserv.daemon.jobstarter import JobStarter, JobStartError

if TYPE_CHECKING:
    from iceserv.daemon.environments import EnvironmentCache
    from iceserv.daemon.jobstarter import StartedJob

__all__ = ["Installer", "unpack_server"]

_UNPACK_MEMORY: Final = 1 << 30
_RESULT_LIMIT: Final = 4096


def unpack_server() -> JobStarter:
    """Return the (not yet started) fork server of environment unpackers."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = (sys.executable, "-P", "-m", "iceserv.daemon._unpack", "--serve")
    return JobStarter(command=command, env=env)


class Installer:
    """One environment install in progress: an unpacker process fed chunk by chunk."""

    def __init__(
        self, cache: EnvironmentCache, target: str, name: str, starter: JobStarter | None = None
    ) -> None:
        self.cache = cache
        self.key = f"{target}/{name}"
        self.final = cache.env_dir(target, name)
        self.staging = cache.new_staging()
        self.received = 0
        self.starter = starter
        self._proc: StartedJob | None = None
        self._returncode: int | None = None
        self._verdict: dict[str, object] | None = None

    async def start(self) -> None:
        """Start the unpacker process (a child of the unpackers' fork server)."""
        if self.starter is None:
            msg = "no unpacker server"
            raise EnvInstallError(msg)
        limits = self.cache.unpack_limits
        words = [
            str(self.staging),
            str(limits.max_bytes),
            str(limits.max_members),
            str(self.cache.nice),
            str(_UNPACK_MEMORY),
            *self._identity(),
        ]
        try:
            self._proc = await self.starter.start(words)
        except JobStartError as exc:
            raise EnvInstallError(str(exc)) from None

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
        if proc.report.at_eof() or proc.stdout.at_eof() or self._verdict is not None:
            _raise_on_error(await self._result())
            return
        if proc.stdin.is_closing():
            _raise_on_error(await self._result())
            return
        proc.stdin.write(data)
        try:
            async with asyncio.timeout(self.cache.io_timeout):
                await proc.stdin.drain()
        except ConnectionError:
            _raise_on_error(await self._result())  # it stopped reading: its verdict says why
        except TimeoutError:
            msg = "the environment unpacker stopped reading"
            raise EnvInstallError(msg) from None

    def _process(self) -> StartedJob:
        proc = self._proc
        if proc is None:
            msg = "installer not started"
            raise EnvInstallError(msg)
        return proc

    async def _result(self) -> dict[str, object]:
        """Close the unpacker's input and read its verdict (once)."""
        if self._verdict is not None:
            return self._verdict
        proc = self._process()
        with contextlib.suppress(ConnectionError):
            proc.stdin.close()
        try:
            async with asyncio.timeout(self.cache.io_timeout):
                line = await proc.stdout.read(_RESULT_LIMIT)
                status = await proc.report.read(64)  # the child's exit code, at its exit
        except TimeoutError:
            msg = "unpacking the environment took too long"
            raise EnvInstallError(msg) from None
        text = status.decode(errors="replace").strip()
        self._returncode = int(text) if text.isdigit() else -1
        verdict = _parse_result(line)
        if self._returncode != 0 and "error" not in verdict:
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
        if proc is not None and self._returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, 9)
            proc.stdin.close()  # a child the kill missed reads EOF and ends on its own
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(5):
                    await proc.report.read()  # EOF: the child is gone
        if proc is not None:
            proc.stdin.close()
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
