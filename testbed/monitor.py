"""A monitor connection to any icecream scheduler, decoded without iceserv.

Owns ``SchedulerMonitor``: log in to a scheduler (real or ours) as a monitor
the way icemon and icecream-sundae do (reference §5.5), record every event on
a reader thread and answer the questions an end-to-end test asks: which
daemons are logged in (``MON_STATS`` ``Name:``), which sent their first STATS
(the ``LoadAvg1`` key), and where jobs ran (``MON_JOB_BEGIN``'s server host
id, ``MON_JOB_DONE``'s exit code, ``MON_LOCAL_JOB_BEGIN``).

The few message layouts it needs are decoded here from the reference
(§1.4 handshake, §1.5 framing, §1.6 primitives, §2.2 ``MON_*``), not with
``iceserv.protocol``: the bed must not depend on the code under test, and an
observer that shares no code with our scheduler cannot share its bugs.  The
reader runs all the time because a scheduler drops a monitor whose socket
buffer fills (§5.5).  It must never send anything after ``MON_LOGIN``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Self

from testbed.errors import TestbedError
from testbed.wait import wait_for

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Iterable
    from types import TracebackType

    from testbed.hosts import Host

MONITOR_VERSION: Final = 43
MAX_MESSAGE: Final = 1 << 20
_HANDSHAKE_TIMEOUT: Final = 20.0
_POLL: Final = 0.2
# Message type codes: consecutive ASCII letters from 'A' (reference §2.1).
MON_LOGIN: Final = ord("R")
MON_GET_CS: Final = ord("S")
MON_JOB_BEGIN: Final = ord("T")
MON_JOB_DONE: Final = ord("U")
MON_LOCAL_JOB_BEGIN: Final = ord("V")
MON_STATS: Final = ord("W")
JOB_LOCAL_DONE: Final = ord("O")
END: Final = ord("C")


@dataclass(frozen=True)
class MonitorEvent:
    """One decoded message from the scheduler; fields not in its layout stay None/empty."""

    kind: str
    host_id: int | None = None
    job_id: int | None = None
    exitcode: int | None = None
    text: str = ""
    at: float = field(default=0.0, compare=False)  # time.monotonic() when it was read


class _Reader:
    """Just enough of the primitive decoding (§1.6) for the ``MON_*`` layouts."""

    def __init__(self, payload: bytes) -> None:
        self.data = payload
        self.pos = 0

    def u32(self) -> int:
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def i32(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> str:
        size = self.u32()
        raw = self.data[self.pos : self.pos + size]
        self.pos += size
        return raw.split(b"\0", 1)[0].decode(errors="replace")


def _stats(read: _Reader) -> MonitorEvent:
    return MonitorEvent("MON_STATS", host_id=read.u32(), text=read.string())


def _get_cs(read: _Reader) -> MonitorEvent:  # protocol >= 29: file, lang, job id, submitter
    text = read.string()
    read.u32()
    job_id = read.u32()
    return MonitorEvent("MON_GET_CS", job_id=job_id, host_id=read.u32(), text=text)


def _job_begin(read: _Reader) -> MonitorEvent:  # job id, start time, server host id
    job_id = read.u32()
    read.u32()
    return MonitorEvent("MON_JOB_BEGIN", job_id=job_id, host_id=read.u32())


def _job_done(read: _Reader) -> MonitorEvent:  # the JOB_DONE layout; the rest is statistics
    return MonitorEvent("MON_JOB_DONE", job_id=read.u32(), exitcode=read.i32())


def _local_job_begin(read: _Reader) -> MonitorEvent:  # host id first, unlike JOB_LOCAL_BEGIN
    host_id = read.u32()
    job_id = read.u32()
    read.u32()
    return MonitorEvent("MON_LOCAL_JOB_BEGIN", host_id=host_id, job_id=job_id, text=read.string())


def _local_job_done(read: _Reader) -> MonitorEvent:
    return MonitorEvent("JOB_LOCAL_DONE", job_id=read.u32())


def _end(_read: _Reader) -> MonitorEvent:
    return MonitorEvent("END")


_DECODERS: Final[dict[int, Callable[[_Reader], MonitorEvent]]] = {
    MON_STATS: _stats,
    MON_GET_CS: _get_cs,
    MON_JOB_BEGIN: _job_begin,
    MON_JOB_DONE: _job_done,
    MON_LOCAL_JOB_BEGIN: _local_job_begin,
    JOB_LOCAL_DONE: _local_job_done,
    END: _end,
}


def decode(kind: int, payload: bytes) -> MonitorEvent:
    """Decode one message body (after the type word) as a monitor sees it."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return MonitorEvent(f"type {kind}", text=payload.hex())
    return decoder(_Reader(payload))


def split_frames(buffer: bytes) -> tuple[list[MonitorEvent], bytes]:
    """Decode every complete frame (§1.5) in ``buffer``; return the events and the rest."""
    events = []
    while len(buffer) >= 8:
        (length,) = struct.unpack_from(">I", buffer)
        if not 4 <= length <= MAX_MESSAGE:
            msg = f"bad frame length {length}"
            raise TestbedError(msg)
        if len(buffer) < 4 + length:
            break
        (kind,) = struct.unpack_from(">I", buffer, 4)
        events.append(decode(kind, buffer[8 : 4 + length]))
        buffer = buffer[4 + length :]
    return events, buffer


def handshake(sock: socket.socket, version: int = MONITOR_VERSION) -> int:
    """Do the version handshake of §1.4 on a connected socket; return the agreed version."""
    sock.sendall(version.to_bytes(4, "little"))
    agreed = min(version, int.from_bytes(_recv_exactly(sock, 4), "little"))
    sock.sendall(agreed.to_bytes(4, "little"))
    echoed = int.from_bytes(_recv_exactly(sock, 4), "little")
    if echoed != agreed:
        msg = f"the peer agreed on protocol {echoed}, not {agreed}"
        raise TestbedError(msg)
    return agreed


@dataclass(frozen=True)
class Placement:
    """Where the jobs seen by a monitor ran, by node name.

    ``began``: jobs begun per server (remote compiles, and "compile it
    yourself" jobs on the submitter); ``failed``: (node, exit code) of every
    ``MON_JOB_DONE`` with a non-zero exit; ``local``: local-only jobs per node
    (links, fallbacks); ``requested``: ``MON_GET_CS`` count.
    """

    began: Counter[str]
    failed: list[tuple[str, int]]
    local: Counter[str]
    requested: int

    @property
    def total(self) -> int:
        """Number of jobs begun anywhere."""
        return sum(self.began.values())

    def __str__(self) -> str:
        """One line for failure messages and reports."""
        where = ", ".join(f"{name}: {count}" for name, count in sorted(self.began.items()))
        failed = self.failed or "none"
        local = dict(self.local) or "none"
        return (f"{self.total} jobs begun ({where or 'none'}), {self.requested} requested, "
                f"failed {failed}, local-only {local}")  # fmt: skip


@dataclass(eq=False)
class SchedulerMonitor:
    """A monitor logged in to the scheduler at ``address`` (``(ip, port)``), from ``host``.

    ``awake`` wraps the connect and handshake (pass ``RealScheduler.awake``:
    the real scheduler accepts late without it, reference §7.9).  Use as a
    context manager or call ``start``/``close``.
    """

    host: Host
    address: tuple[str, int]
    awake: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext
    events: list[MonitorEvent] = field(default_factory=list, init=False)
    error: BaseException | None = field(default=None, init=False)
    _sock: socket.socket | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def start(self) -> Self:
        """Connect, shake hands, send MON_LOGIN and start recording."""
        sock = self.host.socket()
        try:
            sock.settimeout(_HANDSHAKE_TIMEOUT)
            with self.awake():
                sock.connect(self.address)
                handshake(sock)
            sock.sendall(struct.pack(">II", 4, MON_LOGIN))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._read_loop, name="monitor", daemon=True)
        self._thread.start()
        return self

    def _read_loop(self) -> None:
        assert self._sock is not None
        self._sock.settimeout(_POLL)
        buffer = b""
        try:
            while not self._stop.is_set():
                try:
                    chunk = self._sock.recv(1 << 16)
                except TimeoutError:
                    continue
                if not chunk:
                    self.error = ConnectionError("the scheduler closed the monitor connection")
                    return
                events, buffer = split_frames(buffer + chunk)
                now = time.monotonic()
                with self._lock:
                    self.events.extend(dataclasses.replace(e, at=now) for e in events)
        except (OSError, TestbedError, struct.error) as exc:
            if not self._stop.is_set():
                self.error = exc

    def snapshot(self) -> list[MonitorEvent]:
        """The events so far; raises if the reader failed (e.g. the scheduler dropped us)."""
        if self.error is not None:
            msg = f"monitor of {self.address} failed: {self.error}"
            raise TestbedError(msg) from self.error
        with self._lock:
            return list(self.events)

    def hosts(self) -> dict[int, str]:
        """Host id to node name for every daemon the scheduler announced (offline ones too)."""
        names: dict[int, str] = {}
        for event in self.snapshot():
            if event.kind == "MON_STATS" and event.host_id is not None:
                first = event.text.split("\n", 1)[0]
                if first.startswith("Name:"):
                    names[event.host_id] = first[5:]
        return names

    def online(self, *, loaded: bool = False) -> set[str]:
        """Node names currently logged in; with ``loaded`` only those that sent STATS."""
        state: dict[int, tuple[str, bool]] = {}
        for event in self.snapshot():
            if event.kind != "MON_STATS" or event.host_id is None:
                continue
            if event.text.startswith("State:Offline"):
                state.pop(event.host_id, None)
            elif event.text.startswith("Name:"):
                name = event.text.split("\n", 1)[0][5:]
                was_loaded = state.get(event.host_id, ("", False))[1]
                state[event.host_id] = (name, was_loaded or "LoadAvg1:" in event.text)
        return {name for name, has_stats in state.values() if has_stats or not loaded}

    def wait_online(self, names: Iterable[str], timeout: float, *, loaded: bool = True,
                    between: Callable[[], object] | None = None,
                    context: Callable[[], str] | None = None) -> None:  # fmt: skip
        """Wait until every one of ``names`` is logged in (and with ``loaded`` sent STATS)."""
        wanted = set(names)

        def explain() -> str:
            seen = f"online: {sorted(self.online())}"
            loaded_now = f"with STATS: {sorted(self.online(loaded=True))}"
            return f"{seen}, {loaded_now}\n" + (context() if context else "")

        wait_for(lambda: wanted <= self.online(loaded=loaded), timeout,
                 f"daemons {sorted(wanted)} to be listed by the scheduler",
                 interval=0.2, between=between, context=explain)  # fmt: skip

    def mark(self) -> int:
        """A position in the event list; ``placement(since=...)`` counts only later events."""
        return len(self.snapshot())

    def placement(self, since: int = 0) -> Placement:
        """Where the jobs seen after ``since`` ran, by node name (unknown ids as ``#id``)."""
        events = self.snapshot()
        names = self.hosts()
        began: Counter[str] = Counter()
        server: dict[int, str] = {}
        failed: list[tuple[str, int]] = []
        local: Counter[str] = Counter()
        requested = 0
        for event in events[since:]:
            name = names.get(event.host_id or 0, f"#{event.host_id}")
            if event.kind == "MON_GET_CS":
                requested += 1
            elif event.kind == "MON_JOB_BEGIN" and event.job_id is not None:
                began[name] += 1
                server[event.job_id] = name
            elif event.kind == "MON_JOB_DONE" and event.exitcode:
                failed.append((server.get(event.job_id or 0, "?"), event.exitcode))
            elif event.kind == "MON_LOCAL_JOB_BEGIN":
                local[name] += 1
        return Placement(began, failed, local, requested)

    def wait_settled(self, since: int, timeout: float, *, jobs: int = 0) -> None:
        """Wait until every job begun after ``since`` is done (JOB_DONE may trail the build).

        ``jobs``: also wait until at least that many jobs have begun.  A
        scheduler may forward a job's events to monitors after its client has
        its object (the real 1.4 one does), so a caller that knows how many
        jobs ran says so, or the last job may not be counted at all.
        """

        def settled() -> bool:
            events = self.snapshot()[since:]
            begun = {e.job_id for e in events if e.kind == "MON_JOB_BEGIN"}
            done = {e.job_id for e in events if e.kind == "MON_JOB_DONE"}
            return len(begun) >= jobs and begun <= done

        def seen() -> str:
            return str(self.placement(since))

        wait_for(settled, timeout, f"MON_JOB_DONE for every MON_JOB_BEGIN (at least {jobs})",
                 context=seen)  # fmt: skip

    def close(self) -> None:
        """Stop the reader and close the connection; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        """Start monitoring."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop monitoring."""
        self.close()


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    deadline = time.monotonic() + _HANDSHAKE_TIMEOUT
    while len(data) < count:
        if time.monotonic() > deadline:
            msg = "handshake timed out"
            raise TimeoutError(msg)
        chunk = sock.recv(count - len(data))
        if not chunk:
            msg = "connection closed during the handshake"
            raise ConnectionError(msg)
        data += chunk
    return data
