"""``ICECC_RACE=1``: build here and remotely at once when this host has a free slot.

Owns :func:`race`.  It runs only when a local lock slot is free at once
(``/tmp/.icecream-<user>/local_lock*``, the ncpu slots 1.4's clients share):
the local compiler starts in its own process group, writing to a scratch
object beside the output and its messages to scratch files, while the
remote attempt (:class:`~iceserv.client.remote.Remote`, its object also to
a scratch file, its messages held back) runs in a thread.  The first *good*
result wins: a local exit 0, or a remote exit 0 with no messages (a remote
job with messages would be recompiled locally by 1.4's caret workaround
anyway).  The winner's object is renamed into place and its messages
printed; the loser is cancelled at once: the local compiler's process group
gets SIGTERM; the remote side's sockets are shut down, so the compile server
sees the client gone and kills its compiler, and the local daemon reports
the job over to the scheduler.  If neither is good, the local result counts:
a real compile error is the local compiler's own.

Split-DWARF jobs do not race (the ``.dwo`` name is written into the object).
It must not decide whether a job is remote; the caller does.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading

from iceserv.client.channel import ClusterError
from iceserv.client.local import HostLock, find_compiler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO, Final

    from iceserv.client.remote import Remote

__all__ = ["race"]

_SOCKET_SHUTDOWN: Final = 2  # SHUT_RDWR, without importing socket


class _Outcome:
    """What one side produced; ``done`` is set once it has."""

    __slots__ = ("done", "good", "status")

    def __init__(self) -> None:
        self.done, self.good, self.status = False, False, -1


def free_slot() -> HostLock | None:
    """Take a local lock slot if one is free right now (never waits); None if not."""
    lock = HostLock()
    return lock if lock.try_acquire() else None


def race(remote: Remote, lock: HostLock) -> tuple[int, bool]:
    """Race *remote*'s job locally (in *lock*'s slot) and remotely; (status, remote won)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        return _Race(remote, lock, out, err).run()


class _Race:
    """One race: the local compiler as a child process, the remote attempt in a thread."""

    def __init__(self, remote: Remote, lock: HostLock, out: BinaryIO, err: BinaryIO) -> None:
        self.remote, self.lock, self.messages = remote, lock, (out, err)
        job, pid = remote.job, os.getpid()
        self.output = job.output_file
        self.local_obj = f"{self.output}.race-local-{pid}"
        self.remote_obj = f"{self.output}.race-remote-{pid}"
        self.runner = remote.__class__(
            job.evolve(output_file=self.remote_obj),
            remote.daemon,
            remote.envs,
            env=remote.env,
            diag=remote.diag,
            cwd=remote.cwd,
            platform=remote.platform,
            own=remote.own,
            output=False,
        )
        self.runner.may_compile_here = False  # this host already builds it
        self.wake = threading.Event()
        self.mine, self.theirs = _Outcome(), _Outcome()
        self.pid = 0

    def run(self) -> tuple[int, bool]:
        job, env = self.remote.job, self.remote.env
        argv = job.evolve(output_file=self.local_obj).local_argv(
            find_compiler(job, env, self.remote.own)
        )
        actions = [
            (os.POSIX_SPAWN_DUP2, self.messages[0].fileno(), 1),
            (os.POSIX_SPAWN_DUP2, self.messages[1].fileno(), 2),
        ]
        try:
            self.pid = os.posix_spawn(
                argv[0], argv, env.child_environ(2), setpgroup=0, file_actions=actions
            )
        except OSError:
            self.lock.release()
            return self.remote.run(), True
        threads = [
            threading.Thread(target=self.local_side, daemon=True),
            threading.Thread(target=self.remote_side, daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            try:
                remote_won = self.wait_for_a_winner()
            except BaseException:  # e.g. Ctrl-C: the compiler is in its own process group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, 15)
                _cancel(self.runner)
                raise
            for thread in threads:
                thread.join(timeout=30.0)
            self.lock.release()
            return self.finish(remote_won=remote_won)
        finally:
            for path in (self.local_obj, self.remote_obj, self.remote_obj + "_icetmp"):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # noqa: PTH108 - pathlib costs import time

    def local_side(self) -> None:
        _, wait_status = os.waitpid(self.pid, 0)
        self.mine.status = os.waitstatus_to_exitcode(wait_status)
        self.mine.good, self.mine.done = self.mine.status == 0, True
        self.wake.set()

    def remote_side(self) -> None:
        theirs = self.theirs
        try:
            theirs.status = self.runner.run()
            result = self.runner.result
            theirs.good = theirs.status == 0 and (result is None or not (result.out or result.err))
        except ClusterError as exc:
            self.remote.diag.warning(f"ICECC_RACE: remote side failed: {exc}")
        finally:
            theirs.done = True
            self.wake.set()

    def wait_for_a_winner(self) -> bool:
        """Wait for the first good result (or both ends); cancel the loser; True if remote won."""
        mine, theirs = self.mine, self.theirs
        while not (mine.good or theirs.good or (mine.done and theirs.done)):
            self.wake.wait()
            self.wake.clear()
        remote_won = theirs.good and not mine.good
        if remote_won:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, 15)  # SIGTERM to the local compiler and its children
        else:
            _cancel(self.runner)
        return remote_won

    def finish(self, *, remote_won: bool) -> tuple[int, bool]:
        if remote_won:
            os.replace(self.remote_obj, self.output)  # noqa: PTH105 - pathlib costs import time
            self.remote.server = self.runner.server
            self.remote.diag.info(f"ICECC_RACE: {self.runner.server} won")
            return 0, True
        if self.mine.status == 0:
            os.replace(self.local_obj, self.output)  # noqa: PTH105
        _replay(self.messages)
        self.remote.diag.info("ICECC_RACE: this host won")
        return self.mine.status, False


def _cancel(runner: Remote) -> None:
    """Shut the remote attempt's sockets: its blocking reads end, the peers see us gone."""
    for channel in (runner.channel, runner.daemon):
        if channel is not None:
            with contextlib.suppress(OSError):
                channel.sock.shutdown(_SOCKET_SHUTDOWN)


def _replay(messages: tuple[BinaryIO, BinaryIO]) -> None:
    """Print the local compiler's stdout and stderr as it wrote them."""
    for handle, stream in zip(messages, (sys.stdout, sys.stderr), strict=True):
        handle.seek(0)
        data = handle.read()
        if data:
            stream.buffer.write(data)
            stream.flush()
