"""The service life cycle: ready, status, reload on SIGHUP, graceful stop on SIGTERM.

This module owns the order of events of a running service and what the
service manager hears about them (STYLE rule 11, services.md §4.2):

Theory of operation.  ``app`` starts the listeners, then calls
:meth:`Lifecycle.run`, which sends ``READY=1`` with the first status and
then waits for a request:

* **SIGHUP** (reload): ``RELOADING=1`` + ``MONOTONIC_USEC``, then the
  service re-reads every configuration source and applies what changed
  without dropping connections or jobs (:meth:`ManagedService.reload`).  An
  invalid configuration raises :class:`~iceserv.errors.ConfigError`: one
  ``reload_failed`` event carries its ``path:line`` lines and the old
  configuration stays.  Either way ``READY=1`` follows.  Signals arriving
  during a reload are coalesced into one more reload.
* **SIGTERM or SIGINT** (stop): ``STOPPING=1``, the service stops accepting
  work (the daemon tells the scheduler it leaves), running jobs get the
  grace period to finish while ``EXTEND_TIMEOUT_USEC`` keeps systemd's stop
  time-out ahead of us, then whatever is left is cancelled and
  :meth:`run` returns 0.  A second SIGTERM during the grace period cancels
  at once.

While running, the status text is polled every *status_interval* seconds
and sent when it changed, and the watchdog is pinged from this loop.

It knows the scheduler and the daemon only through the
:class:`ManagedService` protocol that ``app`` implements; it must not
import them, ``config`` or ``telnet``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from iceserv.errors import ConfigError
from iceserv.service.notify import run_watchdog

if TYPE_CHECKING:
    from collections.abc import Sequence

    from iceserv.service.notify import Notifier

__all__ = ["DEFAULT_GRACE", "Lifecycle", "ManagedService", "daemonize"]

log = structlog.get_logger()

#: Seconds running jobs get to finish after SIGTERM unless configured otherwise.
DEFAULT_GRACE: Final = 60.0
#: How often EXTEND_TIMEOUT_USEC is renewed while draining, and the slack added to it.
_EXTEND_EVERY: Final = 5.0
_EXTEND_SLACK: Final = 10.0


class ManagedService(Protocol):
    """What the life cycle drives; ``app`` adapts the scheduler and the daemon to it."""

    def status(self) -> str:
        """Return the one-line status for ``STATUS=`` (e.g. ``2/8 slots, scheduler …``)."""
        ...

    async def reload(self) -> Sequence[str]:
        """Re-read every configuration source and apply it; return the changed settings.

        Raises :class:`~iceserv.errors.ConfigError` (nothing applied) when
        the new configuration is invalid, ``OSError`` when applying failed.
        """
        ...

    async def stop_accepting(self) -> None:
        """Stop taking new work: close listeners, tell peers we are leaving."""
        ...

    def in_flight(self) -> int:
        """Return the number of jobs still running."""
        ...

    async def wait_idle(self) -> None:
        """Return once :meth:`in_flight` is 0."""
        ...

    async def close(self) -> None:
        """Cancel what is left and close every connection."""
        ...


class Lifecycle:
    """Runs one service from READY=1 to exit, answering SIGHUP and SIGTERM.

    *grace* is the stop grace period in seconds; *status_interval* how often
    the status text is checked for changes.
    """

    def __init__(
        self,
        service: ManagedService,
        notifier: Notifier,
        *,
        grace: float = DEFAULT_GRACE,
        status_interval: float = 1.0,
    ) -> None:
        self._service = service
        self._notifier = notifier
        self.grace = grace
        self._status_interval = status_interval
        self._wake = asyncio.Event()
        self._reload_wanted = False
        self._stop_wanted = False
        self._force = asyncio.Event()
        self._signals: list[int] = []

    # --- requests (signal handlers call these) ----------------------------------------

    def request_reload(self) -> None:
        """Ask for a reload (SIGHUP); ignored once stopping."""
        if not self._stop_wanted:
            self._reload_wanted = True
            self._wake.set()

    def request_stop(self) -> None:
        """Ask for a graceful stop (SIGTERM); a second request cancels the remaining jobs."""
        if self._stop_wanted:
            self._force.set()
            log.warning("stop_forced", in_flight=self._service.in_flight())
            return
        self._stop_wanted = True
        self._wake.set()

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """Route SIGHUP to :meth:`request_reload`, SIGTERM and SIGINT to :meth:`request_stop`."""
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        self._signals = [signal.SIGHUP, signal.SIGTERM, signal.SIGINT]

    def remove_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """Undo :meth:`install_signal_handlers`."""
        for signum in self._signals:
            loop.remove_signal_handler(signum)
        self._signals = []

    # --- the run ----------------------------------------------------------------------

    async def run(self) -> int:
        """Send READY=1, serve requests until a stop, drain, close; return the exit code (0)."""
        self._notifier.ready(self._service.status())
        log.info("service_ready", status=self._service.status())
        helpers = [
            asyncio.create_task(run_watchdog(self._notifier), name="watchdog"),
            asyncio.create_task(self._report_status(), name="status"),
        ]
        try:
            while not self._stop_wanted:
                await self._wake.wait()
                self._wake.clear()
                while self._reload_wanted and not self._stop_wanted:
                    self._reload_wanted = False
                    await self._reload()
            return await self._stop()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(self._status_interval)
            self._notifier.status(self._service.status())

    async def _reload(self) -> None:
        self._notifier.reloading()
        log.info("reload_started")
        try:
            changed = await self._service.reload()
        except ConfigError as exc:
            log.error("reload_failed", error="; ".join(exc.details), kept="previous configuration")  # noqa: TRY400 - a config error needs no traceback
        except OSError as exc:
            log.error("reload_failed", error=str(exc), kept="previous configuration")  # noqa: TRY400
        else:
            log.info("config_reloaded", changed=list(changed))
        self._notifier.ready(self._service.status())

    async def _stop(self) -> int:
        service = self._service
        log.info("stop_requested", in_flight=service.in_flight(), grace=self.grace)
        self._notifier.stopping(f"stopping, {service.in_flight()} jobs running")
        await service.stop_accepting()
        await self._drain()
        left = service.in_flight()
        if left:
            reason = "second signal" if self._force.is_set() else "grace period over"
            log.warning("jobs_cancelled", count=left, reason=reason)
        await service.close()
        log.info("service_stopped", cancelled=left)
        return 0

    async def _drain(self) -> None:
        """Wait for running jobs until the grace period ends or a second signal comes."""
        service = self._service
        if not service.in_flight():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        idle = asyncio.create_task(service.wait_idle(), name="wait-idle")
        forced = asyncio.create_task(self._force.wait(), name="forced")
        try:
            while not idle.done() and not forced.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                step = min(_EXTEND_EVERY, remaining)
                self._notifier.extend_timeout(step + _EXTEND_SLACK)
                self._notifier.status(
                    f"stopping, {service.in_flight()} jobs running, {remaining:.0f} s left"
                )
                await asyncio.wait(
                    {idle, forced}, timeout=step, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            for task in (idle, forced):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(idle, forced, return_exceptions=True)


def daemonize() -> bool:
    """Detach like 1.4's ``-d``; return True in the process that must exit."""
    if os.fork():
        return True
    os.setsid()
    if os.fork():
        os._exit(0)
    with Path(os.devnull).open("r+b") as null:
        for fd in (0, 1, 2):
            os.dup2(null.fileno(), fd)
    return False
