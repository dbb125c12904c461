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
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final, Self

from testbed.procs import clean_env, require_program
from testbed.program import Program

if TYPE_CHECKING:
    from pathlib import Path

SUNDAE_PROGRAM: Final = "/usr/bin/icecream-sundae"
SCRIPT_PROGRAM: Final = "/usr/bin/script"
SUNDAE_PROTOCOL_VERSION: Final = 42
_ANSI_RE: Final = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>])")


@dataclass(eq=False)
class RealSundae(Program):
    """A real ``icecream-sundae`` watching ``scheduler`` (``"ip:port"``; None: discovery).

    Its "log" is the typescript of its screen; ``script`` writes nothing else.
    """

    program: ClassVar[str] = "icecream-sundae"
    log_name: ClassVar[str] = "sundae.typescript"
    out_name: ClassVar[str | None] = None

    scheduler: str | None = None
    netname: str | None = None

    @property
    def typescript_path(self) -> Path:
        """The file ``script`` records the screen into."""
        return self.log_path

    def start(self) -> Self:
        """Start sundae in a pseudo-terminal; returns at once (it connects on its own)."""
        sundae = require_program(SUNDAE_PROGRAM)
        script = require_program(SCRIPT_PROGRAM)
        self._prepare("sundae")
        command = [sundae, *(["-n", self.netname] if self.netname else [])]
        env = clean_env({"TERM": "xterm"})
        if self.scheduler:
            env["ICECC_SCHEDULER"] = self.scheduler
        self._launch([script, "-qfc", shlex.join(command), str(self.typescript_path)], env)
        return self

    def screen_text(self) -> str:
        """Everything sundae printed so far, with terminal escape sequences removed."""
        return _ANSI_RE.sub("", self.log_text())

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the screen so far (at most 2000 characters)."""
        if self.workdir is None:
            return f"({self.title} not started)"
        tail = "\n".join(self.screen_text().splitlines()[-lines:])[-2000:]
        return f"--- end of the screen in {self.typescript_path} ---\n{tail}"

    def wait_for_text(self, text: str, timeout: float = 10.0) -> None:
        """Wait until ``text`` appears on sundae's screen."""
        self._wait_ready(
            lambda: text in self.screen_text(), f"icecream-sundae to show {text!r}", timeout
        )

    def stop(self, grace: float = 1.0) -> int | None:
        """Stop ``script`` and sundae, reap, clean up; return ``script``'s exit code.

        Sundae gets SIGTERM first and SIGKILL after ``grace`` seconds: once its
        scheduler connection is gone it ignores SIGTERM for several seconds.
        """
        return self._stop(grace, children_first=True)
