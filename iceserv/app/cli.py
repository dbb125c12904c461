"""The ``iceserv`` administration command: one sub-command per module.

Each sub-command lives in its own module under ``iceserv.app`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a
callable taking the parsed namespace and returning the exit code).  Heavy
imports stay inside the sub-command modules so ``iceserv --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING, Final

from iceserv._version import VERSION

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

# Modules under iceserv.app that provide a sub-command, in --help order.
_SUBCOMMANDS: Final = (
    "demo",
    "status",
    "summary",
    "slots",
    "selftest",
    "config_cli",
    "keygen",
    "system_files",
    "symlinks",
    "sim",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="iceserv", description="Administer an iceserv (icecream) compile cluster."
    )
    parser.add_argument("--version", action="version", version=f"iceserv {VERSION}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        module = importlib.import_module(f"iceserv.app.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``iceserv`` with *argv* (default: ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return int(func(args))


if __name__ == "__main__":
    sys.exit(main())
