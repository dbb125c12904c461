"""The environment unpacker: a tarball on stdin into one directory, the result on stdout.

The daemon starts this module once, as a fork server (``python -P -m
iceserv.daemon._unpack --serve SOCK_FD``, driven by a
:class:`~iceserv.daemon.jobstarter.JobStarter`): it loads Python, the
tarball checks and the decompressors once, and forks one child per
environment transfer.  A child shares those pages with the server
(copy-on-write), so a transfer costs a few MB of private memory instead of
a 29 MB interpreter each (issue 20).  A request is the words ``DEST
MAX_BYTES MAX_MEMBERS NICE AS_LIMIT UID GID`` with four descriptors (stdin,
stdout, stderr, report); the answer is the child's pid (its process group).
The child switches to the unprivileged job user (``UID`` -1: stay) and lowers
its priority, as 1.4 extracts environments as that user, niced, limits its
address space, reads the tarball from stdin, writes one JSON line to
stdout, ``{"size": N}`` or ``{"error": TEXT}``, its exit status to the
report pipe, and exits.  Running it as a separate process is the second
line of defence behind :mod:`iceserv.daemon.tarballs`: even a missed check
could only write where that user may, and a memory bomb only kills that
child.  It owns no logic of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import sys
from pathlib import Path

from iceserv.daemon.tarballs import TarballError, UnpackLimits, unpack

with contextlib.suppress(ImportError):
    import zstandard  # noqa: F401 - loaded once in the server, used by tarballs

_FAILED = 142
_WORDS = 7


def main(argv: list[str]) -> int:
    """Unpack stdin into ``argv[0]``; print the JSON result; return 0 on success."""
    dest, max_bytes, max_members, nice, as_limit, uid, gid = argv
    if int(uid) >= 0:
        os.setgroups([])
        os.setgid(int(gid))
        os.setuid(int(uid))
    if int(as_limit) > 0:
        resource.setrlimit(resource.RLIMIT_AS, (int(as_limit), int(as_limit)))
    os.nice(int(nice))
    try:
        size = unpack(sys.stdin.buffer, Path(dest), UnpackLimits(int(max_bytes), int(max_members)))
    except TarballError as exc:
        result: dict[str, object] = {"error": str(exc)}
    except MemoryError:
        result = {"error": "environment needs too much memory to unpack"}
    else:
        result = {"size": size}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if "size" in result else 1


def _child(words: list[str], fds: list[int]) -> None:
    """In a forked child: become a process-group leader, take the pipes, unpack, exit."""
    stdin, stdout, stderr, report = fds
    os.setpgid(0, 0)  # the daemon aborts an install with killpg(pid)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    for target, fd in enumerate((stdin, stdout, stderr)):
        os.dup2(fd, target)
        os.close(fd)
    code = _FAILED
    try:
        os.chdir(words[0])
        code = main(words)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the daemon gets one answer
        with contextlib.suppress(OSError):
            os.write(1, (json.dumps({"error": f"unpacker failed: {exc}"}) + "\n").encode())
    finally:
        with contextlib.suppress(OSError):
            os.write(report, f"{code}\n".encode())
        os._exit(code)


def _fork_unpacker(sock: socket.socket, words: list[str], fds: list[int]) -> int:
    """Fork one unpacker; return its pid (-1 if it could not be forked).

    The daemon may ``killpg(pid)`` as soon as it reads the pid (a client gone
    at once): the group is made here too, as the child may not have run yet.
    """
    try:
        pid = os.fork()
    except OSError:
        return -1
    if pid == 0:
        try:
            sock.close()
            _child(words, fds)
        finally:
            os._exit(_FAILED)
    with contextlib.suppress(OSError):  # ESRCH: it has exited already
        os.setpgid(pid, pid)
    return pid


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(sock_fd: int) -> int:
    """Fork one unpacker per request on *sock_fd* until the daemon closes its end."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    signal.signal(signal.SIGCHLD, lambda _number, _frame: _reap())
    sock = socket.socket(fileno=sock_fd)
    sock.settimeout(1.0)
    while True:
        _reap()
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
        except TimeoutError:
            continue
        except OSError:
            return 0
        if not data:
            return 0  # the daemon closed its end
        words = data.decode(errors="surrogateescape").split("\0")
        pid = -1
        if len(fds) == 4 and len(words) == _WORDS:  # stdin, stdout, stderr, report
            pid = _fork_unpacker(sock, words, fds)
        for fd in fds:
            os.close(fd)
        try:
            sock.send(str(max(pid, 0)).encode())
        except OSError:
            return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve(int(sys.argv[2])))
    sys.exit(main(sys.argv[1:]))
