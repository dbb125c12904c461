"""The compile daemon ``iceccd``: a pure core and the asyncio shell that carries it out.

``core`` is the daemon's state machine: every client's state, the slots,
environment transfers, compile jobs and the scheduler link's state, as
events in and :mod:`effects` out; it uses ``slots``, ``states``, ``load`` and
``natives`` (pure: slot order, client states and their end reports, STATS
figures, native environments ready, queued and being built).
``server`` is the asyncio shell (listeners, read loops, timers, carrying out
effects), configured by ``settings``; it runs compiles (``remote_job``,
``compile``: chroot'ed as the job user through ``_jobexec``, a fork server
that ``jobstarter`` talks to), environment installs (``env_transfer`` with
the ``_unpack`` helper; ``tarballs`` checks untrusted tarballs), native
environments (``native``: path checks, builds, the list kept across
restarts) and the scheduler connection's I/O
(``scheduler_link``); ``environments`` owns the env base dir, ``sandbox``
decides who runs jobs, ``metrics`` keeps the running totals of ``/metrics``
(fed by the shell), and ``control`` is the read-only facade.  This
package must not import ``scheduler``, ``config``, ``service``, ``telnet``
or ``app``.
"""

from __future__ import annotations

from iceserv.daemon.control import DaemonControl, DaemonStatus, EnvironmentView
from iceserv.daemon.jobstarter import JobStarter
from iceserv.daemon.sandbox import RunAs, can_chroot, child_environment, resolve_user
from iceserv.daemon.server import Daemon
from iceserv.daemon.settings import ServerSettings

__all__ = [
    "Daemon",
    "DaemonControl",
    "DaemonStatus",
    "EnvironmentView",
    "JobStarter",
    "RunAs",
    "ServerSettings",
    "can_chroot",
    "child_environment",
    "resolve_user",
]
