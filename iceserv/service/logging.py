"""Logging of the scheduler and the daemon: structlog on top of the stdlib ``logging`` tree.

This module is the only place that configures logging (STYLE rule 10).
Every record, ours (structlog) and foreign (asyncio, dbus-fast, pydantic),
goes through one stdlib handler whose ``ProcessorFormatter`` renders it in
one of three formats (services.md §8):

``console``
    structlog's console renderer, coloured on a TTY.
``journal``
    logfmt with a ``<N>`` syslog priority prefix and no timestamp, for
    stderr connected to journald (``$JOURNAL_STREAM`` equals stderr's
    ``dev:inode``), so ``journalctl -p warning`` works.
``json``
    one JSON object per line, for log pipelines, OpenRC's ``output_log``
    and ``-l FILE``.

``auto`` picks console on a TTY, journal under journald, JSON otherwise.
``-l FILE`` writes to *FILE* opened for appending, which survives
logrotate's ``copytruncate`` (the next line lands at the new end instead of
leaving a hole) and is reopened when rotation renames the file.

Verbosity follows 1.4's ``-v`` count: 0 warnings and errors, 1 (``-v``)
adds the info events (logins, one summary per job), 2 (``-vv``) debug
events, 3 (``-vvv``) also the debug output of the libraries we use.  The
level can change at run time (:meth:`LogSetup.reconfigure`, on SIGHUP).

It must not read the environment itself: ``app`` passes ``$JOURNAL_STREAM``.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Final, TextIO

import structlog

if TYPE_CHECKING:
    from pathlib import Path

    from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "AppendFileHandler",
    "LogFormat",
    "LogSetup",
    "choose_format",
    "configure_logging",
    "level_for",
    "render_journal",
]

#: Our structlog loggers are named after their modules (``__main__`` under ``python -m``).
_OWN_NAMES: Final = frozenset(("iceserv", "__main__"))
_OWN_PREFIX: Final = "iceserv."
_LEVELS: Final = (logging.WARNING, logging.INFO, logging.DEBUG, logging.DEBUG)
#: syslog priorities (sd-daemon(3) prefixes) by stdlib level name.
_PRIORITIES: Final = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
}
_LOGFMT_PLAIN: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@+,[]()"
)


class LogFormat(enum.StrEnum):
    """How log lines are rendered (``--log-format``)."""

    AUTO = "auto"
    CONSOLE = "console"
    JSON = "json"
    JOURNAL = "journal"


def level_for(verbosity: int) -> int:
    """Return the stdlib level of iceserv's own events for a ``-v`` count (0 to 3)."""
    return _LEVELS[max(0, min(verbosity, len(_LEVELS) - 1))]


def _stream_identity(stream: TextIO) -> str | None:
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return f"{info.st_dev}:{info.st_ino}"


def choose_format(
    requested: LogFormat, stream: TextIO, journal_stream: str | None, *, to_file: bool = False
) -> LogFormat:
    """Resolve ``auto``: console on a TTY, journal when *journal_stream* is *stream*, else JSON.

    *journal_stream* is ``$JOURNAL_STREAM`` (``dev:inode`` of the stream
    systemd connected to journald); it must match *stream* itself, because a
    child of a journald-connected service may have its stderr redirected.
    """
    if requested is not LogFormat.AUTO:
        return requested
    if to_file:
        return LogFormat.JSON
    try:
        if stream.isatty():
            return LogFormat.CONSOLE
    except (ValueError, AttributeError):
        pass
    if journal_stream and _stream_identity(stream) == journal_stream:
        return LogFormat.JOURNAL
    return LogFormat.JSON


def _logfmt_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and all(char in _LOGFMT_PLAIN for char in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def render_journal(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> str:
    """Render *event_dict* as ``<N>event=… key=value … logger=… level=…`` on one line.

    journald reads the ``<N>`` prefix as the priority (``SyslogLevelPrefix=``)
    and adds its own timestamp, so ours is dropped.
    """
    event_dict.pop("timestamp", None)
    level = str(event_dict.get("level", "info"))
    priority = _PRIORITIES.get(level, 6)
    head = [f"event={_logfmt_value(event_dict.pop('event', ''))}"]
    tail = [
        f"{key}={_logfmt_value(event_dict.pop(key))}"
        for key in ("logger", "level")
        if key in event_dict
    ]
    body = [f"{key}={_logfmt_value(value)}" for key, value in event_dict.items()]
    return f"<{priority}>" + " ".join(head + body + tail)


class AppendFileHandler(logging.Handler):
    """Writes formatted records to a file opened with ``O_APPEND``; survives rotation.

    ``copytruncate`` cuts the file to zero under us: with ``O_APPEND`` the
    next write goes to the new end (offset 0), so the file never gets a hole
    of NUL bytes; the handler notices the shrink and counts it in
    :attr:`truncations`.  A rotation that renames the file (``create``) is
    noticed by the inode changing, and the path is reopened.
    """

    def __init__(self, path: Path, *, mode: int = 0o640) -> None:
        super().__init__()
        self.path = path
        self._mode = mode
        self.truncations = 0
        self._end = 0
        self._fd = -1
        self._open()

    def _open(self) -> None:
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self._mode
        )
        self._end = os.fstat(self._fd).st_size

    def _check_rotation(self) -> None:
        try:
            on_disk = self.path.stat()
        except FileNotFoundError:
            on_disk = None
        mine = os.fstat(self._fd)
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(self._fd)
            self._open()
            return
        if mine.st_size < self._end:
            self.truncations += 1
        self._end = mine.st_size

    def emit(self, record: logging.LogRecord) -> None:
        """Append one formatted line (reopening or noticing truncation first)."""
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            # Handler.handle() holds self.lock around emit().
            self._check_rotation()
            os.write(self._fd, data)
            self._end += len(data)
        except Exception:  # noqa: BLE001 - logging must never take the service down
            self.handleError(record)

    def close(self) -> None:
        """Close the file."""
        self.acquire()
        try:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        finally:
            self.release()
        super().close()


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def _final_processors(fmt: LogFormat, *, colors: bool) -> list[Processor]:
    if fmt is LogFormat.CONSOLE:
        return [structlog.dev.ConsoleRenderer(colors=colors)]
    if fmt is LogFormat.JOURNAL:
        return [structlog.processors.format_exc_info, render_journal]
    return [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]


class _ForeignFilter(logging.Filter):
    """Below ``-vvv``, pass only warnings and errors of loggers that are not ours."""

    def __init__(self) -> None:
        super().__init__()
        self.verbosity = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Return whether *record* is shown."""
        if self.verbosity >= 3 or record.levelno >= logging.WARNING:
            return True
        name = record.name
        return name in _OWN_NAMES or name.startswith(_OWN_PREFIX)


class LogSetup:
    """The installed logging configuration; change it on reload, undo it in tests.

    Built by :func:`configure_logging`.  :meth:`reconfigure` applies a new
    verbosity, format or log file without losing records; :meth:`close`
    restores the stdlib root logger as it was and resets structlog.
    """

    def __init__(self, *, stream: TextIO, journal_stream: str | None) -> None:
        self._stream = stream
        self._journal_stream = journal_stream
        root = logging.getLogger()
        self._saved = (list(root.handlers), root.level)
        self.handler: logging.Handler | None = None
        self._filter = _ForeignFilter()
        self.format = LogFormat.AUTO
        self.verbosity = 0
        self.log_file: Path | None = None

    def reconfigure(
        self, *, verbosity: int, fmt: LogFormat = LogFormat.AUTO, log_file: Path | None = None
    ) -> None:
        """Install the handler for *fmt* and *log_file* (None: the stream) at *verbosity*.

        Raises ``OSError`` if *log_file* cannot be opened; the previous
        handler then stays in place.
        """
        to_file = log_file is not None
        resolved = choose_format(fmt, self._stream, self._journal_stream, to_file=to_file)
        if (resolved, log_file) != (self.format, self.log_file) or self.handler is None:
            handler: logging.Handler = (
                AppendFileHandler(log_file)
                if log_file is not None
                else logging.StreamHandler(self._stream)
            )
            colors = not to_file and resolved is LogFormat.CONSOLE and _isatty(self._stream)
            handler.setFormatter(
                structlog.stdlib.ProcessorFormatter(
                    foreign_pre_chain=_shared_processors(),
                    processors=[
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        *_final_processors(resolved, colors=colors),
                    ],
                )
            )
            handler.addFilter(self._filter)
            root = logging.getLogger()
            old, self.handler = self.handler, handler
            root.handlers[:] = [handler]
            if old is not None:
                old.close()
        self.format, self.log_file, self.verbosity = resolved, log_file, verbosity
        self._filter.verbosity = verbosity
        logging.getLogger().setLevel(level_for(verbosity))

    def close(self) -> None:
        """Remove our handler and restore the root logger and structlog's defaults."""
        root = logging.getLogger()
        handlers, level = self._saved
        root.handlers[:] = handlers
        root.setLevel(level)
        if self.handler is not None:
            self.handler.close()
            self.handler = None
        structlog.reset_defaults()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


def configure_logging(
    *,
    verbosity: int,
    fmt: LogFormat = LogFormat.AUTO,
    log_file: Path | None = None,
    stream: TextIO | None = None,
    journal_stream: str | None = None,
) -> LogSetup:
    """Route structlog and stdlib logging to one handler; return the handle for reloads.

    *stream* defaults to ``sys.stderr``; *journal_stream* is the value of
    ``$JOURNAL_STREAM`` (None when unset).  Raises ``OSError`` if
    *log_file* cannot be opened.
    """
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a reconfiguration (tests, reload) must reach module-level loggers.
        cache_logger_on_first_use=False,
    )
    setup = LogSetup(stream=sys.stderr if stream is None else stream, journal_stream=journal_stream)
    setup.reconfigure(verbosity=verbosity, fmt=fmt, log_file=log_file)
    return setup
