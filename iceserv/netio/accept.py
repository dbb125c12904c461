"""A listening socket's accept loop that survives running out of descriptors.

asyncio 3.11's own accept loop (``BaseSelectorEventLoop._accept_connection``)
keeps calling ``accept()`` after ``EMFILE`` for the rest of its backlog of
1,024, logs a traceback each time and schedules a retry for each, so a
process out of descriptors spins a core and writes megabytes of log per
second.  :class:`Listener` owns the accept loop instead.

Theory of operation: the listening socket is non-blocking and watched with
``loop.add_reader``.  When it is readable, up to *batch* (16) connections are
accepted and handed to *on_accept* (which owns them from then on); a small
batch bounds how many sockets a caller that evicts older connections (whose
close completes on the next loop iteration) can hold beyond its budget.  On
``EMFILE``, ``ENFILE``, ``ENOBUFS`` or ``ENOMEM`` the reader is removed and
put back after a delay that doubles from *min_delay* to *max_delay*; the
connections wait in the kernel's backlog meanwhile.  The first pause logs
``accept_paused`` (no traceback); further failures are counted and logged
at most once per *log_interval*; the first accept after a pause logs
``accept_resumed`` with the count (also at most once per *log_interval*).
Any other ``accept()`` error is treated the same way, so no error can make
the loop spin.

:func:`open_stream` wraps an accepted socket in asyncio streams, as
``asyncio.start_server`` would.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from typing import TYPE_CHECKING, Final

import structlog

from iceserv.netio.addresses import sockaddr_host_port

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Listener", "bind_tcp", "open_stream"]

log = structlog.get_logger()

#: accept() errors that mean "out of descriptors or kernel memory, try later".
_RESOURCE_ERRORS: Final = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


def bind_tcp(host: str, port: int, *, backlog: int = 1024) -> socket.socket:
    """Return a non-blocking TCP socket listening on *host*:*port* (0: a free port).

    ``SO_REUSEADDR`` is set, as ``asyncio.start_server`` does on POSIX.
    Raises ``OSError`` when the address cannot be bound.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)  # noqa: FBT003 - the socket API's spelling
    except OSError:
        sock.close()
        raise
    return sock


async def open_stream(
    sock: socket.socket, *, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Wrap the accepted, connected *sock* in a reader (buffer *limit*) and a writer."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=sock)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class Listener:
    """Runs the accept loop of one listening socket (see the module docstring).

    *on_accept* gets each connected socket (non-blocking) and its peer
    address; it must not raise.  *name* labels the log records.
    """

    def __init__(  # noqa: PLR0913 - every knob is keyword-only with a default
        self,
        sock: socket.socket,
        on_accept: Callable[[socket.socket, tuple[str, int]], None],
        *,
        name: str,
        batch: int = 16,
        min_delay: float = 0.05,
        max_delay: float = 2.0,
        log_interval: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sock = sock
        self._on_accept = on_accept
        self._name = name
        self._batch = batch
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._log_interval = log_interval
        self._monotonic = monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._delay = 0.0
        self._failures = 0
        self._unlogged = 0
        self._logged_at = -float("inf")
        self._resumed_at = -float("inf")
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the socket listens on (``::`` for a dual-stack wildcard)."""
        return sockaddr_host_port(self.sock.getsockname())

    @property
    def paused(self) -> bool:
        """True while accepting is paused after an error."""
        return self._retry is not None

    @property
    def failures(self) -> int:
        """accept() errors since the last successful accept."""
        return self._failures

    def start(self) -> None:
        """Start accepting on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        """Stop accepting and close the listening socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        elif self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        for _ in range(self._batch):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the peer gave up while in the backlog
            except OSError as exc:
                self._pause(exc)
                return
            if self._failures:
                now = self._monotonic()
                if now - self._resumed_at >= self._log_interval:
                    self._resumed_at = now
                    log.info("accept_resumed", listener=self._name, failures=self._failures)
                self._failures = 0
                self._delay = 0.0
            conn.setblocking(False)  # noqa: FBT003 - the socket API's spelling
            if isinstance(address, tuple):
                self._on_accept(conn, sockaddr_host_port(address))
            else:  # a Unix socket: the peer has no address (the daemon's local clients)
                self._on_accept(conn, (str(address or ""), 0))

    def _pause(self, exc: OSError) -> None:
        assert self._loop is not None  # noqa: S101 - only called from the loop's reader
        self._loop.remove_reader(self.sock.fileno())
        self._delay = min(self._max_delay, max(self._min_delay, self._delay * 2))
        self._failures += 1
        self._unlogged += 1
        now = self._monotonic()
        if now - self._logged_at >= self._log_interval:
            self._logged_at = now
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            event = "accept_paused" if exc.errno in _RESOURCE_ERRORS else "accept_failed"
            log.warning(
                event,
                listener=self._name,
                error=code,
                failures=self._unlogged,
                retry_in=self._delay,
            )
            self._unlogged = 0
        self._retry = self._loop.call_later(self._delay, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed and self._loop is not None:
            self._loop.add_reader(self.sock.fileno(), self._readable)
