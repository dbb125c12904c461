"""The asyncio line server of the scheduler's telnet interface (reference §1.7, §6).

This module owns the sockets of the telnet port: it accepts a session, sends
the greeting at once (no delayed accept as in 1.4, reference §7.9), splits the
input with :class:`~iceserv.protocol.text.LineSplitter`, runs each line through
:func:`~iceserv.telnet.commands.run_command` and writes the answer.  What to
answer is decided in ``commands``; this module must not format command output
nor import ``iceserv.scheduler``.

Theory of operation: one task per session.  Every read waits at most until the
idle deadline (36 s after the last complete line, as 1.4's
``MAX_SCHEDULER_PING``), after which the session gets ``200 Good Bye!`` and is
closed.  Every write is followed by ``drain()`` bounded by the write time-out
(1.4 gives up on a send stalled for 30 s), so a peer that never reads is
dropped.  The line buffer is capped at *max_line* bytes: a longer line gets
``500 Line too long.`` and the session is closed.  Reads are at most
*read_size* bytes, so one read yields a bounded number of commands.  End of
input is treated as in 1.4: an unfinished last line is dropped and the peer
gets ``200 Good Bye!``.  A session that fails in any way is closed and logged;
it never stops the listener or other sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final, Self

import structlog

from iceserv.errors import RemoteProtocolError
from iceserv.protocol.text import MAX_LINE, LineSplitter, format_text
from iceserv.telnet.commands import GOODBYE, greeting, run_command

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from iceserv.telnet.facade import SchedulerControl

__all__ = [
    "IDLE_TIMEOUT",
    "LINE_TOO_LONG",
    "MAX_SESSIONS",
    "WRITE_TIMEOUT",
    "TelnetServer",
    "serve_telnet",
]

log = structlog.get_logger()

#: Seconds without a complete input line before a session is closed (1.4: 36 s).
IDLE_TIMEOUT: Final = 36.0
#: Seconds a write may wait for the peer to read before the session is dropped.
WRITE_TIMEOUT: Final = 30.0
#: Sessions served at once; further connections are closed at once.
MAX_SESSIONS: Final = 64
#: Sent, before closing, to a peer whose line exceeds the limit (1.4 has no limit).
LINE_TOO_LONG: Final = "500 Line too long."
_READ_SIZE: Final = 4096


class TelnetServer:
    """Serves the telnet interface of *control* on one listening socket.

    *idle_timeout*, *write_timeout* and *max_line* bound every session as the
    module docstring describes; *max_sessions* bounds how many run at once.
    Use :func:`serve_telnet`, or ``start()`` and ``close()`` (also as an async
    context manager).
    """

    def __init__(  # noqa: PLR0913 - every limit is keyword-only with the 1.4 default
        self,
        control: SchedulerControl,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_line: int = MAX_LINE,
        max_sessions: int = MAX_SESSIONS,
        read_size: int = _READ_SIZE,
    ) -> None:
        self._control = control
        self._idle_timeout = idle_timeout
        self._write_timeout = write_timeout
        self._max_line = max_line
        self._max_sessions = max_sessions
        self._read_size = read_size
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        """Bind *host*:*port* (0 picks a free port) and start accepting."""
        if self._server is not None:
            msg = "TelnetServer.start() called twice"
            raise RuntimeError(msg)
        self._server = await asyncio.start_server(
            self._on_connect, host, port, limit=self._max_line
        )
        log.info("telnet_listener_started", address=self.address)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on."""
        if self._server is None or not self._server.sockets:
            msg = "TelnetServer is not listening"
            raise RuntimeError(msg)
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def session_count(self) -> int:
        """Number of sessions being served now."""
        return len(self._sessions)

    async def close(self) -> None:
        """Stop accepting, end every session and wait (bounded) until they are gone."""
        if self._server is not None:
            self._server.close()
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        if sessions:
            async with asyncio.timeout(self._write_timeout):
                await asyncio.gather(*sessions, return_exceptions=True)
        if self._server is not None:
            async with asyncio.timeout(self._write_timeout):
                await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        """Return the server; it must already be started."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the server."""
        await self.close()

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own task rather than the one asyncio would make for a coroutine callback:
        # close() cancels it, and asyncio 3.11 logs the cancellation of its own as an error.
        peer = writer.get_extra_info("peername")
        if len(self._sessions) >= self._max_sessions:
            log.warning("telnet_session_refused", peer=peer, sessions=len(self._sessions))
            writer.transport.abort()
            return
        task = asyncio.create_task(self._run_session(reader, writer, peer))
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    async def _run_session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> None:
        log.info("telnet_session_opened", peer=peer)
        try:
            reason = await self._serve(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                log.info("telnet_session_closed", peer=peer, reason="server_closing")
                raise
            # Nobody cancelled us: the facade let a cancelled future's error escape.
            log.exception("telnet_session_failed", peer=peer)
        except (ConnectionError, TimeoutError) as exc:
            writer.transport.abort()
            log.info("telnet_session_closed", peer=peer, reason=type(exc).__name__)
        except Exception:  # a broken session must never stop the server
            writer.transport.abort()
            log.exception("telnet_session_failed", peer=peer)
        else:
            await self._close_gracefully(writer)
            log.info("telnet_session_closed", peer=peer, reason=reason)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Run one session; return why it ended."""
        loop = asyncio.get_running_loop()
        splitter = LineSplitter(self._max_line)
        await self._send(writer, greeting(self._control))
        deadline = loop.time() + self._idle_timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(self._read_size)
            except TimeoutError:
                await self._send(writer, [GOODBYE])
                return "idle"
            if not data:
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await self._send(writer, [GOODBYE])
                return "eof"
            try:
                lines = splitter.feed(data)
            except RemoteProtocolError:
                await self._send(writer, [LINE_TOO_LONG])
                return "line_too_long"
            for line in lines:
                deadline = loop.time() + self._idle_timeout
                reply = await run_command(self._control, line)
                await self._send(writer, reply.texts)
                if reply.close:
                    return "quit"

    async def _send(self, writer: asyncio.StreamWriter, texts: Iterable[str]) -> None:
        writer.write(b"".join(format_text(text) for text in texts))
        async with asyncio.timeout(self._write_timeout):
            await writer.drain()

    async def _close_gracefully(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            async with asyncio.timeout(self._write_timeout):
                await writer.wait_closed()
        except (ConnectionError, TimeoutError):
            writer.transport.abort()


async def serve_telnet(  # noqa: PLR0913 - the limits are keyword-only, as on TelnetServer
    control: SchedulerControl,
    host: str,
    port: int,
    *,
    idle_timeout: float = IDLE_TIMEOUT,
    write_timeout: float = WRITE_TIMEOUT,
    max_line: int = MAX_LINE,
    max_sessions: int = MAX_SESSIONS,
) -> TelnetServer:
    """Start serving *control*'s telnet interface on *host*:*port* and return the server."""
    server = TelnetServer(
        control,
        idle_timeout=idle_timeout,
        write_timeout=write_timeout,
        max_line=max_line,
        max_sessions=max_sessions,
    )
    await server.start(host, port)
    return server
