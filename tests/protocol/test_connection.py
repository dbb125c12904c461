"""Tests of iceserv.protocol.connection: handshake (§1.4), framing (§1.5) and hostile input."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iceserv.errors import LocalProtocolError, RemoteProtocolError
from iceserv.protocol import messages
from iceserv.protocol.connection import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    ConnectionState,
    Handshake,
)
from iceserv.protocol.features import Feature
from iceserv.protocol.messages import (
    End,
    FileChunk,
    JobLocalDone,
    NoCS,
    Ping,
    StatusText,
    Timeout,
    Unknown,
)
from iceserv.testing import ConnectionPair

from .strategies import VERSIONS, any_message

MIB = 1 << 20


def h(text: str) -> bytes:
    """Bytes from hex with any whitespace."""
    return bytes.fromhex(text)


def le(value: int) -> bytes:
    """A handshake word: 4 bytes little-endian."""
    return value.to_bytes(4, "little")


def opened(own: int = 43, peer: int = 43) -> Connection:
    """A connection whose handshake with a peer announcing *peer* is done, output drained."""
    conn = Connection(version=own)
    conn.receive_data(le(peer) + le(min(own, peer)))
    assert conn.next_event() == Handshake(min(own, peer), peer)
    conn.data_to_send()
    return conn


def drain(conn: Connection) -> list:
    """Every event *conn* can produce from what it has, up to NEED_DATA or the close."""
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """*data* cut at the given offsets, in order, without empty pieces (an empty feed is EOF)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def assert_dead(conn: Connection) -> None:
    """*conn* is in ERROR, keeps raising, and refuses to send."""
    assert conn.state is ConnectionState.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Ping())


# --- handshake --------------------------------------------------------------------------


class TestHandshake:
    """The 8-byte version handshake."""

    def test_sends_own_version_first(self):
        """Before anything is received a connection offers its maximum version, little-endian."""
        assert Connection().data_to_send() == h("2b000000")
        assert Connection(version=39).data_to_send() == h("27000000")

    def test_data_to_send_forgets(self):
        """data_to_send hands out queued bytes once."""
        conn = Connection()
        conn.data_to_send()
        assert conn.data_to_send() == b""

    def test_real_scheduler_capture(self):
        """A real scheduler's ``2b 00 00 00`` twice (§10) opens protocol 43."""
        conn = Connection()
        assert conn.data_to_send() == h("2b 00 00 00")
        conn.receive_data(h("2b 00 00 00"))
        assert conn.next_event() is NEED_DATA
        assert conn.data_to_send() == h("2b 00 00 00")
        conn.receive_data(h("2b 00 00 00"))
        assert conn.next_event() == Handshake(protocol=43, peer_version=43)
        assert conn.state is ConnectionState.OPEN
        assert conn.protocol == 43
        assert conn.peer_version == 43

    @pytest.mark.parametrize(
        ("own", "peer", "agreed"), [(43, 39, 39), (30, 43, 30), (21, 21, 21), (43, 1 << 20, 43)]
    )
    def test_negotiates_the_minimum(self, own, peer, agreed):
        """Each side sends min(own, peer) back; the peer's maximum is remembered."""
        conn = Connection(version=own)
        conn.data_to_send()
        conn.receive_data(le(peer))
        assert conn.next_event() is NEED_DATA
        assert conn.data_to_send() == le(agreed)
        conn.receive_data(le(agreed))
        assert conn.next_event() == Handshake(agreed, peer)

    @pytest.mark.parametrize("peer", [0, 1, 20, (1 << 20) + 1, 2**31, 2**32 - 1])
    def test_unusable_peer_version(self, peer):
        """A first word below 21 or above 2^20 is fatal, and nothing is echoed."""
        conn = Connection()
        conn.data_to_send()
        conn.receive_data(le(peer))
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert conn.data_to_send() == b""
        assert_dead(conn)

    @pytest.mark.parametrize(("peer", "echo"), [(43, 42), (43, 44), (39, 43), (43, 0)])
    def test_wrong_echo(self, peer, echo):
        """The second word must equal the negotiated minimum."""
        conn = Connection()
        conn.receive_data(le(peer) + le(echo))
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert_dead(conn)

    def test_byte_by_byte(self):
        """The handshake words may arrive one byte at a time."""
        conn = Connection()
        events = []
        for byte in le(40) + le(40):
            conn.receive_data(bytes([byte]))
            events += drain(conn)
        assert events == [Handshake(40, 40)]
        assert conn.data_to_send() == le(43) + le(40)

    def test_handshake_and_messages_in_one_read(self):
        """Messages right behind the handshake in the same read are not lost."""
        conn = Connection()
        conn.receive_data(le(43) + le(43) + h("00000004 00000042 00000004 00000043"))
        assert drain(conn) == [Handshake(43, 43), Ping(), End()]

    def test_supports_uses_the_negotiated_version(self):
        """Feature checks follow the negotiated protocol, not our own maximum."""
        conn = opened(own=43, peer=39)
        assert conn.supports(Feature.CLIENT_COUNT)
        assert not conn.supports(Feature.ZSTD)

    def test_no_protocol_before_handshake(self):
        """Asking for the protocol or peer version too early is our mistake."""
        conn = Connection()
        with pytest.raises(LocalProtocolError):
            _ = conn.protocol
        with pytest.raises(LocalProtocolError):
            _ = conn.peer_version
        with pytest.raises(LocalProtocolError):
            conn.supports(Feature.ZSTD)

    @pytest.mark.parametrize("version", [0, 20, 44, 100])
    def test_cannot_announce_unsupported_version(self, version):
        """We only speak protocols 21 to 43."""
        with pytest.raises(LocalProtocolError):
            Connection(version=version)

    @pytest.mark.parametrize("size", [0, 8, MIB + 1])
    def test_bad_max_message_size(self, size):
        """The message cap must hold at least a header and at most 1 MiB."""
        with pytest.raises(LocalProtocolError):
            Connection(max_message_size=size)

    @pytest.mark.parametrize(("a", "b"), [(43, 43), (43, 21), (35, 40), (21, 43)])
    def test_pair(self, a, b):
        """Two connections agree on the lower of their versions."""
        pair = ConnectionPair(a_version=a, b_version=b)
        assert pair.handshake() == min(a, b)
        assert pair.b.protocol == min(a, b)
        assert pair.a.peer_version == b
        assert pair.b.peer_version == a


# --- framing ----------------------------------------------------------------------------


class TestFraming:
    """Length-prefixed frames after the handshake."""

    def test_one_frame(self):
        """A PING frame is a Ping event."""
        conn = opened()
        conn.receive_data(h("00000004 00000042"))
        assert drain(conn) == [Ping()]

    def test_byte_by_byte(self):
        """A frame fed one byte at a time yields one message, at the last byte."""
        conn = opened()
        raw = h("0000000c 00000060 00000001 00000003")
        for byte in raw[:-1]:
            conn.receive_data(bytes([byte]))
            assert conn.next_event() is NEED_DATA
        conn.receive_data(raw[-1:])
        assert drain(conn) == [NoCS(job_id=1, client_id=3)]

    def test_buffered_counts_a_message_under_way(self):
        """buffered is what arrived and is not yet an event: 0 between messages."""
        conn = opened()
        assert conn.buffered == 0
        conn.receive_data(h("00000004 00000042 0000"))
        assert drain(conn) == [Ping()]
        assert conn.buffered == 2
        conn.receive_data(h("0004 00000043"))
        assert drain(conn) == [End()]
        assert conn.buffered == 0

    def test_frames_across_reads(self):
        """Frames split across reads at odd places all come out, in order."""
        conn = opened()
        conn.receive_data(h("00000004 00000042 0000"))
        assert drain(conn) == [Ping()]
        conn.receive_data(h("0008 0000004f 00000009 00000004"))
        assert drain(conn) == [JobLocalDone(job_id=9)]
        conn.receive_data(h("00000043"))
        assert drain(conn) == [End()]

    def test_too_large_rejected_on_length_alone(self):
        """A length over 1 MiB is fatal as soon as its 4 bytes arrive, before any body."""
        conn = opened()
        for byte in (MIB + 1).to_bytes(4, "big")[:3]:
            conn.receive_data(bytes([byte]))
            assert conn.next_event() is NEED_DATA
        conn.receive_data((MIB + 1).to_bytes(4, "big")[3:])
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert_dead(conn)

    @pytest.mark.parametrize("length", [MIB + 1, 2**31, 2**32 - 1])
    def test_too_large_lengths(self, length):
        """Every length above the cap is refused."""
        conn = opened()
        conn.receive_data(length.to_bytes(4, "big") + h("00000042"))
        with pytest.raises(RemoteProtocolError):
            conn.next_event()

    def test_largest_frame_accepted(self):
        """A frame of exactly 1 MiB is fine, and while it arrives the buffer holds one frame."""
        text = "x" * (MIB - 9)  # type + string length + text + NUL = 1 MiB
        frame = (MIB).to_bytes(4, "big") + h("0000005a") + (MIB - 8).to_bytes(4, "big")
        frame += text.encode() + b"\0"
        conn = opened()
        for start in range(0, len(frame), 65536):
            piece = frame[start : start + 65536]
            conn.receive_data(piece)
            events = drain(conn)
            assert len(conn._in) <= MIB + 4
        assert events == [StatusText(text)]
        assert len(conn._in) == 0

    def test_smaller_cap(self):
        """A connection built with a smaller cap enforces it."""
        conn = Connection(max_message_size=100)
        conn.receive_data(le(43) + le(43) + (101).to_bytes(4, "big"))
        assert conn.next_event() == Handshake(43, 43)
        with pytest.raises(RemoteProtocolError):
            conn.next_event()

    @pytest.mark.parametrize("length", [0, 1, 3])
    def test_length_below_four(self, length):
        """A length that cannot hold the type word is fatal."""
        conn = opened()
        conn.receive_data(length.to_bytes(4, "big") + h("00000042"))
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert_dead(conn)

    @pytest.mark.parametrize("msg_type", [0, 0x40, 0x61, 0x7A, 0x4142, 2**32 - 1])
    def test_unknown_type(self, msg_type):
        """An unknown type code is fatal and named in the error."""
        conn = opened()
        conn.receive_data(h("00000004") + msg_type.to_bytes(4, "big"))
        with pytest.raises(RemoteProtocolError) as info:
            conn.next_event()
        assert info.value.msg_type == msg_type
        assert_dead(conn)

    @pytest.mark.parametrize("msg_type", [0x41, 0x44])
    def test_never_valid_types(self, msg_type):
        """Types 'A' (UNKNOWN) and 'D' (TIMEOUT) close the channel (§1.5)."""
        conn = opened()
        conn.receive_data(h("00000004") + msg_type.to_bytes(4, "big"))
        with pytest.raises(RemoteProtocolError) as info:
            conn.next_event()
        assert info.value.msg_type == msg_type
        assert_dead(conn)

    @pytest.mark.parametrize(
        "frame",
        [
            "00000005 00000042 00",  # PING with a trailing byte
            "0000000c 0000004f 00000009 00000000",  # JOB_LOCAL_DONE with an extra word
            "00000007 0000004f 000000",  # JOB_LOCAL_DONE one byte short
            "0000000c 0000005a 00000005 61626300",  # string longer than the frame
            "0000000c 00000049 00000000 00000000",  # COMPILE_FILE missing its fields
        ],
    )
    def test_exact_consumption(self, frame):
        """A payload that is not consumed exactly is fatal (§1.5)."""
        conn = opened()
        conn.receive_data(h(frame))
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert_dead(conn)

    @pytest.mark.parametrize(
        "frame",
        [
            # GET_CS whose env list count runs past the frame
            "0000000d 00000047 00000100 00000001 00",
            # COMPILE_FILE whose argument count runs past the frame
            "00000015 00000049 00000000 00000000 7fffffff 00000001 00",
            # LOGIN whose env list claims 2^32-1 entries
            "00000010 00000050 00000000 00000000 ffffffff",
        ],
    )
    def test_counts_past_the_frame(self, frame):
        """List counts that cannot fit in the frame are rejected without looping over them."""
        conn = opened()
        conn.receive_data(h(frame))
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert_dead(conn)

    def test_error_is_sticky(self):
        """After an error every call raises again, with the same message type."""
        conn = opened()
        conn.receive_data(h("00000004 00000041 00000004 00000042"))
        for _ in range(3):
            with pytest.raises(RemoteProtocolError) as info:
                conn.next_event()
            assert info.value.msg_type == 0x41

    def test_input_after_error_is_not_buffered(self):
        """Bytes fed to a connection in ERROR are not kept (it will never read them)."""
        conn = opened()
        conn.receive_data(h("00000004 00000041"))
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        for _ in range(4):
            conn.receive_data(b"\0" * MIB)
            assert len(conn._in) <= MIB + 8
        assert_dead(conn)


# --- end of file ------------------------------------------------------------------------


class TestEndOfFile:
    """b"" from the owner means the peer closed its side."""

    def test_clean_close(self):
        """EOF between messages is ConnectionClosed, and stays so."""
        conn = opened()
        conn.receive_data(h("00000004 00000042"))
        conn.receive_data(b"")
        assert conn.next_event() == Ping()
        assert conn.next_event() == ConnectionClosed()
        assert conn.state is ConnectionState.CLOSED
        assert conn.next_event() == ConnectionClosed()

    def test_eof_mid_frame(self):
        """EOF inside a frame is the peer's error and leaves the connection in ERROR."""
        conn = opened()
        conn.receive_data(h("00000008 0000004f 0000"))
        assert conn.next_event() is NEED_DATA
        conn.receive_data(b"")
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert_dead(conn)

    def test_eof_mid_length(self):
        """EOF inside a length word is the peer's error too."""
        conn = opened()
        conn.receive_data(h("0000"))
        conn.receive_data(b"")
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert_dead(conn)

    def test_probe_before_anything(self):
        """A peer that connects and closes without a byte (the scheduler's probe) just closed."""
        conn = Connection()
        conn.receive_data(b"")
        assert conn.next_event() == ConnectionClosed()
        assert conn.state is ConnectionState.CLOSED

    def test_probe_after_version(self):
        """A peer that sends its version word and closes has closed, not broken the protocol."""
        conn = Connection()
        conn.receive_data(le(43))
        conn.receive_data(b"")
        assert conn.next_event() == ConnectionClosed()

    def test_eof_mid_handshake_word(self):
        """EOF inside a handshake word is a protocol error."""
        conn = Connection()
        conn.receive_data(h("2b00"))
        conn.receive_data(b"")
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert_dead(conn)

    def test_data_after_eof_is_misuse(self):
        """Feeding bytes after EOF is our mistake; a second EOF is harmless."""
        conn = opened()
        conn.receive_data(b"")
        conn.receive_data(b"")
        with pytest.raises(LocalProtocolError):
            conn.receive_data(b"x")

    def test_send_after_close(self):
        """A closed connection refuses to send."""
        conn = opened()
        conn.receive_data(b"")
        assert conn.next_event() == ConnectionClosed()
        with pytest.raises(LocalProtocolError):
            conn.send(Ping())


# --- local misuse -----------------------------------------------------------------------


class TestLocalMisuse:
    """Our own mistakes raise LocalProtocolError and queue nothing."""

    def test_send_before_handshake(self):
        """Nothing but the handshake may be sent before it completes."""
        conn = Connection()
        with pytest.raises(LocalProtocolError):
            conn.send(Ping())
        conn.receive_data(le(43))
        conn.next_event()
        with pytest.raises(LocalProtocolError):
            conn.send(Ping())
        assert conn.data_to_send() == le(43) + le(43)

    @pytest.mark.parametrize("msg", [Unknown(), Timeout()])
    def test_never_valid_types(self, msg):
        """UNKNOWN and TIMEOUT are never sent."""
        conn = opened()
        with pytest.raises(LocalProtocolError) as info:
            conn.send(msg)
        assert info.value.msg_type == msg.TYPE
        assert conn.data_to_send() == b""

    @pytest.mark.parametrize(
        "msg",
        [
            JobLocalDone(job_id=-1),
            JobLocalDone(job_id=2**32),
            messages.CompileResult(status=-(2**31) - 1),
            StatusText("a\0b"),
            StatusText("\ud800"),
            StatusText("x" * (MIB - 8)),  # one byte over the 1 MiB frame
            FileChunk(b"\0" * (MIB + 1)),
            messages.CompileFile(args=("a", "b\0")),
        ],
        ids=["u32<0", "u32>max", "i32<min", "nul", "surrogate", "frame>1MiB", "chunk>1MiB", "list"],
    )
    def test_unsendable(self, msg):
        """Values the wire cannot carry are refused, and the connection stays usable."""
        conn = opened()
        with pytest.raises(LocalProtocolError):
            conn.send(msg)
        assert conn.data_to_send() == b""
        conn.send(Ping())
        assert conn.data_to_send() == h("00000004 00000042")

    def test_largest_frame_sendable(self):
        """A message whose frame is exactly 1 MiB may be sent."""
        conn = opened()
        conn.send(StatusText("x" * (MIB - 9)))
        assert conn.data_to_send()[:4] == (MIB).to_bytes(4, "big")


# --- hostile input ----------------------------------------------------------------------


def _mutate(frame: bytes, how: str, at: int, byte: int) -> bytes:
    at %= len(frame) + 1
    if how == "truncate":
        return frame[:at]
    if how == "append":
        return frame + bytes([byte])
    if how == "flip" and at < len(frame):
        return frame[:at] + bytes([frame[at] ^ (byte or 1)]) + frame[at + 1 :]
    if how == "grow":  # the length word says one more byte than the frame has
        return (int.from_bytes(frame[:4], "big") + 1).to_bytes(4, "big") + frame[4:]
    if how == "shrink":
        return (int.from_bytes(frame[:4], "big") - 1).to_bytes(4, "big") + frame[4:]
    return frame


@st.composite
def _frame_shaped(draw) -> bytes:
    """A frame whose length word matches, with any type near the valid range and any payload."""
    payload = draw(st.binary(max_size=80))
    msg_type = draw(st.integers(0x3C, 0x64) | st.integers(0, 2**32 - 1))
    return (len(payload) + 4).to_bytes(4, "big") + msg_type.to_bytes(4, "big") + payload


@st.composite
def _hostile_stream(draw, version: int) -> bytes:
    """A byte stream mixing valid, damaged and made-up frames and plain garbage."""
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["valid", "mutated", "shaped", "garbage"]))
        if kind == "garbage":
            parts.append(draw(st.binary(min_size=1, max_size=40)))
        elif kind == "shaped":
            parts.append(draw(_frame_shaped()))
        else:
            frame = messages.encode(draw(any_message(version)), version)
            if kind == "mutated":
                how = draw(st.sampled_from(["truncate", "append", "flip", "grow", "shrink"]))
                frame = _mutate(frame, how, draw(st.integers(0, 300)), draw(st.integers(0, 255)))
            parts.append(frame)
    return b"".join(parts)


def _feed_hostile(conn: Connection, pieces: list[bytes], *, eof: bool) -> None:
    """Feed *pieces* as the owner would; check that only RemoteProtocolError escapes."""
    error = None
    try:
        for piece in [*pieces, b""] if eof else pieces:
            conn.receive_data(piece)
            drain(conn)
            assert len(conn._in) <= MIB + 8 + len(piece)
    except Exception as exc:  # noqa: BLE001 - the point is which exception types escape
        error = exc
    if error is not None:
        assert type(error) is RemoteProtocolError, repr(error)
        assert_dead(conn)
        if not eof:  # a peer that keeps talking to a dead channel is not buffered
            conn.receive_data(b"\0" * 64)
            assert len(conn._in) <= MIB + 8 + 64
            assert_dead(conn)


class TestHostileInput:
    """Whatever the peer sends, only RemoteProtocolError escapes and buffers stay capped."""

    @settings(max_examples=500, deadline=None)
    @given(
        version=st.sampled_from(VERSIONS),
        data=st.binary(max_size=200),
        cuts=st.lists(st.integers(0, 200), max_size=8),
        eof=st.booleans(),
    )
    def test_arbitrary_bytes(self, version, data, cuts, eof):
        """Random bytes after a valid handshake, in random pieces."""
        _feed_hostile(opened(own=version), split(data, cuts), eof=eof)

    @settings(max_examples=500, deadline=None)
    @given(data=st.data(), version=st.sampled_from(VERSIONS), eof=st.booleans())
    def test_damaged_frames(self, data, version, eof):
        """Valid, truncated, extended, bit-flipped and made-up frames, in random pieces."""
        stream = data.draw(_hostile_stream(version))
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
        _feed_hostile(opened(own=version), split(stream, cuts), eof=eof)

    @settings(max_examples=200, deadline=None)
    @given(data=st.binary(max_size=40), cuts=st.lists(st.integers(0, 40), max_size=6))
    def test_arbitrary_handshake(self, data, cuts):
        """Random bytes from the very first byte, handshake included."""
        _feed_hostile(Connection(), split(data, cuts), eof=True)

    @settings(max_examples=50, deadline=None)
    @given(version=st.sampled_from(VERSIONS), cuts=st.lists(st.integers(0, 64), max_size=8))
    def test_huge_length_never_buffered(self, version, cuts):
        """However a too-large length arrives, it is refused before its body."""
        conn = opened(own=version)
        stream = (MIB + 1).to_bytes(4, "big") + b"\x55" * 60
        _feed_hostile(conn, split(stream, cuts), eof=False)
        assert conn.state is ConnectionState.ERROR


# --- FILE_CHUNK from a hostile peer -----------------------------------------------------

HELLO_LZO = "1668656c6c6f110000"
HELLO_ZSTD = "28b52ffd200529000068656c6c6f"


def _chunk(words: str, blob: str) -> bytes:
    payload = h(words + blob)
    return (len(payload) + 4).to_bytes(4, "big") + h("0000004a") + payload


class TestHostileFileChunk:
    """Compressed blobs that break §3.1's receiver rules."""

    @pytest.mark.parametrize(
        ("version", "frame"),
        [
            (43, _chunk("00000005 0000000e 00000002", HELLO_ZSTD)),  # unknown algorithm
            (43, _chunk("00000005 0000000e ffffffff", HELLO_ZSTD)),
            (43, _chunk("00100001 0000000e 00000001", HELLO_ZSTD)),  # size > 1 MiB
            (39, _chunk("00100001 00000009", HELLO_LZO)),
            (43, _chunk("00000005 0000000f 00000001", HELLO_ZSTD)),  # packed size past frame
            (43, _chunk("00000005 ffffffff 00000001", HELLO_ZSTD)),
            (39, _chunk("00000005 0000000a", HELLO_LZO)),
            (43, _chunk("00000005 00000000 00000001", "")),  # data but no packed bytes
            (39, _chunk("00000005 00000000", "")),
            (43, _chunk("00000005 0000000e 00000001", "00" * 14)),  # corrupt zstd
            (43, _chunk("00000005 0000000e 00000001", "28b52ffd" + "ff" * 10)),
            (39, _chunk("00000005 00000009", "ff" * 9)),  # corrupt LZO
            (39, _chunk("00000005 00000009", "166865")),  # short LZO (in a short frame)
            (43, _chunk("00000004 0000000e 00000001", HELLO_ZSTD)),  # size mismatch
            (43, _chunk("00000006 0000000e 00000001", HELLO_ZSTD)),
            (39, _chunk("00000004 00000009", HELLO_LZO)),
            (39, _chunk("00000006 00000009", HELLO_LZO)),
            (43, _chunk("00000005 00000009 00000001", HELLO_LZO)),  # LZO labelled zstd
            (43, _chunk("00000005 0000000e 00000000", HELLO_ZSTD)),  # zstd labelled LZO
            (39, _chunk("00000005 0000000e 00000001", HELLO_ZSTD)),  # algorithm word below 40
        ],
    )
    def test_rejected(self, version, frame):
        """Each malformed chunk is a RemoteProtocolError naming FILE_CHUNK."""
        conn = opened(own=version)
        conn.receive_data(frame)
        with pytest.raises(RemoteProtocolError) as info:
            conn.next_event()
        assert type(info.value) is RemoteProtocolError
        assert info.value.msg_type == 0x4A
        assert_dead(conn)

    @pytest.mark.parametrize("version", [39, 43])
    @settings(max_examples=150, deadline=None)
    @given(blob=st.binary(max_size=64), size=st.integers(1, 4096))
    def test_random_blob(self, version, blob, size):
        """Random compressed bytes either decode to exactly *size* bytes or are refused."""
        words = f"{size:08x} {len(blob):08x}" + (" 00000001" if version >= 40 else "")
        conn = opened(own=version)
        conn.receive_data(_chunk(words, blob.hex()))
        try:
            event = conn.next_event()
        except RemoteProtocolError:
            assert_dead(conn)
        else:
            assert isinstance(event, FileChunk)
            assert len(event.data) == size


# --- whole streams through ConnectionPair -------------------------------------------------


class TestStreams:
    """Sequences of messages survive a pair of connections, however the bytes are cut."""

    @settings(max_examples=60, deadline=None)
    @given(data=st.data(), a=st.sampled_from(VERSIONS), b=st.sampled_from(VERSIONS))
    def test_random_stream(self, data, a, b):
        """Random messages at a random negotiated version arrive intact and in order."""
        pair = ConnectionPair(a_version=a, b_version=b)
        version = pair.handshake()
        assert version == min(a, b) == pair.b.protocol
        sent = data.draw(st.lists(any_message(version), max_size=8))
        for msg in sent:
            pair.a.send(msg)
        stream = pair.a.data_to_send()
        if data.draw(st.booleans()):
            pieces = [stream[i : i + 1] for i in range(len(stream))]
        else:
            pieces = split(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
        received = []
        for piece in pieces:
            pair.b.receive_data(piece)
            received += drain(pair.b)
            assert len(pair.b._in) < len(stream) + 1
        assert received == sent
        pair.b.receive_data(b"")
        assert pair.b.next_event() == ConnectionClosed()

    def test_both_directions(self):
        """Both sides can send and receive through ConnectionPair."""
        pair = ConnectionPair(a_version=43, b_version=38)
        pair.handshake()
        pair.a.send(Ping())
        pair.b.send(NoCS(job_id=4, client_id=2))
        assert pair.events(pair.b) == [Ping()]
        assert pair.events(pair.a) == [NoCS(job_id=4, client_id=2)]

    @pytest.mark.parametrize("version", [39, 43])
    def test_send_file(self, version):
        """send_file cuts data into chunks of at most 100 000 bytes and ends with END."""
        data = bytes(range(256)) * 1000  # 256 000 bytes
        pair = ConnectionPair(a_version=version)
        pair.handshake()
        pair.a.send_file(data)
        events = pair.events(pair.b)
        assert [len(e.data) for e in events[:-1]] == [100_000, 100_000, 56_000]
        assert events[-1] == End()
        assert b"".join(e.data for e in events[:-1]) == data

    def test_send_empty_file(self):
        """An empty file is just END."""
        pair = ConnectionPair()
        pair.handshake()
        pair.a.send_file(b"")
        assert pair.events(pair.b) == [End()]
