"""The compile daemon on D-Bus: ``org.icecream.Daemon1`` at ``/org/icecream/Daemon1``.

This module owns :class:`DaemonInterface`, the dbus-fast ``ServiceInterface``
over a :class:`~iceserv.service.dbus.facades.DaemonFacade`: read-only
properties (slots, jobs, scheduler connection, load, cache, remote jobs,
draining), ``ListEnvironments``, and the methods ``SetMaxProcesses``,
``SetAllowRemote`` (both through the configuration-reload path in ``app``),
``Drain`` and ``Resume``.  A daemon's numbers change with every job and
every load sample and it has no event stream, so the interface samples them
every *poll* seconds and after each method call, and announces what changed
with a coalesced ``PropertiesChanged``.  Who may call what is the bus
policy's job.

Member names and signatures are the ``Daemon1`` API: add members, never
change one.  No ``from __future__ import annotations`` (dbus-fast reads the
signatures from the annotations).
"""

import asyncio
import contextlib
from typing import Annotated, Any, Final

from dbus_fast import DBusError, ErrorType, PropertyAccess
from dbus_fast.annotations import (
    DBusBool,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from iceserv.service.dbus.changes import DEFAULT_INTERVAL, ChangeCoalescer, declare_emits_changed
from iceserv.service.dbus.facades import DaemonFacade

__all__ = [
    "CANNOT_APPLY_ERROR",
    "DAEMON_INTERFACE",
    "DAEMON_PATH",
    "DAEMON_READ_METHODS",
    "DEFAULT_POLL",
    "DaemonInterface",
]

#: Bus name and interface name (the same string), and the object path.
DAEMON_INTERFACE: Final = "org.icecream.Daemon1"
DAEMON_PATH: Final = "/org/icecream/Daemon1"
#: The methods everyone may call (the bus policy allows these; the rest need root/the group).
DAEMON_READ_METHODS: Final = ("ListEnvironments",)
#: A setting could not be applied (e.g. the port cannot be bound, no chroot for remote jobs).
CANNOT_APPLY_ERROR: Final = f"{DAEMON_INTERFACE}.Error.CannotApply"
#: Seconds between samples of the daemon's numbers for PropertiesChanged.
DEFAULT_POLL: Final = 1.0

#: (key, size in bytes, idle seconds, jobs using it, native)
EnvironmentStruct = tuple[str, int, int, int, bool]
_Environments = Annotated[list[EnvironmentStruct], DBusSignature("a(stuub)")]


class DaemonInterface(ServiceInterface):
    """``org.icecream.Daemon1`` over *control*.

    *version* is the program version for ``Version``.  :meth:`attach` starts
    sampling for ``PropertiesChanged`` (every *poll* seconds, at most every
    *interval* seconds a signal); :meth:`detach` stops it.
    """

    def __init__(
        self,
        control: DaemonFacade,
        *,
        version: str,
        poll: float = DEFAULT_POLL,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        super().__init__(DAEMON_INTERFACE)
        self._control = control
        self._version = version
        self._poll = poll
        self._changes = ChangeCoalescer(
            self._snapshot, self.emit_properties_changed, interval=interval
        )
        self._sampler: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """Start sampling the daemon for ``PropertiesChanged``."""
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample())

    async def detach(self) -> None:
        """Stop sampling and drop a pending ``PropertiesChanged``."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        self._changes.close()

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            self._changes.poke()

    def _snapshot(self) -> dict[str, Any]:
        control = self._control
        status = control.status()
        return {
            "MaxProcesses": control.max_processes(),
            "SlotsUsed": status.slots_used,
            "JobsRunning": control.jobs_running(),
            "JobsWaiting": status.waiting,
            "Clients": status.clients,
            "Scheduler": status.scheduler or "",
            "SchedulerState": status.scheduler_state,
            "Load": max(0, status.load),
            "AllowRemote": control.allow_remote(),
            "Draining": control.draining(),
            "EnvironmentCount": len(status.environments),
            "CacheSize": status.cache_size,
        }

    # --- properties -------------------------------------------------------------------

    @dbus_property(PropertyAccess.READ, name="Version")
    def version(self) -> DBusStr:
        """Return the program version."""
        return self._version

    @dbus_property(PropertyAccess.READ, name="MaxProcesses")
    def max_processes(self) -> DBusUInt32:
        """Return the number of parallel jobs (``-m``; 0: no remote jobs, one local slot)."""
        return self._control.max_processes()

    @dbus_property(PropertyAccess.READ, name="SlotsUsed")
    def slots_used(self) -> DBusUInt32:
        """Return the slots in use by remote compiles, installs and local jobs."""
        return self._control.status().slots_used

    @dbus_property(PropertyAccess.READ, name="JobsRunning")
    def jobs_running(self) -> DBusUInt32:
        """Return the remote compiles and environment installs running."""
        return self._control.jobs_running()

    @dbus_property(PropertyAccess.READ, name="JobsWaiting")
    def jobs_waiting(self) -> DBusUInt32:
        """Return the clients waiting for a slot."""
        return self._control.status().waiting

    @dbus_property(PropertyAccess.READ, name="Clients")
    def clients(self) -> DBusUInt32:
        """Return the connected clients (local compilers and remote jobs)."""
        return self._control.status().clients

    @dbus_property(PropertyAccess.READ, name="Scheduler")
    def scheduler(self) -> DBusStr:
        """Return ``host:port`` of the scheduler while logged in, else ``""``."""
        return self._control.status().scheduler or ""

    @dbus_property(PropertyAccess.READ, name="SchedulerState")
    def scheduler_state(self) -> DBusStr:
        """Return what the scheduler link does: ``logged in``, ``discovering`` ..."""
        return self._control.status().scheduler_state

    @dbus_property(PropertyAccess.READ, name="Load")
    def load(self) -> DBusUInt32:
        """Return the load last computed for STATS (0..1000; 1000 reported while draining)."""
        return max(0, self._control.status().load)

    @dbus_property(PropertyAccess.READ, name="AllowRemote")
    def allow_remote(self) -> DBusBool:
        """Return whether remote jobs are accepted."""
        return self._control.allow_remote()

    @dbus_property(PropertyAccess.READ, name="Draining")
    def draining(self) -> DBusBool:
        """Return whether the daemon is draining (``Drain``)."""
        return self._control.draining()

    @dbus_property(PropertyAccess.READ, name="EnvironmentCount")
    def environment_count(self) -> DBusUInt32:
        """Return the number of cached environments."""
        return len(self._control.status().environments)

    @dbus_property(PropertyAccess.READ, name="CacheSize")
    def cache_size(self) -> DBusUInt64:
        """Return the bytes of cached environments on disk."""
        return self._control.status().cache_size

    # --- methods ----------------------------------------------------------------------

    @dbus_method(name="ListEnvironments")
    def list_environments(self) -> _Environments:
        """Return the cached environments (see ``EnvironmentStruct``)."""
        return [
            (env.key, env.size, max(0, env.idle_seconds), env.in_use, env.native)
            for env in self._control.status().environments
        ]

    @dbus_method(name="SetMaxProcesses")
    async def set_max_processes(self, count: DBusUInt32) -> None:
        """Run *count* jobs in parallel from now on, as if the configuration said so."""
        try:
            await self._control.set_max_processes(count)
        except ValueError as exc:
            raise DBusError(ErrorType.INVALID_ARGS, str(exc)) from exc
        except OSError as exc:
            raise DBusError(CANNOT_APPLY_ERROR, str(exc)) from exc
        self._changes.poke()

    @dbus_method(name="SetAllowRemote")
    async def set_allow_remote(self, allow: DBusBool) -> None:
        """Accept remote jobs or not from now on, as if the configuration said so."""
        try:
            await self._control.set_allow_remote(allow)
        except (ValueError, OSError) as exc:
            raise DBusError(CANNOT_APPLY_ERROR, str(exc)) from exc
        self._changes.poke()

    @dbus_method(name="Drain")
    def drain(self) -> None:
        """Take no new remote jobs; running ones finish, local clients are served."""
        self._control.drain()
        self._changes.poke()

    @dbus_method(name="Resume")
    def resume(self) -> None:
        """Take remote jobs again."""
        self._control.resume()
        self._changes.poke()


declare_emits_changed(DaemonInterface.version.introspection, "const")
