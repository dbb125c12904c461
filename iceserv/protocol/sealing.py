"""Encryption of a channel between iceserv peers (issue 14 item 4): keys and AEAD records.

Owns how the keys of a sealed channel are derived and how one protocol frame
becomes one sealed record and back.  It uses ``cryptography``'s AES-256-GCM
and HKDF-SHA256 (no cipher of our own) and imports that library at module
level, so it is imported only where a key is in hand: the services, and the
wrapper only once its daemon handed it a job key (the light path never
loads it; ``tests/client`` checks the import time).  Pure: no I/O, no clock,
no randomness (the caller passes salts and nonces).

Keys
----
* Daemon ↔ scheduler (:func:`link_keys`): HKDF over the network key, salted
  with both handshake nonces (daemon's, then scheduler's), with the key id
  and both TCP endpoints in ``info``: every authenticated connection gets
  fresh keys, one per direction.
* A job (:func:`job_key`): HKDF over the network key with the ticket text in
  ``info``.  The scheduler computes it at placement and sends it beside the
  ticket over its (sealed) link to the submitting daemon, which hands it to
  its client on the local endpoint; the compile server derives it from the
  ticket it verified.  The compiling user thus holds a key for its own job
  only, never the network key (HKDF is one-way).
* A client ↔ server channel (:func:`channel_keys`): HKDF over the job key,
  salted with 32 random bytes the client sends beside the ticket, one key per
  direction.  The salt makes the keys fresh even if a client sent one ticket
  twice; the server's ledger spends a ticket once, so it never reuses keys.

Records
-------
Once a direction is sealed, each frame (``u32 length``, ``u32 type``,
payload) travels as the payload of one iceserv-only ``SEALED`` frame: the
AES-GCM ciphertext of the whole inner frame with the outer 8-byte header as
associated data, under a 96-bit nonce that is the record counter (never
sent, never reused; the connection ends before it wraps).  So the peer
bounds a record by the outer length as soon as its 4 bytes arrive (at most
one frame of :data:`~iceserv.protocol.constants.MAX_MESSAGE_SIZE` plus
:data:`RECORD_OVERHEAD`), a reordered, dropped, replayed, truncated or
altered record fails to open (:class:`TamperedRecordError`), and an inner frame
must fill its record exactly.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iceserv.errors import LocalProtocolError, RemoteProtocolError
from iceserv.protocol.constants import IceservMsgType

if TYPE_CHECKING:
    from iceserv.protocol.auth import KeyRing, SealMaterial

__all__ = [
    "KEY_BYTES",
    "RECORD_OVERHEAD",
    "SALT_BYTES",
    "SEAL_OPTION",
    "WANT_SEAL",
    "Opener",
    "SealError",
    "Sealer",
    "TamperedRecordError",
    "channel_keys",
    "job_key",
    "link_keys",
]

#: Bytes of every derived key (AES-256).
KEY_BYTES: Final = 32
#: Bytes of the client's salt sent beside the ticket.
SALT_BYTES: Final = 32
#: The option word of AUTH_HELLO (the daemon can seal) and AUTH_CHALLENGE (sealed from now).
SEAL_OPTION: Final = "seal-aesgcm-v1"
#: The option word of AUTH_HELLO by which a daemon with ``encrypt = yes`` asks for sealing.
WANT_SEAL: Final = "seal-wanted"
_TAG_BYTES: Final = 16
_HEADER: Final = struct.Struct(">II")
#: A sealed record is its inner frame plus the outer header and the tag.
RECORD_OVERHEAD: Final = _HEADER.size + _TAG_BYTES
_SEALED: Final = int(IceservMsgType.SEALED)
_MAX_RECORDS: Final = 1 << 64  # a 96-bit nonce holds far more; the connection ends first
_LABEL: Final = b"iceserv-seal-v1"


class SealError(RemoteProtocolError):
    """A sealed channel cannot go on (the peer or the network broke it)."""

    def __init__(self, reason: str) -> None:
        """Carry *reason*, a short fixed phrase."""
        super().__init__(reason, msg_type=_SEALED)
        self.reason = reason


class TamperedRecordError(SealError):
    """A record failed authentication: altered, forged, replayed, reordered or cut."""


def _hkdf(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _info(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in (_LABEL, *parts))


def link_keys(material: SealMaterial) -> tuple[bytes, bytes]:
    """Return ``(daemon → scheduler, scheduler → daemon)`` keys of one authenticated link.

    *material* holds the proven key, its id, the daemon's and the scheduler's
    handshake nonces and the canonical endpoints (from the handshake objects).
    """
    from iceserv.protocol.auth import KEY_ID_BYTES, NONCE_BYTES  # noqa: PLC0415 - services only

    key, kid, nonces, ends = material.key, material.kid, material.nonces, material.ends
    if len(kid) != KEY_ID_BYTES or any(len(n) != NONCE_BYTES for n in nonces):
        msg = "link keys need a key id and both handshake nonces"
        raise LocalProtocolError(msg)
    okm = _hkdf(key, salt=nonces[0] + nonces[1], info=_info(b"link", kid, ends), length=64)
    return okm[:KEY_BYTES], okm[KEY_BYTES:]


def job_key(ring: KeyRing, ticket: str) -> bytes:
    """Return the session key of the job *ticket* stands for (under the ticket's key).

    Call it only with a ticket that verified (or that this scheduler issued);
    raise :class:`~iceserv.protocol.auth.AuthError` if no key of *ring* signed it.
    """
    # The services' side only: the wrapper, which imports this module, never loads auth.
    from iceserv.protocol.auth import KEY_ID_BYTES, AuthError  # noqa: PLC0415

    fields = ticket.split(" ")
    try:
        kid = bytes.fromhex(fields[1])
    except (IndexError, ValueError):
        msg = "malformed ticket"
        raise AuthError(msg) from None
    key = ring.find(kid) if len(kid) == KEY_ID_BYTES else None
    if key is None:
        msg = "unknown key"
        raise AuthError(msg)
    return _hkdf(key, salt=None, info=_info(b"job", ticket.encode()), length=KEY_BYTES)


def channel_keys(job: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """Return ``(client → server, server → client)`` keys of one job's channel."""
    if len(job) != KEY_BYTES or len(salt) != SALT_BYTES:
        msg = "malformed job key or salt"
        raise SealError(msg)
    okm = _hkdf(job, salt=salt, info=_info(b"channel"), length=64)
    return okm[:KEY_BYTES], okm[KEY_BYTES:]


def _nonce(counter: int) -> bytes:
    if counter >= _MAX_RECORDS:
        msg = "too many records on one key"
        raise LocalProtocolError(msg)
    return counter.to_bytes(12, "big")


def _aead(key: bytes) -> AESGCM:
    """Return the cipher for one direction's *key*; a key of another length is refused."""
    if len(key) != KEY_BYTES:
        msg = "a sealing key has 32 bytes"
        raise LocalProtocolError(msg)
    return AESGCM(key)


class Sealer:
    """Seal one direction's frames: record *n* under nonce *n*."""

    def __init__(self, key: bytes) -> None:
        """Use *key* (:data:`KEY_BYTES`) for this direction only."""
        self._aead = _aead(key)
        self.records = 0

    def seal(self, frame: bytes | bytearray | memoryview) -> bytes:
        """Return the SEALED frame that carries *frame* (one whole protocol frame)."""
        header = _HEADER.pack(4 + len(frame) + _TAG_BYTES, _SEALED)
        sealed = self._aead.encrypt(_nonce(self.records), bytes(frame), header)
        self.records += 1
        return header + sealed


class Opener:
    """Open one direction's records in order; any failure is final."""

    def __init__(self, key: bytes) -> None:
        """Use *key*, the peer's sending key for this direction."""
        self._aead = _aead(key)
        self.records = 0

    def open(self, header: bytes, sealed: bytes) -> bytes:
        """Return the inner frame of the record with outer *header* and payload *sealed*."""
        if len(sealed) < _TAG_BYTES + _HEADER.size:
            msg = "sealed record too short"
            raise TamperedRecordError(msg)
        try:
            inner = self._aead.decrypt(_nonce(self.records), sealed, header)
        except InvalidTag:
            msg = "sealed record failed authentication (tampered, forged, replayed or reordered)"
            raise TamperedRecordError(msg) from None
        self.records += 1
        if int.from_bytes(inner[:4], "big") != len(inner) - 4:
            msg = "sealed record does not hold exactly one frame"
            raise SealError(msg)
        return inner
