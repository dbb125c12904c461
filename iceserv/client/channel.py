"""One blocking binary channel of the wrapper, and the error that sends a job home.

Owns :class:`Channel`, a :class:`~iceserv.protocol.Connection` over a
blocking ``_socket`` in which every wait is bounded (the 15 s handshake,
a 30 s send stall, the caller's receive time-out; reference §7.8), and
:class:`ClusterError`, raised for every failure that 1.4 answers with a
local build.  STATUS_TEXT from a peer, end of file, time-outs and protocol
errors all become :class:`ClusterError` here, with 1.4's error numbers.
"""

from __future__ import annotations

import time

from iceserv.errors import IceservError, ProtocolError
from iceserv.protocol import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    ConnectionState,
    Feature,
    Handshake,
    Message,
    StatusText,
)
from iceserv.protocol.compression import DEFAULT_LEVEL

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from typing import Final

    from iceserv.client.env import ClientEnv

__all__ = ["HANDSHAKE_TIMEOUT", "SEND_TIMEOUT", "Channel", "ClusterError"]

HANDSHAKE_TIMEOUT: Final = 15.0
SEND_TIMEOUT: Final = 30.0
_SLOW_WRITE: Final = 10 * 1024  # ICECC_SLOW_NETWORK: bytes per send()


class ClusterError(IceservError, RuntimeError):
    """The cluster let the job down; build it locally.  ``code`` is 1.4's error number."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"Error {code} - {message}")
        self.code = code


class Channel:
    """One blocking binary channel; *name* is the peer for messages."""

    def __init__(
        self, sock: _socket.socket, *, name: str, env: ClientEnv, iceserv: bool = False
    ) -> None:
        self.sock = sock
        self.name = name
        #: The peer is an iceserv daemon that knows us as its own client (its endpoint).
        self.iceserv = iceserv
        level = env.compression_level if env.compression_level is not None else DEFAULT_LEVEL
        self.conn = Connection(compression_level=level)
        self._slow = env.slow_network
        self._flush()  # our half of the handshake goes out at once

    def _flush(self) -> None:
        data = memoryview(self.conn.data_to_send())
        step = _SLOW_WRITE if self._slow else len(data) or 1
        self.sock.settimeout(SEND_TIMEOUT)
        try:
            for start in range(0, len(data), step):
                self.sock.sendall(data[start : start + step])
        except OSError as exc:
            raise ClusterError(15, f"write to {self.name} failed: {exc}") from None

    def open(self) -> None:
        """Finish the version handshake (the peer answers within 15 s)."""
        if self.conn.state is ConnectionState.AWAIT_PEER_VERSION or (
            self.conn.state is ConnectionState.AWAIT_PEER_MINIMUM
        ):
            event = self._event(HANDSHAKE_TIMEOUT)
            if not isinstance(event, Handshake):
                raise ClusterError(13, f"no handshake from {self.name}")

    def supports(self, feature: Feature) -> bool:
        """Whether the negotiated protocol has *feature* (after :meth:`open`)."""
        self.open()
        return self.conn.supports(feature)

    def send(self, *messages: Message) -> None:
        """Send *messages* (opening the channel first if needed)."""
        self.open()
        try:
            for msg in messages:
                self.conn.send(msg)
        except ProtocolError as exc:
            raise ClusterError(9, f"cannot send to {self.name}: {exc}") from None
        try:
            self._flush()
        except ClusterError:
            # As 1.4's write_fd_to_server: a peer that hung up may have said why.
            self._explain_failure()
            raise

    def _explain_failure(self) -> None:
        """Raise the peer's STATUS_TEXT, if it sent one in the next 2 s, as error 23."""
        try:
            event = self._event(2.0)
        except ClusterError:
            return
        if isinstance(event, StatusText):
            raise ClusterError(23, f"remote status (compiled on {self.name}): {event.text}")

    def _event(self, timeout: float) -> object:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.conn.next_event()
            except ProtocolError as exc:
                raise ClusterError(13, f"protocol error from {self.name}: {exc}") from None
            self._flush()  # e.g. our handshake answer: the peer may wait for it
            if event is not NEED_DATA:
                return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClusterError(14, f"timed out waiting for {self.name}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except OSError as exc:
                raise ClusterError(14, f"error reading from {self.name}: {exc}") from None
            self.conn.receive_data(data)

    def receive(self, timeout: float) -> Message:
        """Return the next message; STATUS_TEXT (a remote failure), EOF and time-outs raise."""
        self.open()
        event = self._event(timeout)
        if isinstance(event, ConnectionClosed):
            raise ClusterError(19, f"{self.name} closed the connection")
        if isinstance(event, StatusText):
            raise ClusterError(23, f"remote status (compiled on {self.name}): {event.text}")
        return event  # type: ignore[return-value]  # after the handshake only messages come

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
