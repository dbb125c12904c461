"""An index of the daemons so that placing a job does not scan every one of them.

This module owns :class:`HostIndex`: the hosts filed by what placement asks of
them (reference §7.5), kept up to date from the hosts the core *touches*, and
:meth:`HostIndex.pick`, which answers :func:`~iceserv.scheduler.placement.pick_server`
in O(log n) per host that would queue the job, and says "scan" for the rare
rest.  It must decide exactly as the scan does; the scan stays the oracle
(``tests/scheduler/test_index.py`` compares them on random clusters and on
random event streams through the real core).  It is pure: no I/O, logging or
clock.

Theory of operation
-------------------
The scan (``placement._pick_fastest``) walks the usable hosts in login order
(host ids only grow, so login order is id order) and

1. returns the first one that was never picked, or has neither statistics nor
   jobs, or was not picked for ``20 * hosts`` job ids (the early returns);
2. otherwise keeps a leader among hosts that have the job's environment
   ("installed"; the submitter always counts as such), and one among the
   others, and returns the installed leader if there is one.  A challenger
   takes the lead from a rated leader by a strictly higher 1.4 rating
   (:func:`~iceserv.scheduler.placement.server_speed`) when neither would
   queue the job, and by a strictly sooner expected finish when one of them
   would (both rated).  A leader without statistics is never beaten, and a
   host without statistics never takes the lead.

Every host is filed by the job-independent half of "usable": it has slots,
is not full (slots + preload), load under 1000, not installing, not pinged,
reachable, can chroot, takes remote jobs and is not drained (``ok``).  ``ok``
hosts are grouped in *classes* of equal platform, protocol version, features
and installed environments, so that the job-dependent half of "usable"
(platform, minimal version, required features) and "installed" are one test
per class.  Only the submitter's own host and a submitter's blacklist make
usability depend on more: the submitter is handled on its own, and a
submitter with a blacklist is scanned.

* Early returns: ``ok`` hosts never picked or without statistics and jobs are
  kept sorted by id (``_specials``), and every ``ok`` host in order of its
  last pick (``_by_pick``: integers, the last pick's job id above the host
  id), whose prefix is the stale ones.  The first usable of those (and the
  submitter, if it qualifies) is where the scan returns.  An entry may lag
  behind its host's later picks, never run ahead of them: a host picked
  again costs nothing until its old entry reaches the stale prefix, where it
  is moved to its place.
* Leaders: each class keeps its other hosts sorted by id (``members``), the
  ids of those that would queue, and a segment tree over login order of
  those with a free slot holding their rating (maximum) and expected finish
  (minimum).  The scan's walk is replayed over the hosts that would queue
  (and the submitter) one by one; between two of them every host has a free
  slot, so a free leader keeps the lead unless the run's highest rating beats
  it (the first such host in login order takes it), and a queueing leader
  loses it to the run's first host with a sooner finish, after which the rest
  of the run is again a maximum.  Both are tree queries.  A host with
  statistics but no rating makes the index hand over to the scan.

Keeping it current: whoever changes a field placement reads (jobs, load,
installing, ping, probe, statistics, last pick, environments, drain list,
login and logout) calls :meth:`ClusterState.touch` (or ``touch_all``).
Touched hosts are re-filed at the next pick, so an event costs O(log n) per
host it changed.  Login positions ("slots") are handed out in id order and
re-packed when they run out.

The timers: with a *deadline* function (the core's), each host is also filed
by its next deadline (probe, ping, installing) in a heap, so the earliest
deadline and the hosts due are found without a scan.  Entries carry the
host's filing version; an older entry is dropped when it reaches the top.  A
touch that leaves a host's deadline as it was (most do) pushes nothing.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from iceserv.errors import IceservError
from iceserv.scheduler import placement

if TYPE_CHECKING:
    from collections.abc import Callable

    from iceserv.protocol import EnvEntry
    from iceserv.scheduler.state import ClusterState, Host, Job

__all__ = ["HostIndex", "IndexMismatchError"]

_MIN_SLOTS: Final = 64
_INF: Final = math.inf

_ClassKey = tuple[str, int, int, tuple["EnvEntry", ...]]


class IndexMismatchError(IceservError, RuntimeError):
    """The index picked another host than the scan (only raised with ``check`` on)."""


class _Tree:
    """Free hosts of one class over login slots: maximum rating (and where) and minimum finish.

    A tournament tree: ``rate`` holds each slot's rating (``-inf``: no free
    host there), and ``win[node]`` the slot of the free host below *node* with
    the highest rating, the first in login order among equals, so "the first
    host with the highest rating in a range" is one pass over the range's
    canonical nodes, and the root answers it for every slot at once.  Only
    slots are stored above the leaves, so a level costs two look-ups and one
    float comparison.  ``finish`` is a plain minimum tree beside it, updated
    on its own (a free host's expected finish moves with its load and
    statistics, not with its jobs, so most updates stop at the leaf).
    """

    __slots__ = ("finish", "rate", "size", "win")

    def __init__(self, capacity: int) -> None:
        size = 1
        while size < capacity:
            size *= 2
        self.size = size
        self.rate = [-_INF] * size
        # Every node starts with its leftmost slot (all empty: the first among equals).
        win = [0] * (2 * size)
        win[size:] = range(size)
        for node in range(size - 1, 0, -1):
            win[node] = win[2 * node]
        self.win = win
        self.finish = [_INF] * (2 * size)

    def set(self, slot: int, speed: float, finish: float) -> None:
        """File the free host at *slot* with its rating and finish (``-inf``, ``inf``: none)."""
        rate, win = self.rate, self.win
        rate[slot] = speed
        i = (slot + self.size) >> 1
        while i:
            left = i + i
            w = win[left]
            v = win[left + 1]
            if rate[v] > rate[w]:  # strictly: the left (earlier) slot wins ties
                w = v
            if w == win[i] and w != slot:
                break  # the same winner, not the changed slot: nothing above changes
            win[i] = w
            i >>= 1
        fi = self.finish
        i = slot + self.size
        if fi[i] == finish:
            return
        fi[i] = finish
        i >>= 1
        while i:
            left = i + i
            c = fi[left]
            d = fi[left + 1]
            if d < c:  # noqa: PLR1730 - min() costs a call per level
                c = d
            if fi[i] == c:
                return  # this node is unchanged, and so is every node above it
            fi[i] = c
            i >>= 1

    def best(self, lo: int, hi: int) -> tuple[float, int]:
        """Return the highest rating in slots [lo, hi) and the first slot with it (-inf, -1)."""
        rate, win = self.rate, self.win
        top = win[1]
        if lo <= top < hi:
            # The first slot with the highest rating anywhere is also the first in any
            # range holding it (an equal one before it in the range would come first).
            speed = rate[top]
            return (speed, top) if speed > -_INF else (-_INF, -1)
        size = self.size
        speed, found = -_INF, -1
        a, b = lo + size, hi + size
        while a < b:
            if a & 1:
                w = win[a]
                r = rate[w]
                if r > speed or (r == speed and w < found):
                    speed, found = r, w
                a += 1
            if b & 1:
                b -= 1
                w = win[b]
                r = rate[w]
                if r > speed or (r == speed and w < found):
                    speed, found = r, w
            a >>= 1
            b >>= 1
        if speed == -_INF:
            return -_INF, -1
        return speed, found

    def first_finish_below(self, lo: int, hi: int, value: float) -> int:
        """Return the first slot in [lo, hi) finishing sooner than *value*, or -1."""
        tree = self.finish
        size = self.size
        if not tree[1] < value:
            return -1  # no slot at all finishes sooner
        # Collect the canonical nodes of [lo, hi) in left-to-right order; a node finishes
        # sooner than *value* iff some leaf below it does.
        left_nodes: list[int] = []
        right_nodes: list[int] = []
        a, b = lo + size, hi + size
        while a < b:
            if a & 1:
                left_nodes.append(a)
                a += 1
            if b & 1:
                b -= 1
                right_nodes.append(b)
            a >>= 1
            b >>= 1
        right_nodes.reverse()
        for top in left_nodes + right_nodes:
            if tree[top] < value:
                node = top
                while node < size:
                    node += node
                    if not tree[node] < value:
                        node += 1
                return node - size
        return -1


@dataclass(slots=True)
class _Filed:
    """Where one host is filed, as of its last re-filing."""

    slot: int
    cls: _Class | None = None  # its class, when ``ok``
    envs: tuple[EnvEntry, ...] = ()  # the host's environments when it was filed in *cls*
    special: bool = False
    pick_key: int = -1  # its key in _by_pick (-1: none), see HostIndex._pick_key
    version: int = 0  # of the timer entry
    when: float | None = None  # the deadline of the live timer entry (None: no entry)
    state: int = 0  # for a member: _FREE, _QUEUES, _STATLESS or _UNRATED
    may_take: bool = False


#: A member's state in its class (``_Filed.state``); 0: not a member.
_FREE: Final = 1  # in the class's tree
_QUEUES: Final = 2  # in ``queueing``
_STATLESS: Final = 3  # leads only as the first usable host
_UNRATED: Final = 4  # counted in ``unrated``: the index hands over to the scan

#: The least number of bits for a host id in a pick key (more when ids outgrow it).
_PICK_BITS: Final = 32


@dataclass(eq=False, slots=True)
class _Class:
    """The ``ok`` hosts of one (platform, version, features, environments) that are not special."""

    key: _ClassKey
    platform: str
    version: int
    features: int
    envs: tuple[EnvEntry, ...]
    tree: _Tree
    everyone: list[int] = field(default_factory=list)  # ids, sorted
    members: list[int] = field(default_factory=list)  # those not special
    queueing: list[int] = field(default_factory=list)
    unrated: int = 0


class HostIndex:
    """The hosts of one :class:`ClusterState`, filed for placement (see the module docstring)."""

    __slots__ = (
        "_by_pick",
        "_capacity",
        "_classes",
        "_filed",
        "_may_take",
        "_next_slot",
        "_pick_bits",
        "_slot_host",
        "_specials",
        "_timers",
        "check",
        "deadline",
        "dirty",
        "picks",
        "scans",
        "state",
    )

    def __init__(
        self, state: ClusterState, deadline: Callable[[Host], float] | None = None
    ) -> None:
        self.state = state
        self.deadline = deadline
        self._timers: list[tuple[float, int, int]] = []  # (deadline, host id, version)
        self.dirty: set[int] = set(state.hosts)
        self.check = False  # tests: compare every answer with the scan
        self.picks = 0  # answered from the index
        self.scans = 0  # handed back to the scan
        self._filed: dict[int, _Filed] = {}
        self._classes: dict[_ClassKey, _Class] = {}
        self._specials: list[int] = []
        self._by_pick: list[int] = []  # pick keys, sorted
        self._pick_bits = _PICK_BITS
        self._may_take = 0
        self._capacity = _MIN_SLOTS
        self._next_slot = 0
        self._slot_host: list[int] = [0] * _MIN_SLOTS

    # --- filing -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-file every touched host (in id order, so new hosts get slots in login order)."""
        if not self.dirty:
            return
        dirty = sorted(self.dirty)
        self.dirty.clear()
        for host_id in dirty:
            self._refile(host_id)

    def _refile(self, host_id: int) -> None:
        filed = self._filed.get(host_id)
        host = self.state.hosts.get(host_id)
        if filed is not None and host is not None and self._refile_member(host, filed):
            return
        if filed is not None:
            self._unfile(host_id, filed)
        if host is None:
            self._filed.pop(host_id, None)
            return
        if filed is None:
            filed = self._filed[host_id] = _Filed(self._new_slot(host_id))
        self._file_deadline(host, filed)
        filed.may_take = placement.may_take_a_job(host)
        self._may_take += filed.may_take
        if not self._ok(host):
            return
        key: _ClassKey = (host.platform, host.version, host.features, host.envs)
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = _Class(
                key, host.platform, host.version, host.features, host.envs, _Tree(self._capacity)
            )
        filed.cls = cls
        filed.envs = host.envs
        filed.pick_key = self._pick_key(host)
        insort(self._by_pick, filed.pick_key)
        insort(cls.everyone, host_id)
        if not host.last_picked_id or (not len(host.compiled) and not host.jobs):
            filed.special = True  # an early return of the scan when usable
            insort(self._specials, host_id)
            return
        insort(cls.members, host_id)
        self._file_state(host, filed, cls)

    def _refile_member(self, host: Host, filed: _Filed) -> bool:
        """Re-file a member that stays one of its class, at its place in login and pick order.

        The common touch (a job placed, begun or ended, a load came): only the
        host's state within its class and its place in pick order are redone,
        not its place in the other sorted lists.  Returns False (nothing done)
        for every other case, which :meth:`_refile` handles by unfiling and
        filing.
        """
        cls = filed.cls
        if (
            cls is None
            or filed.special
            or not host.last_picked_id
            or (not len(host.compiled) and not host.jobs)  # it would become special
            # The same tuple as at filing (the common case) is equal without comparing
            # its entries one by one.
            or (host.envs is not filed.envs and host.envs != cls.envs)
            or host.platform != cls.platform
            or host.version != cls.version
            or host.features != cls.features
            or not self._ok(host)
        ):
            return False
        # Its id was checked against the key's width when it was filed: no _pick_key().
        pick_key = host.last_picked_id << self._pick_bits | host.host_id
        if pick_key < filed.pick_key:
            # Picked for an older job than its entry says (rare): move the entry back, as
            # it must never be later than the host's last pick.  A later pick (the common
            # case) leaves it where it is, for _early to move when it gets there.
            self._move_pick_key(filed, pick_key)
        if self.deadline is not None:
            when = self.deadline(host)
            if when != filed.when:  # most touches (a job placed or done) leave it as it was
                self._push_deadline(host.host_id, filed, when)
        may_take = placement.may_take_a_job(host)
        if may_take != filed.may_take:
            self._may_take += 1 if may_take else -1
            filed.may_take = may_take
        self._file_state(host, filed, cls)
        return True

    def _file_state(self, host: Host, filed: _Filed, cls: _Class) -> None:
        """File member *host*'s state within *cls*, moving it from where it was filed."""
        old = filed.state
        if not len(host.compiled):
            new = _STATLESS  # leads only as the first usable host
        elif not placement.rated(host):
            new = _UNRATED
        elif placement.queues_at(host):
            new = _QUEUES
        else:
            speed, finish = placement.rating_and_finish(host)
            cls.tree.set(filed.slot, speed, finish)
            new = _FREE
        if old == new:
            return
        filed.state = new
        if old == _FREE:
            cls.tree.set(filed.slot, -_INF, _INF)
        elif old == _QUEUES:
            _remove_sorted(cls.queueing, host.host_id)
        elif old == _UNRATED:
            cls.unrated -= 1
        if new == _QUEUES:
            insort(cls.queueing, host.host_id)
        elif new == _UNRATED:
            cls.unrated += 1

    def _move_pick_key(self, filed: _Filed, pick_key: int) -> None:
        by_pick = self._by_pick
        del by_pick[bisect_left(by_pick, filed.pick_key)]  # every filed ``ok`` host has one
        filed.pick_key = pick_key
        insort(by_pick, pick_key)

    def _pick_key(self, host: Host) -> int:
        """Return *host*'s key in pick order: ``last_picked_id`` above, the host id below.

        Keys are plain integers (cheaper to build and compare than pairs).  The
        low ``_pick_bits`` hold the id; an id that does not fit widens every key.
        """
        if host.host_id >> self._pick_bits:
            self._widen_pick_keys(host.host_id.bit_length())
        return host.last_picked_id << self._pick_bits | host.host_id

    def _widen_pick_keys(self, bits: int) -> None:
        old = self._pick_bits
        mask = (1 << old) - 1
        self._pick_bits = bits = max(bits, 2 * old)
        for filed in self._filed.values():
            if filed.pick_key >= 0:
                filed.pick_key = (filed.pick_key >> old) << bits | (filed.pick_key & mask)
        self._by_pick = sorted(f.pick_key for f in self._filed.values() if f.pick_key >= 0)

    def _file_deadline(self, host: Host, filed: _Filed) -> None:
        """File *host*'s next deadline, unless its entry in the heap says it already."""
        if self.deadline is None:
            return
        when = self.deadline(host)
        if when != filed.when:  # most touches (a job placed or done) leave it as it was
            self._push_deadline(host.host_id, filed, when)

    def _push_deadline(self, host_id: int, filed: _Filed, when: float) -> None:
        filed.version += 1  # the older entry, if any, no longer counts
        filed.when = when
        if when < _INF:
            heapq.heappush(self._timers, (when, host_id, filed.version))

    def _unfile(self, host_id: int, filed: _Filed) -> None:
        self._may_take -= filed.may_take
        filed.may_take = False
        cls, filed.cls, filed.envs = filed.cls, None, ()
        if cls is None:
            return
        _remove_sorted(self._by_pick, filed.pick_key)
        filed.pick_key = -1
        _remove_sorted(cls.everyone, host_id)
        if filed.special:
            _remove_sorted(self._specials, host_id)
            filed.special = False
        else:
            _remove_sorted(cls.members, host_id)
            if filed.state == _QUEUES:
                _remove_sorted(cls.queueing, host_id)
            elif filed.state == _UNRATED:
                cls.unrated -= 1
            elif filed.state == _FREE:
                cls.tree.set(filed.slot, -_INF, _INF)
            filed.state = 0
        if not cls.everyone:
            del self._classes[cls.key]

    def _new_slot(self, host_id: int) -> int:
        slot = self._next_slot
        if slot < self._capacity and (not slot or host_id > self._slot_host[slot - 1]):
            self._slot_host[slot] = host_id
            self._next_slot += 1
            return slot
        return self._repack(host_id)

    def _repack(self, new_id: int) -> int:
        """Give every filed host and *new_id* a slot again, in id order; return *new_id*'s."""
        ids = sorted([*self._filed, new_id])
        # A power of two (every tree's size) with room for a quarter more logins: no
        # tree level is there for empty slots only, and repacking stays amortised O(log n).
        capacity = _MIN_SLOTS
        while capacity < len(ids) + len(ids) // 4 + 1:
            capacity *= 2
        self._capacity = capacity
        self._slot_host = [0] * self._capacity
        self._slot_host[: len(ids)] = ids
        self._next_slot = len(ids)
        for slot, host_id in enumerate(ids):
            if host_id != new_id:
                self._filed[host_id].slot = slot
        for cls in self._classes.values():
            cls.tree = _Tree(self._capacity)
            for host_id in cls.members:
                filed = self._filed[host_id]
                if filed.state == _FREE:
                    speed, finish = placement.rating_and_finish(self.state.hosts[host_id])
                    cls.tree.set(filed.slot, speed, finish)
        return bisect_left(ids, new_id)

    def _ok(self, host: Host) -> bool:
        """Return the job-independent half of usable, for a host that is not the submitter."""
        return (
            host.max_jobs > 0
            and len(host.jobs) < host.max_jobs + placement.preload_slots(host)
            and host.load < placement.FULL_LOAD
            and host.busy_installing_since is None
            and host.ping_deadline is None
            and host.probe.accepting
            and host.chroot_possible
            and not host.noremote
            and not (self.state.drained and self.state.is_drained(host))
        )

    def compare(self, job: Job, picked: Host | None, scanned: Host | None) -> None:
        """Raise :class:`IndexMismatchError` unless the index and the scan agree (``check``)."""
        if picked is not scanned:
            text = (
                f"job {job.job_id}: the index picked "
                f"{picked.host_id if picked else None}, the scan "
                f"{scanned.host_id if scanned else None}"
            )
            raise IndexMismatchError(text)

    def compare_all(self, job: Job, listed: list[Host], scanned: list[Host]) -> None:
        """Raise :class:`IndexMismatchError` unless both list the same usable hosts (``check``)."""
        if listed != scanned:
            text = (
                f"job {job.job_id}: the index lists {[h.host_id for h in listed]}, "
                f"the scan {[h.host_id for h in scanned]}"
            )
            raise IndexMismatchError(text)

    # --- timers -------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """Return the earliest host deadline (``inf`` if none)."""
        self.refresh()
        timers, filed = self._timers, self._filed
        while timers:
            _, host_id, version = timers[0]
            f = filed.get(host_id)
            if f is not None and f.version == version:
                return timers[0][0]
            heapq.heappop(timers)
        return _INF

    def due(self, now: float) -> list[int]:
        """Remove and return, in login order, the hosts whose deadline is *now* or earlier.

        The caller runs their timers and touches them, which files their next deadline.
        """
        self.refresh()
        timers, filed = self._timers, self._filed
        found: set[int] = set()
        while timers and timers[0][0] <= now:
            _, host_id, version = heapq.heappop(timers)
            f = filed.get(host_id)
            if f is not None and f.version == version:
                found.add(host_id)
                f.when = None  # its entry is gone: the next filing pushes one again
        if len(timers) > 4 * len(filed) + _MIN_SLOTS:
            self._timers = [e for e in timers if (f := filed.get(e[1])) and f.version == e[2]]
            heapq.heapify(self._timers)
        return sorted(found)

    # --- answers ------------------------------------------------------------------------

    def any_may_take(self) -> bool:
        """Whether some host passes ``placement.may_take_a_job`` (O(1))."""
        self.refresh()
        return self._may_take > 0

    def pick(self, job: Job) -> tuple[bool, Host | None]:
        """Return ``(True, host)`` as the scan would decide, or ``(False, None)``: scan.

        For a job with statistics in the cluster and no preferred host (the
        caller handles those cases).
        """
        self.refresh()
        state = self.state
        own = state.hosts[job.submitter]
        if own.blacklist or state.family_limited:
            return False, None  # the scan applies the blacklist and placement.reachable
        fit = placement.JobFit(state, job)
        own_usable = fit.usable(own)
        stale_before = job.job_id - placement.EXPLORE_IDS_PER_HOST * len(state.hosts)
        early = self._early(fit, own, own_usable=own_usable, stale_before=stale_before)
        if early is not None:
            return self._early_answer(early, job)
        installed: list[_Class] = []
        uninstalled: list[_Class] = []
        for cls in self._classes.values():
            if cls.members and self._compatible(cls, fit):
                (installed if _installed(cls, job) else uninstalled).append(cls)
        if own_usable or installed:
            return self._leader(installed, job, own if own_usable else None)
        return self._leader(uninstalled, job, None)

    def usable_hosts(self, job: Job) -> list[Host] | None:
        """Return the hosts that can take *job* now in login order, or ``None``: scan.

        Those are the ``ok`` hosts of the classes that fit the job, and the
        submitter if it can take its own job; a blacklist makes it scan.
        """
        self.refresh()
        state = self.state
        own = state.hosts[job.submitter]
        if own.blacklist or state.family_limited:
            return None
        fit = placement.JobFit(state, job)
        ids: list[int] = []
        for cls in self._classes.values():
            if self._compatible(cls, fit):
                ids += cls.everyone
        if fit.usable(own):
            ids.append(own.host_id)
        return [state.hosts[host_id] for host_id in sorted(set(ids))]

    def _early(
        self, fit: placement.JobFit, own: Host, *, own_usable: bool, stale_before: int
    ) -> Host | None:
        """Return the first usable host in login order where the scan returns early, if any."""
        hosts = self.state.hosts
        first: Host | None = None
        for host_id in self._specials:
            host = hosts[host_id]
            if fit.usable(host):
                first = host
                break
        bits = self._pick_bits
        mask = (1 << bits) - 1
        stale_key = stale_before << bits  # a key below it: picked before stale_before
        by_pick = self._by_pick
        i = 0
        while i < len(by_pick) and by_pick[i] < stale_key:
            pick_key = by_pick[i]
            host_id = pick_key & mask
            host = hosts[host_id]
            if host.last_picked_id << bits | host_id != pick_key:
                # Picked since its entry was made: move it to its place (later, as entries
                # never run ahead), where the loop meets it again if it is stale still.
                self._move_pick_key(self._filed[host_id], host.last_picked_id << bits | host_id)
                continue
            i += 1
            if (first is None or host_id < first.host_id) and fit.usable(host):
                first = host
        if (
            own_usable
            and (first is None or own.host_id < first.host_id)
            and (
                not own.last_picked_id
                or (not len(own.compiled) and not own.jobs)
                or own.last_picked_id < stale_before
            )
        ):
            first = own
        return first

    @staticmethod
    def _early_answer(host: Host, job: Job) -> tuple[bool, Host | None]:
        if not host.last_picked_id:
            return True, host
        if not len(host.compiled) and not host.jobs:
            # The scan returns it if installed, else the installed leader so far: scan.
            if host.host_id == job.submitter or (host.envs and placement.envs_match(host, job)):
                return True, host
            return False, None
        return True, host  # stale: picked again to refresh its rating

    @staticmethod
    def _compatible(group: _Class, fit: placement.JobFit) -> bool:
        return (
            group.platform in fit.runs_on
            and group.version >= fit.min_version
            and group.features & fit.required == fit.required
        )

    def _leader(
        self, category: list[_Class], job: Job, own: Host | None
    ) -> tuple[bool, Host | None]:
        """Replay the scan's leader walk over *category* (and the submitter); see the docstring."""
        hosts = self.state.hosts
        own_id = own.host_id if own is not None else -1
        first_id = own_id  # the first host in login order: the scan's first leader
        queueing: list[int] = []
        unrated = False
        for cls in category:
            members = cls.members
            host_id = members[0] if members[0] != own_id or len(members) == 1 else members[1]
            if first_id < 0 or host_id < first_id:
                first_id = host_id
            if cls.queueing:
                queueing += cls.queueing
            if cls.unrated:
                unrated = True
        if first_id < 0:
            return True, None
        first = hosts[first_id]
        if not len(first.compiled):
            return True, first  # an unrated first leader is never beaten
        if unrated or (own is not None and not placement.rated(own)):
            return False, None
        if own is not None:
            queueing.append(own_id)
        points = sorted(set(queueing)) if len(queueing) > 1 else queueing
        walk = _Walk(self, category, job)
        for host_id in points:
            slot = self._filed[host_id].slot
            walk.run_to(slot)
            walk.challenge(hosts[host_id], own=host_id == own_id)
            walk.pos = slot + 1
        # Past the last login slot every tree is empty: up to the tree's size, the whole
        # walk without queueing hosts is the root's answer.
        walk.run_to(category[0].tree.size if category else self._next_slot)
        return True, walk.leader


class _Walk:
    """The scan's leader, replayed over runs of free hosts (tree queries) and single hosts."""

    __slots__ = ("finish", "index", "job", "leader", "pos", "queues", "speed", "trees")

    def __init__(self, index: HostIndex, category: list[_Class], job: Job) -> None:
        self.index = index
        self.trees = [cls.tree for cls in category]
        self.job = job
        self.leader: Host | None = None
        self.speed = 0.0  # the leader's rating for this job
        self.finish = 0.0  # and its expected finish
        self.queues = False
        self.pos = 0  # the next slot to walk

    def run_to(self, end: int) -> None:
        """Walk the free hosts in slots [pos, end)."""
        lo = self.pos
        trees = self.trees
        if lo >= end or not trees:
            return
        if self.leader is not None and self.queues:
            lo = self._sooner(lo, end)
            if lo < 0:
                return
        # Without a leader the first free host leads and then loses to the first with the
        # run's highest rating, if that beats it: either way the first with the highest.
        # A free leader loses to the first with the run's highest rating if that beats it,
        # so not at all when no free host anywhere is rated higher (the roots say).
        if len(trees) == 1:
            tree = trees[0]
            if self.leader is not None and tree.rate[tree.win[1]] <= self.speed:
                return
            best, slot = tree.best(lo, end)
        else:
            best, slot, tree = -_INF, -1, trees[0]
            for t in trees:
                speed, where = t.best(lo, end)
                if speed > best or (speed == best and 0 <= where < slot):
                    best, slot, tree = speed, where, t
        if slot >= 0 and (self.leader is None or best > self.speed):
            self._lead(slot, best, tree.finish[slot + tree.size])

    def _sooner(self, lo: int, end: int) -> int:
        """Let the first free host in [lo, end) to finish sooner than the queueing leader lead.

        Returns the slot after it, or -1 if there is none.
        """
        slot, tree = -1, self.trees[0]
        for t in self.trees:
            s = t.first_finish_below(lo, end, self.finish)
            if s >= 0 and (slot < 0 or s < slot):
                slot, tree = s, t
        if slot < 0:
            return -1
        self._lead(slot, tree.rate[slot], tree.finish[slot + tree.size])
        return slot + 1

    def _lead(self, slot: int, speed: float, finish: float) -> None:
        """Make the free host at *slot* the leader (its rating and finish, as filed)."""
        index = self.index
        self.leader = index.state.hosts[index._slot_host[slot]]  # noqa: SLF001 - same module
        self.queues = False
        self.speed = speed
        self.finish = finish

    def challenge(self, host: Host, *, own: bool) -> None:
        """Let a single host (one that would queue, or the submitter) challenge the leader."""
        speed, finish = placement.rating_and_finish(host, self.job if own else None)
        queues = placement.queues_at(host)
        if self.leader is None:
            take = True
        elif queues or self.queues:
            take = finish < self.finish
        else:
            take = self.speed < speed
        if take:
            self.leader, self.speed, self.finish, self.queues = host, speed, finish, queues


def _installed(cls: _Class, job: Job) -> bool:
    """Whether a host of *cls* (not the submitter) has one of the job's environments."""
    for installed in cls.envs:
        if installed.platform != job.target:
            continue
        for env in job.envs:
            if env.name == installed.name and (
                env.platform == cls.platform
                or cls.platform in placement.COMPATIBLE.get(env.platform, ())
            ):
                return True
    return False


def _remove_sorted(items: list[Any], item: object) -> None:
    i = bisect_left(items, item)
    if i < len(items) and items[i] == item:
        del items[i]
