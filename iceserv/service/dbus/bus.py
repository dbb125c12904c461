"""Putting an interface on the bus, and running on without one.

This module owns :func:`export_on_bus`: connect to a bus address (the system
bus in production, a private ``dbus-daemon`` in tests), export one
``ServiceInterface`` at its object path and own its well-known name.  Many
build hosts run no D-Bus at all, so every way this can fail (no socket,
refused authentication, a policy that forbids owning the name, another
process owning it) ends in one warning line and ``None``: the service then
runs exactly as it would with D-Bus, only without this interface.  The same
goes for losing the bus later (one warning; no reconnect).

A full socket buffer is not a lost bus: dbus-fast 5 (as python-dbus-next,
its issue #153) tries to send a new message at once whenever its queue is
empty, also while an earlier, large message is still half written, and
takes the ``BlockingIOError`` of a full send buffer for a broken
connection: it closes the bus, and the name is gone.  A scheduler answering
``ListJobs`` at 20,000 queued jobs (a 2 MB reply) while it emits
``JobStarted`` signals hit exactly this (issue 19 item 4).  So
:func:`export_on_bus` gives dbus-fast's writer a socket whose ``send``
returns 0 ("nothing taken, wait until writable") instead of raising
(:class:`_WaitWhenFull`).

It must not know which interface it exports, nor read the environment: the
caller passes the address (``app`` honours ``DBUS_SYSTEM_BUS_ADDRESS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol, cast, runtime_checkable

import structlog
from dbus_fast import BusType, DBusError, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, InvalidAddressError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from dbus_fast import Message
    from dbus_fast.service import ServiceInterface

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_SYSTEM_BUS",
    "AnswersDirectly",
    "BusExport",
    "export_on_bus",
    "wait_when_full",
]

log = structlog.get_logger()

#: The system bus socket (freedesktop default; /var/run is a link to /run).
DEFAULT_SYSTEM_BUS: Final = "unix:path=/run/dbus/system_bus_socket"
#: Seconds for connecting, authenticating and owning the name: the bus is local.
CONNECT_TIMEOUT: Final = 5.0
#: The bus socket's send buffer asked for (Linux caps it at net.core.wmem_max, then doubles).
_SEND_BUFFER: Final = 1 << 22
_OWNED: Final = (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER)


@dataclass(eq=False)
class BusExport:
    """An interface exported on a bus under its well-known name."""

    bus: MessageBus
    name: str
    path: str
    closing: bool = False
    _watch: asyncio.Task[None] | None = field(default=None, repr=False)

    def watch(self) -> None:
        """Log once if the bus goes away before :meth:`close` (e.g. dbus was restarted)."""
        self._watch = asyncio.get_running_loop().create_task(self._watch_disconnect())

    async def close(self) -> None:
        """Release the name and disconnect (a lost bus is fine)."""
        self.closing = True
        if self.bus.connected:
            with contextlib.suppress(DBusError, OSError, TimeoutError, EOFError):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await self.bus.release_name(self.name)
        self.bus.disconnect()
        if self._watch is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await self._watch

    async def _watch_disconnect(self) -> None:
        reason = "disconnected"
        try:
            await _disconnected(self.bus)
        except Exception as exc:  # noqa: BLE001 - any reason is only logged
            reason = str(exc) or type(exc).__name__
        if not self.closing:
            log.warning(
                "dbus_disconnected",
                name=self.name,
                reason=reason,
                consequence="running without D-Bus",
            )


async def export_on_bus(
    address: str,
    name: str,
    path: str,
    interface: ServiceInterface,
) -> BusExport | None:
    """Export *interface* at *path* on the bus at *address* and own *name*.

    Returns ``None`` after one ``dbus_unavailable`` warning when that is not
    possible; the caller goes on without D-Bus.
    """
    try:
        bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await bus.connect()
    except (OSError, TimeoutError, AuthError, InvalidAddressError, EOFError) as exc:
        _unavailable(name, address, exc)
        return None
    wait_when_full(bus)
    bus.export(path, interface)
    if isinstance(interface, AnswersDirectly):
        answering = interface
        bus.add_message_handler(lambda call: answering.answer_directly(bus, path, call))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reply = await bus.request_name(name, NameFlag.DO_NOT_QUEUE)
    except (DBusError, OSError, TimeoutError, EOFError) as exc:
        bus.disconnect()
        _unavailable(name, address, exc)
        return None
    if reply not in _OWNED:
        bus.disconnect()
        _unavailable(name, address, f"the name is owned by another process ({reply.name})")
        return None
    log.info("dbus_name_acquired", name=name, path=path, address=address)
    export = BusExport(bus, name, path)
    export.watch()
    return export


@runtime_checkable
class AnswersDirectly(Protocol):
    """An interface that answers some calls itself, before dbus-fast's dispatch.

    ``answer_directly`` sends the reply to *call* (at the interface's *path*)
    on *bus* and returns True, or returns False to leave the call to
    dbus-fast (e.g. a reply it marshals piece by piece: :mod:`.wire`).
    """

    def answer_directly(self, bus: MessageBus, path: str, call: Message) -> bool:
        """Answer *call* and return True, or return False."""


class _WaitWhenFull:
    """The bus socket as dbus-fast's writer uses it: a full send buffer takes 0 bytes.

    dbus-fast's writer keeps the unsent rest of a message and waits for the
    socket to become writable whenever ``send`` takes less than offered; only
    a raised error makes it close the bus.  Every other attribute is the
    socket's own.
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: bytes | memoryview, flags: int = 0, /) -> int:
        """Send what the kernel takes now; 0 when its buffer is full."""
        try:
            return self._sock.send(data, flags)
        except BlockingIOError:
            return 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def wait_when_full(bus: MessageBus) -> None:
    """Make *bus* (connected) wait on a full send buffer instead of disconnecting.

    The send buffer is also made large (:data:`_SEND_BUFFER`, as far as the
    system allows): a multi-megabyte reply then goes to the kernel in one
    write instead of one socket buffer per event-loop iteration, each of
    which waits for everything else the service does (issue 19 item 4).
    """
    writer = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # a smaller buffer only costs time
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        writer.sock = _WaitWhenFull(sock)  # type: ignore[union-attr]


def _disconnected(bus: MessageBus) -> Awaitable[None]:
    """Return ``bus.wait_for_disconnect()`` (dbus-fast leaves it unannotated)."""
    wait = cast("Callable[[], Awaitable[None]]", bus.wait_for_disconnect)
    return wait()


def _unavailable(name: str, address: str, reason: object) -> None:
    text = reason.text if isinstance(reason, DBusError) else str(reason) or type(reason).__name__
    log.warning(
        "dbus_unavailable",
        name=name,
        address=address,
        reason=text,
        consequence="running without D-Bus",
    )
