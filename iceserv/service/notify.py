"""Readiness, status and watchdog messages to the service manager (``sd_notify``).

This module owns every message iceserv sends to systemd (or to OpenRC
0.62's ``notify=socket:ready``): ``READY=1`` once the listeners are bound,
``STATUS=`` when the status text changes, ``WATCHDOG=1`` every half
``WATCHDOG_USEC``, ``RELOADING=1`` with ``MONOTONIC_USEC`` in one datagram,
``STOPPING=1`` and ``EXTEND_TIMEOUT_USEC=``.  The ``sdnotify`` package is the
datagram transport; it swallows send errors, which is what a service wants
when the manager went away.  The module also owns the list of variables a
service manager hands us that spawned compilers must never inherit
(:func:`child_environment`).

It must not decide *when* the service is ready or stopping: ``app`` and
:mod:`iceserv.service.lifecycle` call these methods.  It reads the
environment only in :meth:`ServiceNotifier.from_environ`, once, at start-up
(services.md §4.1: read first, then remove).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Final, Protocol

import sdnotify

from iceserv.hostfacts import MANAGER_VARIABLES, without_manager_variables

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, MutableMapping

__all__ = [
    "Notifier",
    "ServiceNotifier",
    "Transport",
    "child_environment",
    "run_watchdog",
    "scrub_environment",
]

_USEC: Final = 1_000_000


class Transport(Protocol):
    """Sends one notification datagram (``sdnotify.SystemdNotifier`` or a test fake)."""

    def notify(self, state: str) -> None:
        """Send *state* (``KEY=VALUE`` lines) as one datagram; never raise."""
        ...


class Notifier(Protocol):
    """What the programs tell their service manager; the seam tests replace."""

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings, or None when no watchdog is armed."""
        ...

    def ready(self, status: str | None = None) -> None:
        """Send ``READY=1`` (with ``STATUS=`` when given)."""
        ...

    def status(self, text: str) -> None:
        """Send ``STATUS=text`` if it differs from the last status sent."""
        ...

    def reloading(self) -> None:
        """Send ``RELOADING=1`` and ``MONOTONIC_USEC=`` in one datagram."""
        ...

    def stopping(self, status: str | None = None) -> None:
        """Send ``STOPPING=1`` (with ``STATUS=`` when given)."""
        ...

    def extend_timeout(self, seconds: float) -> None:
        """Send ``EXTEND_TIMEOUT_USEC=``: the manager waits *seconds* more from now."""
        ...

    def watchdog(self) -> None:
        """Send ``WATCHDOG=1``."""
        ...


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of *environ* without the service manager's variables.

    Use it for every process the services spawn (compilers, helpers), so a
    compiler can neither notify systemd in our name nor believe it was
    socket-activated.
    """
    return without_manager_variables(environ)


def scrub_environment(environ: MutableMapping[str, str]) -> None:
    """Remove the service manager's variables from *environ* in place."""
    for name in MANAGER_VARIABLES:
        environ.pop(name, None)


def _usable_socket(address: str) -> bool:
    """``sdnotify`` speaks only to path (``/…``) and abstract (``@…``) sockets, not vsock."""
    return address.startswith(("/", "@"))


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """Return ``WATCHDOG_USEC`` when it is meant for *pid* (``WATCHDOG_PID`` unset or equal)."""
    text = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not text.isdigit() or int(text) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(text)


class _Silent:
    """The transport when there is no service manager: every message is dropped."""

    def notify(self, state: str) -> None:
        """Drop *state*."""


class ServiceNotifier:
    """Formats and sends the notifications; a no-op without a manager socket.

    *transport* sends datagrams (None: drop them).  *watchdog_usec* arms the
    watchdog (None: off).  *monotonic_ns* is the clock for ``MONOTONIC_USEC``
    (``CLOCK_MONOTONIC``, the clock systemd compares it with).
    """

    def __init__(
        self,
        transport: Transport | None = None,
        *,
        watchdog_usec: int | None = None,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._transport: Transport = _Silent() if transport is None else transport
        self._watchdog_usec = watchdog_usec
        self._monotonic_ns = monotonic_ns
        self._last_status: str | None = None
        self.enabled = transport is not None

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str], *, pid: int | None = None, debug: bool = False
    ) -> ServiceNotifier:
        """Build the notifier from the manager's variables, then remove them from *environ*.

        *environ* must be ``os.environ`` itself: ``sdnotify`` reads
        ``NOTIFY_SOCKET`` from the process environment when it is built,
        which happens here, before the variables are removed.  *debug* makes
        ``sdnotify`` raise instead of swallowing errors (tests only).
        """
        pid = os.getpid() if pid is None else pid
        address = environ.get("NOTIFY_SOCKET", "")
        watchdog = _watchdog_usec(environ, pid)
        transport: Transport | None = None
        if _usable_socket(address):
            transport = sdnotify.SystemdNotifier(debug=debug)
        scrub_environment(environ)
        return cls(transport, watchdog_usec=watchdog if transport is not None else None)

    # --- the messages -----------------------------------------------------------------

    @property
    def watchdog_interval(self) -> float | None:
        """Half of ``WATCHDOG_USEC`` in seconds, as sd_watchdog_enabled(3) recommends."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / _USEC / 2

    def _send(self, *lines: str) -> None:
        self._transport.notify("\n".join(lines))

    def _with_status(self, first: str, status: str | None) -> None:
        if status is None:
            self._send(first)
            return
        self._last_status = status
        self._send(first, f"STATUS={_one_line(status)}")

    def ready(self, status: str | None = None) -> None:
        """Send ``READY=1`` (and ``STATUS=``) in one datagram."""
        self._with_status("READY=1", status)

    def status(self, text: str) -> None:
        """Send ``STATUS=text`` unless it is the status last sent."""
        if text == self._last_status:
            return
        self._last_status = text
        self._send(f"STATUS={_one_line(text)}")

    def reloading(self) -> None:
        """Send ``RELOADING=1`` + ``MONOTONIC_USEC=`` (systemd >= 253 needs both together)."""
        usec = self._monotonic_ns() // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> None:
        """Send ``STOPPING=1`` (and ``STATUS=``) in one datagram."""
        self._with_status("STOPPING=1", status)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for *seconds* more before the manager's start/stop time-out fires."""
        self._send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * _USEC))}")

    def watchdog(self) -> None:
        """Send ``WATCHDOG=1``."""
        self._send("WATCHDOG=1")


def _one_line(text: str) -> str:
    """Join *text* into one line: a STATUS= value ends at the first newline of the datagram."""
    return " ".join(text.split("\n"))


async def run_watchdog(notifier: Notifier) -> None:
    """Ping the watchdog from the event loop until cancelled (returns at once if unarmed).

    It runs as a task on the service's own loop, so a wedged loop stops the
    pings and systemd restarts the service.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
