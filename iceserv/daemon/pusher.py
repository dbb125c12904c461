"""Send a native environment to another daemon ahead of any job (asyncio I/O).

This module owns :func:`push_environment`: the shell's half of push-ahead
(issue 17; the bookkeeping is the pure :mod:`iceserv.daemon.pushahead`).  It
talks to the target daemon exactly as a compile client does before its first
job there (reference §5.1.1 step 10, upstream ``client/remote.cpp``,
``write_server_cpp`` → ``send_environment``): the version handshake,
TRANFER_ENV(name, target), the tarball as FILE_CHUNKs and END, then, when the
peer's protocol has it, VERIFY_ENV and its VERIFY_ENV_RESULT, and a last END
before closing.  So it works against an icecream 1.4 daemon as well as ours;
either installs the environment and re-sends LOGIN with it, which is how the
scheduler learns the host has it.

Reading and framing the tarball (the FILE_CHUNK compression) runs in a worker
thread a megabyte at a time, so the daemon's loop stays free for clients.
Every wait is bounded: the whole push by ``within`` seconds.  It does not log; the
core does, from the ``EnvPushed`` the shell feeds it.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from iceserv.errors import IceservError, ProtocolError
from iceserv.protocol import (
    CHUNK_SIZE,
    End,
    EnvTransfer,
    Feature,
    FileChunk,
    JobTicket,
    VerifyEnv,
    VerifyEnvResult,
)
from iceserv.protocol.connection import NEED_DATA, Connection, ConnectionClosed, Handshake
from iceserv.protocol.sealing import SALT_BYTES, Opener, Sealer, channel_keys

if TYPE_CHECKING:
    from typing import BinaryIO

    from iceserv.daemon.effects import PushEnv

__all__ = ["PushError", "PushResult", "push_environment"]

#: Tarball bytes framed per trip to the worker thread.
_BATCH: Final = 10 * CHUNK_SIZE
_READ_SIZE: Final = 64 * 1024


class PushError(IceservError, OSError):
    """The push failed; the text says where (connect, transfer, refused, time-out)."""


@dataclass(frozen=True, slots=True)
class PushResult:
    """A push that installed the environment: tarball bytes sent and seconds taken."""

    size: int
    seconds: float


def _frame(conn: Connection, tarball: BinaryIO, limit: int) -> tuple[bytes, int]:
    """Read up to *limit* bytes of *tarball*, queue them as FILE_CHUNKs; return wire bytes."""
    read = 0
    while read < limit:
        piece = tarball.read(CHUNK_SIZE)
        if not piece:
            break
        read += len(piece)
        conn.send(FileChunk(piece))
    return conn.data_to_send(), read


async def _next(conn: Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is not NEED_DATA:
            return event
        conn.receive_data(await reader.read(_READ_SIZE))


async def _send(writer: asyncio.StreamWriter, conn: Connection) -> None:
    data = conn.data_to_send()
    if data:
        writer.write(data)
        await writer.drain()


async def _push(push: PushEnv, started: float) -> PushResult:
    try:
        reader, writer = await asyncio.open_connection(push.host, push.port)
    except OSError as exc:
        msg = f"cannot connect: {exc.strerror or exc}"
        raise PushError(msg) from None
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection()
        await _send(writer, conn)
        if not isinstance(await _next(conn, reader), Handshake):
            msg = "the daemon closed the connection during the handshake"
            raise PushError(msg)
        await _send(writer, conn)
        if push.ticket and push.secret:
            # Issue 14 item 4: our salt beside our ticket, then both ways sealed.
            salt = secrets.token_bytes(SALT_BYTES)
            conn.send(JobTicket(job_id=0, ticket=push.ticket, secret=salt.hex()))
            ours, theirs = channel_keys(bytes.fromhex(push.secret), salt)
            conn.seal_output(Sealer(ours))
            conn.open_input(Opener(theirs), clear_refusal=True)
        elif push.ticket:
            conn.send(JobTicket(job_id=0, ticket=push.ticket))
        conn.send(EnvTransfer(push.name, push.target))
        await _send(writer, conn)
        size = await _send_tarball(push.path, conn, writer)
        conn.send(End())
        if conn.supports(Feature.VERIFY_ENV):
            conn.send(VerifyEnv(push.name, push.target))
            await _send(writer, conn)
            reply = await _next(conn, reader)
            if isinstance(reply, ConnectionClosed):
                msg = "the daemon closed the connection (environment refused)"
                raise PushError(msg)
            if not isinstance(reply, VerifyEnvResult):
                msg = f"unexpected {type(reply).__name__} instead of VERIFY_ENV_RESULT"
                raise PushError(msg)
            if not reply.ok:
                msg = "the daemon could not run the environment (VERIFY_ENV failed)"
                raise PushError(msg)
            conn.send(End())
        await _send(writer, conn)
        return PushResult(size, time.monotonic() - started)
    finally:
        writer.close()


async def _send_tarball(path: str, conn: Connection, writer: asyncio.StreamWriter) -> int:
    try:
        tarball = await asyncio.to_thread(open, path, "rb")
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise PushError(msg) from None
    size = 0
    try:
        while True:
            data, read = await asyncio.to_thread(_frame, conn, tarball, _BATCH)
            if data:
                writer.write(data)
                await writer.drain()
            size += read
            if read < _BATCH:
                return size
    finally:
        tarball.close()


async def push_environment(push: PushEnv, *, within: float) -> PushResult:
    """Send *push*'s tarball to its daemon and have it verified; raise :class:`PushError`."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(within):
            return await _push(push, started)
    except TimeoutError:
        msg = f"not done within {within:g} s"
        raise PushError(msg) from None
    except PushError:
        raise
    except (ProtocolError, OSError) as exc:
        msg = f"connection failed: {exc}"
        raise PushError(msg) from None
