"""Tests for iceserv.protocol.sealing and sealed Connections (issue 14 item 4), pure bytes."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iceserv.errors import LocalProtocolError, RemoteProtocolError
from iceserv.protocol import NEED_DATA, Connection, FileChunk, StatusText, Text
from iceserv.protocol.auth import (
    NONCE_BYTES,
    AuthError,
    DaemonHandshake,
    Endpoints,
    KeyRing,
    SchedulerHandshake,
    key_id,
)
from iceserv.protocol.constants import MAX_MESSAGE_SIZE
from iceserv.protocol.sealing import (
    RECORD_OVERHEAD,
    Opener,
    Sealer,
    SealError,
    TamperedRecordError,
    channel_keys,
    job_key,
    link_keys,
)
from iceserv.protocol.tickets import issue_ticket
from iceserv.testing import ConnectionPair

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
ENDS = Endpoints(daemon=("10.0.0.2", 40000), scheduler=("10.0.0.1", 8765))


def _open_pair() -> ConnectionPair:
    pair = ConnectionPair()
    for _ in range(3):  # the handshake takes a few rounds
        pair.events(pair.a)
        pair.events(pair.b)
    return pair


def _sealed_pair() -> ConnectionPair:
    """A handshaken pair, sealed both ways with distinct keys per direction."""
    pair = _open_pair()
    a_to_b, b_to_a = secrets.token_bytes(32), secrets.token_bytes(32)
    pair.a.seal_output(Sealer(a_to_b))
    pair.b.open_input(Opener(a_to_b))
    pair.b.seal_output(Sealer(b_to_a))
    pair.a.open_input(Opener(b_to_a))
    return pair


def _feed_all(conn: Connection, data: bytes) -> list[object]:
    conn.receive_data(data)
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
    return out


class TestSealedConnection:
    def test_messages_and_file_chunks_round_trip(self):
        """Messages and a multi-chunk file cross a sealed pair unchanged, both ways."""
        pair = _sealed_pair()
        data = secrets.token_bytes(250_000)
        pair.a.send(Text("hello"))
        pair.a.send_file(data)
        pair.b.send(StatusText("back"))
        got = pair.events(pair.b)
        assert got[0] == Text("hello")
        chunks = [e for e in got if isinstance(e, FileChunk)]
        assert b"".join(c.data for c in chunks) == data
        assert pair.events(pair.a) == [StatusText("back")]
        assert pair.a.sealed
        assert pair.b.sealed

    def test_the_wire_holds_no_plaintext(self):
        """What a sealed side sends does not contain the message's text."""
        pair = _sealed_pair()
        secret_source = b"int main(void) { return 42; }"
        pair.a.send(FileChunk(secret_source))
        wire = pair.a.data_to_send()
        assert secret_source not in wire
        assert b"return 42" not in wire

    @settings(max_examples=150, deadline=None)
    @given(st.data())
    def test_any_flipped_bit_fails_with_a_typed_error(self, data):
        """Any single flipped bit of a sealed record is refused, never delivered."""
        pair = _sealed_pair()
        pair.a.send(Text("the source of a secret project"))
        wire = bytearray(pair.a.data_to_send())
        bit = data.draw(st.integers(0, len(wire) * 8 - 1))
        wire[bit // 8] ^= 1 << (bit % 8)
        pair.b.receive_data(bytes(wire))
        with pytest.raises(RemoteProtocolError):
            _feed_all(pair.b, b"")
        with pytest.raises(RemoteProtocolError):
            pair.b.next_event()  # the channel stays broken

    def test_tampered_record_is_its_own_error(self):
        """A flipped ciphertext bit raises TamperedRecordError (a RemoteProtocolError)."""
        pair = _sealed_pair()
        pair.a.send(Text("x" * 40))
        wire = bytearray(pair.a.data_to_send())
        wire[20] ^= 0x01
        with pytest.raises(TamperedRecordError, match="failed authentication"):
            _feed_all(pair.b, bytes(wire))

    def test_reordered_and_replayed_records_fail(self):
        """Records must come in order and once: a swap or a replay fails to open."""
        pair = _sealed_pair()
        pair.a.send(Text("one"))
        first = pair.a.data_to_send()
        pair.a.send(Text("two"))
        second = pair.a.data_to_send()
        with pytest.raises(TamperedRecordError):
            _feed_all(pair.b, second + first)
        pair = _sealed_pair()
        pair.a.send(Text("one"))
        first = pair.a.data_to_send()
        assert _feed_all(pair.b, first) == [Text("one")]
        with pytest.raises(TamperedRecordError):
            _feed_all(pair.b, first)

    def test_a_too_long_record_is_refused_on_its_length_alone(self):
        """The outer length is checked on its 4 bytes: nothing more is buffered."""
        pair = _sealed_pair()
        limit = MAX_MESSAGE_SIZE + RECORD_OVERHEAD
        with pytest.raises(RemoteProtocolError, match="too large"):
            _feed_all(pair.b, (limit + 1).to_bytes(4, "big"))
        pair.b.receive_data(b"\0" * 4096)  # ignored in ERROR: the buffer cannot grow
        assert pair.b.buffered == 0

    def test_a_clear_message_on_a_sealed_channel_is_refused(self):
        """Once sealed, a clear frame (a forgery in the stream) ends the channel."""
        sender = _sealed_pair()
        clear = _open_pair()
        clear.a.send(Text("forged"))
        with pytest.raises(RemoteProtocolError, match="clear message type"):
            _feed_all(sender.b, clear.a.data_to_send())

    def test_clear_refusal_only_before_the_first_record(self):
        """With clear_refusal, a clear STATUS_TEXT is read only before sealed records."""
        pair = _open_pair()
        key = secrets.token_bytes(32)
        pair.a.open_input(Opener(key), clear_refusal=True)
        pair.b.send(StatusText("job refused: altered ticket"))
        assert pair.events(pair.a) == [StatusText("job refused: altered ticket")]
        pair.b.seal_output(Sealer(key))
        pair.b.send(Text("sealed"))
        assert pair.events(pair.a) == [Text("sealed")]
        pair.b._sealer = None
        pair.b.send(StatusText("late"))
        with pytest.raises(RemoteProtocolError, match="clear message type"):
            pair.events(pair.a)

    def test_sealing_needs_an_open_channel_once(self):
        """Sealing before the handshake or twice is our own mistake (LocalProtocolError)."""
        conn = Connection()
        with pytest.raises(LocalProtocolError):
            conn.seal_output(Sealer(KEY))
        pair = _sealed_pair()
        with pytest.raises(LocalProtocolError):
            pair.a.seal_output(Sealer(KEY))
        with pytest.raises(LocalProtocolError):
            pair.a.open_input(Opener(KEY))

    def test_a_record_with_a_wrong_inner_length_is_refused(self):
        """A record that authenticates but holds no exact frame is a SealError."""
        sealer, opener = Sealer(KEY), Opener(KEY)
        record = sealer.seal(b"\0\0\0\x09" + b"\0" * 8)  # claims 9, holds 8
        with pytest.raises(SealError, match="exactly one frame"):
            opener.open(record[:8], record[8:])

    def test_short_records_fail_typed(self):
        """A record shorter than a tag and a header fails as tampered."""
        with pytest.raises(TamperedRecordError):
            Opener(KEY).open(b"\0" * 8, b"\0" * 10)

    @pytest.mark.parametrize("size", [0, 16, 31, 33])
    def test_keys_must_have_32_bytes(self, size):
        """A wrong key size is a local mistake."""
        with pytest.raises(LocalProtocolError):
            Sealer(b"k" * size)
        with pytest.raises(LocalProtocolError):
            Opener(b"k" * size)


class TestKeys:
    def _handshake(self, d_nonce: bytes, s_nonce: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        ring = KeyRing((KEY,))
        daemon = DaemonHandshake(ring, d_nonce, ENDS)
        scheduler = SchedulerHandshake(ring, s_nonce, ENDS)
        challenge = scheduler.challenge(daemon.hello())
        scheduler.check(daemon.answer(challenge))
        return (*link_keys(daemon.material), *link_keys(scheduler.material))

    def test_both_ends_derive_the_same_link_keys_one_per_direction(self):
        """Daemon and scheduler agree on both keys, and the directions differ."""
        d2s, s2d, d2s_s, s2d_s = self._handshake(b"\1" * NONCE_BYTES, b"\2" * NONCE_BYTES)
        assert (d2s, s2d) == (d2s_s, s2d_s)
        assert d2s != s2d

    def test_fresh_nonces_give_fresh_keys(self):
        """Another connection (other nonces) never reuses a key."""
        first = self._handshake(b"\1" * NONCE_BYTES, b"\2" * NONCE_BYTES)
        second = self._handshake(b"\1" * NONCE_BYTES, b"\3" * NONCE_BYTES)
        assert not set(first[:2]) & set(second[:2])

    def test_material_only_after_the_proof(self):
        """The daemon derives nothing before the scheduler proved the key."""
        daemon = DaemonHandshake(KeyRing((KEY,)), b"\1" * NONCE_BYTES, ENDS)
        with pytest.raises(LocalProtocolError):
            _ = daemon.material

    def test_job_key_is_bound_to_the_ticket_and_the_key(self):
        """Server and scheduler derive one job key from the ticket; another ticket, another."""
        ring = KeyRing((KEY,))
        ticket = issue_ticket(ring, job_id=7, client="10.0.0.2", server="10.0.0.3", expires=99)
        other = issue_ticket(ring, job_id=8, client="10.0.0.2", server="10.0.0.3", expires=99)
        assert job_key(ring, ticket) == job_key(KeyRing((OTHER, KEY)), ticket)
        assert job_key(ring, ticket) != job_key(ring, other)
        assert KEY not in job_key(ring, ticket)
        with pytest.raises(AuthError, match="unknown key"):
            job_key(KeyRing((OTHER,)), ticket)
        with pytest.raises(AuthError, match="malformed"):
            job_key(ring, "t1 zz")
        assert key_id(KEY).hex() in ticket

    def test_channel_keys_depend_on_the_salt(self):
        """Two salts give unrelated keys; each direction its own."""
        job = secrets.token_bytes(32)
        c2s, s2c = channel_keys(job, b"\1" * 32)
        assert c2s != s2c
        assert not {c2s, s2c} & set(channel_keys(job, b"\2" * 32))
        with pytest.raises(SealError):
            channel_keys(job, b"\1" * 31)
