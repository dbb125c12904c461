"""Which scheduler of a net name serves: the active one, or a passive standby (issue 19 item 3).

This module owns :class:`Standby`, the sans-I/O role machine of one
scheduler among several with the same net name.  It decides when to answer
discovery, when to watch another scheduler, when to take over and when to
step down; the asyncio shell (:mod:`iceserv.scheduler.server`) sends the
datagrams, makes the TCP check and hands the daemons over.  It must not do
I/O, use asyncio, log or read a clock.

Theory of operation
-------------------
::

    LISTENING --nobody of our net answered within `listen`--> ACTIVE
        |                                                      |  ^
        | an active scheduler of our net answered              |  | the watched one is dead:
        v                                                      |  | silent for `silence`, then
    STANDBY <--a better active scheduler of our net was heard--+  | the TCP check failed
        +---------------------------------------------------------+

*Who serves.*  The first scheduler up serves; any later one of the same net
name stays passive.  At start a scheduler broadcasts one discovery request
(the byte a daemon sends, reference §4.2; a dual-stack one also to the IPv6
group) and listens for ``listen`` seconds before answering anyone.  A reply
from another scheduler of its net name makes it the standby of that one
(the best one, if several answered) -- unless we are dual-stack and it is a
single-stack one of our version: the election of the ipv6 work prefers
dual-stack schedulers, so then both serve and the daemons choose us.
A standby answers no discovery request and sends no announcement (§4.5):
daemons never hear of it, and a 1.4 scheduler is never told that a
"better" one exists, so a standby cannot steal daemons whatever its
version, start time or clock (icecream#177).  Daemons that use ``-s`` with
the standby's address still log in to it: that is their choice.

*Watching.*  A standby sends the active one a unicast discovery request
every ``probe_interval`` seconds; 1.4's scheduler and ours answer every
request at once.  After ``silence`` seconds without an answer it asks for a
TCP connect to the active one's port (``Confirm``): a killed scheduler's
host refuses it at once, a cut link lets it time out, while a scheduler that
is only slow (a 1.4 scheduler blocks up to 10 s on GET_INTERNALS, §5.2) is
still accepted by its kernel and is not taken over.

*Taking over.*  The standby becomes active: it answers every discovery
request it heard in the last ``replay`` seconds (daemons that lost the old
scheduler are already asking, and a 1.4 daemon keeps listening for 3 s), and
announces itself.  It advertises the start time ``min(own, predecessor's) -
1``: by 1.4's rule (highest version, then the earliest start time, §4.4)
every daemon and every scheduler then prefers it to the one it replaced,
even if that one comes back with its old start time after a cut link.  The
start time is a term number that only goes down.

*Coming back.*  A restarted scheduler starts LISTENING, hears the active
one and stays passive, so daemons stay where they are.  An active scheduler
broadcasts a discovery request every ``rival_interval`` seconds; when a
better active one answers (a link that was cut comes back, two schedulers
started at once) it steps down: it hands its daemons over, as 1.4 does on a
better announcement (unless ``-r``), and becomes that one's standby.  Equal
version and start time (two started in the same second) are decided by the
address: the lower one serves.
"""

from __future__ import annotations

import collections
import enum
import math
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from iceserv.protocol import records
from iceserv.protocol.discovery import SchedulerInfo, is_better

__all__ = [
    "Address",
    "Announce",
    "AnswerRequest",
    "Confirm",
    "Probe",
    "ProbeAll",
    "Role",
    "Standby",
    "StandbyEffect",
    "StandbySettings",
    "StepDown",
    "TakeOver",
]

#: A socket address: ``(ip, port)`` of a scheduler, or of a requester (IPv6 ones are longer).
Address: TypeAlias = tuple[Any, ...]

#: Requests kept for the replay at a takeover, at most (older ones are dropped first).
_MAX_HEARD: Final = 8192


class Role(enum.Enum):
    """What this scheduler is now (see the theory of operation)."""

    LISTENING = "listening"
    STANDBY = "standby"
    ACTIVE = "active"


@dataclass(frozen=True, slots=True)
class StandbySettings:
    """Time-outs of the role machine, in seconds (see the theory of operation)."""

    listen: float = 1.0
    probe_interval: float = 0.5
    silence: float = 1.0
    replay: float = 3.0
    rival_interval: float = 2.0


@dataclass(frozen=True, slots=True)
class ProbeAll:
    """Broadcast one discovery request (to find an active scheduler, or a rival)."""


@dataclass(frozen=True, slots=True)
class Probe:
    """Send one discovery request to the watched scheduler at *address*."""

    address: Address


@dataclass(frozen=True, slots=True)
class Confirm:
    """Try a TCP connect to *address*; report with :meth:`Standby.confirmed`."""

    address: Address


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    """Answer the discovery request of a requester speaking *version* at *address*."""

    address: Address
    version: int


@dataclass(frozen=True, slots=True)
class TakeOver:
    """Serve from now on, advertising *info* (announce it, answer discovery)."""

    info: SchedulerInfo
    predecessor: Address | None


@dataclass(frozen=True, slots=True)
class Announce:
    """Broadcast the scheduler announcement of *info* (§4.5)."""

    info: SchedulerInfo


@dataclass(frozen=True, slots=True)
class StepDown:
    """A better active scheduler is at *address*: hand the daemons over, stay passive."""

    address: Address
    info: SchedulerInfo


StandbyEffect: TypeAlias = (
    ProbeAll | Probe | Confirm | AnswerRequest | TakeOver | Announce | StepDown
)


class Standby:
    """The role of one scheduler of net name ``own.netname``; see the module docstring."""

    def __init__(
        self, own: SchedulerInfo, settings: StandbySettings, now: float, *, dual: bool = False
    ) -> None:
        self.settings = settings
        #: Whether we are dual-stack for the election (routable IPv6 and IPv4).
        self.dual = dual
        #: What discovery replies and announcements say about us (the start time is a term).
        self.info = own
        self.role = Role.LISTENING
        #: The scheduler we watch (STANDBY) and what it said about itself.
        self.active: Address | None = None
        self.active_info: SchedulerInfo | None = None
        self._listen_until = now + settings.listen
        self._last_heard = now
        self._next_probe = now + settings.probe_interval
        self._confirming = False
        #: LISTENING: the active schedulers heard, and whether each is known dual-stack.
        self._candidates: dict[Address, tuple[SchedulerInfo, bool]] = {}
        self._heard: collections.deque[tuple[float, Address, int]] = collections.deque(
            maxlen=_MAX_HEARD
        )

    @property
    def serving(self) -> bool:
        """Whether discovery requests are answered now."""
        return self.role is Role.ACTIVE

    def start(self) -> list[StandbyEffect]:
        """Return the first effects: look for an active scheduler of our net name."""
        return [ProbeAll()]

    # --- timers -----------------------------------------------------------------------

    def get_timer(self) -> float:
        """Return the absolute time at which :meth:`handle_timer` must run next."""
        if self.role is Role.LISTENING:
            return self._listen_until
        if self.role is Role.STANDBY and self._confirming:
            return math.inf  # the check's answer comes first
        return self._next_probe

    def handle_timer(self, now: float) -> list[StandbyEffect]:
        """Run what is due at *now*."""
        if self.role is Role.LISTENING:
            return self._end_listening(now) if now >= self._listen_until else []
        if now < self._next_probe:
            return []
        if self.role is Role.ACTIVE:
            self._next_probe = now + self.settings.rival_interval
            return [ProbeAll()]
        if self._confirming:
            return []
        self._next_probe = now + self.settings.probe_interval
        assert self.active is not None  # noqa: S101 - STANDBY always watches someone
        if now - self._last_heard >= self.settings.silence:
            self._confirming = True
            return [Confirm(self.active)]
        return [Probe(self.active)]

    # --- what the shell reports -------------------------------------------------------

    def request_heard(self, address: Address, version: int, now: float) -> list[StandbyEffect]:
        """Answer a discovery request from *address* if active, else keep it for a replay."""
        if self.role is Role.ACTIVE:
            return [AnswerRequest(address, version)]
        self._heard.append((now, address, version))
        return []

    def scheduler_heard(
        self,
        address: Address,
        info: SchedulerInfo,
        now: float,
        *,
        wins_tie: bool,
        other_dual: bool = False,
    ) -> list[StandbyEffect]:
        """Another scheduler at *address* answered a request or announced itself as *info*.

        *wins_tie* says whether *address* is lower than our own address (the
        tie-break for equal version and start time); *other_dual* whether it
        is known to be dual-stack (it answered from a routable IPv6 address
        too).  Schedulers of another net name (compared as 1.4's schedulers
        do, case-sensitively) are ignored.
        """
        if info.netname != self.info.netname:
            return []
        if self.role is Role.LISTENING:
            known = self._candidates.get(address, (info, False))[1]
            self._candidates[address] = (info, known or other_dual)
            return []
        if self.role is Role.STANDBY:
            if address == self.active:
                self._last_heard = now
                self.active_info = info
            elif self.active_info is None or is_better(info, self.active_info):
                self._watch(address, info, now)  # follow the best one we know of
            return []
        if not self._prefers(info, other_dual=other_dual, wins_tie=wins_tie):
            return []
        self._watch(address, info, now)
        return [StepDown(address, info)]

    def confirmed(self, *, alive: bool, now: float) -> list[StandbyEffect]:
        """Take over if the TCP check of the watched scheduler failed (*alive* False)."""
        if self.role is not Role.STANDBY or not self._confirming:
            return []
        self._confirming = False
        if alive:
            self._last_heard = now  # slow, not dead: keep watching
            return []
        return self._take_over(now)

    # --- internals --------------------------------------------------------------------

    def _dual_wins(self, info: SchedulerInfo, *, other_dual: bool) -> bool:
        """Whether the election prefers us to *info* for being dual-stack (ipv6 notes)."""
        return self.dual and not other_dual and info.version == self.info.version

    def _prefers(self, info: SchedulerInfo, *, other_dual: bool, wins_tie: bool) -> bool:
        """Whether the election prefers the other scheduler: version, dual-stack, start, address."""
        if info.version != self.info.version:
            return info.version > self.info.version
        if self.dual != other_dual:
            return other_dual
        if info.start_time != self.info.start_time:
            return info.start_time < self.info.start_time
        return wins_tie

    def _end_listening(self, now: float) -> list[StandbyEffect]:
        """Watch the best active scheduler heard; take over if there is none to defer to.

        We defer to any of them, whatever its version or start time (no
        steal), except one of our version that is single-stack while we are
        dual-stack: then both serve, and daemons pick us (the election).
        """
        deferred = [
            (address, info)
            for address, (info, dual) in self._candidates.items()
            if not self._dual_wins(info, other_dual=dual)
        ]
        self._candidates.clear()
        if not deferred:
            return self._take_over(now)
        best = deferred[0]
        for item in deferred[1:]:
            if is_better(item[1], best[1]):
                best = item
        self._watch(*best, now)
        return []

    def _watch(self, address: Address, info: SchedulerInfo, now: float) -> None:
        self.role = Role.STANDBY
        self.active, self.active_info = address, info
        self._last_heard = now
        self._next_probe = now + self.settings.probe_interval
        self._confirming = False

    def _take_over(self, now: float) -> list[StandbyEffect]:
        predecessor = self.active
        if self.active_info is not None:
            start = min(self.info.start_time, self.active_info.start_time) - 1
            self.info = records.replace(self.info, start_time=max(start, 0))
        self.role = Role.ACTIVE
        self.active = self.active_info = None
        self._confirming = False
        self._next_probe = now + self.settings.rival_interval
        self._candidates.clear()
        effects: list[StandbyEffect] = [TakeOver(self.info, predecessor), Announce(self.info)]
        since = now - self.settings.replay
        effects += [
            AnswerRequest(address, version) for at, address, version in self._heard if at >= since
        ]
        self._heard.clear()
        return effects
