"""One binary icecream channel as a sans-I/O state machine: handshake, then framed messages.

Theory of operation
-------------------
Both ends of a channel behave the same (reference §1.4): each sends its own
maximum version as a little-endian ``u32``; on reading the peer's, each sends
``min(own, peer)``; on reading the peer's second word, which must equal that
minimum, the channel is open and the minimum (the *protocol*) governs every
version-dependent field in both directions.

:class:`Connection` never touches a socket.  The owner feeds received bytes to
:meth:`Connection.receive_data` (``b""`` means end of file), then calls
:meth:`Connection.next_event` until it returns :data:`NEED_DATA`; events are a
:class:`Handshake` once, then messages, then :class:`ConnectionClosed`.  After
each call the owner writes :meth:`Connection.data_to_send` to the peer (the
handshake words appear there by themselves).  :meth:`Connection.send` encodes a
message for the negotiated protocol.

A frame is ``u32 BE length`` (type + payload, at most 1 MiB), ``u32 BE type``
and the payload.  The length is checked as soon as its four bytes arrive, so a
hostile peer cannot make us buffer more than one frame, and the payload must be
consumed exactly.  Once the owner sealed a direction (:meth:`Connection.seal_output`,
:meth:`Connection.open_input`, after the iceserv-only authentication negotiated
it), every frame of that direction travels as one AEAD record inside a
``SEALED`` frame (:mod:`iceserv.protocol.sealing`): bounded by the same early
length check, and a record that fails to open is a protocol error.  This
module never imports the cipher library: the owner passes the sealer and
opener in.  The first malformation raises
:class:`~iceserv.errors.RemoteProtocolError` and leaves the connection in the
``ERROR`` state, where every further call raises again: 1.4 closes such a
channel, and so should the owner.
"""

from __future__ import annotations

import enum
import struct
from typing import TYPE_CHECKING, Final

from iceserv.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from iceserv.protocol.compression import DEFAULT_LEVEL, iter_chunks
from iceserv.protocol.constants import (
    MAX_HANDSHAKE_VERSION,
    MAX_MESSAGE_SIZE,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    IceservMsgType,
    MsgType,
)
from iceserv.protocol.features import Feature, supports
from iceserv.protocol.messages import End, FileChunk, Message, decode, encode
from iceserv.protocol.records import record

if TYPE_CHECKING:
    from iceserv.protocol.sealing import Opener, Sealer

__all__ = [
    "NEED_DATA",
    "Connection",
    "ConnectionClosed",
    "ConnectionState",
    "Event",
    "Handshake",
    "NeedData",
]

_HANDSHAKE_WORD: Final = struct.Struct("<I")
_FRAME_HEADER: Final = struct.Struct(">II")
_LENGTH_WORD: Final = struct.Struct(">I")
_NEVER_VALID: Final = frozenset({MsgType.UNKNOWN, MsgType.TIMEOUT})
_SEALED: Final = int(IceservMsgType.SEALED)
#: A sealed record is its inner frame plus 24 bytes (sealing.RECORD_OVERHEAD; not imported
#: here, that module loads the cipher library).
_RECORD_OVERHEAD: Final = 24


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA`."""

    NEED_DATA = enum.auto()


#: Returned by :meth:`Connection.next_event` when more bytes are needed.
NEED_DATA: Final = NeedData.NEED_DATA


@record
class Handshake:
    """The handshake finished: ``protocol`` is in force; the peer announced ``peer_version``."""

    protocol: int
    peer_version: int


@record
class ConnectionClosed:
    """The peer closed the channel cleanly (between messages)."""


Event = Message | Handshake | ConnectionClosed


class ConnectionState(enum.Enum):
    """Where a :class:`Connection` is in its life."""

    AWAIT_PEER_VERSION = enum.auto()
    AWAIT_PEER_MINIMUM = enum.auto()
    OPEN = enum.auto()
    CLOSED = enum.auto()
    ERROR = enum.auto()


class Connection:
    """The protocol state of one binary channel (client, daemon, scheduler or monitor side).

    *version* is the maximum protocol we announce (43 normally; lower to talk
    like an older peer).  *compression_level* is the zstd level for FILE_CHUNKs
    we send (the sender's ``ICECC_COMPRESSION``).
    """

    def __init__(
        self,
        *,
        version: int = PROTOCOL_VERSION,
        compression_level: int = DEFAULT_LEVEL,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        if not MIN_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION:
            msg = f"cannot speak protocol {version}: supported are 21 to 43"
            raise LocalProtocolError(msg)
        if not 8 < max_message_size <= MAX_MESSAGE_SIZE:
            msg = f"max_message_size must be in 9..{MAX_MESSAGE_SIZE}"
            raise LocalProtocolError(msg)
        self.own_version = version
        self.compression_level = compression_level
        self._max_size = max_message_size
        self._state = ConnectionState.AWAIT_PEER_VERSION
        self._in = bytearray()
        self._out = bytearray(_HANDSHAKE_WORD.pack(version))
        self._eof = False
        self._protocol: int | None = None
        self._peer_version: int | None = None
        self._error: RemoteProtocolError | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._clear_refusal = False

    # --- introspection ---------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return self._state

    @property
    def protocol(self) -> int:
        """The negotiated protocol version; only valid once the handshake is done."""
        if self._protocol is None:
            msg = "the version handshake has not finished"
            raise LocalProtocolError(msg)
        return self._protocol

    @property
    def peer_version(self) -> int:
        """The maximum version the peer announced (1.4's "Version:" for monitors)."""
        if self._peer_version is None:
            msg = "the peer has not announced its version yet"
            raise LocalProtocolError(msg)
        return self._peer_version

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as an event (part of a message under way)."""
        return len(self._in)

    @property
    def sealed(self) -> bool:
        """Whether both directions are sealed (encrypted and authenticated records)."""
        return self._sealer is not None and self._opener is not None

    def supports(self, feature: Feature) -> bool:
        """Return whether the negotiated protocol has *feature*."""
        return supports(self.protocol, feature)

    # --- input -----------------------------------------------------------------------

    def receive_data(self, data: bytes | memoryview) -> None:
        """Feed bytes received from the peer; ``b""`` means the peer closed its side."""
        if self._eof:
            if data:
                msg = "received data after end of file"
                raise LocalProtocolError(msg)
            return
        if data:
            # A channel in ERROR never reads again: keeping what a hostile peer
            # still sends would let it grow the buffer without bound.
            if self._state is not ConnectionState.ERROR:
                self._in += data
        else:
            self._eof = True

    def next_event(self) -> Event | NeedData:
        """Return the next event, or :data:`NEED_DATA`."""
        if self._state is ConnectionState.ERROR:
            assert self._error is not None  # noqa: S101 - set together with the state
            raise RemoteProtocolError(str(self._error), msg_type=self._error.msg_type)
        if self._state is ConnectionState.CLOSED:
            return ConnectionClosed()
        try:
            event = self._advance()
            if event is NEED_DATA and self._eof:
                if self._in:
                    self._fail("connection closed in the middle of a message")
                self._state = ConnectionState.CLOSED
                return ConnectionClosed()
        except ProtocolError as exc:
            # Also a LocalProtocolError such as missing LZO support: we cannot go on either way.
            self._state = ConnectionState.ERROR
            self._error = RemoteProtocolError(str(exc), msg_type=exc.msg_type)
            self._in.clear()
            raise
        return event

    def _fail(self, text: str, msg_type: int | None = None) -> None:
        raise RemoteProtocolError(text, msg_type=msg_type)

    def _advance(self) -> Event | NeedData:
        if self._state is ConnectionState.AWAIT_PEER_VERSION:
            if len(self._in) < 4:
                return NEED_DATA
            (peer,) = _HANDSHAKE_WORD.unpack_from(self._in)
            del self._in[:4]
            if not MIN_PROTOCOL_VERSION <= peer <= MAX_HANDSHAKE_VERSION:
                self._fail(f"peer announced unusable protocol version {peer}")
            self._peer_version = peer
            self._protocol = min(self.own_version, peer)
            self._out += _HANDSHAKE_WORD.pack(self._protocol)
            self._state = ConnectionState.AWAIT_PEER_MINIMUM
        if self._state is ConnectionState.AWAIT_PEER_MINIMUM:
            if len(self._in) < 4:
                return NEED_DATA
            (echo,) = _HANDSHAKE_WORD.unpack_from(self._in)
            del self._in[:4]
            if echo != self._protocol:
                self._fail(f"peer confirmed protocol {echo}, expected {self._protocol}")
            self._state = ConnectionState.OPEN
            return Handshake(self.protocol, self.peer_version)
        return self._next_message()

    def _next_message(self) -> Message | NeedData:
        buf = self._in
        available = len(buf)
        if available < 4:
            return NEED_DATA
        (length,) = _LENGTH_WORD.unpack_from(buf)
        opener = self._opener
        limit = self._max_size + (_RECORD_OVERHEAD if opener is not None else 0)
        if length > limit:
            self._fail(f"received a too large message: {length} bytes")
        if length < 4:
            self._fail(f"frame length {length} cannot hold a message type")
        end = 4 + length
        if available < end:
            return NEED_DATA
        (msg_type,) = _LENGTH_WORD.unpack_from(buf, 4)
        if msg_type in _NEVER_VALID:
            self._fail(f"received message type {msg_type}, which is never valid", msg_type)
        payload = bytes(buf[8:end])
        if opener is not None:
            header = bytes(buf[:8])
            del buf[:end]
            return self._open(msg_type, header, payload)
        if available == end:
            buf.clear()  # the usual case: the frame was all there was
        else:
            del buf[:end]
        return decode(msg_type, payload, self.protocol)

    def _open(self, msg_type: int, header: bytes, payload: bytes) -> Message:
        assert self._opener is not None  # noqa: S101 - the caller checked
        if msg_type != _SEALED:
            if msg_type == MsgType.STATUS_TEXT and self._clear_refusal and not self._opener.records:
                # The peer refused before it sealed anything (e.g. a bad ticket): its reason.
                return decode(msg_type, payload, self.protocol)
            self._fail(f"clear message type {msg_type} on a sealed channel", msg_type)
        inner = self._opener.open(header, payload)
        _, inner_type = _FRAME_HEADER.unpack_from(inner)
        if inner_type in _NEVER_VALID or inner_type == _SEALED:
            self._fail(f"sealed record holds message type {inner_type}", inner_type)
        return decode(inner_type, inner[8:], self.protocol)

    # --- output ----------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Queue *msg*, encoded for the negotiated protocol, for :meth:`data_to_send`."""
        if self._state is not ConnectionState.OPEN:
            text = f"cannot send {type(msg).__name__} in state {self._state.name}"
            raise LocalProtocolError(text)
        if msg.TYPE in _NEVER_VALID:
            text = f"{type(msg).__name__} must never be sent"
            raise LocalProtocolError(text, msg_type=int(msg.TYPE))
        frame = encode(msg, self.protocol, level=self.compression_level)
        self._out += frame if self._sealer is None else self._sealer.seal(frame)

    def send_file(self, data: bytes) -> None:
        """Queue *data* as FILE_CHUNKs of at most 100 000 bytes followed by END."""
        for piece in iter_chunks(data):
            self.send(FileChunk(piece))
        self.send(End())

    def seal_output(self, sealer: Sealer) -> None:
        """Seal every frame queued from now on with *sealer* (after what is queued already)."""
        if self._state is not ConnectionState.OPEN or self._sealer is not None:
            msg = "seal_output needs an open, not yet sealed channel"
            raise LocalProtocolError(msg)
        self._sealer = sealer

    def open_input(self, opener: Opener, *, clear_refusal: bool = False) -> None:
        """Open every frame received from now on with *opener* (bytes buffered included).

        Call it right after the event that ends the clear part of the input,
        before the next :meth:`next_event`.  With *clear_refusal* a clear
        STATUS_TEXT before the first sealed record is still read (a peer that
        refused to seal says why; it can only end the channel).
        """
        if self._state is not ConnectionState.OPEN or self._opener is not None:
            msg = "open_input needs an open, not yet sealed channel"
            raise LocalProtocolError(msg)
        self._opener = opener
        self._clear_refusal = clear_refusal

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes queued for the peer."""
        out = bytes(self._out)
        self._out.clear()
        return out
