"""The wrapper's own diagnostics, as 1.4's ``ICECC_DEBUG``/``ICECC_LOGFILE`` produce them.

Owns :class:`ClientLog`: lines ``ICECC[<pid>] <YYYY-mm-dd HH:MM:SS>: <text>``
on stderr (or appended to ``ICECC_LOGFILE``), filtered by the level from
``ICECC_DEBUG`` (errors only when unset).  It is not structlog on purpose:
the wrapper must not import it (STYLE.md, import rules), and the format is
the one icecream users grep for.  It must not decide anything.
"""

import posix
import sys

from iceserv.client.env import DEBUG, ERROR, INFO, WARNING

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["ClientLog"]


class ClientLog:
    """Writes leveled lines for one wrapper run; *level* is ``ClientEnv.debug_level``."""

    __slots__ = ("_level", "_path", "_stream")

    def __init__(self, level: int, path: str | None = None, stream: "TextIO | None" = None) -> None:
        self._level = level
        self._path = path or None
        self._stream = stream

    def _write(self, level: int, text: str) -> None:
        if level > self._level:
            return
        import time  # noqa: PLC0415 - only when a line is written: 0.1 ms off every call

        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        line = f"ICECC[{posix.getpid()}] {stamp}: {text}\n"
        try:
            if self._path is not None:
                with open(self._path, "a", encoding="utf-8", errors="replace") as out:  # noqa: PTH123 - pathlib costs import time
                    out.write(line)
            else:
                (self._stream or sys.stderr).write(line)
                (self._stream or sys.stderr).flush()
        except OSError:
            pass  # diagnostics must never break a build

    def error(self, text: str) -> None:
        """Log at error level (shown even without ``ICECC_DEBUG``)."""
        self._write(ERROR, text)

    def warning(self, text: str) -> None:
        """Log at warning level."""
        self._write(WARNING, text)

    def info(self, text: str) -> None:
        """Log at info level."""
        self._write(INFO, text)

    def debug(self, text: str) -> None:
        """Log at debug ("trace") level."""
        self._write(DEBUG, text)
