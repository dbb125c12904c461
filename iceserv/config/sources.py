"""Loading settings from every layer: flags > environment > conf.d > TOML > defaults.

Owns finding and reading the configuration files (conf.d as OpenRC layers
them, ``/etc/iceserv/iceserv.toml``), mapping conf.d and environment names
onto fields (primary names, deprecated aliases with one warning per name,
the ``*_MAX_JOBS=0`` rule, "did you mean" for unknown names), merging the
layers with a provenance record for every value, and turning validation
failures into one ``location: NAME='value': reason`` line per bad value.

It reads only the files it is pointed at (or the standard locations) and
the environment mapping it is given; it returns warnings as data and never
logs, prints or exits.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from pydantic import ValidationError

from iceserv.config.confd import ConfdFile, ConfdValue, read_confd, read_confd_files
from iceserv.config.crosswalk import (
    DEFAULT_RC_CONF,
    DEFAULT_TOML,
    Alias,
    Service,
    ServiceNames,
    names_for,
)
from iceserv.config.flags import CommandLine, parse_command_line
from iceserv.config.models import DaemonSettings, SchedulerSettings
from iceserv.config.origin import ConfigWarning, Origin, OriginKind
from iceserv.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

__all__ = [
    "Loaded",
    "Locations",
    "load_daemon_settings",
    "load_scheduler_settings",
    "load_settings",
]

S = TypeVar("S", DaemonSettings, SchedulerSettings)

_FAMILIES: Final = ("ICECC", "ICECREAM")
_TRUE_WORDS: Final = frozenset(("yes", "true", "on", "1", "y", "t"))
_TOML_KEY: Final = re.compile(r"\s*([\"']?)([A-Za-z0-9_-]+)\1\s*=")
_TOML_ERROR_LINE: Final = re.compile(r"\(at line (\d+), column \d+\)")
#: The TOML tables both services read (their own table overrides them), and their settings.
_NETWORK_TABLE: Final = "network"
_CLUSTER_TABLE: Final = "cluster"
_SHARED_KEYS: Final = {
    _NETWORK_TABLE: ("family",),
    _CLUSTER_TABLE: ("key_file", "previous_key_file", "auth", "encrypt"),
}


@dataclass(frozen=True, slots=True)
class Loaded(Generic[S]):
    """The result of loading one service's configuration.

    ``provenance`` maps every field to where its value came from;
    ``warnings`` are for the caller to log or print.
    """

    settings: S
    provenance: Mapping[str, Origin]
    warnings: tuple[ConfigWarning, ...]
    command_line: CommandLine


@dataclass(frozen=True, slots=True)
class _Raw:
    value: object
    origin: Origin


@dataclass(frozen=True, slots=True)
class Locations:
    """Where to look for configuration files when argv names none.

    ``confd`` (None: ``/etc/conf.d/iceccd`` or ``/etc/conf.d/icecc-scheduler``)
    and ``toml`` (None: no TOML layer) are read if present; ``--confd`` and
    ``--config`` in argv replace them and must exist.  ``rc_conf`` files (or
    directories of ``*.conf``) only provide variables for ``$VAR`` references,
    as OpenRC sources ``/etc/rc.conf`` before conf.d.
    """

    confd: tuple[Path, ...] | None = None
    toml: Path | None = DEFAULT_TOML
    rc_conf: tuple[Path, ...] = DEFAULT_RC_CONF


_STANDARD: Final = Locations()


def load_daemon_settings(
    argv: Sequence[str], environ: Mapping[str, str], *, locations: Locations = _STANDARD
) -> Loaded[DaemonSettings]:
    """Load the daemon's settings as ``iceccd ARGV`` started with *environ* would.

    Raises :class:`ConfigError` with one line (in ``details``) per problem.
    """
    return _load(names_for(Service.DAEMON), DaemonSettings, argv, environ, locations)


def load_scheduler_settings(
    argv: Sequence[str], environ: Mapping[str, str], *, locations: Locations = _STANDARD
) -> Loaded[SchedulerSettings]:
    """Load the scheduler's settings as ``icecc-scheduler ARGV`` started with *environ* would."""
    return _load(names_for(Service.SCHEDULER), SchedulerSettings, argv, environ, locations)


def load_settings(
    service: Service,
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    locations: Locations = _STANDARD,
) -> Loaded[DaemonSettings] | Loaded[SchedulerSettings]:
    """Load *service*'s settings; for callers that choose the service at run time."""
    if service is Service.DAEMON:
        return load_daemon_settings(argv, environ, locations=locations)
    return load_scheduler_settings(argv, environ, locations=locations)


def _load(
    names: ServiceNames,
    settings_cls: type[S],
    argv: Sequence[str],
    environ: Mapping[str, str],
    locations: Locations,
) -> Loaded[S]:
    command_line = parse_command_line(names.service, argv)
    warnings: list[ConfigWarning] = []
    scope = _read_scope(locations.rc_conf, warnings)
    if command_line.confd_paths:
        wanted = [(path, True) for path in command_line.confd_paths]
    else:
        defaults = (names.default_confd,) if locations.confd is None else locations.confd
        wanted = [(path, False) for path in defaults]
    files = _openrc_layers(wanted, environ.get("RC_RUNLEVEL") or None)
    confd = read_confd_files(files, scope)
    warnings.extend(confd.warnings)
    confd_values = _confd_layer(names, confd, warnings)
    env_values = _env_layer(names, environ, warnings)
    if command_line.config_path is not None:
        toml_values = _toml_layer(names, command_line.config_path, required=True)
    elif locations.toml is not None:
        toml_values = _toml_layer(names, locations.toml, required=False)
    else:
        toml_values = {}
    flag_values = {
        name: _Raw(flag.value, Origin(OriginKind.FLAG, flag.flag))
        for name, flag in command_line.values.items()
    }
    chosen: dict[str, _Raw] = {}
    for layer in (flag_values, env_values, confd_values, toml_values):
        for name, raw in layer.items():
            chosen.setdefault(name, raw)
    settings = _validate(settings_cls, chosen)
    default = Origin(OriginKind.DEFAULT)
    provenance = {name: chosen[name].origin if name in chosen else default for name in names.fields}
    return Loaded(settings, types.MappingProxyType(provenance), tuple(warnings), command_line)


# -- files ---------------------------------------------------------------------


def _read_scope(paths: Iterable[Path], warnings: list[ConfigWarning]) -> dict[str, ConfdValue]:
    """Read rc.conf-style files for ``$VAR`` references only; problems just warn."""
    scope: dict[str, ConfdValue] = {}
    for path in paths:
        files = sorted(path.glob("*.conf")) if path.is_dir() else [path]
        for file in files:
            if not file.is_file():
                continue
            try:
                scope.update(read_confd(file, scope).values)
            except ConfigError as exc:
                warnings.append(ConfigWarning(str(file), f"ignored for $VAR references: {exc}"))
    return scope


def _openrc_layers(wanted: Iterable[tuple[Path, bool]], runlevel: str | None) -> list[Path]:
    """Return the files OpenRC would source for each conf.d path, in order.

    For ``conf.d/iceccd.lab`` that is ``conf.d/iceccd`` then
    ``conf.d/iceccd.lab``, each replaced by its ``.<runlevel>`` variant when
    that exists (OpenRC, file ``sh/openrc-run.sh.in``).  Missing optional
    files are skipped; a missing required one is an error.
    """
    files: list[Path] = []
    for path, required in wanted:
        base = path.with_name(path.name.split(".", 1)[0])
        layers = [(base, False)] if base != path else []
        for layer, must_exist in [*layers, (path, required)]:
            variant = layer.with_name(f"{layer.name}.{runlevel}") if runlevel else None
            chosen = variant if variant is not None and variant.is_file() else layer
            if chosen in files or (not must_exist and not chosen.is_file()):
                continue
            files.append(chosen)
    return files


def _toml_layer(names: ServiceNames, path: Path, *, required: bool) -> dict[str, _Raw]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not required:
            return {}
        msg = f"{path}: no such file"
        raise ConfigError(msg, source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{path}: cannot read: {exc}"
        raise ConfigError(msg, source=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib (3.11) has no line attribute; its message ends "(at line N, column M)".
        match = _TOML_ERROR_LINE.search(str(exc))
        where = f"{path}:{match[1]}" if match else str(path)
        reason = _TOML_ERROR_LINE.sub("", str(exc)).strip()
        msg = f"{where}: invalid TOML: {reason}"
        raise ConfigError(msg, source=where) from None
    _check_tables(data, path, text)
    raws: dict[str, _Raw] = {}
    # [network] and [cluster] hold what both services share; the service's own table wins.
    for table_name in (*_SHARED_KEYS, names.toml_table):
        for key, value in _toml_table(data, table_name, path, text).items():
            raws[key] = _Raw(
                value,
                Origin(
                    OriginKind.TOML, key, str(path), _toml_line(text, table_name, key), table_name
                ),
            )
    return raws


def _check_tables(data: dict[str, object], path: Path, text: str) -> None:
    """Refuse unknown tables, and keys of ``[network]``/``[cluster]`` that are not shared."""
    tables = {service.value for service in Service} | set(_SHARED_KEYS)
    for key in data:
        if key not in tables:
            where = f"{path}:{_toml_line(text, None, key)}"
            msg = (
                f"{where}: unknown table [{key}]; "
                "expected [daemon], [scheduler], [network] or [cluster]"
            )
            raise ConfigError(msg, source=where, name=key)
    for table_name, shared in _SHARED_KEYS.items():
        for key in _toml_table(data, table_name, path, text):
            if key not in shared:
                where = f"{path}:{_toml_line(text, table_name, key)}"
                known = ", ".join(shared)
                msg = f"{where}: unknown setting {key!r} in [{table_name}]; expected {known}"
                raise ConfigError(msg, source=where, name=key)


def _toml_table(data: dict[str, object], name: str, path: Path, text: str) -> dict[str, object]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        where = f"{path}:{_toml_line(text, None, name)}"
        msg = f"{where}: {name} must be a table [{name}]"
        raise ConfigError(msg, source=where, name=name)
    return table


def _toml_line(text: str, table: str | None, key: str) -> int:
    """Return the line of ``key =`` (or ``[key]``) in *table*, or 0: tomllib has no positions."""
    current: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]").strip().strip("\"'")
            if table is None and current == key:
                return number
            continue
        match = _TOML_KEY.match(line)
        if match and match[2] == key and current == table:
            return number
    return 0


# -- name mapping ----------------------------------------------------------------


def _confd_layer(
    names: ServiceNames, confd: ConfdFile, warnings: list[ConfigWarning]
) -> dict[str, _Raw]:
    """Map conf.d variables onto fields: primary names beat aliases."""
    primary = names.primary_names()
    # Foreign names too: a daemon variable in the scheduler's file is worth naming.
    known = [*primary, *names.aliases, *sorted(names.foreign)]
    from_primary: dict[str, _Raw] = {}
    from_alias: dict[str, _Raw] = {}
    from_max_jobs: dict[str, _Raw] = {}
    for var in confd.values.values():
        where = f"{var.path}:{var.line}"
        origin = Origin(OriginKind.CONFD, var.name, var.path, var.line)
        alias = names.aliases.get(var.name)
        if var.name in primary:
            if var.value:  # VAR="" means "use the default", as every init script does
                from_primary[primary[var.name]] = _Raw(var.value, origin)
        elif alias is not None:
            warnings.append(ConfigWarning(where, _deprecation(names, alias)))
            target = from_max_jobs if alias.max_jobs and _is_zero(var.value) else from_alias
            target.update(_alias_values(alias, var.value, origin))
        elif var.name in names.unsupported:
            if var.value.strip().lower() in _TRUE_WORDS:
                message = f"{var.name} is ignored: {names.unsupported[var.name]}"
                warnings.append(ConfigWarning(where, message))
        elif var.name not in names.foreign and (unknown := _unknown(var.name, known, names)):
            warnings.append(ConfigWarning(where, unknown))
    return {**from_alias, **from_max_jobs, **from_primary}


def _alias_values(alias: Alias, value: str, origin: Origin) -> dict[str, _Raw]:
    if alias.max_jobs and _is_zero(value):
        # The SUSE and Debian scripts turn MAX_JOBS=0 into -m 1 --no-remote.
        return {"max_processes": _Raw(1, origin), "allow_remote": _Raw(value=False, origin=origin)}
    return {alias.field: _Raw(value, origin)} if value else {}


def _deprecation(names: ServiceNames, alias: Alias) -> str:
    text = f"{alias.name} ({alias.family} name) is deprecated; use {names.primary(alias.field)}"
    if alias.max_jobs:
        text += f" (and {names.primary('allow_remote')}=no instead of {alias.name}=0)"
    return text


def _is_zero(value: str) -> bool:
    try:
        return int(value) == 0
    except ValueError:
        return False


def _unknown(name: str, known: Sequence[str], names: ServiceNames) -> str:
    """Return a warning for an unknown variable, or "" for an unrelated helper variable.

    A name closest to a deprecated alias gets the alias's current name
    suggested (ICECCD_MAX_JOBZ: ICECCD_MAX_PROCESSES, not ICECC_MAX_JOBS).
    """
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        alias = names.aliases.get(close[0])
        suggestion = names.primary(alias.field) if alias is not None else close[0]
        return f"unknown variable {name}; did you mean {suggestion}?"
    if name.startswith(_FAMILIES):
        return f"unknown variable {name} is ignored"
    return ""


def _env_layer(
    names: ServiceNames, environ: Mapping[str, str], warnings: list[ConfigWarning]
) -> dict[str, _Raw]:
    """Read the primary names (and the daemon's ICECC_SCHEDULER) from *environ*."""
    values: dict[str, _Raw] = {}
    for name, field_name in names.primary_names().items():
        if environ.get(name):
            values[field_name] = _Raw(environ[name], Origin(OriginKind.ENV, name))
    for name, (field_name, deprecated) in names.environment.items():
        if not environ.get(name):
            continue
        if deprecated:
            message = f"{name} is deprecated; use {names.primary(field_name)}"
            warnings.append(ConfigWarning(f"env {name}", message))
        values.setdefault(field_name, _Raw(environ[name], Origin(OriginKind.ENV, name)))
    return values


# -- validation ------------------------------------------------------------------


def _validate(settings_cls: type[S], chosen: Mapping[str, _Raw]) -> S:
    """Build the settings, or raise one ConfigError with a line per bad value."""
    fields = settings_cls.model_fields
    problems: dict[str, tuple[_Raw, str]] = {}
    for key, raw in chosen.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems[key] = (raw, f"unknown setting{hint}")
    settings: S | None = None
    try:
        settings = settings_cls.model_validate(
            {k: raw.value for k, raw in chosen.items() if k in fields}
        )
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            key = str(error["loc"][0]) if error["loc"] else ""
            if key in chosen and key not in problems:
                reason = _reason(error["type"], error["msg"], error.get("ctx"))
                problems[key] = (chosen[key], reason)
        if not problems:  # not tied to one given value: report it as pydantic words it
            raise ConfigError(str(exc)) from None
    if settings is None or problems:
        ordered = sorted(problems.values(), key=lambda problem: _rank(problem[0].origin))
        lines = tuple(f"{raw.origin.describe(raw.value)}: {why}" for raw, why in ordered)
        first = ordered[0][0].origin
        raise ConfigError("\n".join(lines), source=first.location, name=first.name, details=lines)
    return settings


def _rank(origin: Origin) -> tuple[int, str, int]:
    """Order problems by layer (flags first), then by file position."""
    return (list(OriginKind).index(origin.kind), origin.path, origin.line)


def _reason(kind: str, message: str, context: Mapping[str, object] | None) -> str:
    """Return pydantic's message, without the "Value error, " prefix of our validators."""
    if kind == "value_error" and context is not None and "error" in context:
        return str(context["error"])
    if kind == "bool_parsing":  # pydantic: "Input should be a valid boolean, unable to ..."
        return "expected yes or no (also true/false, on/off, 1/0)"
    return message
