"""One program of the test bed as a subprocess: the launcher every wrapper shares.

Owns ``Program``, the base of ``RealScheduler``, ``RealDaemon``,
``RealSundae``, ``OurScheduler`` and ``OurDaemon``: the work directory (a
fresh one that ``stop`` removes unless ``keep_workdir``, or a given one that
is kept), the start on a ``hosts.Host`` in a new session with stdout and
stderr in a file there, the bounded wait until the program is ready (which
stops it again if the wait fails), the check that it still runs, the log
tails every failure message carries, and the stop of the program with all its
descendants.  Which command line to run and what "ready" means stays with the
subclass.  This module must not depend on iceserv.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

from testbed.errors import ProgramExitedError, TestbedError
from testbed.hosts import LOOPBACK, Host
from testbed.procs import log_tail, make_workdir, stop_process
from testbed.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path
    from types import TracebackType


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
