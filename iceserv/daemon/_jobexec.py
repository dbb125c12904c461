"""Run compile jobs chroot'ed into an environment as the unprivileged user, report their usage.

The daemon starts this file once, as ``python -I -S _jobexec.py SOCK_FD`` (never
with ``preexec_fn``: the daemon is an asyncio program with threads), and sends
one request per job over that socket (see :func:`serve`): the words ``ROOT CWD
SWITCH UID GID NICE AS_LIMIT [NAME=VALUE...] -- PROGRAM ARGS...`` (the
``NAME=VALUE`` words are the program's whole environment) with the program's
stdin, stdout, stderr and a report pipe.  For each it forks a process that
owns the privilege boundary of that compile job: its forked child changes
into and chroots to the environment, drops supplementary groups, switches to
the job user (refusing uid or gid 0), sets ``RLIMIT_AS``, lowers its priority
and execs the program with the given environment.  The job process stays
outside the chroot, waits with ``wait4`` and writes one line to the report
pipe: ``ok STATUS USER_MS SYS_MS FAULTS`` (the wait status and the child's
resource usage) or ``failed STEP: REASON`` (the setup step that failed).  It
must stay stdlib-only and import nothing from iceserv, because it runs with
``-S``.

Jobs are forked from this small, long-lived process rather than each started
as a new interpreter: that start-up (7 ms, 16 ms with ``json``) was most of
what a remote job cost on top of its compile.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import sys

_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_SETUP_FAILED = 142
_REAP_INTERVAL = 1.0


class Spec:
    """The job as the daemon gave it on the command line (see the module docstring)."""

    __slots__ = (
        "argv",
        "as_limit",
        "cwd",
        "env",
        "gid",
        "nice",
        "root",
        "stats_fd",
        "switch",
        "uid",
    )

    def __init__(self, args: list[str]) -> None:
        """Parse ``STATS_FD ROOT CWD SWITCH UID GID NICE AS_LIMIT [K=V...] -- ARGV...``."""
        stats_fd, self.root, self.cwd, switch, uid, gid, nice, as_limit = args[:8]
        self.stats_fd, self.uid, self.gid = int(stats_fd), int(uid), int(gid)
        self.switch, self.nice, self.as_limit = switch == "1", int(nice), int(as_limit)
        end = args.index("--", 8)
        self.env = dict(word.split("=", 1) for word in args[8:end])
        self.argv = args[end + 1 :]


def _child(spec: Spec, check_fd: int) -> None:
    os.close(spec.stats_fd)
    step = "chroot"
    try:
        os.chdir(spec.root)
        os.chroot(spec.root)
        os.chdir(spec.cwd or "/")
        step = "user"
        if spec.switch:
            os.setgroups([])
            os.setgid(spec.gid)
            os.setuid(spec.uid)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        if os.getuid() == 0 or os.getgid() == 0:
            raise PermissionError(0, "UID is 0 - aborting")
        step = "limits"
        if spec.as_limit > 0:
            resource.setrlimit(resource.RLIMIT_AS, (spec.as_limit, spec.as_limit))
        os.nice(spec.nice)
        step = "exec"
        os.execve(spec.argv[0], spec.argv, spec.env)  # noqa: S606 - argv from the daemon
    except OSError as exc:
        # The parent reads this from the close-on-exec pipe: a successful exec
        # closes it with nothing written (upstream ``work_it`` does the same).
        os.write(check_fd, f"{step}: {exc.strerror}".encode()[:200])
        os._exit(_SETUP_FAILED)


def run_job(spec: Spec) -> int:
    """Fork the program, wait for it and report on ``spec.stats_fd``; see the module docstring.

    Stdin, stdout and stderr (fds 0-2) are the program's pipes.
    """
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)  # whatever the server or the daemon set
    check_read, check_write = os.pipe()  # both close-on-exec
    pid = os.fork()
    if pid == 0:
        os.close(check_read)
        _child(spec, check_write)
    os.close(check_write)
    for fd in (0, 1, 2):
        # The compiler holds the pipes now; the daemon sees EOF when it exits.
        os.close(fd)
    failure = os.read(check_read, 256).decode(errors="replace")
    os.close(check_read)
    _, status, usage = os.wait4(pid, 0)
    if failure:
        report = "failed " + " ".join(failure.split())
    else:
        faults = usage.ru_minflt + usage.ru_majflt + usage.ru_nswap
        report = f"ok {status} {int(usage.ru_utime * 1000)} {int(usage.ru_stime * 1000)} {faults}"
    os.write(spec.stats_fd, report.encode() + b"\n")
    os.close(spec.stats_fd)
    return 0


def _start(words: list[str], fds: list[int]) -> None:
    """In a child of the server: become the job's process-group leader and run it."""
    stdin, stdout, stderr, stats = fds
    os.setpgid(0, 0)  # the daemon kills a job with killpg(pid)
    for target, fd in enumerate((stdin, stdout, stderr)):
        os.dup2(fd, target)
        os.close(fd)
    os._exit(run_job(Spec([str(stats), *words])))


def _fork_job(sock: socket.socket, data: bytes, fds: list[int]) -> int:
    """Fork the runner of one job; return its pid (-1 if it could not be forked).

    The job is its own process group before the daemon learns its pid: the
    child makes it too, but may not have run yet when the daemon's
    ``killpg(pid)`` comes (a client gone at once), and that kill would miss.
    """
    try:
        pid = os.fork()
    except OSError:
        return -1
    if pid == 0:
        try:
            sock.close()
            _start(data.decode(errors="surrogateescape").split("\0"), fds)
        finally:
            os._exit(_SETUP_FAILED)
    with contextlib.suppress(OSError):  # ESRCH: it has exited already
        os.setpgid(pid, pid)
    return pid


def _reap() -> None:
    """Collect the jobs that ended (their CPU time then counts as ours, as a daemon's would)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(sock_fd: int) -> int:
    """Start one job per request on *sock_fd*, until the daemon closes its end.

    A request is one SOCK_SEQPACKET datagram, the NUL-separated words of the
    command line after ``STATS_FD``, carrying four descriptors: the program's
    stdin, stdout, stderr and the report pipe.  The answer is the pid of the
    process that runs the job (its process group), or ``0`` for a request that
    could not be started.  Jobs are forked from this small process, so none
    pays an interpreter's start-up; ended ones are reaped at once (SIGCHLD), and
    at least once a second in case a signal was missed.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    signal.signal(signal.SIGCHLD, lambda _number, _frame: _reap())
    sock = socket.socket(fileno=sock_fd)
    sock.settimeout(_REAP_INTERVAL)
    while True:
        _reap()
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        except TimeoutError:
            continue
        except OSError:
            return 0
        if not data:
            return 0  # the daemon closed its end
        pid = _fork_job(sock, data, fds) if len(fds) == 4 else -1  # stdin, out, err, report
        for fd in fds:
            os.close(fd)
        try:
            sock.send(str(max(pid, 0)).encode())
        except OSError:
            return 0


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
