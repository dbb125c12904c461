"""``iceserv keygen PATH``: write a new network key (issue 14).

Writes :data:`~iceserv.config.keyfile.NEW_KEY_BYTES` random bytes from the
operating system's CSPRNG to a new file of mode 0640, group ``icecream``
when it exists (root:icecream when run as root), and never overwrites an
existing file: a key in use is replaced by the rotation procedure
(``previous_key_file``), not in place.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keygen`` sub-command."""
    parser = subparsers.add_parser(
        "keygen",
        help="write a new network key for [cluster] key_file",
        description=(
            "Write 64 random bytes to PATH (a new file, mode 0640, group icecream when it "
            "exists) for ICECC_NETWORK_KEY_FILE / [cluster] key_file.  Copy it to every "
            "host of the cluster over a secure channel."
        ),
    )
    parser.add_argument("path", type=Path, help="the key file to create")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from iceserv.config.keyfile import write_key  # noqa: PLC0415 - only this sub-command

    path: Path = args.path
    try:
        group = write_key(path)
    except FileExistsError:
        sys.stderr.write(f"iceserv keygen: {path}: exists; a key is never overwritten\n")
        return os.EX_CANTCREAT
    except OSError as exc:
        sys.stderr.write(f"iceserv keygen: {path}: {exc.strerror or exc}\n")
        return os.EX_CANTCREAT
    sys.stdout.write(f"{path}: new network key (mode 0640, group {group})\n")
    return 0
