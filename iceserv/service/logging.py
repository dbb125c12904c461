"""Logging of the scheduler and the daemon: structlog on top of the stdlib ``logging`` tree.

This module is the only place that configures logging (STYLE rule 10).
Every record, ours (structlog) and foreign (asyncio, dbus-fast, pydantic),
goes through one stdlib handler whose ``ProcessorFormatter`` renders it in
one of three formats (services.md §8):

``console``
    structlog's console renderer, coloured on a TTY.
``journal``
    for stderr connected to journald (``$JOURNAL_STREAM`` equals stderr's
    ``dev:inode``).  When stderr is that socket and journald's native socket
    (``/run/systemd/journal/socket``) exists, each record goes there by
    systemd's ``sd_journal_send`` protocol (stdlib only) with its key/value
    pairs as journal fields (``EVENT=``, ``JOB_ID=``, ... next to
    ``MESSAGE=`` and ``PRIORITY=``), so ``journalctl -u iceccd
    EVENT=job_finished`` and ``-o json`` see them.  Otherwise (no socket, or
    ``--log-format journal`` outside journald) it is logfmt with a ``<N>``
    syslog priority prefix and no timestamp on the stream, so
    ``journalctl -p warning`` still works.
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

import array
import enum
import errno
import fcntl
import json
import logging
import os
import re
import socket
import stat
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

import structlog

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "JOURNAL_SOCKET",
    "AppendFileHandler",
    "JournalHandler",
    "LogFormat",
    "LogSetup",
    "choose_format",
    "configure_logging",
    "encode_journal",
    "journal_fields",
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
#: journald's socket for the native protocol (systemd.journal-fields(7), sd_journal_send(3)).
JOURNAL_SOCKET: Final = Path("/run/systemd/journal/socket")
#: Field names journald gives a meaning of its own: our keys of these names get a prefix.
_RESERVED_FIELDS: Final = frozenset(
    {
        "MESSAGE",
        "MESSAGE_ID",
        "PRIORITY",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "ERRNO",
        "INVOCATION_ID",
        "USER_INVOCATION_ID",
        "SYSLOG_FACILITY",
        "SYSLOG_IDENTIFIER",
        "SYSLOG_PID",
        "SYSLOG_TIMESTAMP",
        "SYSLOG_RAW",
        "DOCUMENTATION",
        "TID",
        "UNIT",
        "USER_UNIT",
    }
)
_FIELD_JUNK: Final = re.compile(r"[^A-Z0-9_]")
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


def _field_name(key: str) -> str:
    """Return the journal field for structlog key *key*: ``job_id`` -> ``JOB_ID``.

    Journal fields are upper-case letters, digits and underscores, at most 64
    long, not starting with ``_`` (trusted fields) or a digit; the names
    journald interprets itself are prefixed with ``ICESERV_``.
    """
    name = _FIELD_JUNK.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit() or name in _RESERVED_FIELDS:
        name = f"ICESERV_{name}"
    return name[:64]


def journal_fields(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
    """Render *event_dict* as the JSON object of the journal fields of one record.

    ``MESSAGE`` is the logfmt line of :func:`render_journal` (what plain
    ``journalctl`` shows), ``PRIORITY`` the syslog level, and every key is a
    field of its own: strings as they are, other values as JSON.
    :class:`JournalHandler` turns the object into a datagram.
    """
    fields: dict[str, str] = {}
    for key, value in event_dict.items():
        if key == "timestamp":
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        fields[_field_name(key)] = text
    line = render_journal(logger, name, dict(event_dict))
    priority, _, message = line[1:].partition(">")
    fields["MESSAGE"] = message
    fields["PRIORITY"] = priority
    return json.dumps(fields, ensure_ascii=False)


def encode_journal(fields: dict[str, str]) -> bytes:
    r"""Encode *fields* in journald's native protocol (one datagram).

    ``NAME=value\n`` for one-line values; a value holding a newline is sent
    as ``NAME\n``, its length as a little-endian u64, the bytes and ``\n``.
    """
    parts: list[bytes] = []
    for name, value in fields.items():
        data = value.encode("utf-8", "backslashreplace")
        if b"\n" in data:
            parts.append(name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name.encode() + b"=" + data + b"\n")
    return b"".join(parts)


class JournalHandler(logging.Handler):
    """Sends each record to journald's native socket, its fields as journal fields.

    The formatter must end in :func:`journal_fields`.  A record too big for
    one datagram goes in a sealed memfd (as ``sd_journal_send`` does).  If
    the socket cannot be reached the record is written to *fallback* as a
    ``<N>``-prefixed logfmt line, the format journald parses on stderr.
    """

    def __init__(self, path: Path, fallback: TextIO, *, identifier: str) -> None:
        super().__init__()
        self.path = path
        self._fallback = fallback
        self._identifier = identifier
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        """Send one record (or write it to the fallback stream)."""
        try:
            fields = json.loads(self.format(record))
            fields.setdefault("SYSLOG_IDENTIFIER", self._identifier)
            data = encode_journal(fields)
            try:
                self._send(data)
            except OSError:
                self._fallback.write(f"<{fields['PRIORITY']}>{fields['MESSAGE']}\n")
                self._fallback.flush()
        except Exception:  # noqa: BLE001 - logging must never take the service down
            self.handleError(record)

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, str(self.path))
        except OSError as exc:
            if exc.errno not in {errno.EMSGSIZE, errno.ENOBUFS}:
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("iceserv-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            # socket.send_fds() drops its address argument (CPython 3.11): sendmsg directly.
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self._sock.sendmsg([], rights, 0, str(self.path))
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
        super().close()


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


def _final_processors(fmt: LogFormat, *, colors: bool, native: bool) -> list[Processor]:
    if fmt is LogFormat.CONSOLE:
        return [structlog.dev.ConsoleRenderer(colors=colors)]
    if fmt is LogFormat.JOURNAL:
        return [structlog.processors.format_exc_info, journal_fields if native else render_journal]
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

    def __init__(
        self,
        *,
        stream: TextIO,
        journal_stream: str | None,
        journal_socket: Path | None = JOURNAL_SOCKET,
        identifier: str = "iceserv",
    ) -> None:
        self._stream = stream
        self._journal_stream = journal_stream
        self._journal_socket = journal_socket
        self._identifier = identifier
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
        # The native protocol only under journald: $JOURNAL_STREAM names our stream, and
        # that stream is a socket (journald's stdout stream), not a file that merely matches.
        native = (
            resolved is LogFormat.JOURNAL
            and not to_file
            and self._journal_stream is not None
            and _stream_identity(self._stream) == self._journal_stream
            and _is_socket(self._stream)
            and self._journal_socket is not None
            and self._journal_socket.exists()
        )
        if (resolved, log_file) != (self.format, self.log_file) or self.handler is None:
            handler: logging.Handler
            if log_file is not None:
                handler = AppendFileHandler(log_file)
            elif native and self._journal_socket is not None:
                handler = JournalHandler(
                    self._journal_socket, self._stream, identifier=self._identifier
                )
            else:
                handler = logging.StreamHandler(self._stream)
            colors = not to_file and resolved is LogFormat.CONSOLE and _isatty(self._stream)
            handler.setFormatter(
                structlog.stdlib.ProcessorFormatter(
                    foreign_pre_chain=_shared_processors(),
                    processors=[
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        *_final_processors(resolved, colors=colors, native=native),
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


def _is_socket(stream: TextIO) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


def configure_logging(  # noqa: PLR0913 - keyword-only, each with a default
    *,
    verbosity: int,
    fmt: LogFormat = LogFormat.AUTO,
    log_file: Path | None = None,
    stream: TextIO | None = None,
    journal_stream: str | None = None,
    journal_socket: Path | None = JOURNAL_SOCKET,
    identifier: str | None = None,
) -> LogSetup:
    """Route structlog and stdlib logging to one handler; return the handle for reloads.

    *stream* defaults to ``sys.stderr``; *journal_stream* is the value of
    ``$JOURNAL_STREAM`` (None when unset).  Under journald, records go to
    *journal_socket* with *identifier* (default: the program's name) as
    ``SYSLOG_IDENTIFIER``.  Raises ``OSError`` if *log_file* cannot be opened.
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
    setup = LogSetup(
        stream=sys.stderr if stream is None else stream,
        journal_stream=journal_stream,
        journal_socket=journal_socket,
        identifier=identifier or Path(sys.argv[0]).name or "iceserv",
    )
    setup.reconfigure(verbosity=verbosity, fmt=fmt, log_file=log_file)
    return setup
