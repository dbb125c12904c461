"""Command-line flags of ``iceccd`` and ``icecc-scheduler``, as icecream 1.4 has them.

Owns parsing argv with 1.4's getopt strings (upstream ``daemon/main.cpp``:
``N:n:m:l:s:hvdb:u:i:p:``; ``scheduler/scheduler.cpp``: ``n:i:p:hl:vdru:``)
and long options, with GNU ``getopt_long`` behaviour (options after
operands, unique-prefix abbreviations, ``-vvv``, ``-m4``, ``--port=1``),
plus iceserv's own ``--confd``, ``--config``, ``--foreground``,
``--log-format``, ``--stop-grace`` (daemon), the scheduler's connection
budgets and deadlines (``--max-connections`` ..., ``--handshake-timeout``,
``--message-timeout``) and ``--check-config``.  It
returns raw strings for the models to validate and must not validate
values, print or exit.
"""

from __future__ import annotations

import enum
import getopt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.config.crosswalk import Service
from iceserv.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["CommandLine", "FlagValue", "parse_command_line", "usage"]

_MAX_VERBOSITY: Final = 3


class _Action(enum.Enum):
    VALUE = enum.auto()
    TRUE = enum.auto()
    FALSE = enum.auto()
    COUNT = enum.auto()
    HELP = enum.auto()
    VERSION = enum.auto()
    CONFD = enum.auto()
    CONFIG = enum.auto()
    FOREGROUND = enum.auto()
    CHECK = enum.auto()


_TAKES_ARGUMENT: Final = frozenset((_Action.VALUE, _Action.CONFD, _Action.CONFIG))


@dataclass(frozen=True, slots=True)
class _Option:
    short: str
    long: str
    action: _Action
    field: str = ""
    metavar: str = ""
    help: str = ""


_COMMON_HEAD: Final = (
    _Option("n", "netname", _Action.VALUE, "net_name", "NAME", "icecream network name"),
    _Option("i", "interface", _Action.VALUE, "interface", "IFACE", "network interface to use"),
    _Option("p", "port", _Action.VALUE, "port", "PORT", "TCP port to listen on"),
    _Option("", "family", _Action.VALUE, "family", "FAMILY", "any|ipv4|ipv6 (address families)"),
    _Option("l", "log-file", _Action.VALUE, "log_file", "FILE", "log to FILE"),
    _Option("d", "daemonize", _Action.TRUE, "daemonize", "", "detach from the terminal"),
    _Option("u", "user-uid", _Action.VALUE, "user", "USER", "user to run as when root"),
    _Option("v", "", _Action.COUNT, "verbosity", "", "more log detail (-v, -vv, -vvv)"),
    _Option("h", "help", _Action.HELP, "", "", "show this help and exit"),
    _Option("", "version", _Action.VERSION, "", "", "print the version and exit"),
)
_DAEMON_ONLY: Final = (
    _Option("N", "name", _Action.VALUE, "host_name", "NODE", "name of this node"),
    _Option("m", "max-processes", _Action.VALUE, "max_processes", "N", "parallel jobs"),
    _Option("s", "scheduler-host", _Action.VALUE, "scheduler_host", "HOST[:PORT]", "scheduler"),
    _Option("b", "env-basedir", _Action.VALUE, "env_basedir", "DIR", "environment cache"),
    _Option("", "nice", _Action.VALUE, "nice_level", "LEVEL", "niceness (-20..19)"),
    _Option("", "cache-limit", _Action.VALUE, "cache_limit", "MB", "environment cache size"),
    _Option("", "no-remote", _Action.FALSE, "allow_remote", "", "accept no remote jobs"),
    _Option("", "stop-grace", _Action.VALUE, "stop_grace", "SECONDS", "time jobs get on SIGTERM"),
    _Option(
        "",
        "handshake-timeout",
        _Action.VALUE,
        "handshake_timeout",
        "SECONDS",
        "time for a client's handshake",
    ),
    _Option(
        "",
        "message-timeout",
        _Action.VALUE,
        "message_timeout",
        "SECONDS",
        "time to finish a started message",
    ),
    _Option("", "tcp-clients", _Action.VALUE, "max_clients", "N", "TCP clients at once"),
    _Option(
        "",
        "tcp-clients-per-host",
        _Action.VALUE,
        "max_clients_per_host",
        "N",
        "TCP clients from one host",
    ),
    _Option(
        "", "local-clients", _Action.VALUE, "max_local_clients", "N", "Unix-socket clients at once"
    ),
    _Option(
        "",
        "source-buffer-limit",
        _Action.VALUE,
        "source_buffer_limit",
        "MB",
        "source read ahead for one waiting job",
    ),
    _Option(
        "",
        "source-budget",
        _Action.VALUE,
        "source_budget",
        "MB",
        "source read ahead for all waiting jobs",
    ),
    _Option(
        "", "unpack-limit", _Action.VALUE, "max_env_transfers", "N", "environments unpacked at once"
    ),
    _Option(
        "",
        "unpack-queue",
        _Action.VALUE,
        "env_transfer_queue",
        "N",
        "environment transfers waiting",
    ),
    _Option(
        "",
        "build-limit",
        _Action.VALUE,
        "max_native_builds",
        "N",
        "native environments built at once",
    ),
    _Option(
        "",
        "native-compilers",
        _Action.VALUE,
        "native_compilers",
        "LIST",
        "compilers whose environments are built at start",
    ),
    _Option(
        "",
        "no-push-ahead",
        _Action.FALSE,
        "push_ahead",
        "",
        "do not send built native environments to idle hosts",
    ),
    _Option("", "http", _Action.VALUE, "http", "HOST[:PORT]", "serve /metrics"),
)
_SCHEDULER_ONLY: Final = (
    _Option(
        "r",
        "persistent-client-connection",
        _Action.TRUE,
        "persistent_client_connection",
        "",
        "keep daemons even when a better scheduler appears",
    ),
    _Option(
        "",
        "handshake-timeout",
        _Action.VALUE,
        "handshake_timeout",
        "SECONDS",
        "time for a handshake and first message",
    ),
    _Option(
        "",
        "message-timeout",
        _Action.VALUE,
        "message_timeout",
        "SECONDS",
        "time to finish a started message",
    ),
    _Option(
        "",
        "max-connections",
        _Action.VALUE,
        "max_connections",
        "N",
        "connections on the scheduler port",
    ),
    _Option(
        "",
        "max-connections-per-host",
        _Action.VALUE,
        "max_connections_per_host",
        "N",
        "connections from one host",
    ),
    _Option("", "max-monitors", _Action.VALUE, "max_monitors", "N", "monitors at once"),
    _Option(
        "",
        "max-monitors-per-host",
        _Action.VALUE,
        "max_monitors_per_host",
        "N",
        "monitors from one host",
    ),
    _Option(
        "",
        "max-telnet-sessions",
        _Action.VALUE,
        "max_telnet_sessions",
        "N",
        "telnet sessions at once",
    ),
    _Option(
        "",
        "max-telnet-sessions-per-host",
        _Action.VALUE,
        "max_telnet_sessions_per_host",
        "N",
        "telnet sessions from one host",
    ),
    _Option("", "http", _Action.VALUE, "http", "HOST[:PORT]", "serve /metrics and the web view"),
)
_AUTH: Final = (
    _Option("", "key-file", _Action.VALUE, "key_file", "PATH", "the network key (issue 14)"),
    _Option("", "previous-key-file", _Action.VALUE, "previous_key_file", "PATH", "the key before"),
    _Option("", "auth", _Action.VALUE, "auth", "MODE", "off|prefer|require (authentication)"),
    _Option("", "encrypt", _Action.TRUE, "encrypt", "", "encrypt traffic between iceserv peers"),
)
_SCHEDULER_AUTH: Final = (
    _Option(
        "",
        "telnet-control",
        _Action.VALUE,
        "telnet_control",
        "MODE",
        "auto|local|off|any (changing telnet commands)",
    ),
    _Option("", "monitors", _Action.VALUE, "monitors", "NETS", "monitors allowed under require"),
)
_ICESERV: Final = (
    _Option("", "confd", _Action.CONFD, "", "PATH", "conf.d file to read (repeatable)"),
    _Option("", "config", _Action.CONFIG, "", "PATH", "TOML file to read"),
    _Option("", "foreground", _Action.FOREGROUND, "", "", "never detach (overrides -d)"),
    _Option("", "log-format", _Action.VALUE, "log_format", "FORMAT", "auto|console|json|journal"),
    _Option("", "check-config", _Action.CHECK, "", "", "validate the configuration and exit"),
)
_OPTIONS: Final = {
    Service.DAEMON: (*_COMMON_HEAD, *_DAEMON_ONLY, *_AUTH, *_ICESERV),
    Service.SCHEDULER: (*_COMMON_HEAD, *_SCHEDULER_ONLY, *_AUTH, *_SCHEDULER_AUTH, *_ICESERV),
}
_PROGS: Final = {Service.DAEMON: "iceccd", Service.SCHEDULER: "icecc-scheduler"}


@dataclass(frozen=True, slots=True)
class FlagValue:
    """A setting given on the command line: the raw value and the flag used."""

    value: str | bool | int
    flag: str


@dataclass(frozen=True, slots=True)
class CommandLine:
    """What argv asked for: settings (by field name) and iceserv's own options."""

    values: Mapping[str, FlagValue] = field(default_factory=dict)
    confd_paths: tuple[Path, ...] = ()
    config_path: Path | None = None
    help: bool = False
    version: bool = False
    check_config: bool = False


def parse_command_line(service: Service, argv: Sequence[str]) -> CommandLine:
    """Parse *argv* (without the program name) as 1.4's iceccd or icecc-scheduler would.

    Raises :class:`ConfigError` (``flag --x: reason``) for unknown or
    malformed options and for operands.
    """
    options = _OPTIONS[service]
    shortopts = "".join(
        o.short + (":" if o.action in _TAKES_ARGUMENT else "") for o in options if o.short
    )
    longopts = [o.long + ("=" if o.action in _TAKES_ARGUMENT else "") for o in options if o.long]
    try:
        pairs, operands = getopt.gnu_getopt(list(argv), shortopts, longopts)
    except getopt.GetoptError as exc:
        # getopt's messages read "option -x <reason>"; keep the reason.
        parts = exc.msg.split(" ", 2)
        reason = parts[2] if len(parts) == 3 else exc.msg
        dashes = "--" if exc.msg.startswith("option --") else "-"
        msg = f"flag {dashes}{exc.opt}: {reason}"
        raise ConfigError(msg, source=f"flag {dashes}{exc.opt}", name=exc.opt) from None
    if operands:
        msg = f"flag {operands[0]}: unexpected argument ({_PROGS[service]} takes only options)"
        raise ConfigError(msg, source="flag", name=operands[0])
    return _collect(options, pairs)


def _collect(options: Sequence[_Option], pairs: Sequence[tuple[str, str]]) -> CommandLine:
    """Turn getopt's ``(flag, argument)`` pairs into a CommandLine; the last flag wins."""
    by_flag = {f"-{o.short}": o for o in options if o.short}
    by_flag.update({f"--{o.long}": o for o in options if o.long})
    values: dict[str, FlagValue] = {}
    paths: dict[_Action, list[Path]] = {_Action.CONFD: [], _Action.CONFIG: []}
    seen: set[_Action] = set()
    verbosity = 0
    for flag, argument in pairs:
        option = by_flag[flag]
        seen.add(option.action)
        if option.action in paths:
            if not argument:
                msg = f"flag {flag}: needs a file name"
                raise ConfigError(msg, source=f"flag {flag}", name=flag)
            paths[option.action].append(Path(argument))
        elif option.action is _Action.VALUE:
            values[option.field] = FlagValue(argument, flag)
        elif option.action in (_Action.TRUE, _Action.FALSE):
            values[option.field] = FlagValue(option.action is _Action.TRUE, flag)
        elif option.action is _Action.COUNT:
            verbosity += 1
    if verbosity:
        # 1.4 accepts any number of -v; more than three adds nothing.
        values["verbosity"] = FlagValue(min(verbosity, _MAX_VERBOSITY), "-" + "v" * verbosity)
    if _Action.FOREGROUND in seen:
        values["daemonize"] = FlagValue(value=False, flag="--foreground")
    configs = paths[_Action.CONFIG]
    return CommandLine(
        values=values,
        confd_paths=tuple(paths[_Action.CONFD]),
        config_path=configs[-1] if configs else None,
        help=_Action.HELP in seen,
        version=_Action.VERSION in seen,
        check_config=_Action.CHECK in seen,
    )


def usage(service: Service) -> str:
    """Return the ``--help`` text of *service*'s program."""
    lines = [f"usage: {_PROGS[service]} [options]", "", "Options:"]
    for option in _OPTIONS[service]:
        spellings = (option.short and f"-{option.short}", option.long and f"--{option.long}")
        names = ", ".join(name for name in spellings if name)
        if option.metavar:
            names += f" {option.metavar}"
        lines.append(f"  {names:<38} {option.help}")
    return "\n".join(lines) + "\n"
