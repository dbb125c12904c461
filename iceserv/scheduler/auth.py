"""The scheduler's authentication gate of one connection before LOGIN (issue 14), pure.

Owns what the scheduler decides about a new peer under ``[cluster] auth``:
with ``off`` every message passes untouched (1.4's behaviour: an iceserv-only
AUTH_HELLO then reaches the core, which refuses it as any unknown message);
otherwise an AUTH_HELLO is answered with the challenge and the AUTH_PROOF
checked (:class:`~iceserv.protocol.auth.SchedulerHandshake`), and a LOGIN
without a proof is the mark of an icecream 1.4 or keyless daemon: refused
under ``require``, let in as *unauthenticated* under ``prefer`` (the core
then never places other hosts' jobs on it, see
:meth:`~iceserv.scheduler.handlers.Scheduler.peer_authenticated`).
Monitors (MON_LOGIN) are read-only and pass in every mode.  It neither logs
nor does I/O: the shell (:mod:`iceserv.scheduler.server`) sends what
:meth:`AuthGate.handle` returns, closes on a refusal and logs it once.

Theory of operation
-------------------
::

    OPEN --AUTH_HELLO--> CHALLENGED --AUTH_PROOF ok--> PROVEN --LOGIN--> DONE
      |                       |  (anything else, a bad proof: refused)
      +--LOGIN (prefer)--> DONE (unauthenticated)     LOGIN (require): refused

Sealing (issue 14 item 4): when the hello says the daemon can seal and either
side wants it, the challenge says so and everything we send after it is
sealed; everything the daemon sends after its proof is opened.  Keys come
from the proven key and both nonces (:func:`~iceserv.protocol.sealing.link_keys`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from iceserv.protocol.auth import AuthError, AuthMode, SchedulerHandshake
from iceserv.protocol.messages import AuthHello, AuthProof, Login, MonLogin
from iceserv.protocol.records import replace
from iceserv.protocol.sealing import SEAL_OPTION, WANT_SEAL, Opener, Sealer, link_keys

if TYPE_CHECKING:
    from iceserv.protocol import Message
    from iceserv.protocol.auth import Endpoints, KeyRing

__all__ = ["AuthGate", "AuthState", "Verdict"]


class AuthState(enum.StrEnum):
    """What a host proved; shown wherever the scheduler lists hosts."""

    OFF = "off"  # authentication is off: nobody is asked
    AUTHENTICATED = "authenticated"
    UNAUTHENTICATED = "unauthenticated"  # prefer: a 1.4 or keyless daemon


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one message: answer ``send``, hand ``forward`` to the core, or refuse."""

    send: Message | None = None
    forward: Message | None = None
    refuse: str = ""
    #: Seal what we send from now on (after ``send``) with this (issue 14 item 4).
    seal: Sealer | None = None
    #: Open what the peer sends from now on with this.
    open: Opener | None = None


class _Step(enum.Enum):
    OPEN = enum.auto()
    CHALLENGED = enum.auto()
    PROVEN = enum.auto()
    DONE = enum.auto()


class AuthGate:
    """One connection's authentication; see the module docstring."""

    def __init__(
        self,
        mode: AuthMode,
        ring: KeyRing | None,
        nonce: bytes,
        ends: Endpoints,
        *,
        encrypt: bool = False,
    ) -> None:
        """Check peers per *mode* with *ring*, our fresh *nonce* and the connection's *ends*.

        With *encrypt* (``[cluster] encrypt``) the link of a daemon that can
        seal is sealed; one that cannot is served in clear under ``prefer`` and
        refused under ``require``.  A daemon that asks for sealing gets it too.
        """
        self.mode = mode
        self.encrypt = encrypt
        #: Both directions are sealed (from the challenge on, ours; from the proof on, theirs).
        self.sealed = False
        self._handshake = (
            SchedulerHandshake(ring, nonce, ends)
            if mode is not AuthMode.OFF and ring is not None and ring.keys
            else None
        )
        self._step = _Step.DONE if self._handshake is None else _Step.OPEN
        self.state = AuthState.OFF
        self.key_id = ""
        self._opener_key = b""

    def handle(self, msg: Message) -> Verdict:
        """Decide about *msg*, the peer's next message."""
        if self._step is _Step.DONE or self._handshake is None:
            return Verdict(forward=msg)
        try:
            return self._handle(msg, self._handshake)
        except AuthError as exc:
            return Verdict(refuse=exc.reason)

    def _challenge(self, msg: AuthHello, handshake: SchedulerHandshake) -> Verdict:
        """Challenge the hello; seal our side from here when it is agreed (item 4)."""
        challenge = handshake.challenge(msg)
        can_seal = SEAL_OPTION in msg.options
        if self.encrypt and not can_seal and self.mode is AuthMode.REQUIRE:
            return Verdict(refuse="the daemon cannot encrypt (encrypt = yes)")
        if not can_seal or not (self.encrypt or WANT_SEAL in msg.options):
            return Verdict(send=challenge)
        self.sealed = True
        self._opener_key, ours = link_keys(handshake.material)
        return Verdict(send=replace(challenge, options=(SEAL_OPTION,)), seal=Sealer(ours))

    def _handle(self, msg: Message, handshake: SchedulerHandshake) -> Verdict:  # noqa: PLR0911 - one verdict per step
        if isinstance(msg, MonLogin):
            self._step = _Step.DONE  # monitors only read (issue 14 item 5 keeps them working)
            return Verdict(forward=msg)
        if self._step is _Step.OPEN and isinstance(msg, AuthHello):
            self._step = _Step.CHALLENGED
            return self._challenge(msg, handshake)
        if self._step is _Step.CHALLENGED:
            if not isinstance(msg, AuthProof):
                return Verdict(refuse=f"{type(msg).__name__} before the proof of the key")
            self.key_id = handshake.check(msg).hex()
            self._step = _Step.PROVEN
            self.state = AuthState.AUTHENTICATED
            if self.sealed:
                return Verdict(open=Opener(self._opener_key))
            return Verdict()
        if isinstance(msg, Login):
            if self._step is _Step.OPEN:
                if self.mode is AuthMode.REQUIRE:
                    return Verdict(refuse="no proof of the network key (icecream 1.4 or no key)")
                self.state = AuthState.UNAUTHENTICATED
            self._step = _Step.DONE
            return Verdict(forward=msg)
        if isinstance(msg, (AuthHello, AuthProof)):
            return Verdict(refuse=f"unexpected {type(msg).__name__}")
        return Verdict(forward=msg)  # e.g. 1.4's early STATS: the core decides
