"""Typed configuration of the daemon and the scheduler.

Owns reading conf.d files (a POSIX-sh subset, without a shell), the TOML
file, the environment and the 1.4-compatible command line into one frozen,
validated settings object per service, with the source of every value.
It imports only the standard library, pydantic, pydantic-settings, tomli-w
and :mod:`iceserv.errors`, and must never be imported by the compiler
wrapper (``pydantic_settings`` alone costs ~200 ms).

Entry points call :func:`parse_command_line` (for ``--help``) and then
:func:`load_daemon_settings` or :func:`load_scheduler_settings`; on
:class:`~iceserv.errors.ConfigError` they print each line of
``error.details`` and exit with status 78 (``os.EX_CONFIG``).
"""

from iceserv.config.confd import ConfdFile, ConfdValue, parse_confd, read_confd, read_confd_files
from iceserv.config.crosswalk import DEFAULT_TOML, Service, names_for
from iceserv.config.flags import CommandLine, FlagValue, parse_command_line, usage
from iceserv.config.keyfile import read_key, read_keys, write_key
from iceserv.config.models import DaemonSettings, HostPort, SchedulerSettings
from iceserv.config.origin import ConfigWarning, Origin, OriginKind
from iceserv.config.render import render_json, render_migration, render_text, render_toml
from iceserv.config.sources import (
    Loaded,
    Locations,
    load_daemon_settings,
    load_scheduler_settings,
    load_settings,
)

__all__ = [
    "DEFAULT_TOML",
    "CommandLine",
    "ConfdFile",
    "ConfdValue",
    "ConfigWarning",
    "DaemonSettings",
    "FlagValue",
    "HostPort",
    "Loaded",
    "Locations",
    "Origin",
    "OriginKind",
    "SchedulerSettings",
    "Service",
    "load_daemon_settings",
    "load_scheduler_settings",
    "load_settings",
    "names_for",
    "parse_command_line",
    "parse_confd",
    "read_confd",
    "read_confd_files",
    "read_key",
    "read_keys",
    "render_json",
    "render_migration",
    "render_text",
    "render_toml",
    "usage",
    "write_key",
]
