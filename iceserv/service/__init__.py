"""Service integration: sd_notify, logging, and the reload/stop life cycle.

``notify`` speaks the sd_notify protocol (``sdnotify`` as transport) and
lists the variables compilers must not inherit; ``logging`` configures
structlog (console, journal or JSON; ``-l FILE`` that survives logrotate);
``lifecycle`` runs a service from ``READY=1`` to exit, answering SIGHUP and
SIGTERM.  This package must not import ``scheduler``, ``daemon``, ``telnet``
or ``config``: ``app`` adapts them to :class:`ManagedService`.
"""

from __future__ import annotations

from iceserv.hostfacts import MANAGER_VARIABLES
from iceserv.service.lifecycle import DEFAULT_GRACE, Lifecycle, ManagedService
from iceserv.service.logging import (
    AppendFileHandler,
    LogFormat,
    LogSetup,
    choose_format,
    configure_logging,
    level_for,
    render_journal,
)
from iceserv.service.notify import (
    Notifier,
    ServiceNotifier,
    Transport,
    child_environment,
    run_watchdog,
    scrub_environment,
)

__all__ = [
    "DEFAULT_GRACE",
    "MANAGER_VARIABLES",
    "AppendFileHandler",
    "Lifecycle",
    "LogFormat",
    "LogSetup",
    "ManagedService",
    "Notifier",
    "ServiceNotifier",
    "Transport",
    "child_environment",
    "choose_format",
    "configure_logging",
    "level_for",
    "render_journal",
    "run_watchdog",
    "scrub_environment",
]
