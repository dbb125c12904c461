"""Run one program chroot'ed into an environment as the unprivileged user, report its usage.

The daemon starts this file as ``python -I -S _jobexec.py STATS_FD ROOT CWD
SWITCH UID GID NICE AS_LIMIT [NAME=VALUE...] -- PROGRAM ARGS...`` (never with
``preexec_fn``: the daemon is an asyncio program with threads); the
``NAME=VALUE`` words are the program's whole environment.  It owns the
privilege boundary of a compile job: the forked child changes into and
chroots to the environment, drops supplementary groups, switches to the job
user (refusing uid or gid 0),
sets ``RLIMIT_AS``, lowers its priority and execs the program with the
given environment; stdin, stdout and stderr are the daemon's pipes.  The
parent stays outside the chroot, waits with ``wait4`` and writes one line
to ``STATS_FD``: ``ok STATUS USER_MS SYS_MS FAULTS`` (the wait status and the
child's resource usage) or ``failed STEP: REASON`` (the setup step that
failed).  It must stay stdlib-only and import nothing from iceserv, because
it runs with ``-S``.

It runs once per remote job, so its start-up is part of every job's
latency: it imports only built-in modules (``json`` and ``signal`` would pull
in ``re`` and ``enum``, 7 of its 15 ms), hence the plain argument list and
report line, ``_signal`` instead of ``signal``, and ``ctypes`` only where used.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal itself imports enum: 3 ms
import os
import resource
import sys

_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_SETUP_FAILED = 142


class Spec:
    """The job as the daemon gave it on the command line (see the module docstring)."""

    __slots__ = ("argv", "as_limit", "cwd", "env", "gid", "nice", "root", "stats_fd", "switch",
                 "uid")  # fmt: skip

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
            import ctypes  # noqa: PLC0415 - 1 ms of start-up, needed only without a user switch

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


def main() -> int:
    """Fork the job, wait for it and report; see the module docstring."""
    spec = Spec(sys.argv[1:])
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
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
        report = (f"ok {status} {int(usage.ru_utime * 1000)} {int(usage.ru_stime * 1000)} "
                  f"{faults}")  # fmt: skip
    os.write(spec.stats_fd, report.encode() + b"\n")
    os.close(spec.stats_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
