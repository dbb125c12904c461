"""``ICECC_VERIFY=N``: every Nth remote job is compiled here as well and the objects compared.

Owns :func:`due` (the per-user counter that picks every Nth remote job,
kept next to the lock files in ``/tmp/.icecream-<user>/verify-count`` and
updated under a ``lockf`` lock, so parallel builds share one count) and
:func:`check` (the local compile into a temporary file beside the output,
with the output of the compiler discarded since the remote one was shown,
the byte comparison, and the verdict).  A mismatch is reported in one line
naming both hosts, and the local object replaces the remote one: it is the
one the user's compiler made.  Split-DWARF jobs are not checked: the ``.dwo``
name written into the object would differ by construction.

It must not talk to daemons; the remote job ran before it is called.
"""

from __future__ import annotations

import os
import sys

from iceserv.client.local import HostLock, find_compiler, spawn, wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    from iceserv.client.env import ClientEnv
    from iceserv.client.job import CompileJob
    from iceserv.client.log import ClientLog

__all__ = ["check", "due"]

_COUNTER: Final = "verify-count"


def due(every: int) -> bool:
    """Count one remote job; True for every *every*-th (1: all of them)."""
    if every <= 1:
        return every == 1
    directory = HostLock.directory()
    if directory is None:
        return False
    try:
        fd = os.open(directory + "/" + _COUNTER, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        os.lockf(fd, os.F_LOCK, 0)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        count = (int(text) if text.isdigit() else 0) + 1
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(count).encode())
    except OSError:
        return False
    finally:
        os.close(fd)  # drops the lock
    return count % every == 0


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:  # noqa: PTH123 - pathlib costs import time
            return handle.read()
    except OSError:
        return None


def check(job: CompileJob, env: ClientEnv, diag: ClientLog, *, server: str, own: str | None) -> int:
    """Compile *job* here too and compare with the remote object from *server*.

    Returns the job's final status: 0 when the objects match or the local
    one replaced a different remote one, the local compiler's status when
    it failed where the remote one succeeded.
    """
    if job.dwarf_fission or not job.output_file:
        return 0
    scratch = f"{job.output_file}.verify-{os.getpid()}.o"
    argv = job.evolve(output_file=scratch).local_argv(find_compiler(job, env, own))
    diag.debug("ICECC_VERIFY: " + " ".join(argv))
    lock = HostLock()
    lock.acquire()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        pid = spawn(argv, env.child_environ(2), stdout=devnull, stderr=devnull)
        status = wait(pid, usage=False)[0]
    except OSError as exc:
        diag.warning(f"ICECC_VERIFY: cannot run the local compiler: {exc}")
        return 0
    finally:
        os.close(devnull)
        lock.release()
    here = os.uname().nodename
    try:
        if status != 0:
            _say(
                f"{job.output_file}: compiled on {server} but the local compiler on {here} "
                f"failed with status {status}; the local result counts"
            )
            return status
        remote, local = _read(job.output_file), _read(scratch)
        if local is None:
            return 0
        if remote != local:
            _say(
                f"{job.output_file} differs: remote object from {server}, local object from "
                f"{here}; keeping the local object"
            )
            os.replace(scratch, job.output_file)  # noqa: PTH105 - pathlib costs import time
        return 0
    finally:
        if os.path.exists(scratch):  # noqa: PTH110
            os.unlink(scratch)  # noqa: PTH108


def _say(text: str) -> None:
    sys.stderr.write(f"icecc: ICECC_VERIFY: {text}\n")
    sys.stderr.flush()
