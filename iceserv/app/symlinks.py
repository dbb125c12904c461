"""``iceserv install-symlinks`` / ``uninstall-symlinks``: the compiler symlink directory.

Owns the directory of compiler-named symlinks to our ``icecc`` that users
(or portage's ``PREROOTPATH``) put first in ``PATH`` (services.md §10.3).
The default is Gentoo's shadowman directory ``/usr/libexec/icecc/bin``;
Debian's is ``/usr/lib/icecc/bin`` (``--dir``).  Links point at the
*resolved* ``icecc`` entry point, so the wrapper recognises them as links to
itself when it looks for the real compiler.

Every link made is recorded in ``.iceserv-symlinks`` in that directory (with
whether we created the directory), and ``uninstall-symlinks`` removes only
recorded links that still point where we pointed them: links made by
shadowman (``eselect compiler-shadow``) or by hand are never touched, and an
existing file is only replaced with ``--force``.  ``--names auto`` links
every compiler on ``PATH`` the way shadowman's icecc module selects them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.errors import IceservError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable

__all__ = ["DEFAULT_DIR", "DEFAULT_NAMES", "MANIFEST", "install", "register", "uninstall"]

DEFAULT_DIR: Final = Path("/usr/libexec/icecc/bin")
DEFAULT_NAMES: Final = ("gcc", "g++", "cc", "c++", "clang", "clang++")
MANIFEST: Final = ".iceserv-symlinks"
# shadowman's icecc module: {,*-}{cc,c99,c++}, {,*-}{gcc,g++}{,-[0-9]*}, and clang's.
_AUTO_NAMES: Final = re.compile(
    r"^(?:[^/]*-)?(?:cc|c99|c\+\+)$|^(?:[^/]*-)?(?:gcc|g\+\+)(?:-[0-9][^/]*)?$"
    r"|^clang(?:\+\+)?(?:-[0-9][^/]*)?$"
)


class SymlinkError(IceservError, OSError):
    """The links cannot be made or removed; the message says why."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``install-symlinks`` and ``uninstall-symlinks`` to *subparsers*."""
    install_parser = subparsers.add_parser(
        "install-symlinks",
        help="create compiler symlinks to icecc (shadowman layout)",
        description="Create gcc/g++/cc/c++/clang/clang++ symlinks to iceserv's icecc.",
    )
    install_parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help="the symlink directory (default %(default)s; Debian uses /usr/lib/icecc/bin)",
    )
    install_parser.add_argument(
        "--names",
        default=",".join(DEFAULT_NAMES),
        help="comma-separated compiler names, or 'auto' for every "
        "compiler on PATH (default %(default)s)",
    )
    install_parser.add_argument(
        "--target",
        type=Path,
        default=None,
        help="the icecc to link to (default: the icecc installed next to this iceserv)",
    )
    install_parser.add_argument(
        "--force", action="store_true", help="replace files and foreign links of the same names"
    )
    install_parser.set_defaults(func=_install_main)
    uninstall_parser = subparsers.add_parser(
        "uninstall-symlinks",
        help="remove the compiler symlinks install-symlinks made",
        description="Remove only the symlinks 'iceserv install-symlinks' recorded.",
    )
    uninstall_parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="the symlink directory (default %(default)s)"
    )
    uninstall_parser.set_defaults(func=_uninstall_main)


def default_target() -> Path | None:
    """Our ``icecc`` console script: next to ``iceserv`` or to the interpreter."""
    for directory in (Path(sys.argv[0]).parent, Path(sys.executable).parent):
        candidate = directory / "icecc"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def auto_names(path: str, skip: Path) -> list[str]:
    """Compiler names on *path* that shadowman would link (sorted, without duplicates)."""
    names: set[str] = set()
    for directory in path.split(":"):
        folder = Path(directory or ".")
        if not folder.is_dir() or folder.resolve() == skip.resolve():
            continue
        for entry in folder.iterdir():
            if _AUTO_NAMES.match(entry.name) and entry.is_file() and os.access(entry, os.X_OK):
                names.add(entry.name)
    return sorted(names)


def _read_manifest(directory: Path) -> tuple[str, list[str], bool]:
    """Return the recorded target, link names and whether we created the directory."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
        return str(data["target"]), [str(n) for n in data["links"]], bool(data["created_dir"])
    except FileNotFoundError:
        return "", [], False
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"{directory / MANIFEST}: unreadable record of our links: {exc}"
        raise SymlinkError(msg) from None


def install(
    directory: Path, names: Iterable[str], target: Path, *, force: bool = False
) -> tuple[list[str], list[str]]:
    """Link each name in *directory* to *target*; return (made, skipped) names."""
    resolved = target.resolve()
    if not resolved.is_file():
        msg = f"{target} is not a file: install iceserv's icecc or pass --target"
        raise SymlinkError(msg)
    created_dir = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    _, recorded, created_before = _read_manifest(directory)
    made: list[str] = []
    skipped: list[str] = []
    for name in names:
        link = directory / name
        if link.is_symlink() and link.readlink() == resolved:
            made.append(name)  # already ours (or identical): keep, record
            continue
        if link.exists() or link.is_symlink():
            if not force:
                skipped.append(name)
                continue
            link.unlink()
        link.symlink_to(resolved)
        made.append(name)
    record = {
        "target": str(resolved),
        "links": sorted(set(recorded) | set(made)),
        "created_dir": created_before or created_dir,
    }
    (directory / MANIFEST).write_text(json.dumps(record, indent=1) + "\n")
    return made, skipped


def uninstall(directory: Path) -> list[str]:
    """Remove the recorded links that still point at the recorded target; return them."""
    target, links, created_dir = _read_manifest(directory)
    removed: list[str] = []
    for name in links:
        link = directory / name
        if link.is_symlink() and str(link.readlink()) == target:
            link.unlink()
            removed.append(name)
    (directory / MANIFEST).unlink(missing_ok=True)
    if created_dir and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
    return removed


def _install_main(args: argparse.Namespace) -> int:
    target = args.target or default_target()
    if target is None:
        sys.stderr.write("iceserv: cannot find iceserv's icecc; pass --target\n")
        return 1
    names = (
        auto_names(os.environ.get("PATH", ""), args.dir)
        if args.names == "auto"
        else [n for n in args.names.split(",") if n]
    )
    try:
        made, skipped = install(args.dir, names, Path(target), force=args.force)
    except (SymlinkError, OSError) as exc:
        sys.stderr.write(f"iceserv: {exc}\n")
        return 1
    for name in made:
        sys.stdout.write(f"{args.dir / name} -> {Path(target).resolve()}\n")
    for name in skipped:
        sys.stderr.write(
            f"iceserv: {args.dir / name} exists and is not ours; kept (use --force to replace)\n"
        )
    return 0 if not skipped else 1


def _uninstall_main(args: argparse.Namespace) -> int:
    try:
        removed = uninstall(args.dir)
    except (SymlinkError, OSError) as exc:
        sys.stderr.write(f"iceserv: {exc}\n")
        return 1
    for name in removed:
        sys.stdout.write(f"removed {args.dir / name}\n")
    return 0
