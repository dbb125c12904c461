"""``iceserv summary``: the report of a build record that ``ICECC_SUMMARY`` made.

This module owns the sub-command; the record format and the report belong
to :mod:`iceserv.client.buildsummary` (the wrapper writes the record with the
standard library only).  It reads the record named on the command line, or
the one ``ICECC_SUMMARY`` names, or the default one, and prints where the
jobs ran, how many fell back to local and why, and the slowest units.
``--clear`` empties the record for the next build.  It must not change
anything but the record it is told to clear.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

from iceserv.client.buildsummary import default_record, read_record, render

if TYPE_CHECKING:
    import argparse

__all__ = ["register"]

_EX_NOINPUT = 66


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``summary`` sub-command."""
    parser = subparsers.add_parser(
        "summary", help="report where a build's compiles ran (ICECC_SUMMARY=1 records them)"
    )
    parser.add_argument("record", nargs="?", help="the record (default: ICECC_SUMMARY's)")
    parser.add_argument("--slowest", type=int, default=5, metavar="N", help="units listed")
    parser.add_argument("--json", action="store_true", help="print the entries as JSON")
    parser.add_argument("--clear", action="store_true", help="empty the record and exit")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    target = os.environ.get("ICECC_SUMMARY", "")
    path = args.record or (target if target not in ("", "0", "1") else default_record(os.environ))
    if args.clear:
        try:
            os.truncate(path, 0)
        except FileNotFoundError:
            pass
        except OSError as exc:
            sys.stderr.write(f"iceserv summary: {path}: {exc.strerror}\n")
            return 1
        return 0
    try:
        entries = read_record(path)
    except OSError as exc:
        sys.stderr.write(
            f"iceserv summary: {path}: {exc.strerror} (set ICECC_SUMMARY=1 "
            "for a build, or run it as 'icecc --summary make ...')\n"
        )
        return _EX_NOINPUT
    if args.json:
        sys.stdout.write(json.dumps(entries, indent=1) + "\n")
    else:
        sys.stdout.write(render(entries, slowest=args.slowest))
    return 0
