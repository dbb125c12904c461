"""Job tickets (issue 14 item 3), sans I/O: issue, check and spend one.

A ticket lets a remote daemon check that the scheduler placed *this* job
from *this* client host on *this* server, recently, without the compiling
user ever holding the network key.  The scheduler issues it with the
placement (:func:`issue_ticket`); the remote daemon checks it
(:func:`verify_ticket`) and spends it once (:class:`TicketLedger`).  It is
HMAC-SHA256 over a domain label, the key id, the job id, both hosts and the
expiry.  JOB_TICKET carries it scheduler → submitting daemon → client →
compile server (:class:`~iceserv.protocol.messages.JobTicket`; the flow is
in ``docs/security.md``).  Hosts are written by :func:`ticket_address`, so
both ends spell an address alike.  Pure: no clock, no I/O.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, NoReturn

from iceserv.protocol.auth import KEY_ID_BYTES, AuthError, canonical_address

if TYPE_CHECKING:
    from iceserv.protocol.auth import KeyRing

__all__ = ["MAX_TICKET_TEXT", "TicketLedger", "issue_ticket", "ticket_address", "verify_ticket"]

_LABEL: Final = b"iceserv-ticket-v1"
_VERSION: Final = "t1"
_MAC_HEX: Final = 64
#: A ticket's text is at most this long (hosts are bounded names or addresses).
MAX_TICKET_TEXT: Final = 512
_FIELDS: Final = 7


_LOOPBACKS: Final = frozenset({"::1", "localhost"})


def ticket_address(host: str) -> str:
    """Return *host* as tickets name it: canonical text, and ``::1`` as ``127.0.0.1``.

    A server logged in from ``::1`` is named ``localhost`` in USE_CS, so its
    client connects to it over IPv4 loopback: both are this host.
    """
    address = canonical_address(host)
    return "127.0.0.1" if address in _LOOPBACKS else address


def _refuse(reason: str) -> NoReturn:
    raise AuthError(reason)


def _mac(key: bytes, kid: bytes, what: tuple[int, str, str, int]) -> bytes:
    job_id, client, server, expires = what
    numbers = (str(job_id).encode(), str(expires).encode())
    parts = (_LABEL, kid, numbers[0], client.encode(), server.encode(), numbers[1])
    return hmac.digest(key, b"".join(len(p).to_bytes(2, "big") + p for p in parts), "sha256")


def issue_ticket(ring: KeyRing, *, job_id: int, client: str, server: str, expires: int) -> str:
    """Return the ticket for job *job_id* of *client* on *server*, valid until *expires*.

    Signed with the ring's current key.  Host names must not contain ``" "``.
    """
    if not ring.keys or " " in client or " " in server:
        msg = "a ticket needs a key and host names without blanks"
        raise ValueError(msg)
    key, kid = ring.keys[0], ring.ids[0]
    mac = _mac(key, kid, (job_id, client, server, expires))
    return f"{_VERSION} {kid.hex()} {job_id} {client} {server} {expires} {mac.hex()}"


def verify_ticket(  # noqa: PLR0913 - what the ticket must match, each named
    ring: KeyRing, ticket: str, *, job_id: int, client: str, server: str, now: float
) -> int:
    """Check *ticket* for this job, client and server at *now*; return its expiry.

    Raises :class:`~iceserv.protocol.auth.AuthError` when it is malformed,
    signed with a key we do not hold, altered, for another job or host, or
    expired.
    """
    fields = ticket.split(" ") if len(ticket) <= MAX_TICKET_TEXT else []
    if len(fields) != _FIELDS or fields[0] != _VERSION:
        _refuse("malformed ticket")
    _, kid_hex, job_text, their_client, their_server, expires_text, mac_hex = fields
    try:
        kid = bytes.fromhex(kid_hex)
        mac = bytes.fromhex(mac_hex)
        their_job, expires = int(job_text), int(expires_text)
    except ValueError:
        _refuse("malformed ticket")
    if len(kid) != KEY_ID_BYTES or len(mac_hex) != _MAC_HEX:
        _refuse("malformed ticket")
    if (
        ticket
        != f"{_VERSION} {kid.hex()} {their_job} {their_client} {their_server} {expires} {mac.hex()}"
    ):
        # Only the spelling issue_ticket writes: "0005", "+5", "5_0" or upper-case hex would
        # carry the same MAC under another text, and the ledger spends texts (a replay).
        _refuse("malformed ticket")
    key = ring.find(kid)
    if key is None:
        _refuse("ticket signed with a key we do not hold")
    expected = _mac(key, kid, (their_job, their_client, their_server, expires))
    if not hmac.compare_digest(mac, expected):
        _refuse("altered ticket")
    if (their_job, their_client, their_server) != (job_id, client, server):
        _refuse("ticket for another job or host")
    if now > expires:
        _refuse("expired ticket")
    return expires


@dataclass(slots=True)
class TicketLedger:
    """The tickets already spent, until they expire: each one is good for one job.

    Bounded: at most ``limit`` entries; when full after dropping the expired
    ones, a new ticket is refused (fail closed) rather than forgetting one
    that could then be replayed.
    """

    limit: int = 65536
    _spent: dict[str, int] = field(default_factory=dict)

    def spend(self, ticket: str, expires: int, now: float) -> None:
        """Record *ticket* as used; raise :class:`AuthError` if it was used before."""
        if ticket in self._spent:
            _refuse("replayed ticket")
        if len(self._spent) >= self.limit:
            self._spent = {t: e for t, e in self._spent.items() if e >= now}
            if len(self._spent) >= self.limit:
                _refuse("too many live tickets")
        self._spent[ticket] = expires

    def __len__(self) -> int:
        """Return how many spent tickets are remembered."""
        return len(self._spent)
