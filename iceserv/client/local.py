"""Everything the wrapper does on this machine: find the compiler, run it, serialise.

Owns the real-compiler lookup on ``PATH`` (1.4 ``compiler_path_lookup`` and
``find_compiler``, reference §8.2), the recursion guard levels (§8.3), the
``/tmp/.icecream-<user>/local_lock*`` lock files (§8.9), running a program
with the guard raised and signals forwarded (1.4 ``build_local``), the
preprocessor pipe (1.4 ``call_cpp``), and the small file probes the pure
argument analysis is given.  It must not talk to daemons (``remote``) nor
decide local versus remote (``args``).

Programs are started with ``posix_spawn`` and reaped with ``wait4`` (from the
built-in ``posix``, as everywhere on the light path: see :mod:`iceserv.client.env`):
``subprocess`` and ``signal`` would cost the wrapper 15 and 3 ms of imports
on every call.  Python ignores SIGPIPE and SIGXFSZ; the child gets them back.
"""

import posix
import sys

from iceserv.client.job import LANG_C, LANG_CXX, colorify, colorify_wanted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType
    from typing import Final

    from iceserv.client.env import ClientEnv
    from iceserv.client.job import CompileJob
    from iceserv.client.log import ClientLog

__all__ = [
    "EXIT_DISTCC_FAILED",
    "EXIT_NO_SUCH_FILE",
    "EXIT_RECURSION",
    "SAFEGUARD_MAX_LEVEL",
    "HostLock",
    "build_local",
    "color_terminal",
    "find_compiler",
    "irregular",
    "path_lookup",
    "read_command_output",
    "read_response_file",
    "readable",
    "run",
    "spawn",
    "wait",
]

EXIT_DISTCC_FAILED: "Final" = 100
EXIT_RECURSION: "Final" = 111
EXIT_NO_SUCH_FILE: "Final" = 115
#: The guard level at which the wrapper refuses to run (1.4 ``SafeguardMaxLevel``).
SAFEGUARD_MAX_LEVEL: "Final" = 2
STEP_COMPILER: "Final" = 2  # a compiler must never start the wrapper again
STEP_CUSTOM: "Final" = 1  # icerun commands may (once)
# After a link to ourselves, links to these wrappers are skipped too.  1.4 knows the
# first three; ccache is ours: its symlink dir after ours would loop back to us.
_OTHER_WRAPPERS: "Final" = frozenset({"tbcompiler", "distcc", "colorgcc", "ccache"})
_FORWARDED: "Final" = ("SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP")


# --- file probes for the argument analysis --------------------------------------------


def readable(path: str) -> bool:
    """``access(path, R_OK)``."""
    return bool(path) and posix.access(path, posix.R_OK)


def exists(path: str) -> bool:
    """``os.path.exists`` on the built-in ``posix`` (see :mod:`iceserv.client.env`)."""
    return _file_id(path) is not None


def irregular(path: str) -> bool:
    """Tell whether *path* exists and is not a regular file."""
    try:
        mode = posix.stat(path).st_mode
    except OSError:
        return False
    return (mode & 0o170000) != 0o100000


def read_response_file(path: str) -> str | None:
    """Return an ``@file``'s text, or None if it cannot be read (it then stays an argument)."""
    try:
        with open(path, "rb") as handle:  # noqa: PTH123 - pathlib costs import time
            return handle.read().decode("utf-8", "surrogateescape")
    except OSError:
        return None


def color_terminal(env: "ClientEnv") -> bool:
    """1.4 ``color_output_possible``: stderr is a terminal and ``TERM`` is not "dumb"."""
    return posix.isatty(2) and bool(env.term) and (env.term or "").lower() != "dumb"


# --- finding the compiler ---------------------------------------------------------------


def _file_id(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file *path* resolves to; None if it does not exist.

    Two paths with one id are one file (``realpath`` equality, without ``os``).
    """
    try:
        st = posix.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def path_lookup(name: str, env: "ClientEnv", given: str = "", own: str | None = None) -> str:
    """1.4 ``compiler_path_lookup_helper``: the real *name* on ``PATH``, skipping wrappers.

    *given* containing a slash is used as is.  Otherwise each ``PATH`` entry
    is tried: a symlink whose immediate target is named ``icecc`` (or that
    resolves to *own*, our own executable) is a link to us and is skipped;
    after one, links to other wrappers are skipped as well.  Returns the
    first candidate after a link to us, else the first candidate, else "".
    """
    if "/" in given:
        return given
    best, after_self = "", False
    own_id = _file_id(own) if own is not None else None
    for directory in env.path.split(":"):
        candidate = directory + "/" + name
        try:
            st = posix.lstat(candidate)
        except OSError:
            continue
        if (st.st_mode & 0o170000) == 0o120000:
            try:
                target = posix.readlink(candidate).rpartition("/")[2]
            except OSError:
                continue
            if (
                target == "icecc"
                or (after_self and target in _OTHER_WRAPPERS)
                or (own_id is not None and _file_id(candidate) == own_id)
            ):
                after_self = True
                continue
        elif (st.st_mode & 0o170000) != 0o100000:
            continue  # directories and devices are never compilers
        if after_self:
            return candidate
        best = best or candidate
    return best


def find_compiler(job: "CompileJob", env: "ClientEnv", own: str | None = None) -> str:
    """1.4 ``find_compiler``: ``ICECC_CC``/``ICECC_CXX`` verbatim, else :func:`path_lookup`."""
    if job.lang == LANG_CXX and env.cxx is not None:
        return env.cxx
    if job.lang == LANG_C and env.cc is not None:
        return env.cc
    return path_lookup(job.compiler_name, env, job.compiler_path, own)


# --- lock files --------------------------------------------------------------------------


class HostLock:
    """One of the ``ncpu`` lock slots of 1.4 ``dcc_lock_host`` (fcntl write locks).

    Real 1.4 clients use the same files, so both kinds share the limit.
    """

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether a slot is held."""
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take a slot only if one is free right now; never waits."""
        return self.acquire(wait=False)

    def acquire(self, *, wait: bool = True) -> bool:
        """Take a free slot (a random one first), else wait for one; False on errors."""
        base = self.directory()
        if base is None:
            return False
        slots = max(1, posix.sysconf("SC_NPROCESSORS_ONLN"))
        start = posix.getpid()
        rounds = ((False, range(slots)), (True, range(1))) if wait else ((False, range(slots)),)
        for block, order in rounds:
            for step in order:
                slot = (start + step) % slots
                name = base + "/local_lock" + (str(slot) if slot else "")
                try:
                    fd = posix.open(name, posix.O_WRONLY | posix.O_CREAT | posix.O_CLOEXEC, 0o666)
                except OSError:
                    return False
                try:  # glibc lockf is a whole-file fcntl write lock, as 1.4 takes it
                    posix.lockf(fd, posix.F_LOCK if block else posix.F_TLOCK, 0)
                except OSError:
                    posix.close(fd)
                    continue
                self._fd = fd
                return True
        return False

    @staticmethod
    def directory() -> str | None:
        """``/tmp/.icecream-<user>``, made if missing; None if it cannot be."""
        import pwd  # noqa: PLC0415 - only local builds need it

        try:
            user = pwd.getpwuid(posix.getuid()).pw_name
        except KeyError:
            user = str(posix.getuid())
        path = "/tmp/.icecream-" + user  # noqa: S108 - the path 1.4 clients share
        try:
            posix.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return None
        return path

    def keep_across_exec(self) -> None:
        """Let the slot's descriptor survive ``execve``: the compiler then holds the lock.

        fcntl locks belong to the process, and ``execve`` keeps the process
        (and its pid), so the lock is held until the compiler exits.
        """
        if self._fd is not None:
            posix.set_inheritable(self._fd, True)  # noqa: FBT003 - the stdlib signature

    def release(self) -> None:
        """Give the slot back (closing the file drops the lock)."""
        if self._fd is not None:
            posix.close(self._fd)
            self._fd = None


# --- running programs --------------------------------------------------------------------


def _signals() -> "ModuleType":
    # The interpreter always loads _signal; "import signal" would also import enum (3 ms).
    return sys.modules["_signal"]


def become(argv: "Sequence[str]", environ: dict[str, str], *, keep: int | None = None) -> None:
    """Replace this process by *argv*, descriptor *keep* open; returns only if that failed.

    Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive
    ``execve``: the compiler gets them back at their defaults, as a child
    from :func:`spawn` does.
    """
    sig = _signals()
    if keep is not None:
        posix.set_inheritable(keep, True)  # noqa: FBT003 - the stdlib signature
    sys.stdout.flush()
    sys.stderr.flush()
    previous = [(signum, sig.signal(signum, sig.SIG_DFL)) for signum in (sig.SIGPIPE, sig.SIGXFSZ)]
    try:
        posix.execve(argv[0], list(argv), environ)
    except OSError:
        for signum, handler in previous:
            sig.signal(signum, handler)


def spawn(
    argv: "Sequence[str]",
    environ: dict[str, str],
    *,
    stdout: int | None = None,
    stderr: int | None = None,
) -> int:
    """Start *argv* (``argv[0]`` an absolute path) and return its pid; OSError if impossible."""
    sig = _signals()
    actions = [
        (posix.POSIX_SPAWN_DUP2, fd, target)
        for fd, target in ((stdout, 1), (stderr, 2))
        if fd is not None
    ]
    return posix.posix_spawn(
        argv[0], list(argv), environ, file_actions=actions, setsigdef=(sig.SIGPIPE, sig.SIGXFSZ)
    )


def wait(pid: int, *, usage: bool = True) -> tuple[int, float, float, int]:
    """Reap *pid* forwarding SIGINT/TERM/QUIT/HUP to it; return shell status and usage.

    The usage is (user seconds, system seconds, page faults), zeros without
    *usage* (``posix.wait4`` imports ``resource``, which a plain local build
    does not need).  A signal we forwarded is raised on ourselves
    afterwards, as 1.4 does.
    """
    sig = _signals()
    caught: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        caught.append(signum)
        posix.kill(pid, signum)  # not reaped yet, so the pid is still the child's

    try:
        previous = {num: sig.signal(num, forward) for num in (getattr(sig, n) for n in _FORWARDED)}
    except ValueError:  # not the main thread (ICECC_RACE's remote side): nothing to forward
        previous = {}
    times = (0.0, 0.0, 0)
    try:
        if usage:
            _, status, used = posix.wait4(pid, 0)
            times = (used.ru_utime, used.ru_stime, used.ru_majflt + used.ru_minflt + used.ru_nswap)
        else:
            _, status = posix.waitpid(pid, 0)
    finally:
        for num, handler in previous.items():
            sig.signal(num, handler)
    if caught:
        sig.signal(caught[0], sig.SIG_DFL)
        posix.kill(posix.getpid(), caught[0])
    code = posix.waitstatus_to_exitcode(status)
    return (128 - code if code < 0 else code, *times)


def run(
    argv: "Sequence[str]",
    environ: dict[str, str],
    diag: "ClientLog",
    *,
    colour: bool = False,
    usage: bool = True,
) -> tuple[int, float, float, int]:
    """Run *argv* to completion (see :func:`wait`); 127/126 if it cannot be started.

    With *colour*, its stderr is collected and coloured as 1.4's ``colorify_output``.
    """
    read_fd = write_fd = None
    if colour:
        read_fd, write_fd = posix.pipe()
    try:
        pid = spawn(argv, environ, stderr=write_fd)
    except OSError as exc:
        diag.error(f"execv {argv[0]} failed: {exc.strerror}")
        return (127 if isinstance(exc, FileNotFoundError) else 126), 0.0, 0.0, 0
    finally:
        if write_fd is not None:
            posix.close(write_fd)
    if read_fd is not None:
        chunks = []
        while data := posix.read(read_fd, 65536):
            chunks.append(data)
        posix.close(read_fd)
        text = b"".join(chunks).decode("utf-8", "surrogateescape")
        sys.stderr.buffer.write(colorify(text).encode("utf-8", "surrogateescape"))
        sys.stderr.flush()
    return wait(pid, usage=usage)


def read_command_output(argv: "Sequence[str]", environ: dict[str, str], *, fd: int = 1) -> str:
    """1.4 ``read_command_output``: the text a command writes to *fd* (1 or 2); "" on failure."""
    read_fd, write_fd = posix.pipe()
    try:
        if fd == 1:
            pid = spawn(argv, environ, stdout=write_fd)
        else:
            pid = spawn(argv, environ, stderr=write_fd)
    except OSError:
        posix.close(read_fd)
        return ""
    finally:
        posix.close(write_fd)
    chunks = []
    while data := posix.read(read_fd, 65536):
        chunks.append(data)
    posix.close(read_fd)
    posix.waitpid(pid, 0)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


def build_local(  # noqa: PLR0913
    job: "CompileJob",
    env: "ClientEnv",
    diag: "ClientLog",
    *,
    daemon: bool,
    own: str | None = None,
    usage: bool = True,
    replace: bool = False,
    slot: int | None = None,
) -> tuple[int, float, float, int]:
    """1.4 ``build_local``: run the job's compiler here; (status, user s, system s, faults).

    Without a daemon slot (*daemon* False) one of the lock-file slots is
    held while the compiler runs.  115 if there is no compiler.  With
    *replace* (nothing left to do afterwards: no usage to report, no
    colouring of ours) the wrapper becomes the compiler by ``execve``, as
    1.4's ``build_local`` does without a daemon; it returns only if that
    fails, and then runs the compiler as a child.  The lock slot, or the
    daemon connection *slot* whose end frees a daemon slot (§5.1.3), then
    stays open in the compiler until it exits.
    """
    compiler = find_compiler(job, env, own)
    if not compiler:
        diag.error(f"could not find {job.compiler_name} in PATH.")
        return EXIT_NO_SUCH_FILE, 0.0, 0.0, 0
    argv = job.local_argv(compiler)
    diag.debug("invoking: " + " ".join(argv))
    lock = HostLock()
    if not daemon and not lock.acquire():
        diag.error("can't lock for local job")
        return EXIT_DISTCC_FAILED, 0.0, 0.0, 0
    try:
        step = STEP_CUSTOM if job.is_custom else STEP_COMPILER
        colour = colorify_wanted(job, env, color_terminal=color_terminal(env))
        if replace and not usage and not colour:
            lock.keep_across_exec()
            become(argv, env.child_environ(step), keep=slot)
        return run(argv, env.child_environ(step), diag, colour=colour, usage=usage)
    finally:
        lock.release()
