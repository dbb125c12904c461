"""icecream-sundae, the real curses monitor, as a test fixture.

Owns ``RealSundae``: runs ``icecream-sundae`` under ``script`` (it needs a
terminal) with the screen recorded to a typescript file, and stops it.

Observed with Debian icecream-sundae 1.0.0-3:

* It handshakes as protocol **42**, not 43 (the reference guessed 43,
  unverified): its first handshake word is ``2a 00 00 00``, and after the
  peer's echo of min(42, 43) = 42 it sends MON_LOGIN (``00 00 00 04 00 00 00
  52``).  A peer that wrongly echoes 43 gets the channel closed ("setting error
  state for channel ... (A eof: 0)").
* ``-s HOST`` takes a host name only and always uses port 8765;
  ``-s 127.0.0.1:PORT`` never connects.  To reach a scheduler on another port
  set ``ICECC_SCHEDULER=HOST:PORT`` and give no ``-s`` (the library's
  discovery code reads that variable, and then ignores the netname).
* Under ``script -qfc icecream-sundae FILE`` with ``TERM=xterm`` and stdin
  from /dev/null it draws its screen ("Scheduler: ... Netname: ... Servers:")
  into FILE.  ``script`` puts sundae in a new session, so stopping signals
  ``script``'s descendants explicitly, and sundae first: ``script`` itself
  takes over 3 s to exit on SIGTERM, but exits at once when sundae does.
  Sundae itself dies at once on SIGTERM while connected, but not within 4 s
  after its scheduler connection was closed.

This module must not talk the monitor protocol itself.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Self

from testbed.errors import ProgramExitedError, TestbedError
from testbed.hosts import LOOPBACK, Host
from testbed.procs import clean_env, log_tail, make_workdir, require_program, stop_process
from testbed.wait import wait_for

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

SUNDAE_PROGRAM: Final = "/usr/bin/icecream-sundae"
SCRIPT_PROGRAM: Final = "/usr/bin/script"
SUNDAE_PROTOCOL_VERSION: Final = 42
_ANSI_RE: Final = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>])")


@dataclass(eq=False)
class RealSundae:
    """A real ``icecream-sundae`` watching ``scheduler`` (``"ip:port"``; None: discovery)."""

    scheduler: str | None = None
    host: Host = LOOPBACK
    netname: str | None = None
    workdir: Path | None = None
    keep_workdir: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _owns_workdir: bool = field(default=False, init=False, repr=False)

    @property
    def typescript_path(self) -> Path:
        """The file ``script`` records the screen into."""
        if self.workdir is None:
            msg = "sundae not started"
            raise TestbedError(msg)
        return self.workdir / "sundae.typescript"

    def start(self) -> Self:
        """Start sundae in a pseudo-terminal; returns at once (it connects on its own)."""
        sundae = require_program(SUNDAE_PROGRAM)
        script = require_program(SCRIPT_PROGRAM)
        if self.workdir is None:
            self.workdir = make_workdir("sundae")
            self._owns_workdir = True
        command = [sundae, *(["-n", self.netname] if self.netname else [])]
        env = clean_env({"TERM": "xterm"})
        if self.scheduler:
            env["ICECC_SCHEDULER"] = self.scheduler
        self.proc = self.host.popen(
            [script, "-qfc", shlex.join(command), str(self.typescript_path)],
            env=env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def screen_text(self) -> str:
        """Everything sundae printed so far, with terminal escape sequences removed."""
        try:
            raw = self.typescript_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return _ANSI_RE.sub("", raw)

    def wait_for_text(self, text: str, timeout: float = 10.0) -> None:
        """Wait until ``text`` appears on sundae's screen."""
        wait_for(
            lambda: self._check_alive() and text in self.screen_text(),
            timeout,
            f"icecream-sundae to show {text!r}",
            context=lambda: log_tail(self.typescript_path),
        )

    def _check_alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            msg = f"icecream-sundae exited ({self.proc.returncode})\n{self.screen_text()[-2000:]}"
            raise ProgramExitedError(msg)
        return True

    def stop(self, grace: float = 1.0) -> int | None:
        """Stop ``script`` and sundae, reap, clean up; return ``script``'s exit code.

        Sundae gets SIGTERM first and SIGKILL after ``grace`` seconds: once its
        scheduler connection is gone it ignores SIGTERM for several seconds.
        """
        code = (
            stop_process(self.proc, grace, children_first=True) if self.proc is not None else None
        )
        if self._owns_workdir and not self.keep_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._owns_workdir = False
        return code

    def __enter__(self) -> Self:
        """Start sundae."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop sundae."""
        self.stop()
