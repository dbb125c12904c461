"""The running ``iceccd`` as D-Bus sees it: the ``DaemonFacade`` of ``org.icecream.Daemon1``.

This module owns :class:`DaemonBusControl`, the adapter ``app`` hands to
:class:`~iceserv.service.dbus.DaemonInterface`.  It reads the daemon
through :class:`~iceserv.daemon.DaemonControl` and changes it the way a
configuration reload does (:meth:`~iceserv.app.daemon.DaemonService.apply_settings`),
or with the daemon's own drain switch.  It holds no daemon logic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import structlog

from iceserv.daemon import DaemonControl

if TYPE_CHECKING:
    from iceserv.config import DaemonSettings
    from iceserv.daemon import Daemon, DaemonStatus

__all__ = ["DaemonBusControl", "ReloadableDaemon"]

log = structlog.get_logger("iceserv.app.daemon")


class ReloadableDaemon(Protocol):
    """What the adapter needs of the running service (``app.daemon.DaemonService``).

    Declared here so that this module does not import ``app.daemon``, which
    imports this one.
    """

    daemon: Daemon
    settings: DaemonSettings

    async def apply_settings(self, new: DaemonSettings) -> None:
        """Apply *new* to the running daemon as a reload does."""
        ...


class DaemonBusControl:
    """The running daemon as :class:`~iceserv.service.dbus.DaemonFacade` sees it (D-Bus).

    ``SetMaxProcesses`` and ``SetAllowRemote`` change the loaded settings and
    apply them through ``DaemonService.apply_settings``, the reload path;
    the next reload or restart reads the configuration again.
    """

    def __init__(self, service: ReloadableDaemon) -> None:
        self._service = service

    def status(self) -> DaemonStatus:
        """Return the daemon's snapshot."""
        return DaemonControl(self._service.daemon).status()

    def max_processes(self) -> int:
        """Return the parallel jobs in force (``-m``)."""
        return self._service.daemon.settings.max_kids

    def jobs_running(self) -> int:
        """Return the remote compiles and installs running."""
        return self._service.daemon.in_flight

    def allow_remote(self) -> bool:
        """Return whether remote jobs are accepted now."""
        return self._service.daemon.settings.remote_allowed

    def draining(self) -> bool:
        """Return whether the daemon drains."""
        return self._service.daemon.draining

    async def set_max_processes(self, count: int, /) -> None:
        """Run *count* jobs in parallel, as a reload with ``max_processes = count`` would."""
        await self._change("max_processes", count)

    async def set_allow_remote(self, allow: bool, /) -> None:  # noqa: FBT001 - mirrors the setting
        """Accept remote jobs or not, as a reload with ``allow_remote`` would.

        Raises ``ValueError`` when remote jobs are wanted but chroot is impossible.
        """
        if allow and not self._service.daemon.settings.chroot_possible:
            msg = "Cannot use chroot, no remote jobs accepted"
            raise ValueError(msg)
        await self._change("allow_remote", allow)

    async def _change(self, name: str, value: object) -> None:
        new = self._service.settings.model_copy(update={name: value})
        await self._service.apply_settings(new)
        log.info("setting_changed", setting=name, value=value, source="D-Bus")

    def drain(self) -> None:
        """Take no new remote jobs (STATS report full load); running ones finish."""
        self._service.daemon.drain()
        log.info("daemon_draining", in_flight=self._service.daemon.in_flight)

    def resume(self) -> None:
        """Take remote jobs again."""
        self._service.daemon.resume()
        log.info("daemon_resumed")
