"""The daemon's work slots (reference §5.3) and the buffered input of queued compile jobs.

This module owns two pure pieces of bookkeeping: :class:`Slots`, which
decides who may start work now, and :class:`SourceBuffer`, which holds the
source a remote client streams while its job waits for a slot
("preloading").  Neither does I/O, reads the clock or logs; the server asks
:meth:`Slots.schedule` after every change and carries out the grants.

Theory of operation
-------------------
Capacity is ``max(1, max_kids)`` (upstream ``daemon/main.cpp``,
``Daemon::handle_old_request``).  Two kinds of work count against it:

* *children*: remote compiles (:attr:`Work.COMPILE`) and environment
  installs (:attr:`Work.INSTALL`; an install starts at once, without
  waiting, as 1.4 forks the unpacker immediately, but it occupies a slot);
* *active processes*: clients told to run the compiler themselves, i.e.
  link/``icerun`` go signals (:attr:`Work.LINK`) and "compile it yourself"
  reservations (:attr:`Work.USE_CS_SELF`).

Waiting clients sit in one FIFO per kind.  Each round, while the used count
is below capacity, the oldest LINK waiter is served first, then the oldest
USE_CS_SELF waiter, then, only while the load is below 1000, the oldest
COMPILE waiter.  A grant moves the client from its queue to ``running``;
:meth:`Slots.release` frees the slot.  A client is in at most one place.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass
from typing import Final

from iceserv.errors import IceservError

__all__ = ["FULL_LOAD", "Grant", "Slots", "SourceBuffer", "SourceTooLargeError", "Work"]

#: STATS load meaning "give me no jobs"; COMPILE waiters are not started at or above it.
FULL_LOAD: Final = 1000


class Work(enum.Enum):
    """What a slot is used for."""

    LINK = "local job (link, icerun, fallback)"
    USE_CS_SELF = "compile it yourself"
    COMPILE = "remote compile"
    INSTALL = "environment install"


#: The order in which waiters are served (INSTALL never waits).
_ORDER: Final = (Work.LINK, Work.USE_CS_SELF, Work.COMPILE)


@dataclass(frozen=True, slots=True)
class Grant:
    """Client ``client_id`` may start its ``work`` now; the slot is already counted."""

    client_id: int
    work: Work


class Slots:
    """Slot accounting and the 1.4 serving order; see the module's theory of operation."""

    def __init__(self, max_kids: int) -> None:
        if max_kids < 0:
            msg = f"max_kids must not be negative, got {max_kids}"
            raise ValueError(msg)
        self.max_kids = max_kids
        self._waiting: dict[Work, collections.OrderedDict[int, None]] = {
            work: collections.OrderedDict() for work in _ORDER
        }
        self._running: dict[int, Work] = {}

    @property
    def capacity(self) -> int:
        """How many slots there are: ``max(1, max_kids)``."""
        return max(1, self.max_kids)

    @property
    def used(self) -> int:
        """Slots in use (children plus active processes)."""
        return len(self._running)

    @property
    def children(self) -> int:
        """Remote compiles and installs running (1.4's ``current_kids``)."""
        return sum(1 for work in self._running.values() if work in (Work.COMPILE, Work.INSTALL))

    @property
    def installs(self) -> int:
        """Environment installs running (they start at once, as 1.4's, even on a full host)."""
        return sum(1 for work in self._running.values() if work is Work.INSTALL)

    @property
    def active(self) -> int:
        """Clients compiling locally with a slot (1.4's ``active_processes``)."""
        return self.used - self.children

    def waiting(self, work: Work | None = None) -> int:
        """Clients waiting for a slot, of one kind or of all kinds."""
        if work is not None:
            return len(self._waiting.get(work, {}))
        return sum(len(queue) for queue in self._waiting.values())

    def running(self, client_id: int) -> Work | None:
        """Return the work client ``client_id`` holds a slot for, if any."""
        return self._running.get(client_id)

    def is_waiting(self, client_id: int) -> bool:
        """Whether client ``client_id`` is queued."""
        return any(client_id in queue for queue in self._waiting.values())

    def enqueue(self, client_id: int, work: Work) -> None:
        """Queue *client_id* for *work* (LINK, USE_CS_SELF or COMPILE)."""
        if work is Work.INSTALL:
            msg = "installs do not wait; use start_install"
            raise ValueError(msg)
        self._check_absent(client_id)
        self._waiting[work][client_id] = None

    def start_install(self, client_id: int) -> None:
        """Count an environment install by *client_id* as a child, without waiting."""
        self._check_absent(client_id)
        self._running[client_id] = Work.INSTALL

    def _check_absent(self, client_id: int) -> None:
        if client_id in self._running or self.is_waiting(client_id):
            msg = f"client {client_id} already waits or holds a slot"
            raise ValueError(msg)

    def release(self, client_id: int) -> Work | None:
        """Forget *client_id*: free its slot or take it out of its queue; return what it had."""
        work = self._running.pop(client_id, None)
        if work is not None:
            return work
        for kind, queue in self._waiting.items():
            if client_id in queue:
                del queue[client_id]
                return kind
        return None

    def schedule(self, load: int) -> list[Grant]:
        """Return the grants to carry out now, in order, given the current *load* (0..1000)."""
        grants: list[Grant] = []
        while self.used < self.capacity:
            grant = self._next(load)
            if grant is None:
                break
            self._running[grant.client_id] = grant.work
            grants.append(grant)
        return grants

    def _next(self, load: int) -> Grant | None:
        for work in _ORDER:
            if work is Work.COMPILE and load >= FULL_LOAD:
                return None
            queue = self._waiting[work]
            if queue:
                client_id, _ = queue.popitem(last=False)
                return Grant(client_id, work)
        return None


class SourceTooLargeError(IceservError, ValueError):
    """A client sent more source than the daemon buffers for one job."""


class SourceBuffer:
    """The FILE_CHUNK stream of one compile job: buffered while queued, drained once running.

    The reader appends every chunk (:meth:`push`) and the end of the stream
    (:meth:`end`); the compile side takes what has arrived (:meth:`take`)
    and feeds it to the compiler.  Only bytes not yet taken count against
    *limit*, so a running job streams any amount, while a queued one cannot
    make the daemon hold more than *limit* bytes.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_compressed = 0
        self.in_uncompressed = 0
        self.ended = False
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_size = 0

    @property
    def pending(self) -> int:
        """Bytes received and not yet taken."""
        return self._pending_size

    def push(self, data: bytes, compressed_size: int) -> None:
        """Add one chunk (and its size on the wire, for the job statistics)."""
        if self.ended:
            msg = "FILE_CHUNK after the end of the source"
            raise ValueError(msg)
        if self._pending_size + len(data) > self.limit:
            msg = f"source exceeds the {self.limit}-byte buffer of a waiting job"
            raise SourceTooLargeError(msg)
        self.in_compressed += compressed_size
        self.in_uncompressed += len(data)
        if data:
            self._pending.append(data)
            self._pending_size += len(data)

    def end(self) -> None:
        """Mark the end of the stream (END received)."""
        self.ended = True

    def take(self) -> list[bytes]:
        """Return and forget every chunk received so far, oldest first."""
        pieces = list(self._pending)
        self._pending.clear()
        self._pending_size = 0
        return pieces
