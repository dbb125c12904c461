"""Starting compile jobs: the daemon's end of the long-lived job helper.

This module owns :class:`JobStarter`, which hands a job's command line and
its four pipes to :mod:`iceserv.daemon._jobexec` running as a fork server
(started on the first job and again if it dies; it exits when the daemon
closes the socket) and wraps the daemon's ends of the pipes as asyncio
streams.  One ``JobStarter`` is built by ``iceserv.app`` per daemon and
passed down; :meth:`JobStarter.stop` ends the helper.  Asking the server is
a round trip of well under a millisecond (it forks and answers a pid), done
on the event loop without blocking it (the answer is awaited with a bound);
starting a Python interpreter per job cost 7-16 ms.  It knows nothing about
what a job runs; :mod:`iceserv.daemon.compile` does.  The same class, given
another *command*, drives the environment unpackers' fork server
(:func:`iceserv.daemon._unpack.serve`), which speaks the same protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.errors import IceservError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["JobStartError", "JobStarter", "StartedJob"]

_JOBEXEC: Final = Path(__file__).with_name("_jobexec.py")
#: The longest command line plus environment a request may carry.
MAX_REQUEST: Final = 1 << 20
_ANSWER_TIMEOUT: Final = 10.0


class JobStartError(IceservError, OSError):
    """The job helper could not start a job (the client then builds locally)."""


@dataclass(slots=True)
class StartedJob:
    """A running job: its process group and the daemon's ends of its pipes."""

    pid: int
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    report: asyncio.StreamReader


class JobStarter:
    """The fork server process and the socket to it; one request at a time."""

    def __init__(
        self,
        answer_timeout: float = _ANSWER_TIMEOUT,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """*command* starts the server (its socket's fd is appended); default: the job helper."""
        self._answer_timeout = answer_timeout
        self._command = tuple(command) if command else (sys.executable, "-I", "-S", str(_JOBEXEC))
        self._env = dict(env) if env is not None else {"PATH": "/usr/bin:/bin"}
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None  # per loop
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    @property
    def helper_pid(self) -> int | None:
        """The helper's pid while one runs (tests kill it to check it comes back)."""
        return self._proc.pid if self._proc is not None else None

    async def start(self, words: Sequence[str]) -> StartedJob:
        """Start a job: ``ROOT CWD SWITCH UID GID NICE AS_LIMIT [K=V...] -- PROGRAM ARGS...``.

        Raises :class:`JobStartError` when it cannot be started.
        """
        request = "\0".join(words).encode(errors="surrogateescape")
        pipes = [os.pipe() for _ in range(4)]  # stdin, stdout, stderr, report; close-on-exec
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
        ours = [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]]
        try:
            pid = await self._spawn(request, theirs)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        loop = asyncio.get_running_loop()
        readers = [await _read_end(loop, fd) for fd in ours[1:]]
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(ours[0], "wb", buffering=0)
        )
        stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        return StartedJob(pid, stdin, readers[0], readers[1], readers[2])

    async def _spawn(self, request: bytes, fds: Sequence[int]) -> int:
        """Send one request with *fds*; return the job's pid.  One restart is tried."""
        if len(request) > MAX_REQUEST:
            msg = f"job command line and environment too long ({len(request)} bytes)"
            raise JobStartError(msg)
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:
            for _ in range(2):
                try:
                    sock = self._sock or self._start()
                    # A SEQPACKET send of one small request does not block in practice; if
                    # the buffer is ever full, the send fails and the helper is restarted.
                    socket.send_fds(sock, [request], list(fds))
                    async with asyncio.timeout(self._answer_timeout):
                        answer = await loop.sock_recv(sock, 32)
                except (OSError, TimeoutError):
                    self._stop()
                    continue
                pid = int(answer) if answer.isdigit() else 0
                if pid > 0:
                    return pid
                if not answer:
                    self._stop()  # it died on this request; a fresh one gets one more try
                    continue
                break
        msg = "the job helper could not start the job"
        raise JobStartError(msg)

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - our own helper, no shell
                [*self._command, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=self._env,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)  # noqa: FBT003 - socket API
        self._sock = ours
        return ours

    def _stop(self, *, kill: bool = True) -> None:
        """Forget the helper: kill it at once (it failed us), or let it exit at EOF (stop)."""
        sock, self._sock = self._sock, None
        proc, self._proc = self._proc, None
        if sock is not None:
            sock.close()  # the server exits when it reads EOF
        if proc is None:
            return
        if not kill:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if proc.returncode is None:
            proc.kill()  # reaping a killed process takes no time: the event loop is not held
            proc.wait()

    def stop(self) -> None:
        """Stop the helper (running jobs go on to their end); the next job starts a new one."""
        self._stop(kill=False)


async def _read_end(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader)
    await loop.connect_read_pipe(lambda: protocol, os.fdopen(fd, "rb", buffering=0))
    return reader
