"""``iceserv config``: show, check and migrate the daemon and scheduler configuration.

Owns the ``config`` sub-command of ``iceserv``: ``show`` prints the
effective settings with the source of each, ``check`` validates, and
``migrate`` turns conf.d files into TOML.  It is a boundary: it prints each
line of a :class:`ConfigError` and exits 78 (``EX_CONFIG``), and prints
warnings to stderr.  All loading and formatting lives in
:mod:`iceserv.config`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.config import (
    DEFAULT_TOML,
    Locations,
    Service,
    load_settings,
    names_for,
    render_json,
    render_migration,
    render_text,
    render_toml,
)
from iceserv.errors import ConfigError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence

    from iceserv.config import DaemonSettings, Loaded, SchedulerSettings

__all__ = ["register"]

_PROG: Final = "iceserv"
_RENDERERS: Final = {"text": render_text, "toml": render_toml, "json": render_json}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``config`` parser (with ``show``, ``check`` and ``migrate``) to *subparsers*."""
    parser = subparsers.add_parser(
        "config",
        help="show, check or migrate the daemon and scheduler configuration",
        description="Show, check or migrate the configuration of iceccd and icecc-scheduler.",
    )
    parser.set_defaults(func=_run, config_parser=parser)
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION")

    show = actions.add_parser("show", help="print the effective settings and their sources")
    _add_common(show)
    show.add_argument("--format", choices=sorted(_RENDERERS), default="text", help="output format")

    check = actions.add_parser("check", help="validate the configuration (exit 78 if invalid)")
    _add_common(check)

    migrate = actions.add_parser("migrate", help="write the conf.d settings as TOML")
    _add_common(migrate, toml=False)
    migrate.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")
    migrate.add_argument("--force", action="store_true", help="overwrite an existing FILE")


def _add_common(parser: argparse.ArgumentParser, *, toml: bool = True) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--daemon", action="store_true", help="the compile daemon (iceccd)")
    which.add_argument("--scheduler", action="store_true", help="the scheduler (icecc-scheduler)")
    parser.add_argument(
        "--confd",
        action="append",
        type=Path,
        metavar="PATH",
        help="conf.d file (repeatable; default /etc/conf.d/iceccd or /etc/conf.d/icecc-scheduler)",
    )
    if toml:
        parser.add_argument(
            "--config",
            type=Path,
            metavar="PATH",
            help="TOML file (default /etc/iceserv/iceserv.toml)",
        )


def _run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action; without one, print the help."""
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "show": _show,
        "check": _check,
        "migrate": _migrate,
    }
    handler = handlers.get(args.config_action or "")
    if handler is None:
        args.config_parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except ConfigError as exc:
        for line in exc.details:
            sys.stderr.write(f"{_PROG}: {line}\n")
        return os.EX_CONFIG


def _services(args: argparse.Namespace) -> list[Service]:
    """Return the services to act on: as asked, else guessed from the conf.d file names.

    ``iceccd*`` files hold daemon settings and ``icecc-scheduler*`` files
    scheduler settings; other files (Debian's ``icecc.conf``, SUSE's
    sysconfig) may hold both.
    """
    if args.daemon:
        return [Service.DAEMON]
    if args.scheduler:
        return [Service.SCHEDULER]
    bases = {path.name.split(".", 1)[0] for path in args.confd or ()}
    own = {names_for(service).default_confd.name: service for service in Service}
    if bases and bases <= own.keys():
        return [service for service in Service if names_for(service).default_confd.name in bases]
    return list(Service)


def _load_all(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    use_toml: bool = True,
    confd_required: bool = False,
) -> dict[Service, Loaded[DaemonSettings] | Loaded[SchedulerSettings]]:
    """Load every selected service, printing warnings; raise one ConfigError for all."""
    loaded: dict[Service, Loaded[DaemonSettings] | Loaded[SchedulerSettings]] = {}
    errors: list[str] = []
    for service in _services(args):
        argv: list[str] = []
        confd: Sequence[Path] = args.confd or ()
        if not confd and confd_required:
            confd = [names_for(service).default_confd]
        for path in confd:
            argv += ["--confd", str(path)]
        config = getattr(args, "config", None)
        if config is not None:
            argv += ["--config", str(config)]
        try:
            locations = Locations(toml=DEFAULT_TOML if use_toml else None)
            result = load_settings(service, argv, environ, locations=locations)
        except ConfigError as exc:
            errors.extend(line for line in exc.details if line not in errors)
            continue
        for warning in result.warnings:
            sys.stderr.write(f"{_PROG}: warning: {warning}\n")
        loaded[service] = result
    if errors:
        raise ConfigError("\n".join(errors), details=tuple(errors))
    return loaded


def _show(args: argparse.Namespace) -> int:
    loaded = _load_all(args, os.environ)
    sys.stdout.write(_RENDERERS[args.format](loaded))
    return 0


def _check(args: argparse.Namespace) -> int:
    for service, result in _load_all(args, os.environ).items():
        count = len(result.warnings)
        suffix = f" ({count} warning{'s' if count != 1 else ''})" if count else ""
        sys.stdout.write(f"{service.value} configuration OK{suffix}\n")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    # Only the conf.d files count: no environment, no existing TOML file.
    loaded = _load_all(args, {}, use_toml=False, confd_required=True)
    sources = ", ".join(str(p) for p in args.confd or ()) or "the default conf.d files"
    header = (
        f"iceserv configuration migrated from {sources} by 'iceserv config migrate'.\n"
        "Only the values set there are written; everything else keeps its default."
    )
    document = render_migration(loaded, header)
    if args.output is None:
        sys.stdout.write(document)
        return 0
    if args.output.exists() and not args.force:
        sys.stderr.write(f"{_PROG}: {args.output}: exists (use --force to overwrite)\n")
        return os.EX_CANTCREAT
    args.output.write_text(document, encoding="utf-8")
    return 0
