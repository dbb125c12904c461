"""Processes, work directories and files of the real programs.

Owns what every real-program wrapper needs: checking that a program is
installed (failing with a pointer to ``./bin/setup``, never skipping), a clean
environment without the caller's ``ICECC_*`` variables, work directories the
``icecc`` user can write to (and the removal of those left by dead runs),
finding a process's listening sockets through ``/proc``, and stopping a
process together with all its descendants within a bounded time.

It must not start the programs themselves (``program.py`` and its
subclasses) nor touch network namespaces (``netns.py``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from testbed.errors import MissingProgramError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

ICECC_USER: Final = "icecc"
WORKDIR_PREFIX: Final = "iceserv-tb-"
_WORKDIR_RE: Final = re.compile(rf"^{WORKDIR_PREFIX}(\d+)-")
_SETUP_HINT: Final = "run ./bin/setup (as root) to install the real icecream 1.4 programs"
_TCP_LISTEN: Final = "0A"
_UNIX_ACCEPTCON: Final = 0x10000


def require_program(path: str) -> str:
    """Return ``path`` if it is an executable file, else raise ``MissingProgramError``."""
    if not os.access(path, os.X_OK):
        msg = f"{path} is missing: {_SETUP_HINT}"
        raise MissingProgramError(msg)
    return path


def icecc_ids() -> tuple[int, int]:
    """Return (uid, gid) of the ``icecc`` user the real daemons drop privileges to."""
    try:
        entry = pwd.getpwnam(ICECC_USER)
    except KeyError:
        msg = f"system user {ICECC_USER!r} is missing: {_SETUP_HINT}"
        raise MissingProgramError(msg) from None
    return entry.pw_uid, entry.pw_gid


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return ``os.environ`` without icecream variables, plus ``extra``.

    Variables such as ``ICECC_SCHEDULER`` or ``USE_SCHEDULER`` in the caller's
    shell would silently change how the real programs find each other.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ICECC") and key != "USE_SCHEDULER"
    }
    env.update(extra or {})
    return env


def pid_alive(pid: int) -> bool:
    """Tell whether a process with this pid exists and is not a zombie.

    Zombies count as gone: orphans are re-parented to pid 1, which on some
    machines (containers, micro-VMs) reaps them only after a while.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # exists (kill succeeded) but /proc is not readable for it
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def make_workdir(label: str) -> Path:
    """Create a fresh directory under the system temp dir, writable by the ``icecc`` user.

    The name starts with ``iceserv-tb-<our pid>-`` so ``remove_stale_workdirs``
    can recognise leftovers of runs that died (it is called here first).
    pytest's own ``tmp_path`` is not usable: its parents are mode 0700 and the
    real programs run as ``icecc``.
    """
    uid, gid = icecc_ids()
    remove_stale_workdirs()
    # Short: the Unix socket path inside must stay under 108 bytes.
    safe_label = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:20]
    path = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-{safe_label}-"))
    path.chmod(0o755)
    os.chown(path, uid, gid)
    return path


def make_icecc_subdir(parent: Path, name: str) -> Path:
    """Create ``parent/name`` (if missing) owned by the ``icecc`` user and return it."""
    uid, gid = icecc_ids()
    path = parent / name
    path.mkdir(mode=0o755, exist_ok=True)
    os.chown(path, uid, gid)
    return path


def remove_stale_workdirs(tmp_root: Path | None = None) -> list[Path]:
    """Delete work directories whose creating process no longer exists; return them."""
    root = tmp_root or Path(tempfile.gettempdir())
    removed = []
    for path in root.glob(f"{WORKDIR_PREFIX}*"):
        match = _WORKDIR_RE.match(path.name)
        if match and not pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def log_tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a log file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"--- {path}: (no log file) ---"
    tail = text.splitlines()[-lines:]
    return "\n".join([f"--- last {len(tail)} lines of {path} ---", *tail])


def descendants(pid: int) -> list[int]:
    """Return the pids of all living descendants of ``pid`` (children first)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process went away while we were looking
        # The command name in parentheses may contain spaces; fields resume after ")".
        fields = text[text.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 10_000:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_process(
    proc: subprocess.Popen[bytes], grace: float = 5.0, *, children_first: bool = False
) -> int:
    """Stop ``proc`` and every descendant it started, reap it and return its exit code.

    SIGTERM first, then SIGKILL for whatever is still alive after ``grace``
    seconds.  Descendants are collected before signalling, so children that
    left ``proc``'s process group or session (``script`` puts its child in a
    new session) are found too.  ``children_first`` sends the descendants
    SIGTERM before ``proc``, for wrappers like ``script`` that exit promptly
    when their child does but dawdle when signalled themselves.
    """
    if proc.poll() is not None:
        return proc.returncode
    family = descendants(proc.pid)
    if children_first and family:
        _signal_all(family, signal.SIGTERM)
        _wait_gone(family, grace)
        _signal_all([pid for pid in family if pid_alive(pid)], signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    if proc.poll() is None:
        _signal_all([proc.pid], signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    if proc.poll() is None:
        _signal_all([proc.pid, *family], signal.SIGKILL)
        proc.wait(timeout=grace)
    leftovers = [pid for pid in family if pid_alive(pid)]
    if leftovers:
        _signal_all(leftovers, signal.SIGKILL)
        _wait_gone(leftovers, grace)
    return proc.returncode


def _signal_all(pids: Iterable[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def listening_tcp_ports(pid: int) -> set[int]:
    """Return the TCP ports that process ``pid`` itself is listening on.

    Reads the socket tables of the process's own network namespace
    (``/proc/<pid>/net/tcp`` and ``tcp6``: our programs listen dual-stack on
    ``::``) and keeps only sockets whose inode is one of the process's file
    descriptors, so a port taken by someone else does not count.  Unlike a
    probe connection this is invisible to the program.
    """
    inodes = _socket_inodes(pid)
    ports = set()
    for row in _proc_rows(pid, "tcp") + _proc_rows(pid, "tcp6"):
        local, state, inode = row[1], row[3], row[9]
        if state == _TCP_LISTEN and inode in inodes:
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def listening_unix_paths(pid: int) -> set[str]:
    """Return the paths of the Unix stream sockets process ``pid`` is listening on."""
    inodes = _socket_inodes(pid)
    paths = set()
    for row in _proc_rows(pid, "unix"):
        if len(row) >= 8 and int(row[3], 16) & _UNIX_ACCEPTCON and row[6] in inodes:
            paths.add(row[7])
    return paths


def _proc_rows(pid: int, table: str) -> list[list[str]]:
    try:
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
    except OSError:
        return []
    return [line.split() for line in lines]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = str(fd.readlink())
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes
