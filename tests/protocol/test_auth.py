"""Tests of iceserv.protocol.auth: the network-key handshake and discovery proofs (issue 14)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iceserv.errors import RemoteProtocolError
from iceserv.protocol.auth import (
    ANNOUNCE_WINDOW,
    MAX_KEY_IDS,
    AuthError,
    DaemonHandshake,
    Endpoints,
    KeyRing,
    SchedulerHandshake,
    decode_offer,
    decode_probe,
    decode_proven_announcement,
    encode_offer,
    encode_probe,
    encode_proven_announcement,
    key_id,
)
from iceserv.protocol.discovery import (
    SchedulerInfo,
    decode_announcement,
    decode_request,
    encode_announcements,
)
from iceserv.protocol.messages import AuthChallenge, AuthHello, AuthProof
from iceserv.protocol.records import replace
from iceserv.testing import ConnectionPair

#: What a wire string can carry: no NUL, no lone surrogates.
WIRE_TEXT = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
RING = KeyRing((KEY,))
ENDS = Endpoints(("192.0.2.7", 40000), ("192.0.2.1", 8765))
ND = b"d" * 32
NS = b"s" * 32
INFO = SchedulerInfo(43, 1_700_000_000, "ICECREAM")


def _pair(d_ring=RING, s_ring=RING, d_ends=ENDS, s_ends=ENDS):
    return DaemonHandshake(d_ring, ND, d_ends), SchedulerHandshake(s_ring, NS, s_ends)


def _flip(text: str, index: int) -> str:
    """Return hex *text* with the nibble at *index* changed."""
    index %= len(text)
    nibble = "0" if text[index] != "0" else "1"
    return text[:index] + nibble + text[index + 1 :]


class TestHandshake:
    def test_same_key_authenticates_both_ways(self):
        """With one key both sides accept each other and agree on the key id."""
        daemon, scheduler = _pair()
        proof = daemon.answer(scheduler.challenge(daemon.hello()))
        assert scheduler.check(proof) == key_id(KEY) == daemon.key_id

    def test_wrong_key_is_refused_by_the_daemon(self):
        """A scheduler with another key (but claiming ours) cannot prove it to the daemon."""
        daemon, _ = _pair()
        rogue = SchedulerHandshake(KeyRing((OTHER,)), NS, ENDS)
        hello = daemon.hello()
        with pytest.raises(AuthError, match="no key in common"):
            rogue.challenge(hello)
        honest = SchedulerHandshake(RING, NS, ENDS).challenge(hello)
        forged = replace(
            honest,
            proof=SchedulerHandshake(KeyRing((OTHER,)), NS, ENDS)
            .challenge(AuthHello(ND.hex(), (key_id(OTHER).hex(),)))
            .proof,
        )
        with pytest.raises(AuthError, match="wrong key"):
            daemon.answer(forged)

    def test_wrong_key_is_refused_by_the_scheduler(self):
        """A daemon with another key fails at the scheduler."""
        _, scheduler = _pair()
        with pytest.raises(AuthError, match="no key in common"):
            scheduler.challenge(DaemonHandshake(KeyRing((OTHER,)), ND, ENDS).hello())

    def test_rotation_accepts_the_previous_key(self):
        """A scheduler holding new and previous keys accepts a daemon that has only the old one."""
        daemon = DaemonHandshake(KeyRing((OTHER,)), ND, ENDS)
        scheduler = SchedulerHandshake(KeyRing((KEY, OTHER)), NS, ENDS)
        proof = daemon.answer(scheduler.challenge(daemon.hello()))
        assert scheduler.check(proof) == key_id(OTHER)

    def test_rotation_daemon_ahead(self):
        """A daemon holding new and previous keys still authenticates with an old scheduler."""
        daemon = DaemonHandshake(KeyRing((OTHER, KEY)), ND, ENDS)
        scheduler = SchedulerHandshake(RING, NS, ENDS)
        assert scheduler.check(daemon.answer(scheduler.challenge(daemon.hello()))) == key_id(KEY)

    def test_relay_with_other_endpoints_fails(self):
        """A man in the middle relaying to the real scheduler changes the endpoints: refused."""
        relayed = Endpoints(("192.0.2.66", 50000), ("192.0.2.1", 8765))
        daemon, scheduler = _pair(s_ends=relayed)
        with pytest.raises(AuthError, match="wrong key"):
            daemon.answer(scheduler.challenge(daemon.hello()))

    def test_endpoint_spellings_are_canonical(self):
        """An IPv4-mapped address or an IPv6 zone does not change what the proofs cover."""
        mapped = Endpoints(("::ffff:192.0.2.7", 40000), ("::ffff:192.0.2.1", 8765))
        assert mapped.encode() == ENDS.encode()
        zoned = Endpoints(("fe80::1%eth0", 1), ("FE80::2", 2))
        assert zoned.encode() == Endpoints(("fe80::1", 1), ("fe80::2", 2)).encode()

    def test_reflected_proof_fails(self):
        """The scheduler's own proof sent back as the daemon's is refused (roles differ)."""
        daemon, scheduler = _pair()
        challenge = scheduler.challenge(daemon.hello())
        with pytest.raises(AuthError, match="wrong key"):
            scheduler.check(AuthProof(challenge.proof))

    def test_reflected_nonce_fails(self):
        """A peer echoing our own nonce is refused on either side."""
        daemon, scheduler = _pair()
        with pytest.raises(AuthError, match="reflected"):
            scheduler.challenge(AuthHello(NS.hex(), (key_id(KEY).hex(),)))
        challenge = scheduler.challenge(daemon.hello())
        with pytest.raises(AuthError, match="reflected"):
            daemon.answer(replace(challenge, nonce=ND.hex()))

    def test_replayed_transcript_fails_with_fresh_nonces(self):
        """A daemon proof recorded on one connection fails on the next (new scheduler nonce)."""
        daemon, scheduler = _pair()
        recorded = daemon.answer(scheduler.challenge(daemon.hello()))
        fresh = SchedulerHandshake(RING, b"t" * 32, ENDS)
        fresh.challenge(daemon.hello())
        with pytest.raises(AuthError, match="wrong key"):
            fresh.check(recorded)

    def test_order_is_enforced(self):
        """A proof before the hello, or a second hello, is refused."""
        daemon, scheduler = _pair()
        with pytest.raises(AuthError, match="before the hello"):
            scheduler.check(AuthProof("00" * 32))
        scheduler.challenge(daemon.hello())
        with pytest.raises(AuthError, match="second hello"):
            scheduler.challenge(daemon.hello())

    def test_too_many_key_ids(self):
        """A hello naming more than MAX_KEY_IDS keys is refused (bounded work)."""
        _, scheduler = _pair()
        ids = tuple(key_id(bytes([i]) * 32).hex() for i in range(MAX_KEY_IDS + 1))
        with pytest.raises(AuthError, match="malformed"):
            scheduler.challenge(AuthHello(ND.hex(), ids))

    def test_errors_are_remote_protocol_errors(self):
        """AuthError is a RemoteProtocolError (and a ValueError), as STYLE rule 5 asks."""
        assert issubclass(AuthError, RemoteProtocolError)
        assert issubclass(AuthError, ValueError)

    def test_needs_a_key_and_a_full_nonce(self):
        """Building a side without a key or with a short nonce is our own mistake."""
        with pytest.raises(ValueError, match="fresh nonce"):
            DaemonHandshake(KeyRing(()), ND, ENDS)
        with pytest.raises(ValueError, match="fresh nonce"):
            SchedulerHandshake(RING, b"x", ENDS)

    @given(field=st.sampled_from(["key_id", "nonce", "proof"]), index=st.integers(0, 200))
    def test_any_tampered_challenge_fails(self, field, index):
        """Changing any character of the challenge makes the daemon refuse it."""
        daemon, scheduler = _pair()
        challenge = scheduler.challenge(daemon.hello())
        tampered = replace(challenge, **{field: _flip(getattr(challenge, field), index)})
        with pytest.raises(AuthError):
            daemon.answer(tampered)

    @given(index=st.integers(0, 200))
    def test_any_tampered_proof_fails(self, index):
        """Changing any character of the daemon's proof makes the scheduler refuse it."""
        daemon, scheduler = _pair()
        proof = daemon.answer(scheduler.challenge(daemon.hello()))
        with pytest.raises(AuthError):
            scheduler.check(AuthProof(_flip(proof.proof, index)))

    @given(index=st.integers(0, 200))
    def test_any_tampered_hello_nonce_fails(self, index):
        """A hello whose nonce was changed on the way makes the daemon refuse the challenge."""
        daemon, scheduler = _pair()
        hello = daemon.hello()
        challenge = scheduler.challenge(replace(hello, nonce=_flip(hello.nonce, index)))
        with pytest.raises(AuthError):
            daemon.answer(challenge)

    @given(
        nonce=st.text(max_size=100),
        ids=st.lists(st.text(max_size=40), max_size=6),
        proof=st.text(max_size=100),
    )
    def test_garbage_gives_typed_errors(self, nonce, ids, proof):
        """Arbitrary message fields never crash: either accepted or an AuthError."""
        daemon, scheduler = _pair()
        with contextlib.suppress(AuthError):
            scheduler.challenge(AuthHello(nonce, tuple(ids)))
        with contextlib.suppress(AuthError):
            scheduler.check(AuthProof(proof))
        with pytest.raises(AuthError):
            daemon.answer(AuthChallenge(key_id(KEY).hex(), nonce, proof))


class TestMessages:
    @given(
        nonce=st.text(WIRE_TEXT, max_size=80),
        ids=st.lists(st.text(WIRE_TEXT, max_size=20), max_size=4),
    )
    def test_round_trip(self, nonce, ids):
        """The three messages survive encode and decode on an iceserv connection."""
        for msg in (
            AuthHello(nonce, tuple(ids)),
            AuthChallenge(nonce, nonce, nonce),
            AuthProof(nonce),
        ):
            assert _round_trip(msg) == msg

    def test_types_are_iceserv_only(self):
        """The types are numbered in iceserv's 0x1CE5.... range, far from 1.4's."""
        assert [int(m.TYPE) for m in (AuthHello, AuthChallenge, AuthProof)] == [
            0x1CE50005,
            0x1CE50006,
            0x1CE50007,
        ]


def _round_trip(msg):
    pair = ConnectionPair()
    pair.handshake()
    pair.a.send(msg)
    (event,) = pair.events(pair.b)
    return event


class TestDiscovery:
    def test_probe_round_trip(self):
        """A probe carries the nonce and the ids of our keys."""
        assert decode_probe(encode_probe(ND, KeyRing((KEY, OTHER)))) == (
            ND,
            (key_id(KEY), key_id(OTHER)),
        )

    def test_probe_is_ignored_by_the_1_4_rules(self):
        """A probe is neither a 1-byte request nor a 268-byte announcement."""
        probe = encode_probe(ND, RING)
        assert len(probe) not in (1, 268)
        assert decode_request(probe) is None
        assert decode_announcement(probe) is None

    def test_offer_proves_the_key(self):
        """An offer for our nonce from a scheduler with our key describes that scheduler."""
        offer = encode_offer(RING, (ND, (key_id(KEY),)), INFO)
        assert offer is not None
        assert decode_offer(offer, RING, ND) == INFO

    def test_offer_for_another_nonce_or_key_is_ignored(self):
        """A replayed offer (another probe's nonce) or one with another key is no candidate."""
        offer = encode_offer(RING, (ND, (key_id(KEY),)), INFO)
        assert decode_offer(offer, RING, b"x" * 32) is None
        assert decode_offer(offer, KeyRing((OTHER,)), ND) is None
        assert encode_offer(KeyRing((OTHER,)), (ND, (key_id(KEY),)), INFO) is None

    @given(index=st.integers(0, 500), bit=st.integers(0, 7))
    def test_any_tampered_offer_byte_fails(self, index, bit):
        """Flipping any bit of an offer (e.g. a higher version) makes it no candidate."""
        offer = bytearray(encode_offer(RING, (ND, (key_id(KEY),)), INFO))
        offer[index % len(offer)] ^= 1 << bit
        assert decode_offer(bytes(offer), RING, ND) is None

    @given(st.binary(max_size=400))
    def test_garbage_datagrams(self, data):
        """Arbitrary datagrams never crash the decoders."""
        decode_probe(data)
        decode_offer(data, RING, ND)


class TestProvenAnnouncements:
    def test_round_trip(self):
        """A proven announcement names its scheduler to a holder of the key, near its time."""
        datagram = encode_proven_announcement(RING, INFO, 1000.0)
        assert decode_proven_announcement(datagram, RING, 1100.0) == INFO
        assert decode_proven_announcement(datagram, KeyRing((OTHER, KEY)), 900.0) == INFO

    def test_ignored_by_the_1_4_rules(self):
        """Neither a request nor an ICF announcement: 1.4 and keyless schedulers ignore it."""
        datagram = encode_proven_announcement(RING, INFO, 0.0)
        assert decode_request(datagram) is None
        assert decode_announcement(datagram) is None
        assert decode_probe(datagram) is None

    def test_wrong_key_stale_or_unkeyed(self):
        """Another key, a time outside the window or a plain ICF are not proven."""
        datagram = encode_proven_announcement(RING, INFO, 1000.0)
        assert decode_proven_announcement(datagram, KeyRing((OTHER,)), 1000.0) is None
        assert decode_proven_announcement(datagram, RING, 1000.0 + ANNOUNCE_WINDOW + 1) is None
        assert decode_proven_announcement(datagram, RING, 1000.0 - ANNOUNCE_WINDOW - 1) is None
        assert encode_proven_announcement(KeyRing(()), INFO, 0.0) is None
        assert decode_proven_announcement(encode_announcements(INFO)[1], RING, 0.0) is None

    @given(index=st.integers(0, 500), bit=st.integers(0, 7))
    def test_any_flipped_bit_fails(self, index, bit):
        """Flipping any bit (say, a higher version or an earlier start) makes it unproven."""
        datagram = bytearray(encode_proven_announcement(RING, INFO, 1000.0))
        datagram[index % len(datagram)] ^= 1 << bit
        assert decode_proven_announcement(bytes(datagram), RING, 1000.0) is None

    @given(st.binary(max_size=400))
    def test_garbage(self, data):
        """Arbitrary datagrams never crash the decoder."""
        decode_proven_announcement(data, RING, 0.0)
