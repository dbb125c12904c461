"""Run one program chroot'ed into an environment as the unprivileged user, report its usage.

The daemon starts this file as ``python -I -S _jobexec.py SPEC_JSON STATS_FD
-- PROGRAM ARGS...`` (never with ``preexec_fn``: the daemon is an asyncio
program with threads).  It owns the privilege boundary of a compile job:
the forked child changes into and chroots to the environment, drops
supplementary groups, switches to the job user (refusing uid or gid 0),
sets ``RLIMIT_AS``, lowers its priority and execs the program with the
given environment; stdin, stdout and stderr are the daemon's pipes.  The
parent stays outside the chroot, waits with ``wait4`` and writes one JSON
line to ``STATS_FD``: the wait status and the child's resource usage, or
the setup step that failed.  It must stay stdlib-only and import nothing
from iceserv, because it runs with ``-S``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_SETUP_FAILED = 142


def _child(spec: dict[str, object], stats_fd: int, check_fd: int, argv: list[str]) -> None:
    os.close(stats_fd)
    step = "chroot"
    try:
        root = str(spec["root"])
        os.chdir(root)
        os.chroot(root)
        os.chdir(str(spec.get("cwd") or "/"))
        step = "user"
        if spec.get("switch"):
            os.setgroups([])
            os.setgid(int(spec["gid"]))  # type: ignore[call-overload]
            os.setuid(int(spec["uid"]))  # type: ignore[call-overload]
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        if os.getuid() == 0 or os.getgid() == 0:
            raise PermissionError(0, "UID is 0 - aborting")
        step = "limits"
        limit = int(spec.get("as_limit", 0))  # type: ignore[call-overload]
        if limit > 0:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.nice(int(spec.get("nice", 0)))  # type: ignore[call-overload]
        step = "exec"
        env = {str(k): str(v) for k, v in dict(spec.get("env") or {}).items()}  # type: ignore[call-overload]
        os.execve(argv[0], argv, env)  # noqa: S606 - argv from the daemon, no shell wanted
    except OSError as exc:
        # The parent reads this from the close-on-exec pipe: a successful exec
        # closes it with nothing written (upstream ``work_it`` does the same).
        os.write(check_fd, f"{step}: {exc.strerror}".encode()[:200])
        os._exit(_SETUP_FAILED)


def main() -> int:
    """Fork the job, wait for it and report; see the module docstring."""
    spec = json.loads(sys.argv[1])
    stats_fd = int(sys.argv[2])
    argv = sys.argv[4:]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    check_read, check_write = os.pipe()  # both close-on-exec
    pid = os.fork()
    if pid == 0:
        os.close(check_read)
        _child(spec, stats_fd, check_write, argv)
    os.close(check_write)
    for fd in (0, 1, 2):
        # The compiler holds the pipes now; the daemon sees EOF when it exits.
        os.close(fd)
    failure = os.read(check_read, 256).decode(errors="replace")
    os.close(check_read)
    _, status, usage = os.wait4(pid, 0)
    report = {
        "failure": failure,
        "status": status,
        "user_ms": int(usage.ru_utime * 1000),
        "sys_ms": int(usage.ru_stime * 1000),
        "faults": usage.ru_minflt + usage.ru_majflt + usage.ru_nswap,
    }
    os.write(stats_fd, json.dumps(report).encode() + b"\n")
    os.close(stats_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
