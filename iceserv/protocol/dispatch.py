"""Typed dispatch tables: from a message class to the handler of that message.

This module owns the one dispatch idiom of the services (STYLE.md convention
3): a :class:`Dispatch` maps each message class to a handler whose first
parameter has exactly that class, so a handler receives a ``Login``, not a
``Message`` it must cast or ``assert isinstance``.  The table checks the
class once, where it looks the handler up, and the type checker sees that
each handler fits its class when the table is built.  A message with no entry
is the peer's fault (:class:`~iceserv.errors.RemoteProtocolError`).

Pure: no I/O, no logging.  Messages are final classes (never subclassed), so
the lookup is by exact class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Concatenate, Generic, ParamSpec, TypeVar

from iceserv.errors import RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

    from iceserv.protocol.messages import Message

__all__ = ["Dispatch"]

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound="Message")


class Dispatch(Generic[P, R]):
    """A table from message class to ``handler(message, *args) -> R``.

    *where* names the table's peers in the error for an unexpected message
    ("unexpected STATS from a new peer").  Build it with :meth:`on`; call it
    with the message and the handler's other arguments.
    """

    __slots__ = ("_routes", "where")

    def __init__(self, where: str) -> None:
        self.where = where
        # Keyed by class; type[object] because Message is a union, not a base class.
        self._routes: dict[type[object], Callable[Concatenate[Message, P], R]] = {}

    def on(self, cls: type[M], handler: Callable[Concatenate[M, P], R]) -> Dispatch[P, R]:
        """Send messages of class *cls* to *handler*; return the table for chaining."""
        # Stored as it is: routes are looked up by type(msg), so the handler gets its class
        # (no wrapper to check it again: a scheduler dispatches thousands a second).
        self._routes[cls] = handler  # type: ignore[assignment]
        return self

    def __contains__(self, cls: object) -> bool:
        """Return whether the table has a handler for message class *cls*."""
        return cls in self._routes

    def __call__(self, msg: Message, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the handler of *msg*'s class; raise ``RemoteProtocolError`` if there is none."""
        route = self._routes.get(type(msg))
        if route is None:
            text = f"unexpected {msg.TYPE.name} from a {self.where}"
            raise RemoteProtocolError(text, msg_type=int(msg.TYPE))
        return route(msg, *args, **kwargs)
