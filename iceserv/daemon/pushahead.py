"""Which native environments to push ahead to which hosts, one at a time (pure).

This module owns the daemon core's bookkeeping of *push-ahead* (issue 17,
item 1: the first transfer and unpack of a native environment on a remote
host is the largest part of a cold cluster's first compile once the
environment is prebuilt).  It does no I/O, reads no clock and does not log.

Theory of operation.  Every native environment that becomes ready (built at
start or on request, or kept from the last run) is *offered*.  Once the
scheduler is known to be iceserv's (its CS_CONF mark) each offer is asked
about once per scheduler connection (``PUSH_QUERY``: a 1.4 scheduler never
hears it); the answer (``PUSH_TARGETS``) names hosts that lack it, and each
``(host, environment)`` not pushed before in this run is queued.  Pushes run
one at a time and only while the core says it is idle (no local client waits
for or talks to a compile server): a client's own work always goes first,
and a push never starts behind it.  A push's end (pushed or failed) is
final for that host and environment in this run: a failure is logged, never
retried, and never touches a client.  A push that installed the environment
is remembered for :data:`RECENT` seconds: a job the scheduler placed there
before it saw the host's re-LOGIN is then told the host has it.  Losing the
scheduler forgets what was asked (the next one is asked again) but keeps the
queue: the targets are daemons, not the scheduler.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from iceserv.daemon.effects import PushEnv
from iceserv.protocol import EnvFeature

if TYPE_CHECKING:
    from iceserv.protocol import PushTargets

__all__ = ["MAX_QUEUED", "MAX_SEEN", "PushBook", "env_features", "env_name"]

#: Pushes waiting, at most (a scheduler names at most 8 hosts per environment).
MAX_QUEUED: Final = 64
#: Offers remembered, at most (one per native environment: a handful).
MAX_OFFERS: Final = 32
#: (host, environment) pairs remembered as pushed, at most: a scheduler naming ever new
#: hosts cannot make the daemon hold more, nor push more than this many times.
MAX_SEEN: Final = 1024
#: Seconds after a push during which a USE_CS to that host without the environment is
#: taken to predate the host's re-LOGIN (the scheduler placed the job before it knew).
RECENT: Final = 30.0
#: The suffixes a tarball's name ends with; the environment's name is what precedes it.
_SUFFIXES: Final = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tgz", ".tar")


def env_name(path: str) -> str:
    """Return the environment name clients use for tarball *path* ("" if not a tarball)."""
    base = path.rpartition("/")[2]
    for suffix in _SUFFIXES:
        if len(base) > len(suffix) and base.endswith(suffix):
            return base[: -len(suffix)]
    return ""


def env_features(path: str) -> int:
    """Return the environment features a host needs to unpack tarball *path* (its compression)."""
    if path.endswith(".tar.zst"):
        return int(EnvFeature.ENV_ZSTD)
    if path.endswith(".tar.xz"):
        return int(EnvFeature.ENV_XZ)
    return 0


def _split(address: str) -> tuple[str, int] | None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class _Offer:
    path: str
    target: str


class PushBook:
    """The environments one daemon pushes ahead; see the module docstring."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.running: PushEnv | None = None
        self._offers: dict[str, _Offer] = {}
        self._asked: set[str] = set()
        self._queue: collections.deque[PushEnv] = collections.deque()
        self._seen: set[tuple[str, int, str]] = set()  # queued, running or ended this run
        self._installed: dict[tuple[str, int, str], float] = {}  # pushed, and when

    # --- queries ---------------------------------------------------------------------

    @property
    def queued(self) -> tuple[PushEnv, ...]:
        """Pushes waiting, first first."""
        return tuple(self._queue)

    # --- changes ---------------------------------------------------------------------

    def offer(self, path: str, target: str, *, ask_now: bool) -> list[str]:
        """Environment tarball *path* (for *target*) is ready; return the names to ask about.

        *ask_now*: the scheduler is an iceserv one and listens.
        """
        name = env_name(path)
        if not name or (name not in self._offers and len(self._offers) >= MAX_OFFERS):
            return []
        self._offers[name] = _Offer(path, target)  # kept while off: asked about once on
        if not self.enabled or not ask_now or name in self._asked:
            return []
        self._asked.add(name)
        return [name]

    def scheduler_ready(self) -> list[str]:
        """Return the offers not yet asked about: an iceserv scheduler confirmed our login."""
        if not self.enabled:
            return []
        names = [n for n in self._offers if n not in self._asked]
        self._asked.update(names)
        return names

    def target_of(self, name: str) -> str:
        """Return the platform environment *name* runs on ("" if not offered)."""
        offer = self._offers.get(name)
        return offer.target if offer is not None else ""

    def features_of(self, name: str) -> int:
        """Return the environment features a host needs for *name* (0 if not offered)."""
        offer = self._offers.get(name)
        return env_features(offer.path) if offer is not None else 0

    def scheduler_lost(self) -> None:
        """Forget what was asked: the scheduler is gone, the next one is asked again."""
        self._asked.clear()

    def targets(self, answer: PushTargets) -> list[PushEnv]:
        """Queue the pushes *answer* names; return those queued (malformed ones skipped)."""
        offer = self._offers.get(answer.environment)
        if offer is None or not self.enabled:
            return []
        queued: list[PushEnv] = []
        for address in answer.hosts:
            split = _split(address)
            if split is None or len(self._queue) >= MAX_QUEUED or len(self._seen) >= MAX_SEEN:
                continue
            seen = (*split, answer.environment)
            if seen in self._seen:
                continue
            self._seen.add(seen)
            push = PushEnv(
                host=split[0],
                port=split[1],
                name=answer.environment,
                target=answer.target or offer.target,
                path=offer.path,
            )
            self._queue.append(push)
            queued.append(push)
        return queued

    def next(self, *, idle: bool) -> PushEnv | None:
        """Return the push to start now (None: one runs, none waits, or the daemon is busy)."""
        if self.running is not None or not self._queue or not idle or not self.enabled:
            return None
        self.running = self._queue.popleft()
        return self.running

    def finished(self, *, ok: bool, now: float) -> PushEnv | None:
        """Mark the running push ended (installed there if *ok*); return it (None if none ran)."""
        push, self.running = self.running, None
        if push is not None and ok:
            self._installed = {k: t for k, t in self._installed.items() if now - t < RECENT}
            self._installed[push.host, push.port, push.name] = now
        return push

    def installed(self, host: str, port: int, name: str, now: float) -> bool:
        """Return whether a push installed *name* at *host*:*port* less than RECENT s ago."""
        when = self._installed.get((host, port, name))
        return when is not None and now - when < RECENT

    def set_enabled(self, *, enabled: bool) -> None:
        """Turn push-ahead on or off (reload); off drops what waits, a running push ends alone."""
        self.enabled = enabled
        if not enabled:
            self._queue.clear()
