"""``iceserv install-system-files``: put units, init scripts and etc/ files where the system looks.

Wheels cannot place system files (services.md §10.2), so this sub-command
copies them from the installed package (``iceserv/_data``, see the
``force-include`` lines in the README) or from the source tree:

* systemd units to ``PREFIX/lib/systemd/system`` and OpenRC scripts to
  ``/etc/init.d``, with ``/usr/bin/iceccd`` and ``/usr/bin/icecc-scheduler``
  rewritten to the real entry points (``--bindir``);
* the conf.d samples to ``/etc/conf.d`` and the TOML sample to
  ``/etc/iceserv`` -- **never** over an existing file, which is the user's;
* the D-Bus policy to ``/etc/dbus-1/system.d`` (Debian's bus does not read
  ``/usr/local/share``), sysusers.d and tmpfiles.d entries to
  ``PREFIX/lib``, logrotate to ``/etc/logrotate.d``, man pages to
  ``PREFIX/share/man``;
* with ``--symlinks``, compiler links to ``icecc`` in
  ``PREFIX/libexec/icecc/bin`` (the directory Gentoo's shadowman uses).

``--root`` is a staging directory (DESTDIR) prepended to every target;
paths written into files never include it.  ``--dry-run`` prints the plan.

The units run with ``PrivateTmp=yes`` (``/tmp`` and ``/var/tmp`` are
private) and ``ProtectHome=`` (``/home``, ``/root`` and ``/run/user``
hidden from the scheduler): a venv there cannot be the units' ``ExecStart=``.
Without ``--bindir`` such a default (this Python's own bin directory) is
refused; an explicit ``--bindir`` there, or a default one under ``--root``
(a staging tree, whose programs live elsewhere), gets a warning.
The module never starts, enables or reloads services: it prints what to run.
"""

from __future__ import annotations

import enum
import importlib.resources
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = [
    "Action",
    "Kind",
    "Options",
    "data_root",
    "execute",
    "hidden_by_sandbox",
    "plan",
    "register",
]

_SOURCE_TREE: Final = Path(__file__).resolve().parents[2]
_PROGRAMS: Final = ("iceccd", "icecc-scheduler")
_PROGRAM_PATH: Final = re.compile(r"/usr/bin/(iceccd|icecc-scheduler)(?![\w.-])")
_DEFAULT_BINDIR: Final = Path("/usr/bin")
_COMPILERS: Final = ("cc", "c++", "gcc", "g++", "clang", "clang++")
#: Directories the units' sandbox hides, and the setting that hides them.
_HIDDEN: Final = (
    (Path("/tmp"), "PrivateTmp=yes"),  # noqa: S108 - a path we warn about, not one we use
    (Path("/var/tmp"), "PrivateTmp=yes"),  # noqa: S108 - likewise
    (Path("/home"), "ProtectHome=yes"),
    (Path("/root"), "ProtectHome=yes"),
    (Path("/run/user"), "ProtectHome=yes"),
)
_NEXT_STEPS: Final = {
    "systemd": (
        "systemctl daemon-reload",
        "systemd-sysusers && systemd-tmpfiles --create",
        "systemctl enable --now icecc-scheduler iceccd",
    ),
    "openrc": (
        "useradd --system --user-group --home-dir /var/cache/icecream icecream",
        "rc-update add iceccd default && rc-service iceccd start",
    ),
}


class Kind(enum.Enum):
    """What an action does."""

    INSTALL = "install"  # copy, replacing an older copy of our own file
    KEEP = "keep"  # a user's configuration file exists: leave it
    LINK = "link"  # a symlink (compiler name -> icecc)


@dataclass(frozen=True, slots=True)
class Action:
    """One file to write: *dest* (under ``--root``) from *source* or a link to *target*."""

    kind: Kind
    dest: Path
    source: Path | None = None
    mode: int = 0o644
    target: str = ""
    rewrite: bool = False

    def describe(self) -> str:
        """Return the plan line, e.g. ``install units/iceccd.service -> /usr/lib/...``."""
        if self.kind is Kind.LINK:
            return f"link    {self.dest} -> {self.target}"
        if self.kind is Kind.KEEP:
            return f"keep    {self.dest} (exists; not overwritten)"
        return f"install {self.source} -> {self.dest} (mode {self.mode:04o})"


@dataclass(frozen=True, slots=True)
class Options:
    """What to install where.  *init* is ``systemd``, ``openrc``, ``both`` or ``auto``."""

    root: Path = Path("/")
    prefix: Path = Path("/usr/local")
    bindir: Path = _DEFAULT_BINDIR
    init: str = "auto"
    man: bool = True
    symlinks: bool = False
    symlink_dir: Path | None = None


def data_root() -> Path:
    """Return the directory holding ``units/``, ``openrc/``, ``etc/`` and ``man/``.

    An installed wheel carries them as ``iceserv/_data``; a source checkout
    (editable install) has them at the top of the tree.
    """
    packaged = Path(str(importlib.resources.files("iceserv"))) / "_data"
    if (packaged / "units").is_dir():
        return packaged
    return _SOURCE_TREE


def default_bindir() -> Path:
    """Return where the running installation's ``iceccd`` lives, else ``/usr/bin``."""
    here = Path(sys.executable).parent
    return here if (here / "iceccd").exists() else _DEFAULT_BINDIR


def hidden_by_sandbox(bindir: Path) -> str | None:
    """Return why the units cannot run programs in *bindir* (e.g. ``PrivateTmp=yes``), or None.

    Both the path as given and with symlinks resolved are checked.
    """
    for path in (bindir, bindir.resolve()):
        for top, setting in _HIDDEN:
            if path.is_relative_to(top):
                return f"{setting} hides {top}"
    return None


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _init_systems(options: Options) -> tuple[str, ...]:
    if options.init == "both":
        return ("systemd", "openrc")
    if options.init != "auto":
        return (options.init,)
    root = options.root
    openrc = any(
        _under(root, Path(p)).exists() for p in ("/sbin/openrc-run", "/usr/sbin/openrc-run")
    )
    return ("openrc",) if openrc else ("systemd",)


def _config_file(root: Path, source: Path, dest: Path) -> Action:
    """Install a sample configuration file unless the user already has one."""
    full = _under(root, dest)
    if full.exists() or full.is_symlink():
        return Action(Kind.KEEP, full, source)
    return Action(Kind.INSTALL, full, source)


def plan(options: Options, data: Path | None = None) -> list[Action]:
    """Return the actions that install the system files for *options* (nothing is written)."""
    data = data_root() if data is None else data
    root, prefix = options.root, options.prefix
    actions: list[Action] = []
    systems = _init_systems(options)
    for program in _PROGRAMS:
        if "systemd" in systems:
            unit = data / "units" / f"{program}.service"
            dest = _under(root, prefix / "lib/systemd/system" / unit.name)
            actions.append(Action(Kind.INSTALL, dest, unit, rewrite=True))
        if "openrc" in systems:
            script = data / "openrc" / program
            dest = _under(root, Path("/etc/init.d") / program)
            actions.append(Action(Kind.INSTALL, dest, script, mode=0o755, rewrite=True))
        confd = data / "etc/conf.d" / program
        actions.append(_config_file(root, confd, Path("/etc/conf.d") / program))
    toml = data / "etc/iceserv/iceserv.toml"
    actions.append(_config_file(root, toml, Path("/etc/iceserv/iceserv.toml")))
    for policy in sorted((data / "etc/dbus-1/system.d").glob("*.conf")):
        dest = _under(root, Path("/etc/dbus-1/system.d") / policy.name)
        actions.append(Action(Kind.INSTALL, dest, policy))
    for kind in ("sysusers.d", "tmpfiles.d"):
        source = data / "etc" / kind / "iceserv.conf"
        actions.append(
            Action(Kind.INSTALL, _under(root, prefix / "lib" / kind / source.name), source)
        )
    logrotate = data / "etc/logrotate.d/iceserv"
    actions.append(Action(Kind.INSTALL, _under(root, Path("/etc/logrotate.d/iceserv")), logrotate))
    if options.man:
        for page in sorted((data / "man").glob("*.[1-8]")):
            section = page.suffix.removeprefix(".")
            dest = _under(root, prefix / "share/man" / f"man{section}" / page.name)
            actions.append(Action(Kind.INSTALL, dest, page))
    if options.symlinks:
        actions.extend(_symlinks(options))
    return actions


def _symlinks(options: Options) -> list[Action]:
    directory = options.symlink_dir or options.prefix / "libexec/icecc/bin"
    target = str(options.bindir / "icecc")
    return [
        Action(Kind.LINK, _under(options.root, directory / name), target=target)
        for name in _COMPILERS
    ]


def _rewritten(text: str, bindir: Path) -> str:
    """Point ``ExecStart=``/``command_args`` at the entry points in *bindir*."""
    return _PROGRAM_PATH.sub(lambda match: f"{bindir}/{match[1]}", text)


def execute(actions: Sequence[Action], bindir: Path) -> None:
    """Carry out *actions* (creating parent directories); raises ``OSError`` on failure."""
    for action in actions:
        if action.kind is Kind.KEEP:
            continue
        action.dest.parent.mkdir(parents=True, exist_ok=True)
        if action.kind is Kind.LINK:
            if action.dest.is_symlink() or action.dest.exists():
                action.dest.unlink()
            action.dest.symlink_to(action.target)
            continue
        assert action.source is not None  # noqa: S101 - INSTALL always has a source
        if action.rewrite:
            data = _rewritten(action.source.read_text(encoding="utf-8"), bindir).encode()
        else:
            data = action.source.read_bytes()
        temporary = action.dest.with_name(f".{action.dest.name}.iceserv-new")
        temporary.write_bytes(data)
        temporary.chmod(action.mode)
        temporary.replace(action.dest)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``install-system-files`` parser to *subparsers*."""
    parser = subparsers.add_parser(
        "install-system-files",
        help="install service units, init scripts, etc/ files and man pages",
        description="Copy iceserv's systemd units or OpenRC scripts, conf.d and TOML samples "
        "(never over existing files), D-Bus policy, sysusers/tmpfiles/logrotate entries and "
        "man pages to where the system looks for them.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="staging directory prepended to every target (DESTDIR)",
    )
    parser.add_argument(
        "--prefix",
        type=Path,
        default=Path("/usr/local"),
        help="prefix for units, sysusers/tmpfiles and man pages (default: "
        "/usr/local; distributions use /usr)",
    )
    parser.add_argument(
        "--bindir",
        type=Path,
        default=None,
        help="where iceccd and icecc-scheduler are (default: next to this "
        "Python if they are there, else /usr/bin)",
    )
    parser.add_argument(
        "--init",
        choices=("auto", "systemd", "openrc", "both"),
        default="auto",
        help="auto: OpenRC if openrc-run exists, else systemd",
    )
    parser.add_argument("--no-man", dest="man", action="store_false", help="skip the man pages")
    parser.add_argument(
        "--symlinks",
        action="store_true",
        help="also link gcc, g++, cc, c++, clang and clang++ to icecc",
    )
    parser.add_argument(
        "--symlink-dir",
        type=Path,
        default=None,
        help="directory for --symlinks (default PREFIX/libexec/icecc/bin; "
        "Debian uses /usr/lib/icecc/bin)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.set_defaults(func=_run)


def _check_bindir(args: argparse.Namespace, bindir: Path) -> int:
    """Refuse a default *bindir* the units cannot reach, warn about doubtful ones; 0 if fine."""
    reason = hidden_by_sandbox(bindir) if args.init != "openrc" else None
    if reason and args.bindir is None:
        sys.stderr.write(
            f"iceserv: install-system-files: the units would run {bindir}/iceccd, but {reason} "
            "from the services: install iceserv outside /tmp, /var/tmp and home directories "
            "(e.g. python3 -m venv /opt/iceserv), or pass --bindir with the programs' path on "
            "the target system\n"
        )
        return os.EX_USAGE
    if reason:
        sys.stderr.write(
            f"iceserv: warning: --bindir {bindir}: {reason} from the services; "
            "the units will not find their programs there\n"
        )
    elif args.bindir is None and args.root != Path("/") and bindir != _DEFAULT_BINDIR:
        sys.stderr.write(
            f"iceserv: warning: ExecStart= will point to {bindir} (this Python's environment); "
            "under --root, pass --bindir with the programs' path on the target system\n"
        )
    return 0


def _run(args: argparse.Namespace) -> int:
    for name in ("root", "prefix"):
        if not getattr(args, name).is_absolute():
            sys.stderr.write(f"iceserv: --{name} must be an absolute path\n")
            return os.EX_USAGE
    bindir = args.bindir or default_bindir()
    problem = _check_bindir(args, bindir)
    if problem:
        return problem
    options = Options(
        root=args.root,
        prefix=args.prefix,
        bindir=bindir,
        init=args.init,
        man=args.man,
        symlinks=args.symlinks,
        symlink_dir=args.symlink_dir,
    )
    actions = plan(options)
    for action in actions:
        sys.stdout.write(("would " if args.dry_run else "") + action.describe() + "\n")
    if args.dry_run:
        return 0
    try:
        execute(actions, options.bindir)
    except OSError as exc:
        sys.stderr.write(f"iceserv: install-system-files: {exc}\n")
        return os.EX_CANTCREAT
    if args.root == Path("/"):
        sys.stdout.write("next:\n")
        for system in _init_systems(options):
            for step in _NEXT_STEPS[system]:
                sys.stdout.write(f"  {step}\n")
    return 0
