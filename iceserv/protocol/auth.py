"""Mutual authentication of daemon and scheduler with the network key (issue 14), sans I/O.

Owns the key ring (current key plus, during a rotation, the previous one),
the proofs (HMAC-SHA256 keyed by the network key), the two sides of the TCP
challenge-response (:class:`DaemonHandshake`, :class:`SchedulerHandshake`)
and the iceserv-only discovery datagrams that carry a proof of the key
(:func:`encode_probe`, :func:`encode_offer`, their decoders).  It must not
open sockets, log, read files, the clock or the random source: the shells
pass in the keys, the nonces (``secrets.token_bytes``) and the endpoints.

Theory of operation
-------------------
::

    daemon                                        scheduler
      |-- UDP probe: "ICA?" Nd' key ids ----------->|   (1.4 schedulers ignore the length)
      |<- UDP offer: "ICA!" key id, info, proof ----|   HMAC(k, discovery, Nd', info)
      |== TCP connect, 1.4 version handshake =======|
      |-- AUTH_HELLO Nd, key ids ------------------>|
      |<- AUTH_CHALLENGE key id, Ns, proof_s -------|   HMAC(k, "scheduler", id, Nd, Ns, ends)
      |-- AUTH_PROOF proof_d ---------------------->|   HMAC(k, "daemon",    id, Nd, Ns, ends)
      |-- LOGIN ... (as 1.4) ---------------------->|

The daemon speaks first only to a scheduler whose offer proved the key, so
a 1.4 scheduler never receives an iceserv-only type; an iceserv scheduler
knows a 1.4 daemon by its first message being LOGIN.  Each proof covers a
domain label, the prover's role, the key id, both fresh nonces and both
TCP endpoints (``ends``: the daemon's and the scheduler's address and
port), so a recorded transcript fails on a new connection (new nonces), a
proof cannot be reflected to its sender (another role, and equal nonces
are refused) and a relay in the middle fails (other endpoints).  Proofs
are compared with :func:`hmac.compare_digest`.  The offer's proof covers
the daemon's probe nonce and the scheduler's info, so a rogue scheduler
cannot claim a higher version or earlier start with a replayed one.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from iceserv.errors import LocalProtocolError, RemoteProtocolError
from iceserv.protocol.discovery import SchedulerInfo
from iceserv.protocol.messages import AuthChallenge, AuthHello, AuthProof
from iceserv.protocol.wire import decode_text, encode_text

__all__ = [
    "ANNOUNCE_WINDOW",
    "KEY_ID_BYTES",
    "MAX_KEY_IDS",
    "NONCE_BYTES",
    "AuthError",
    "AuthMode",
    "DaemonHandshake",
    "Endpoints",
    "KeyRing",
    "SchedulerHandshake",
    "SealMaterial",
    "canonical_address",
    "decode_offer",
    "decode_probe",
    "decode_proven_announcement",
    "encode_offer",
    "encode_probe",
    "encode_proven_announcement",
    "key_id",
]

#: Bytes of each side's nonce (256 bits: never repeats, cannot be guessed).
NONCE_BYTES: Final = 32
#: Bytes of a key id (a public name of a key, not a secret).
KEY_ID_BYTES: Final = 8
#: Key ids a peer may name (current and previous, and room to spare).
MAX_KEY_IDS: Final = 4
_PROOF_BYTES: Final = hashlib.sha256().digest_size
_LABEL: Final = b"iceserv-auth-v1"
_PROBE_MAGIC: Final = b"ICA?"
_OFFER_MAGIC: Final = b"ICA!"
_VERSION: Final = 1
_OFFER_HEAD: Final = struct.Struct(">4sB8sIQB")  # magic, version, key id, proto, start, name len
_MAX_NETNAME: Final = 255
_ANNOUNCE_MAGIC: Final = b"ICA+"
_ANNOUNCE_HEAD: Final = struct.Struct(">4sB8sIQQB")  # magic, v, key id, proto, start, sent, len
#: Seconds an authenticated announcement stays believable (clock skew between schedulers).
ANNOUNCE_WINDOW: Final = 300


class AuthMode(enum.StrEnum):
    """``[cluster] auth``: what a service does with peers that cannot prove the key."""

    OFF = "off"
    PREFER = "prefer"
    REQUIRE = "require"


class AuthError(RemoteProtocolError):
    """The peer failed the authentication; ``reason`` says how (no secret in it)."""

    def __init__(self, reason: str) -> None:
        """Carry *reason*, a short fixed phrase such as ``"wrong key"``."""
        super().__init__(f"authentication failed: {reason}", msg_type=0)
        self.reason = reason


def key_id(key: bytes) -> bytes:
    """Return the public id of *key*: a truncated HMAC of a constant (reveals nothing)."""
    return hmac.digest(key, _LABEL + b"\0key-id", "sha256")[:KEY_ID_BYTES]


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The keys a service accepts: the current one first, then the previous (a rotation)."""

    keys: tuple[bytes, ...]

    @property
    def ids(self) -> tuple[bytes, ...]:
        """Return the id of each key, in order."""
        return tuple(key_id(key) for key in self.keys)

    def find(self, wanted: bytes) -> bytes | None:
        """Return the key whose id is *wanted*, or None."""
        for key in self.keys:
            if hmac.compare_digest(key_id(key), wanted):
                return key
        return None

    def first_known(self, offered: tuple[bytes, ...]) -> tuple[bytes, bytes] | None:
        """Return ``(id, key)`` of the first of the peer's *offered* ids that we hold."""
        for wanted in offered:
            key = self.find(wanted)
            if key is not None:
                return wanted, key
        return None


def canonical_address(host: str) -> str:
    """Canonical text of an address: IPv4-mapped IPv6 as IPv4, no zone, compressed IPv6."""
    bare = host.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return bare
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The TCP connection as both sides see it: the daemon's and the scheduler's address, port."""

    daemon: tuple[str, int]
    scheduler: tuple[str, int]

    def encode(self) -> bytes:
        """Return the canonical bytes the proofs cover."""
        return (
            f"{canonical_address(self.daemon[0])}/{self.daemon[1]}>"
            f"{canonical_address(self.scheduler[0])}/{self.scheduler[1]}"
        ).encode()


@dataclass(frozen=True, slots=True, repr=False)
class SealMaterial:
    """The secrets one authenticated link's sealing keys derive from (never logged)."""

    key: bytes
    kid: bytes
    nonces: tuple[bytes, bytes]  # the daemon's, then the scheduler's
    ends: bytes


def _proof(key: bytes, role: bytes, kid: bytes, nonces: tuple[bytes, bytes], ends: bytes) -> bytes:
    fields = (_LABEL, role, kid, nonces[0], nonces[1], ends)
    data = b"".join(len(f).to_bytes(2, "big") + f for f in fields)
    return hmac.digest(key, data, "sha256")


def _unhex(text: str, size: int, what: str) -> bytes:
    if len(text) != 2 * size:
        msg = f"malformed {what}"
        raise AuthError(msg)
    try:
        return bytes.fromhex(text)
    except ValueError:
        msg = f"malformed {what}"
        raise AuthError(msg) from None


class DaemonHandshake:
    """The daemon's side: :meth:`hello`, then :meth:`answer` the challenge."""

    def __init__(self, ring: KeyRing, nonce: bytes, ends: Endpoints) -> None:
        """Use *ring*'s keys, our fresh *nonce* and the connection's *ends*."""
        if len(nonce) != NONCE_BYTES or not ring.keys:
            msg = "a handshake needs a key and a fresh nonce"
            raise ValueError(msg)
        self._ring, self._nonce, self._ends = ring, nonce, ends
        self.key_id: bytes | None = None
        self._material: SealMaterial | None = None

    def hello(self, options: tuple[str, ...] = ()) -> AuthHello:
        """Return the first message: our nonce, the ids of our keys and our *options*."""
        return AuthHello(self._nonce.hex(), tuple(kid.hex() for kid in self._ring.ids), options)

    @property
    def material(self) -> SealMaterial:
        """What the link's sealing keys derive from (after :meth:`answer` succeeded)."""
        if self._material is None:
            msg = "the scheduler has not proved the key"
            raise LocalProtocolError(msg)
        return self._material

    def answer(self, msg: AuthChallenge) -> AuthProof:
        """Check the scheduler's proof; return ours, or raise :class:`AuthError`."""
        kid = _unhex(msg.key_id, KEY_ID_BYTES, "key id")
        nonce = _unhex(msg.nonce, NONCE_BYTES, "nonce")
        theirs = _unhex(msg.proof, _PROOF_BYTES, "proof")
        key = self._ring.find(kid)
        if key is None:
            msg_0 = "the scheduler chose a key we do not hold"
            raise AuthError(msg_0)
        if hmac.compare_digest(nonce, self._nonce):
            msg_0 = "the scheduler reflected our nonce"
            raise AuthError(msg_0)
        nonces = (self._nonce, nonce)
        expected = _proof(key, b"scheduler", kid, nonces, self._ends.encode())
        if not hmac.compare_digest(theirs, expected):
            msg_0 = "wrong key"
            raise AuthError(msg_0)
        self.key_id = kid
        self._material = SealMaterial(key, kid, nonces, self._ends.encode())
        return AuthProof(_proof(key, b"daemon", kid, nonces, self._ends.encode()).hex())


class SchedulerHandshake:
    """The scheduler's side: :meth:`challenge` the hello, then :meth:`check` the proof."""

    def __init__(self, ring: KeyRing, nonce: bytes, ends: Endpoints) -> None:
        """Use *ring*'s keys, our fresh *nonce* and the connection's *ends*."""
        if len(nonce) != NONCE_BYTES or not ring.keys:
            msg = "a handshake needs a key and a fresh nonce"
            raise ValueError(msg)
        self._ring, self._nonce, self._ends = ring, nonce, ends
        self._pending: tuple[bytes, bytes, bytes] | None = None  # key id, key, their nonce
        self.key_id: bytes | None = None

    @property
    def material(self) -> SealMaterial:
        """What the link's sealing keys derive from (once the hello was challenged)."""
        if self._pending is None:
            msg = "no hello was challenged"
            raise LocalProtocolError(msg)
        kid, key, nonce = self._pending
        return SealMaterial(key, kid, (nonce, self._nonce), self._ends.encode())

    def challenge(self, msg: AuthHello) -> AuthChallenge:
        """Answer the daemon's hello with our nonce and proof, or raise :class:`AuthError`."""
        if self._pending is not None:
            msg_0 = "a second hello"
            raise AuthError(msg_0)
        if not msg.key_ids or len(msg.key_ids) > MAX_KEY_IDS:
            msg_0 = "malformed key ids"
            raise AuthError(msg_0)
        nonce = _unhex(msg.nonce, NONCE_BYTES, "nonce")
        if hmac.compare_digest(nonce, self._nonce):
            msg_0 = "the daemon reflected our nonce"
            raise AuthError(msg_0)
        offered = tuple(_unhex(text, KEY_ID_BYTES, "key id") for text in msg.key_ids)
        found = self._ring.first_known(offered)
        if found is None:
            msg_0 = "no key in common (wrong key)"
            raise AuthError(msg_0)
        kid, key = found
        self._pending = kid, key, nonce
        proof = _proof(key, b"scheduler", kid, (nonce, self._nonce), self._ends.encode())
        return AuthChallenge(kid.hex(), self._nonce.hex(), proof.hex())

    def check(self, msg: AuthProof) -> bytes:
        """Check the daemon's proof; return the key id it proved, or raise :class:`AuthError`."""
        if self._pending is None:
            msg_0 = "a proof before the hello"
            raise AuthError(msg_0)
        kid, key, nonce = self._pending
        theirs = _unhex(msg.proof, _PROOF_BYTES, "proof")
        expected = _proof(key, b"daemon", kid, (nonce, self._nonce), self._ends.encode())
        if not hmac.compare_digest(theirs, expected):
            msg_0 = "wrong key"
            raise AuthError(msg_0)
        self.key_id = kid
        return kid


# --- discovery ------------------------------------------------------------------------


def encode_probe(nonce: bytes, ring: KeyRing) -> bytes:
    """Return the daemon's authenticated discovery request (never 1 or 268 bytes long).

    1.4 schedulers answer only 1-byte requests and read 268-byte
    announcements (reference §4.3, §4.5), so they ignore it.
    """
    ids = ring.ids[:MAX_KEY_IDS]
    return _PROBE_MAGIC + bytes([_VERSION]) + nonce + bytes([len(ids)]) + b"".join(ids)


def decode_probe(datagram: bytes) -> tuple[bytes, tuple[bytes, ...]] | None:
    """Return ``(nonce, key ids)`` of a probe, or None for anything else."""
    head = len(_PROBE_MAGIC) + 1 + NONCE_BYTES + 1
    if len(datagram) < head or not datagram.startswith(_PROBE_MAGIC):
        return None
    if datagram[len(_PROBE_MAGIC)] != _VERSION:
        return None
    count = datagram[head - 1]
    if count == 0 or count > MAX_KEY_IDS or len(datagram) != head + count * KEY_ID_BYTES:
        return None
    nonce = datagram[len(_PROBE_MAGIC) + 1 : head - 1]
    ids = tuple(
        datagram[head + i * KEY_ID_BYTES : head + (i + 1) * KEY_ID_BYTES] for i in range(count)
    )
    return nonce, ids


def _offer_proof(key: bytes, kid: bytes, nonce: bytes, info: SchedulerInfo) -> bytes:
    described = b"%d/%d/" % (info.version, info.start_time) + encode_text(info.netname)
    return _proof(key, b"discovery", kid, (nonce, b""), described)


def encode_offer(
    ring: KeyRing, probe: tuple[bytes, tuple[bytes, ...]], info: SchedulerInfo
) -> bytes | None:
    """Return the scheduler's answer to *probe* proving the key, or None (no key in common)."""
    nonce, offered = probe
    found = ring.first_known(offered)
    name = encode_text(info.netname)
    if found is None or len(name) > _MAX_NETNAME:
        return None
    kid, key = found
    head = _OFFER_HEAD.pack(_OFFER_MAGIC, _VERSION, kid, info.version, info.start_time, len(name))
    return head + name + _offer_proof(key, kid, nonce, info)


def decode_offer(  # noqa: PLR0911 - one early "no candidate" per check
    datagram: bytes, ring: KeyRing, nonce: bytes
) -> SchedulerInfo | None:
    """Return the scheduler an offer describes if it proves a key of *ring* for *nonce*.

    Anything else (another datagram, a wrong key, another probe's nonce, an
    altered byte) gives None: an unproven scheduler is simply not a candidate.
    """
    if len(datagram) < _OFFER_HEAD.size or not datagram.startswith(_OFFER_MAGIC):
        return None
    magic, version, kid, proto, start, size = _OFFER_HEAD.unpack_from(datagram)
    if magic != _OFFER_MAGIC or version != _VERSION:
        return None
    if len(datagram) != _OFFER_HEAD.size + size + _PROOF_BYTES:
        return None
    key = ring.find(kid)
    if key is None:
        return None
    raw_name = datagram[_OFFER_HEAD.size : _OFFER_HEAD.size + size]
    info = SchedulerInfo(proto, start, decode_text(raw_name))
    if encode_text(info.netname) != raw_name:
        return None  # not canonical text: the proof would not cover what we read
    proof = datagram[_OFFER_HEAD.size + size :]
    if not hmac.compare_digest(proof, _offer_proof(key, kid, nonce, info)):
        return None
    return info


# --- scheduler announcements ------------------------------------------------------------


def _announce_proof(key: bytes, kid: bytes, info: SchedulerInfo, sent: int) -> bytes:
    described = b"%d/%d/%d/" % (info.version, info.start_time, sent) + encode_text(info.netname)
    return _proof(key, b"announcement", kid, (b"", b""), described)


def encode_proven_announcement(ring: KeyRing, info: SchedulerInfo, now: float) -> bytes | None:
    """Return an announcement of *info* proving the current key, sent at *now* (None: no key).

    Sent beside 1.4's ``ICE``/``ICF`` datagrams; its ``ICA+`` magic is
    neither of theirs, so 1.4 schedulers ignore it (reference §4.5).
    """
    name = encode_text(info.netname)
    if not ring.keys or len(name) > _MAX_NETNAME:
        return None
    key, kid, sent = ring.keys[0], ring.ids[0], int(now)
    head = _ANNOUNCE_HEAD.pack(
        _ANNOUNCE_MAGIC, _VERSION, kid, info.version, info.start_time, sent, len(name)
    )
    return head + name + _announce_proof(key, kid, info, sent)


def decode_proven_announcement(datagram: bytes, ring: KeyRing, now: float) -> SchedulerInfo | None:
    """Return the scheduler a proven announcement describes, or None.

    None for anything else: another datagram, a key we do not hold, an
    altered byte, or one sent more than :data:`ANNOUNCE_WINDOW` seconds from
    *now*.  A replay inside the window only repeats what a keyed scheduler
    said about itself, so it is not nonce-bound (it is broadcast).
    """
    if len(datagram) < _ANNOUNCE_HEAD.size or not datagram.startswith(_ANNOUNCE_MAGIC):
        return None
    _, version, kid, proto, start, sent, size = _ANNOUNCE_HEAD.unpack_from(datagram)
    if version != _VERSION or len(datagram) != _ANNOUNCE_HEAD.size + size + _PROOF_BYTES:
        return None
    key = ring.find(kid)
    if key is None or abs(now - sent) > ANNOUNCE_WINDOW:
        return None
    raw_name = datagram[_ANNOUNCE_HEAD.size : _ANNOUNCE_HEAD.size + size]
    info = SchedulerInfo(proto, start, decode_text(raw_name))
    if encode_text(info.netname) != raw_name:
        return None
    proof = datagram[_ANNOUNCE_HEAD.size + size :]
    if not hmac.compare_digest(proof, _announce_proof(key, kid, info, sent)):
        return None
    return info
