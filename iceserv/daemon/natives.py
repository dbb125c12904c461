"""Which native environments are ready, being built or waiting to be built (pure).

This module owns the daemon core's bookkeeping of native environments
(issue 17, item 1: "environments are ready before they are needed").  It
does no I/O, reads no clock and does not log: the core passes ``now`` in
and turns the answers into sends and log effects.

Theory of operation.  Right after start the shell reports the compilers it
found (``NativesFound``): those with a tarball kept from the last run are
*ready*; the others are queued as *prebuilds*.  At most ``max_builds``
builds run at once (issue 20's cap on ``icecc --build-native``); the next
queued one starts when one ends.  A client's GET_NATIVE_ENV, once the shell
has checked its paths and turned it into a :class:`NativeKey` (compression,
compiler, extra files and their mtimes), is answered at once when that key
is ready; joins the build when one runs (a shared build, as 1.4 shares
``start_create_env``); moves it to the front when it is still queued; and
otherwise starts a build, or waits first in the queue.  A compiler that
changed has new mtimes, so a new key: it is built again, and the old
tarball is the shell's to drop.  The shell is the judge of what is on
disk: a ready key whose tarball vanished (evicted) is built again.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Final

from iceserv.daemon.effects import BuildNative, NativeKey

__all__ = ["Build", "NativeBook", "Outcome", "Ready"]

PREBUILD: Final = "prebuild"
REQUEST: Final = "request"
CACHE: Final = "cache"


@dataclass(frozen=True, slots=True)
class Ready:
    """A built tarball: where, who built it (prebuild, request, cache) and how long it took."""

    path: str
    origin: str
    seconds: float = 0.0


@dataclass(slots=True)
class Build:
    """A build queued (*started* None) or running, and the clients waiting for it."""

    key: NativeKey
    reason: str
    queued: float
    started: float | None = None
    waiters: dict[int, float] = field(default_factory=dict)  # client -> since when


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a finished build means: its record, and the builds to start now."""

    build: Build | None
    seconds: float
    start: tuple[BuildNative, ...] = ()


class NativeBook:
    """The native environments one daemon knows; see the module docstring."""

    def __init__(self, max_builds: int) -> None:
        self.max_builds = max(1, max_builds)
        self._ready: dict[NativeKey, Ready] = {}
        self._builds: dict[NativeKey, Build] = {}
        self._queue: collections.deque[NativeKey] = collections.deque()

    # --- queries ---------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Builds running now."""
        return sum(1 for b in self._builds.values() if b.started is not None)

    @property
    def queued(self) -> tuple[NativeKey, ...]:
        """Builds waiting to start, first to start first."""
        return tuple(self._queue)

    def ready(self, key: NativeKey) -> Ready | None:
        """Return the tarball known for *key*, if any."""
        return self._ready.get(key)

    def build_of(self, key: NativeKey) -> Build | None:
        """Return the queued or running build of *key*, if any."""
        return self._builds.get(key)

    # --- changes ---------------------------------------------------------------------

    def found(self, found: tuple[tuple[NativeKey, str], ...], now: float) -> list[BuildNative]:
        """Compilers found at start (key, kept tarball or ""): remember or queue them."""
        for key, path in found:
            if path:
                self._ready.setdefault(key, Ready(path, CACHE))
            elif key not in self._ready and key not in self._builds:
                self._builds[key] = Build(key, PREBUILD, queued=now)
                self._queue.append(key)
        return self._start(now)

    def request(
        self, conn_id: int, key: NativeKey, on_disk: str, now: float
    ) -> tuple[Ready | None, list[BuildNative]]:
        """Client *conn_id* wants *key*; *on_disk* is its tarball if the shell has one.

        Returns the ready tarball (answer now), or None and the builds to
        start (the client was added to a build's waiters).
        """
        known = self._ready.get(key)
        if on_disk:
            if known is None or known.path != on_disk:
                known = Ready(on_disk, CACHE)
                self._ready[key] = known
            return known, []
        self._ready.pop(key, None)  # gone from disk (evicted): build it again
        build = self._builds.get(key)
        if build is None:
            build = Build(key, REQUEST, queued=now)
            self._builds[key] = build
            self._queue.appendleft(key)  # a client waits: ahead of every prebuild
        elif build.started is None:
            self._queue.remove(key)
            self._queue.appendleft(key)
        build.waiters[conn_id] = now
        return None, self._start(now)

    def built(self, key: NativeKey, path: str, now: float) -> Outcome:
        """Record that the build of *key* ended (*path* "" = failed); start the next ones."""
        build = self._builds.pop(key, None)
        if build is None:
            return Outcome(None, 0.0, tuple(self._start(now)))
        if build.started is None:  # never started by us (cannot happen): drop from the queue
            self._queue.remove(key)
        seconds = max(0.0, now - (build.started if build.started is not None else now))
        if path:
            self._ready[key] = Ready(path, build.reason, seconds)
        return Outcome(build, seconds, tuple(self._start(now)))

    def _start(self, now: float) -> list[BuildNative]:
        started: list[BuildNative] = []
        while self._queue and self.running < self.max_builds:
            build = self._builds[self._queue.popleft()]
            build.started = now
            started.append(BuildNative(build.key, build.reason))
        return started
