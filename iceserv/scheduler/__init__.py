"""The icecream scheduler: pure core (state, placement, handlers), asyncio shell, control facade.

``state``, ``placement``, ``handlers``, ``monitoring``, ``effects`` and ``standby``
(which of several schedulers of one net name serves) are pure:
no asyncio, no logging, time and randomness injected.  ``server`` is the
asyncio shell, ``control`` the facade for the telnet interface and D-Bus,
``views`` the values that facade returns.  This package must not import
``daemon``, ``config``, ``service``, ``telnet`` or ``app``.
"""

from __future__ import annotations

from iceserv.scheduler.control import ClusterControl
from iceserv.scheduler.handlers import Scheduler, SchedulerConfig
from iceserv.scheduler.server import SchedulerServer, SchedulerServerSettings
from iceserv.scheduler.views import HostView, JobView

__all__ = [
    "ClusterControl",
    "HostView",
    "JobView",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerServer",
    "SchedulerServerSettings",
]
