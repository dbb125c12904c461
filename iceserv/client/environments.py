"""Which compiler environments a job offers the scheduler (reference §5.4).

Owns the parsing of ``ICECC_VERSION`` (1.4 ``parse_icecc_version``:
comma-separated ``[platform:]tarball[=compiler-prefix]`` entries), the
environment names derived from tarball paths (``rip_out_paths``), the
compiler-name prefix used for ``=prefix`` selection (``find_prefix``), the
GET_CS feature bits an environment compression requires, and the
``ICECC_EXTRAFILES`` list.  The host platform string is
:func:`iceserv.hostfacts.host_platform`.  Pure: files are probed through
callables the caller passes.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final

__all__ = [
    "TARBALL_SUFFIXES",
    "Environment",
    "find_prefix",
    "parse_extrafiles",
    "parse_icecc_version",
    "required_features",
]

#: Recognised tarball suffixes, longest match first as 1.4 tries them.
TARBALL_SUFFIXES: Final = (".tar.xz", ".tar.zst", ".tar.bz2", ".tar.gz", ".tar", ".tgz")
_MIN_TARBALL_SIZE: Final = 500
_ENV_XZ: Final = 0x1  # iceserv.protocol.EnvFeature.ENV_XZ
_ENV_ZSTD: Final = 0x2  # iceserv.protocol.EnvFeature.ENV_ZSTD


class Environment:
    """A usable environment: the platform its compilers run on, its name and tarball path."""

    __slots__ = ("name", "path", "platform")

    def __init__(self, platform: str, name: str, path: str) -> None:
        self.platform = platform
        self.name = name
        self.path = path

    def __eq__(self, other: object) -> bool:
        """Compare all three fields."""
        if not isinstance(other, Environment):
            return NotImplemented
        return (self.platform, self.name, self.path) == (other.platform, other.name, other.path)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking record, never hashed

    def __repr__(self) -> str:
        """All fields."""
        return f"Environment({self.platform!r}, {self.name!r}, {self.path!r})"


def find_prefix(compiler_name: str) -> str:
    """1.4 ``find_prefix``: the text before the last "-" (``arm-linux`` of ``arm-linux-gcc``)."""
    cut = compiler_name.rfind("-")
    return "" if cut < 0 else compiler_name[:cut]


def env_name(path: str) -> str | None:
    """Return a tarball's environment name (basename without suffix); None if unknown."""
    for suffix in TARBALL_SUFFIXES:
        if len(path) > len(suffix) and path.endswith(suffix):
            return path[: -len(suffix)].rpartition("/")[2]
    return None


def parse_icecc_version(
    value: str,
    *,
    platform: str,
    prefix: str,
    usable: Callable[[str], bool],
    warn: Callable[[str], None] = lambda _text: None,
) -> list[Environment]:
    """Parse ``ICECC_VERSION`` the way 1.4 does; skip (and *warn* about) unusable entries.

    *platform* is the default platform, *prefix* the compiler-name prefix
    for ``=prefix`` entries, *usable(path)* tells whether a tarball can be
    sent (readable regular file, not a symlink, at least 500 bytes).  A
    second entry for a platform is ignored; if any entry has ``=``, entries
    without one are used only for compilers without a prefix.
    """
    prefixed = "=" in value
    found: list[Environment] = []
    for couple in (part for part in value.split(",") if part):
        entry_platform, sep, path = couple.partition(":")
        if not sep:
            entry_platform, path = platform, couple
        if prefixed:
            path, eq, wanted = path.partition("=")
            if (eq and wanted != prefix) or (not eq and prefix):
                continue
        if any(e.platform == entry_platform for e in found):
            warn(f"there are two environments for platform {entry_platform} - ignoring {path}")
            continue
        if not usable(path):
            warn(f"$ICECC_VERSION has to point to an existing file to be installed {path}")
            continue
        # A tarball without a known suffix still takes its platform's place here;
        # 1.4 drops it only later (rip_out_paths), so its name is "" until then.
        found.append(Environment(entry_platform, env_name(path) or "", path))
    return found


def usable_tarball(path: str) -> bool:
    """Tell whether *path* is a readable regular file (not a symlink) of at least 500 bytes."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    regular = (st.st_mode & 0o170000) == 0o100000
    return regular and st.st_size >= _MIN_TARBALL_SIZE and os.access(path, os.R_OK)


def required_features(env_compression: str | None) -> int:
    """GET_CS ``required_features`` for ``ICECC_ENV_COMPRESSION`` (xz: 1, zstd: 2)."""
    return {"xz": _ENV_XZ, "zstd": _ENV_ZSTD}.get(env_compression or "", 0)


def parse_extrafiles(
    value: str, absolute: Callable[[str], str], exists: Callable[[str], bool]
) -> tuple[list[str], str | None]:
    """1.4's ``ICECC_EXTRAFILES``: colon-separated; returns (files, first missing or None)."""
    files: list[str] = []
    for part in value.split(":"):
        path = absolute(part)
        if not exists(path):
            return files, path
        files.append(path)
    return files, None
