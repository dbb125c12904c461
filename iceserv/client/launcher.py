"""The wrapper's launcher: a tiny script that starts Python at the interpreter's floor.

Every compiler call runs the wrapper, so what runs *before* our code counts
as much as our code.  A pip console script starts the interpreter with
``site`` (every ``.pth`` file of the installation, setuptools'
``_distutils_hack``) and imports ``re``; that is tens of milliseconds per
call.  The launcher this module writes instead is::

    #!/usr/bin/python3.11 -IS
    import sys
    sys.path[:0] = ['/where/iceserv/lives']
    sys.path += ['/its/site-packages']
    from iceserv.client.main import main
    sys.exit(main())

``-I`` (isolated: no ``PYTHON*`` variables, no user site, no script
directory on the path) and ``-S`` (no ``site``) in one shebang word; the
package's own location *first*, so ``import iceserv`` finds it at once
instead of listing the standard library's directories (and the light
modules import nothing from there: no ``from __future__ import
annotations`` in them), and the site directories (for the optional
compression bindings) *appended* after the standard library, and nothing
else.  The compiler symlinks, ``icecc`` and ``icerun`` all run it; which
mode runs is still chosen by ``argv[0]``.

Owns :func:`render` and :func:`write_launchers` (used by ``iceserv
install-launcher``, ``iceserv install-symlinks``, ``bin/setup`` and the
Debian package), :func:`is_launcher`, and :func:`console`, the entry point
of the ``icecc``/``icerun`` console scripts pip writes: it runs the wrapper
and, the first time, replaces those slow scripts by launchers when it may
write there.  Stdlib only; it imports ``sysconfig`` only to write launchers.
"""

from __future__ import annotations

import os
import sys

from iceserv.errors import IceservError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Final

__all__ = ["MARKER", "LauncherError", "console", "is_launcher", "render", "write_launchers"]

#: The second line of every launcher: how :func:`is_launcher` recognises one.
MARKER: Final = "# iceserv compiler-wrapper launcher"
NAMES: Final = ("icecc", "icerun")
#: Linux reads at most this many bytes of a ``#!`` line (BINPRM_BUF_SIZE).
_SHEBANG_LIMIT: Final = 255
_TEMPLATE: Final = """\
#!{python} -IS
{marker} (python -I -S; written by `iceserv install-launcher`)
import sys
sys.path[:0] = {first!r}
sys.path += {rest!r}
from iceserv.client.main import main
sys.exit(main())
"""


class LauncherError(IceservError, ValueError):
    """A launcher cannot be written; the message says why."""


def render(python: str, paths: Sequence[str]) -> str:
    """Return the launcher text for interpreter *python* and import *paths*."""
    if not python.startswith("/") or any(c in python for c in " \t\n"):
        msg = f"the interpreter path {python!r} cannot stand in a #! line"
        raise LauncherError(msg)
    first, rest = list(paths[:1]), list(paths[1:])
    text = _TEMPLATE.format(python=python, marker=MARKER, first=first, rest=rest)
    if len(text.partition("\n")[0]) > _SHEBANG_LIMIT:
        msg = f"the interpreter path {python!r} is too long for a #! line"
        raise LauncherError(msg)
    return text


def default_python() -> str:
    """Return the interpreter running now, resolved (a venv's python links to its base)."""
    return os.path.realpath(sys.executable)


def default_paths() -> list[str]:
    """Where ``iceserv`` lives, then this interpreter's site directories (no ``.pth`` files)."""
    import sysconfig  # noqa: PLC0415 - only when writing a launcher

    here = os.path.abspath(__file__)  # noqa: PTH100 - .../iceserv/client/launcher.py
    package = here.rsplit("/", 3)[0]
    paths = [package]
    for key in ("purelib", "platlib"):
        directory = sysconfig.get_paths()[key]
        if directory not in paths and os.path.isdir(directory):  # noqa: PTH112
            paths.append(directory)
    return paths


def is_launcher(path: str) -> bool:
    """Whether *path* is a launcher this module wrote."""
    try:
        with open(path, "rb") as handle:  # noqa: PTH123 - pathlib costs import time
            head = handle.read(_SHEBANG_LIMIT + 200)
    except OSError:
        return False
    lines = head.split(b"\n", 2)
    return len(lines) > 1 and lines[0].startswith(b"#!") and lines[1].startswith(MARKER.encode())


def write_launchers(
    directory: str,
    *,
    python: str | None = None,
    paths: Sequence[str] | None = None,
    names: Sequence[str] = NAMES,
) -> list[str]:
    """Write (atomically replace) ``icecc`` and ``icerun`` launchers in *directory*.

    Returns the paths written.  Raises :class:`LauncherError` or OSError.
    """
    text = render(python or default_python(), default_paths() if paths is None else paths)
    written = []
    for name in names:
        target = directory + "/" + name
        temporary = f"{target}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
        try:
            os.write(fd, text.encode())
            os.fchmod(fd, 0o755)
        finally:
            os.close(fd)
        os.replace(temporary, target)  # noqa: PTH105 - pathlib costs import time
        written.append(target)
    return written


def console() -> int:
    """Entry point of the ``icecc``/``icerun`` console scripts pip writes.

    Runs the wrapper exactly as the launcher would.  Before that, if this
    script is pip's (not a launcher) and its directory is writable by us,
    the ``icecc``/``icerun`` scripts there are replaced by launchers, so
    every later call starts at the interpreter's floor.  That is silent
    and best-effort: a read-only installation just stays slower.
    """
    from iceserv.client.main import main  # noqa: PLC0415

    # A compiler symlink leads here too: judge the script it resolves to.
    script = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    directory, _, name = script.rpartition("/")
    if name in NAMES and directory and not is_launcher(script) and os.access(directory, os.W_OK):
        try:  # noqa: SIM105 - best-effort; contextlib costs import time
            write_launchers(directory)
        except (LauncherError, OSError):
            pass
    return main()
