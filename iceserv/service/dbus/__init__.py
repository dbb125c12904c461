"""D-Bus control of the scheduler and the daemon (dbus-fast, system bus).

``facades`` declares, as ``typing.Protocol``, what the interfaces need from
the scheduler and the daemon; ``scheduler`` and ``daemon`` are the
``ServiceInterface`` classes (``org.icecream.Scheduler1``,
``org.icecream.Daemon1``); ``changes`` coalesces ``PropertiesChanged``;
``bus`` connects to the bus, exports an interface and owns its name, and
lets the service run on without D-Bus when there is none.  This package
must not import ``scheduler``, ``daemon``, ``config`` or ``telnet``: ``app``
passes the control objects in.  It is not imported by ``iceserv.service``
itself, so programs that do not use D-Bus never load dbus-fast.
"""

from iceserv.service.dbus.bus import DEFAULT_SYSTEM_BUS, BusExport, export_on_bus
from iceserv.service.dbus.changes import DEFAULT_INTERVAL, ChangeCoalescer
from iceserv.service.dbus.daemon import (
    CANNOT_APPLY_ERROR,
    DAEMON_INTERFACE,
    DAEMON_PATH,
    DAEMON_READ_METHODS,
    DaemonInterface,
)
from iceserv.service.dbus.facades import (
    ClusterListener,
    DaemonFacade,
    DaemonStatusLike,
    EnvironmentLike,
    HostLike,
    JobLike,
    SchedulerFacade,
)
from iceserv.service.dbus.scheduler import (
    SCHEDULER_INTERFACE,
    SCHEDULER_PATH,
    SCHEDULER_READ_METHODS,
    SchedulerInterface,
)

__all__ = [
    "CANNOT_APPLY_ERROR",
    "DAEMON_INTERFACE",
    "DAEMON_PATH",
    "DAEMON_READ_METHODS",
    "DEFAULT_INTERVAL",
    "DEFAULT_SYSTEM_BUS",
    "SCHEDULER_INTERFACE",
    "SCHEDULER_PATH",
    "SCHEDULER_READ_METHODS",
    "BusExport",
    "ChangeCoalescer",
    "ClusterListener",
    "DaemonFacade",
    "DaemonInterface",
    "DaemonStatusLike",
    "EnvironmentLike",
    "HostLike",
    "JobLike",
    "SchedulerFacade",
    "SchedulerInterface",
    "export_on_bus",
]
