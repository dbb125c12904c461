"""One program of the test bed as a subprocess: the launcher every wrapper shares.

Owns ``Program``, the base of ``RealScheduler``, ``RealDaemon``,
``RealSundae``, ``OurScheduler`` and ``OurDaemon``: the work directory (a
fresh one that ``stop`` removes unless ``keep_workdir``, or a given one that
is kept), the start on a ``hosts.Host`` in a new session with stdout and
stderr in a file there, the bounded wait until the program is ready (which
stops it again if the wait fails), the check that it still runs, the log
tails every failure message carries, and the stop of the program with all its
descendants.  Which command line to run and what "ready" means stays with the
subclass.  ``DaemonProgram`` adds what the real ``iceccd`` and ours share:
the options, the command line they have in common, the socket, ``-b``
directory and address.  This module must not depend on iceserv.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self

from testbed.errors import ProgramExitedError, TestbedError
from testbed.hosts import LOOPBACK, Host, free_port
from testbed.idlecpu import IdleCpuHost, freeze_proc_stat
from testbed.procs import clean_env, log_tail, make_workdir, stop_process
from testbed.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path
    from types import TracebackType

DEFAULT_DAEMON_PORT: Final = 10245


@dataclass(eq=False, kw_only=True)
class Program:
    """A program run as a subprocess on ``host`` in its own work directory.

    ``workdir`` None: a fresh one (named after ``title``), removed by ``stop``
    unless ``keep_workdir``; a given one is left in place and must be writable
    by the program.  ``start_timeout`` bounds the wait until it is ready.
    Subclasses set ``program`` (its name in messages), ``log_name`` (its log
    file in the work directory) and ``out_name`` (where stdout and stderr go;
    None: nowhere), and implement ``start``.
    """

    program: ClassVar[str]
    log_name: ClassVar[str]
    out_name: ClassVar[str | None]
    out_lines: ClassVar[int] = 10  # how much of ``out_name`` a log tail shows

    host: Host = LOOPBACK
    workdir: Path | None = None
    keep_workdir: bool = False
    start_timeout: float = 15.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _owns_workdir: bool = field(default=False, init=False, repr=False)

    @property
    def title(self) -> str:
        """Who the program is in messages (e.g. ``iceccd node1``)."""
        return self.program

    @property
    def log_path(self) -> Path:
        """The program's log file."""
        return self._workdir / self.log_name

    @property
    def _workdir(self) -> Path:
        if self.workdir is None:
            msg = f"{self.title} not started"
            raise TestbedError(msg)
        return self.workdir

    @property
    def _pid(self) -> int:
        if self.proc is None:
            msg = f"{self.title} not started"
            raise TestbedError(msg)
        return self.proc.pid

    def start(self) -> Self:
        """Start the program and wait until it is ready."""
        raise NotImplementedError

    def _prepare(self, label: str) -> Path:
        """Refuse a second start; make the work directory unless one was given; return it."""
        if self.proc is not None:
            msg = f"{self.title} already started"
            raise TestbedError(msg)
        if self.workdir is None:
            self.workdir = make_workdir(label)
            self._owns_workdir = True
        return self.workdir

    def _launch(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Start ``argv`` in the work directory, in a new session, stdout to ``out_name``."""
        with contextlib.ExitStack() as stack:
            out: Any = subprocess.DEVNULL
            if self.out_name is not None:
                out = stack.enter_context((self._workdir / self.out_name).open("wb"))
            self.proc = self.host.popen(
                argv,
                env=env,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if self.out_name is not None else subprocess.DEVNULL,
                start_new_session=True,
            )

    def _wait_ready(
        self, ready: Callable[[], object], what: str, timeout: float | None = None
    ) -> None:
        """Wait (``start_timeout`` unless ``timeout``) until ``ready()`` while the program runs."""
        wait_for(
            lambda: self.check_alive() and ready(),
            timeout or self.start_timeout,
            what,
            context=self.log_tail,
        )

    @contextlib.contextmanager
    def _stopped_on_failure(self) -> Iterator[None]:
        """Stop the program (and clean up) if the body fails, e.g. a start that never got ready."""
        try:
            yield
        except BaseException:
            self.stop()
            raise

    def check_alive(self) -> bool:
        """Return True while the program runs (or before it starts), else raise with its log."""
        if self.proc is not None and self.proc.poll() is not None:
            msg = f"{self.title} exited with status {self.proc.returncode}\n{self.log_tail()}"
            raise ProgramExitedError(msg)
        return True

    def log_text(self) -> str:
        """The log so far ("" before it exists)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """Tail of the log and of stdout/stderr, for error messages."""
        if self.workdir is None:
            return f"({self.title} not started)"
        tail = log_tail(self.log_path, lines)
        if self.out_name is not None:
            tail += "\n" + log_tail(self.workdir / self.out_name, self.out_lines)
        return tail

    def stop(self, grace: float = 5.0) -> int | None:
        """Stop the program and its descendants, reap, clean up; return its exit code.

        SIGTERM first, SIGKILL for what still lives after ``grace`` seconds.
        """
        return self._stop(grace)

    def _stop(self, grace: float, *, children_first: bool = False) -> int | None:
        code = (
            stop_process(self.proc, grace, children_first=children_first)
            if self.proc is not None
            else None
        )
        if not self.keep_workdir:
            self.remove_workdir()
        return code

    def remove_workdir(self) -> None:
        """Delete the work directory if this object made it (as ``stop`` does by default)."""
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._owns_workdir = False

    def __enter__(self) -> Self:
        """Start the program."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the program."""
        self.stop()


@dataclass(eq=False)
class DaemonProgram(Program):
    """An ``iceccd`` (real or ours) with node name ``name``.

    ``scheduler`` is the ``-s`` value (``"ip:port"``) or None for discovery
    (in a namespace: by broadcast across the bed's bridge).  ``port`` None
    picks a free port on loopback and 10245 in a namespace; ``no_remote``
    replaces it with ``--no-remote``.  The Unix socket (``ICECC_TEST_SOCKET``)
    and the ``-b`` env directory live in the work directory.

    ``idle_cpu`` (the default) starts the daemon seeing a frozen copy of
    ``/proc/stat`` (``idlecpu.IdleCpuHost``; a no-op on a host that already
    is one).  Both daemons rate their CPU load from that file, and on this
    shared machine it says "busy" whenever anything else runs: the daemon then
    reports load 1000 and a scheduler never places a job on it, so a test's
    outcome would depend on the machine's load.  Frozen, the CPU counts as
    idle and the load reflects only memory.  False: the real ``/proc/stat``.
    """

    name: str
    scheduler: str | None = None
    port: int | None = None
    no_remote: bool = False
    max_jobs: int = 2
    netname: str | None = None
    idle_cpu: bool = True

    @property
    def title(self) -> str:
        """``<program> <name>``."""
        return f"{self.program} {self.name}"

    @property
    def socket_path(self) -> Path:
        """The daemon's local Unix socket (what ``ICECC_TEST_SOCKET`` points clients to)."""
        return self._workdir / "iceccd.socket"

    @property
    def basedir(self) -> Path:
        """The ``-b`` environment directory."""
        return self._workdir / "envs"

    @property
    def address(self) -> tuple[str, int]:
        """(ip, port) of the remote-compile TCP port."""
        if self.port is None:
            msg = "daemon not started or started with --no-remote"
            raise TestbedError(msg)
        return (self.host.ip, self.port)

    def _launch(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Start ``argv`` as ``Program`` does, seeing a frozen ``/proc/stat`` if ``idle_cpu``."""
        if self.idle_cpu and not isinstance(self.host, IdleCpuHost):
            stat = freeze_proc_stat(self._workdir / "proc-stat")
            argv = IdleCpuHost(self.host, stat).wrap(argv)
        super()._launch(argv, env)

    def _daemon_args(self) -> list[str]:
        """``-N``, the port (picked now) or ``--no-remote``, ``-b``, ``-m``, ``-s``, ``-n``."""
        if self.no_remote:
            self.port = None
            port_args = ["--no-remote"]
        else:
            if self.port is None:
                self.port = free_port(self.host) if self.host.is_loopback else DEFAULT_DAEMON_PORT
            port_args = ["-p", str(self.port)]
        args = ["-N", self.name, *port_args, "-b", str(self.basedir), "-m", str(self.max_jobs)]
        args += ["-s", self.scheduler] if self.scheduler else []
        args += ["-n", self.netname] if self.netname else []
        return args

    def client_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for an ``icecc`` client that should use this daemon."""
        return clean_env({"ICECC_TEST_SOCKET": str(self.socket_path), **(extra or {})})
