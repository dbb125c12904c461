"""Test helpers: a controllable clock and a pair of connected protocol state machines.

Product code never imports this module (an import-linter contract checks it);
tests and benchmarks do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iceserv.protocol import NEED_DATA, PROTOCOL_VERSION, Connection, ConnectionState, Event

__all__ = ["ConnectionPair", "FakeClock"]


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
