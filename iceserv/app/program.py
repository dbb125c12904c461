"""What ``iceccd`` and ``icecc-scheduler`` do alike as service programs.

This module owns the steps both programs take the same way, so they cannot
drift apart: reading the settings or answering ``--help`` and configuration
errors as 1.4 does (:func:`load_or_exit`), opening the log
(:func:`open_log`), splitting a reload into what changes live and what needs
a restart (:func:`reload_changes`), and the wall clock the cores get
(:class:`WallClock`).  It does not log: the programs log under their own
logger names.  Their own decisions (listeners, D-Bus, privileges) stay in
:mod:`iceserv.app.daemon` and :mod:`iceserv.app.scheduler`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Final, TypeVar

from iceserv._version import VERSION
from iceserv.config import (
    DaemonSettings,
    SchedulerSettings,
    Service,
    parse_command_line,
    read_keys,
    usage,
)
from iceserv.errors import ConfigError
from iceserv.service import LogFormat, configure_logging

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence

    from iceserv.config import Loaded
    from iceserv.service import LogSetup

__all__ = [
    "EXIT_USAGE",
    "WallClock",
    "load_keys_or_exit",
    "load_or_exit",
    "open_log",
    "reload_changes",
]

#: 1.4's programs exit 1 after printing their usage.
EXIT_USAGE: Final = 1

S = TypeVar("S", DaemonSettings, SchedulerSettings)


class WallClock:
    """The :class:`~iceserv.clock.Clock` of a running program: seconds since the epoch."""

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()


def load_or_exit(
    service: Service,
    load: Callable[[Sequence[str], Mapping[str, str]], Loaded[S]],
    args: list[str],
    environ: Mapping[str, str],
    *,
    prog: str,
) -> Loaded[S] | int:
    """Return *service*'s settings from *load*, or the exit code for --help and config errors.

    ``--help`` prints ``ICECREAM <service> <version> (iceserv)`` and the
    usage and gives :data:`EXIT_USAGE` (1, as 1.4); ``--version`` prints that
    first line and gives 0; a configuration error prints each problem as
    ``<prog>: <line>`` on stderr (a bad flag adds a pointer to ``--help``)
    and gives ``EX_CONFIG``.  With ``--check-config`` the warnings are
    printed on stderr as ``<prog>: warning: ...``, as ``iceserv config
    check`` prints them.
    """
    try:
        command_line = parse_command_line(service, args)
        if command_line.help or command_line.version:
            sys.stdout.write(f"ICECREAM {service} {VERSION} (iceserv)\n")
            if command_line.version:
                return 0
            sys.stdout.write(usage(service))
            return EXIT_USAGE
        loaded = load(args, environ)
    except ConfigError as exc:
        for line in exc.details:
            sys.stderr.write(f"{prog}: {line}\n")
        if exc.source.startswith("flag"):
            sys.stderr.write(f"{prog}: see '{prog} --help' for the options\n")
        return os.EX_CONFIG
    if command_line.check_config:
        for warning in loaded.warnings:
            sys.stderr.write(f"{prog}: warning: {warning}\n")
    return loaded


def load_keys_or_exit(
    settings: DaemonSettings | SchedulerSettings, *, prog: str
) -> tuple[bytes, ...] | int:
    """Return the network keys (current, previous) or ``EX_CONFIG`` after ``prog: path: reason``.

    A key file that is missing, unreadable, shorter than 32 bytes or
    world-accessible stops the start (issue 14), even under ``auth = off``:
    a configured key that cannot be used is a mistake to report at once.
    """
    try:
        return read_keys(settings.key_file, settings.previous_key_file)
    except ConfigError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return os.EX_CONFIG


def open_log(
    settings: DaemonSettings | SchedulerSettings, journal_stream: str | None, *, prog: str
) -> LogSetup | int:
    """Configure logging from *settings*; return its handle, or ``EX_CANTCREAT`` (said on stderr).

    *journal_stream* is ``$JOURNAL_STREAM`` (None when unset).
    """
    try:
        return configure_logging(
            verbosity=settings.verbosity,
            fmt=LogFormat(settings.log_format),
            log_file=settings.log_file,
            journal_stream=journal_stream,
        )
    except OSError as exc:
        sys.stderr.write(f"{prog}: cannot open log file: {exc}\n")
        return os.EX_CANTCREAT


def reload_changes(new: S, old: S, restart_only: Collection[str]) -> tuple[S, list[str], list[str]]:
    """Compare reloaded settings *new* with the running *old*.

    Returns the settings to apply (*new*, but with *old*'s value for every
    changed field in *restart_only*), the changed fields that apply live,
    and the changed fields that need a restart, each in field order.
    """
    changed = [name for name in type(new).model_fields if getattr(new, name) != getattr(old, name)]
    fixed = [name for name in changed if name in restart_only]
    if fixed:
        new = new.model_copy(update={name: getattr(old, name) for name in fixed})
    return new, [name for name in changed if name not in fixed], fixed
