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

Budgets: at most *max_sessions* sessions, and *max_sessions_per_host* from
one source host (:func:`~iceserv.netio.host_key`).  When a new connection
does not fit, the idle session (one waiting for input, not running a
command) whose last complete line is oldest makes room: of the same host
when that host is full, of anyone when the port is full.  It gets
``200 Good Bye!`` and is closed.  So sessions that send an empty line every
20 s cannot lock the port out, as they could with a plain limit; 1.4 has no
limit at all.  Only when every session is busy is the new connection
reset.  Accepting runs on :class:`~iceserv.netio.Listener`, which pauses
with back-off when descriptors run out.

Control (issue 14 item 5): *control_policy* says who may run the commands
that change the scheduler (:data:`~iceserv.telnet.commands.MUTATING`).
Under ``local`` the first such command of a session asks whether the peer is
this host (loopback, or one of *own_addresses()*, read then: addresses
change); the answer holds for the session.  A refused command gets one
``403`` line and ``200 done`` (the session goes on) and one
``telnet_command_refused`` log line.  Read-only commands never ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self

import structlog

from iceserv.errors import RemoteProtocolError
from iceserv.hostfacts import local_addresses
from iceserv.netio import (
    Admission,
    ConnectionBudget,
    Family,
    Listener,
    Throttle,
    bind_listeners,
    host_key,
    host_port,
    is_own_host,
)
from iceserv.netio import open_stream as _open_stream
from iceserv.protocol.text import MAX_LINE, LineSplitter, format_text
from iceserv.telnet.commands import (
    GOODBYE,
    MUTATING,
    JobLines,
    TelnetControl,
    greeting,
    parse,
    run_command,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Sequence
    from types import TracebackType

    from iceserv.telnet.facade import SchedulerControl

__all__ = [
    "IDLE_TIMEOUT",
    "LINE_TOO_LONG",
    "MAX_SESSIONS",
    "MAX_SESSIONS_PER_HOST",
    "WRITE_TIMEOUT",
    "TelnetServer",
    "serve_telnet",
]

log = structlog.get_logger()

#: Seconds without a complete input line before a session is closed (1.4: 36 s).
IDLE_TIMEOUT: Final = 36.0
#: Seconds a write may wait for the peer to read before the session is dropped.
WRITE_TIMEOUT: Final = 30.0
#: Sessions served at once; beyond it the oldest idle session makes room.
MAX_SESSIONS: Final = 64
#: Sessions served at once for one source host (an IPv4 address or an IPv6 /64).
MAX_SESSIONS_PER_HOST: Final = 16
#: Sent, before closing, to a peer whose line exceeds the limit (1.4 has no limit).
LINE_TOO_LONG: Final = "500 Line too long."
_READ_SIZE: Final = 4096
_REFUSAL_LOG_INTERVAL: Final = 10.0
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


@dataclass(eq=False)
class _Session:
    """One session's bookkeeping: who, and since when idle (loop time of its last line).

    ``busy`` is set while a command runs and its answer is written; a new
    session sending its greeting counts as idle.
    """

    key: str
    peer: object
    sock: socket.socket
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    last_line: float = 0.0
    busy: bool = False
    started: bool = False
    evicted: bool = False
    released: bool = False
    may_change: bool | None = None  # asked at the first changing command


class TelnetServer:
    """Serves the telnet interface of *control* on one listening socket.

    *idle_timeout*, *write_timeout* and *max_line* bound every session as the
    module docstring describes; *max_sessions* and *max_sessions_per_host*
    bound how many run at once; *control_policy* and *own_addresses* decide who
    may change the scheduler (the module docstring).
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
        max_sessions_per_host: int = MAX_SESSIONS_PER_HOST,
        read_size: int = _READ_SIZE,
        control_policy: TelnetControl = TelnetControl.ANY,
        own_addresses: Callable[[], Collection[str]] = local_addresses,
    ) -> None:
        self._control = control
        self._policy = control_policy
        self._own_addresses = own_addresses
        self._idle_timeout = idle_timeout
        self._write_timeout = write_timeout
        self._max_line = max_line
        self._budget = ConnectionBudget(total=max_sessions, per_host=max_sessions_per_host)
        self._read_size = read_size
        self._listeners: list[Listener] = []
        self._sessions: dict[asyncio.Task[None], _Session] = {}
        self._refusals = Throttle(_REFUSAL_LOG_INTERVAL)
        self._job_lines = JobLines()

    async def start(
        self, host: str | Sequence[str], port: int, *, family: str = Family.ANY
    ) -> None:
        """Bind *host* (or each of several; ``""``: every address) on *port* and start accepting.

        Port 0 picks a free port; *family* restricts the address families
        (:func:`~iceserv.netio.bind_listeners`).
        """
        if self._listeners:
            msg = "TelnetServer.start() called twice"
            raise RuntimeError(msg)
        hosts = [host] if isinstance(host, str) else list(host)
        socks = bind_listeners(hosts, port, family=family, backlog=128)
        self._listeners = [Listener(sock, self._on_connect, name="telnet") for sock in socks]
        for listener in self._listeners:
            listener.start()
        log.info(
            "telnet_listener_started",
            address=[host_port(*listener.address) for listener in self._listeners],
        )

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) of the first listening socket."""
        if not self._listeners:
            msg = "TelnetServer is not listening"
            raise RuntimeError(msg)
        return self._listeners[0].address

    @property
    def session_count(self) -> int:
        """Number of sessions being served now."""
        return len(self._sessions)

    async def close(self) -> None:
        """Stop accepting, end every session and wait (bounded) until they are gone."""
        for listener in self._listeners:
            listener.close()
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        if sessions:
            async with asyncio.timeout(self._write_timeout):
                await asyncio.gather(*sessions, return_exceptions=True)

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

    def _on_connect(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Admit a connection, making room if needed (the listener's callback)."""
        key = host_key(address[0])
        answer = self._budget.admit(key)
        if answer is not Admission.ADMITTED and self._evict(key, answer):
            answer = self._budget.admit(key)
        if answer is not Admission.ADMITTED:
            count = self._refusals.note(time.monotonic())
            if count:
                log.warning(
                    "telnet_session_refused",
                    peer=address,
                    reason=answer.value,
                    sessions=len(self._sessions),
                    refusals=count,
                )
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()
            return
        # Our own task rather than the one asyncio would make for a coroutine callback:
        # close() cancels it, and asyncio 3.11 logs the cancellation of its own as an error.
        session = _Session(key, address, sock, last_line=asyncio.get_running_loop().time())
        task = asyncio.get_running_loop().create_task(self._run_session(sock, session))
        session.task = task
        self._sessions[task] = session
        task.add_done_callback(self._session_done)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        session = self._sessions.pop(task, None)
        if session is not None:
            self._release(session)

    def _release(self, session: _Session) -> None:
        if not session.released:
            session.released = True
            self._budget.release(session.key)

    def _evict(self, key: str, answer: Admission) -> bool:
        """End the oldest idle session (of *key* when that host is full); False if none."""
        candidates = [
            session
            for session in self._sessions.values()
            if not session.busy
            and not session.evicted
            and (answer is Admission.TOTAL_FULL or session.key == key)
        ]
        if not candidates:
            return False
        oldest = min(candidates, key=lambda session: session.last_line)
        oldest.evicted = True
        self._release(oldest)
        if not oldest.started:
            # A task cancelled before its first step never runs, so nothing else would
            # close the socket; a started one closes it itself.
            oldest.sock.close()
        if oldest.task is not None:
            oldest.task.cancel()
        return True

    async def _run_session(self, sock: socket.socket, session: _Session) -> None:
        peer = session.peer
        session.started = True
        try:
            reader, writer = await _open_stream(sock, limit=self._max_line)
        except (OSError, asyncio.CancelledError):
            sock.close()  # asyncio closed the transport it may have made
            task = asyncio.current_task()
            if task is not None and task.cancelling() and not session.evicted:
                raise
            return
        session.writer = writer
        log.info("telnet_session_opened", peer=peer)
        try:
            reason = await self._serve(reader, writer, session)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if session.evicted and task is not None:
                task.uncancel()
                # Never blocks: the goodbye goes into the buffer, close() flushes it.
                writer.write(format_text(GOODBYE))
                writer.close()
                log.info("telnet_session_closed", peer=peer, reason="evicted")
                return
            writer.transport.abort()
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

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: _Session
    ) -> str:
        """Run one session; return why it ended."""
        loop = asyncio.get_running_loop()
        splitter = LineSplitter(self._max_line)
        await self._send(writer, greeting(self._control))
        deadline = loop.time() + self._idle_timeout
        while True:
            session.busy = False
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(self._read_size)
            except TimeoutError:
                session.busy = True
                await self._send(writer, [GOODBYE])
                return "idle"
            session.busy = True
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
                session.last_line = loop.time()
                deadline = session.last_line + self._idle_timeout
                refuse = self._refusal(session, line)
                reply = await run_command(
                    self._control, line, refuse_with=refuse, job_lines=self._job_lines
                )
                if reply.refused:
                    log.warning(
                        "telnet_command_refused",
                        peer=session.peer,
                        command=reply.refused,
                        policy=self._policy.value,
                    )
                await self._send(writer, reply.texts)
                if reply.close:
                    return "quit"

    def _refusal(self, session: _Session, line: str) -> TelnetControl | None:
        """Return the policy that refuses *line* to *session*, or None if it may run."""
        if self._policy is TelnetControl.ANY or parse(line).name not in MUTATING:
            return None
        if session.may_change is None:
            ip = str(session.peer[0]) if isinstance(session.peer, tuple) else ""
            session.may_change = self._policy is TelnetControl.LOCAL and is_own_host(
                ip, self._own_addresses()
            )
        return None if session.may_change else self._policy

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
    host: str | Sequence[str],
    port: int,
    *,
    family: str = Family.ANY,
    idle_timeout: float = IDLE_TIMEOUT,
    write_timeout: float = WRITE_TIMEOUT,
    max_line: int = MAX_LINE,
    max_sessions: int = MAX_SESSIONS,
    max_sessions_per_host: int = MAX_SESSIONS_PER_HOST,
    control_policy: TelnetControl = TelnetControl.ANY,
) -> TelnetServer:
    """Start serving *control*'s telnet interface on *host*:*port* and return the server."""
    server = TelnetServer(
        control,
        control_policy=control_policy,
        idle_timeout=idle_timeout,
        write_timeout=write_timeout,
        max_line=max_line,
        max_sessions=max_sessions,
        max_sessions_per_host=max_sessions_per_host,
    )
    await server.start(host, port, family=family)
    return server
