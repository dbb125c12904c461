"""Test helpers: a controllable clock and a pair of connected protocol state machines.

Product code never imports this module (an import-linter contract checks it);
tests and benchmarks do.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from iceserv.protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    ConnectionState,
    End,
    Event,
    FileChunk,
    Handshake,
    Message,
)

__all__ = ["BlockingChannel", "ConnectionPair", "FakeClock"]


@dataclass
class FakeClock:
    """A clock that only moves when told to; satisfies the ``Clock`` protocol."""

    now_value: float = 1_700_000_000.0

    def now(self) -> float:
        """Return the current fake time in seconds."""
        return self.now_value

    def advance(self, seconds: float) -> None:
        """Move time forward by *seconds*."""
        self.now_value += seconds


def _pump(src: Connection, dst: Connection) -> int:
    data = src.data_to_send()
    if data:  # an empty feed would mean end of file
        dst.receive_data(data)
    return len(data)


@dataclass
class ConnectionPair:
    """Two :class:`Connection` objects wired back to back, bytes moved on request."""

    a_version: int = PROTOCOL_VERSION
    b_version: int = PROTOCOL_VERSION
    a: Connection = field(init=False)
    b: Connection = field(init=False)

    def __post_init__(self) -> None:
        """Create both ends."""
        self.a = Connection(version=self.a_version)
        self.b = Connection(version=self.b_version)

    def transfer(self) -> int:
        """Move queued bytes both ways once; return how many moved."""
        return _pump(self.a, self.b) + _pump(self.b, self.a)

    def events(self, side: Connection) -> list[Event]:
        """Drain every event *side* can produce now (moving bytes as needed)."""
        out: list[Event] = []
        for _ in range(1000):  # bounded: a handshake needs two rounds
            self.transfer()
            event = side.next_event()
            if event is NEED_DATA:
                if not self.transfer():
                    return out
                continue
            out.append(event)
        msg = "ConnectionPair.events did not settle"
        raise AssertionError(msg)

    def handshake(self) -> int:
        """Run the handshake on both sides and return the negotiated protocol.

        Raises the protocol error if either side rejects the other.
        """
        for _ in range(4):  # each side needs two words from the other
            self.transfer()
            for side in (self.a, self.b):
                if side.state is not ConnectionState.OPEN:
                    side.next_event()
        self.transfer()
        return self.a.protocol


class BlockingChannel:
    """A :class:`Connection` over a blocking socket, for tests that play a peer.

    Every read is bounded by *timeout*; the handshake runs on construction.
    """

    def __init__(
        self, sock: socket.socket, *, version: int = PROTOCOL_VERSION, timeout: float = 30.0
    ) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.conn = Connection(version=version)
        first = self.receive()
        if not isinstance(first, Handshake):
            msg = f"expected the handshake, got {first!r}"
            raise AssertionError(msg)  # noqa: TRY004 - a test expectation failed
        self.handshake = first

    @classmethod
    def connect(cls, host: str, port: int, **kwargs: Any) -> BlockingChannel:  # noqa: ANN401
        """Open a TCP connection to *host*:*port* and do the handshake."""
        sock = socket.create_connection((host, port), timeout=kwargs.get("timeout", 30.0))
        return cls(sock, **kwargs)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send(self, *messages: Message) -> None:
        """Encode and send *messages*."""
        for msg in messages:
            self.conn.send(msg)
        self._flush()

    def send_file(self, data: bytes) -> None:
        """Send *data* as FILE_CHUNKs and END."""
        self.conn.send_file(data)
        self._flush()

    def receive(self) -> Event:
        """Return the next event; raises ``TimeoutError`` after the socket's timeout."""
        while True:
            self._flush()
            event = self.conn.next_event()
            if event is not NEED_DATA:
                self._flush()
                return event
            self.conn.receive_data(self.sock.recv(1 << 20))

    def receive_file(self) -> tuple[bytes, int]:
        """Read FILE_CHUNKs up to END; return the data and its compressed size."""
        parts: list[bytes] = []
        packed = 0
        while True:
            event = self.receive()
            if isinstance(event, End):
                return b"".join(parts), packed
            if not isinstance(event, FileChunk):
                msg = f"expected FILE_CHUNK or END, got {event!r}"
                raise AssertionError(msg)  # noqa: TRY004 - a test expectation failed
            parts.append(event.data)
            packed += event.compressed_size

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
