"""Starting compile jobs: the daemon's end of the long-lived job helper.

This module owns :func:`start_job`, which hands a job's command line and its
four pipes to :mod:`iceserv.daemon._jobexec` running as a fork server (one
per daemon process, started on the first job and again if it dies; it exits
when the daemon does) and wraps the daemon's ends of the pipes as asyncio
streams.  Asking the server is a
blocking round trip of well under a millisecond (it forks and answers a pid);
starting a Python interpreter per job cost 7-16 ms.  It knows nothing about
what a job runs; :mod:`iceserv.daemon.compile` does.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["JobStartError", "StartedJob", "start_job", "stop_job_server"]

_JOBEXEC: Final = Path(__file__).with_name("_jobexec.py")
#: The longest command line plus environment a request may carry.
MAX_REQUEST: Final = 1 << 20
_ANSWER_TIMEOUT: Final = 10.0


class JobStartError(OSError):
    """The job helper could not start a job (the client then builds locally)."""


@dataclass(slots=True)
class StartedJob:
    """A running job: its process group and the daemon's ends of its pipes."""

    pid: int
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    report: asyncio.StreamReader


class _JobServer:
    """The fork server process and the socket to it; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        atexit.register(self.stop)  # it would also go on its own, at EOF when we are gone

    def spawn(self, request: bytes, fds: Sequence[int]) -> int:
        """Send one request with *fds*; return the job's pid.  One restart is tried."""
        if len(request) > MAX_REQUEST:
            msg = f"job command line and environment too long ({len(request)} bytes)"
            raise JobStartError(msg)
        with self._lock:
            for _ in range(2):
                try:
                    sock = self._sock or self._start()
                    socket.send_fds(sock, [request], list(fds))
                    answer = sock.recv(32)
                except OSError:
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
                [sys.executable, "-I", "-S", str(_JOBEXEC), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"},
            )  # fmt: skip
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(_ANSWER_TIMEOUT)
        self._sock = ours
        return ours

    def _stop(self) -> None:
        sock, self._sock = self._sock, None
        proc, self._proc = self._proc, None
        if sock is not None:
            sock.close()  # the server exits when it reads EOF
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.returncode is None:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Stop the server (running jobs go on to their end)."""
        with self._lock:
            self._stop()


_SERVER: Final = _JobServer()


def stop_job_server() -> None:
    """Stop this process's job helper, if one runs (the daemon calls this when it stops)."""
    _SERVER.stop()


async def start_job(words: Sequence[str]) -> StartedJob:
    """Start a job: ``ROOT CWD SWITCH UID GID NICE AS_LIMIT [K=V...] -- PROGRAM ARGS...``.

    Raises :class:`JobStartError` when it cannot be started.
    """
    request = "\0".join(words).encode(errors="surrogateescape")
    pipes = [os.pipe() for _ in range(4)]  # stdin, stdout, stderr, report; close-on-exec
    theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
    ours = [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]]
    try:
        pid = _SERVER.spawn(request, theirs)
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


async def _read_end(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader)
    await loop.connect_read_pipe(lambda: protocol, os.fdopen(fd, "rb", buffering=0))
    return reader
