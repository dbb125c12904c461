"""Who runs the daemon's helper processes, and whether compile jobs can be chroot'ed at all.

This module owns the decision 1.4 makes at start-up (upstream
``daemon/main.cpp``, ``main``): compile jobs run chroot'ed into their
environment as an unprivileged user, which needs root or ``CAP_SYS_CHROOT``;
without either the daemon accepts no remote jobs.  :func:`resolve_user`
finds the user (the configured one, else ``icecc`` as in 1.4, else
uid 65534 / gid 65533) and :func:`can_chroot` checks the capability.  It
also builds the environment for spawned programs: 1.4's ``PATH=/usr/bin``
and nothing that belongs to the service manager (``NOTIFY_SOCKET``,
``WATCHDOG_*``, ``LISTEN_*``).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.hostfacts import MANAGER_VARIABLES

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["RunAs", "can_chroot", "child_environment", "resolve_user"]

_CAP_SYS_CHROOT: Final = 18
_FALLBACK_USER: Final = "icecc"
_NOBODY_UID: Final = 65534
_NOBODY_GID: Final = 65533


@dataclass(frozen=True, slots=True)
class RunAs:
    """The identity helper processes take.

    ``switch`` is True when the daemon is root and must change to
    ``uid``/``gid`` in the child; otherwise the child keeps the daemon's
    identity (a non-root daemon holding ``CAP_SYS_CHROOT``).
    """

    name: str
    uid: int
    gid: int
    switch: bool

    def popen_kwargs(self) -> dict[str, object]:
        """``subprocess``/``asyncio`` keyword arguments that drop to this user (no preexec_fn)."""
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def resolve_user(wanted: str, *, euid: int | None = None) -> tuple[RunAs, str]:
    """Return the user jobs run as, and a warning text ("" if none) when falling back.

    Root switches to *wanted* (or ``icecc``, else 65534/65533); a non-root
    daemon keeps its own identity, as 1.4 (libcap-ng build) does.
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        entry = _lookup_uid(euid)
        return RunAs(entry or str(euid), euid, os.getegid(), switch=False), ""
    for name in dict.fromkeys((wanted, _FALLBACK_USER)):
        try:
            entry_pw = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry_pw.pw_uid == 0:
            return RunAs("nobody", _NOBODY_UID, _NOBODY_GID, switch=True), (
                f"user {name!r} is root; compile jobs run as uid {_NOBODY_UID} instead"
            )
        warning = "" if name == wanted else f"no user {wanted!r}; compile jobs run as {name!r}"
        return RunAs(name, entry_pw.pw_uid, entry_pw.pw_gid, switch=True), warning
    return RunAs("nobody", _NOBODY_UID, _NOBODY_GID, switch=True), (
        f"no user {wanted!r} or {_FALLBACK_USER!r}; compile jobs run as uid {_NOBODY_UID}"
    )


def _lookup_uid(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def can_chroot(*, euid: int | None = None, status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process may chroot: root, or ``CAP_SYS_CHROOT`` in its effective set."""
    if (os.geteuid() if euid is None else euid) == 0:
        return True
    try:
        text = status.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_CHROOT & 1)
    return False


def child_environment(base: Mapping[str, str], **extra: str) -> dict[str, str]:
    """Return *base* without the manager's variables, with ``PATH=/usr/bin`` and *extra*."""
    env = {key: value for key, value in base.items() if key not in MANAGER_VARIABLES}
    env["PATH"] = "/usr/bin"
    env.update(extra)
    return env
