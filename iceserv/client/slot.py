"""The local-slot conversation without the protocol package: handshake, JOB_LOCAL_BEGIN, go.

A local job with a daemon (``ICECC=no``, ``-E``, links, anything 1.4 keeps
local) needs only this from the protocol (reference §5.1.3): the version
handshake, one ``JOB_LOCAL_BEGIN`` sent and one received as the go signal.
Importing :mod:`iceserv.protocol` for it would cost ~14 ms per compiler call
(``typing``, ``enum``, ``re``, ``struct``, the codec tables), more than the
whole wrapper may add (issue 17, P2).  So this module writes those few bytes
itself and reads the answer's frame header only; ``tests/client/test_slot.py``
checks every byte against :mod:`iceserv.protocol`'s own encoder and decoder.

Owns :func:`local_slot`.  Any surprise (a version outside the range, another
message, a malformed frame, end of file, a time-out) is "no slot": the
caller then builds under the lock files, as 1.4 does when the go never comes.
It must not build anything and must not import the protocol.
"""

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from typing import Final

__all__ = ["Reader", "handshake", "local_slot"]

PROTOCOL_VERSION: "Final" = 43  # iceserv.protocol.PROTOCOL_VERSION
MIN_PROTOCOL_VERSION: "Final" = 21  # iceserv.protocol.MIN_PROTOCOL_VERSION
MAX_HANDSHAKE_VERSION: "Final" = 1 << 20  # what a peer may announce (constants.py)
JOB_LOCAL_BEGIN: "Final" = 78  # MsgType.JOB_LOCAL_BEGIN
HANDSHAKE_TIMEOUT: "Final" = 15.0  # iceserv.client.channel.HANDSHAKE_TIMEOUT
_MAX_FRAME: "Final" = 1 << 20  # MAX_MESSAGE_SIZE: a longer frame is malformed


def job_local_begin(stime: int, outfile: str) -> bytes:
    """Return the wire bytes of ``JobLocalBegin(stime, outfile, id=0)`` (any version)."""
    name = outfile.encode("utf-8", "surrogateescape") + b"\0"
    payload = (
        JOB_LOCAL_BEGIN.to_bytes(4, "big")
        + (stime & 0xFFFFFFFF).to_bytes(4, "big")
        + len(name).to_bytes(4, "big")
        + name
        + (0).to_bytes(4, "big")
    )
    return len(payload).to_bytes(4, "big") + payload


class Reader:
    """Exact reads from a blocking socket, all within one deadline."""

    __slots__ = ("_buffer", "_deadline", "_sock")

    def __init__(self, sock: "_socket.socket", timeout: float) -> None:
        self._sock, self._buffer = sock, b""
        self._deadline = time.monotonic() + timeout

    def restart(self, timeout: float) -> None:
        """Give the next reads a fresh deadline (bytes already read are kept)."""
        self._deadline = time.monotonic() + timeout

    def read(self, size: int) -> bytes | None:
        """Return exactly *size* bytes; None on end of file, an error or the deadline."""
        while len(self._buffer) < size:
            left = self._deadline - time.monotonic()
            if left <= 0:
                return None
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(max(65536, size - len(self._buffer)))
            except OSError:
                return None
            if not data:
                return None
            self._buffer += data
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def handshake(sock: "_socket.socket", reader: "Reader") -> bool:
    """Do the version handshake on *sock* (reading through *reader*); False on any surprise.

    Sends our version, answers with the minimum, checks the peer's echo.
    Also used by :mod:`iceserv.client.slotcount` (``icecc --slots``).
    """
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        sock.sendall(PROTOCOL_VERSION.to_bytes(4, "little"))
        word = reader.read(4)
        if word is None:
            return False
        peer = int.from_bytes(word, "little")
        if not MIN_PROTOCOL_VERSION <= peer <= MAX_HANDSHAKE_VERSION:
            return False
        protocol = min(PROTOCOL_VERSION, peer)
        sock.sendall(protocol.to_bytes(4, "little"))
        echo = reader.read(4)
    except OSError:
        return False
    return echo is not None and int.from_bytes(echo, "little") == protocol


def local_slot(sock: "_socket.socket", outfile: str, go_timeout: float) -> bool:
    """Ask the daemon on *sock* for a local slot; True once it gave the go.

    Sends our version, answers with the minimum, checks the peer's echo,
    sends ``JOB_LOCAL_BEGIN`` and waits up to *go_timeout* s for the daemon's
    ``JOB_LOCAL_BEGIN``.  The socket stays open (the slot lasts while it is).
    """
    reader = Reader(sock, HANDSHAKE_TIMEOUT)
    if not handshake(sock, reader):
        return False
    try:
        sock.sendall(job_local_begin(int(time.time()), outfile))
    except OSError:
        return False
    reader.restart(go_timeout)
    header = reader.read(8)
    if header is None:
        return False
    length = int.from_bytes(header[:4], "big")
    if not 4 <= length <= _MAX_FRAME or int.from_bytes(header[4:], "big") != JOB_LOCAL_BEGIN:
        return False
    return reader.read(length - 4) is not None  # the whole frame, as a decoder would
