"""The compile daemon ``iceccd``: slots, environments, compile jobs, scheduler link, shell.

``slots``, ``load`` and ``states`` are pure (slot order, STATS figures,
client states and what their end reports); ``tarballs`` unpacks untrusted
environment tarballs; ``environments``, ``env_transfer`` and ``native`` own
the env base dir; ``compile`` and ``remote_job`` run compilers chroot'ed as
the job user (through the helper programs ``_jobexec``, a fork server that
``jobstarter`` talks to, and ``_unpack``);
``sandbox`` decides who runs them; ``scheduler_link`` is the scheduler
connection; ``session`` is one client connection; ``server`` is the asyncio
shell, configured by ``settings``, and ``control`` the read-only facade.
This package must not import ``scheduler``, ``config``, ``service``,
``telnet`` or ``app``.
"""

from __future__ import annotations

from iceserv.daemon.control import DaemonControl, DaemonStatus, EnvironmentView
from iceserv.daemon.sandbox import RunAs, can_chroot, child_environment, resolve_user
from iceserv.daemon.scheduler_link import determine_platform
from iceserv.daemon.server import Daemon
from iceserv.daemon.settings import ServerSettings

__all__ = [
    "Daemon",
    "DaemonControl",
    "DaemonStatus",
    "EnvironmentView",
    "RunAs",
    "ServerSettings",
    "can_chroot",
    "child_environment",
    "determine_platform",
    "resolve_user",
]
