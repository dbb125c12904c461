"""Fuzz targets: bytes in, and nothing but iceserv's own errors out.

Each target turns one input into calls of a parser that faces untrusted or
hand-written input, and catches :class:`~iceserv.errors.IceservError` (the
errors those parsers promise).  Any other exception escapes and is a crash.

* ``connection``: a :class:`~iceserv.protocol.Connection` at a version taken
  from the input finishes the handshake with a peer, then gets the rest of
  the input as received bytes in input-chosen pieces, and EOF.
* ``decode``: :func:`iceserv.protocol.messages.decode` for one message type
  and protocol version (21..43) taken from the input; what decodes must
  survive encode/decode unchanged after at most one normalising trip.
* ``telnet``: the telnet line splitter (input-chosen line cap and pieces) and
  every resulting line through the command parser and runner against a
  fixed fake scheduler, answers rendered for the wire.
* ``confd``: the conf.d parser on the input as UTF-8 (invalid bytes escaped),
  with and without variables in scope.
* ``toml``: the settings loader on the input as the TOML file, for the
  daemon and the scheduler.
* ``auth``: the network key's handshake (issue 14) from both ends: the
  scheduler's gate under ``require`` and a daemon's handshake fed the frames
  of the input after the version handshake (the received buffer must stay
  under the message cap), the input as a discovery probe, offer and proven
  announcement, and as a job ticket.
"""

from __future__ import annotations

import contextlib
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.config import ConfdValue, Locations, Service, load_settings, parse_confd
from iceserv.errors import IceservError
from iceserv.protocol import NEED_DATA, Connection, ConnectionClosed, MsgType
from iceserv.protocol.auth import (
    AuthMode,
    DaemonHandshake,
    Endpoints,
    KeyRing,
    decode_offer,
    decode_probe,
    decode_proven_announcement,
)
from iceserv.protocol.constants import MAX_MESSAGE_SIZE
from iceserv.protocol.messages import AuthChallenge, decode, encode
from iceserv.protocol.text import LineSplitter, format_text
from iceserv.protocol.tickets import verify_ticket
from iceserv.scheduler.auth import AuthGate
from iceserv.telnet.commands import run_command

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["TARGETS"]

_TYPES: Final = sorted(int(t) for t in MsgType)
_SCOPE: Final = {"HOME": ConfdValue("HOME", "/root", "rc.conf", 1, exported=True)}
_NO_FILES: Final = Locations(confd=(), toml=None, rc_conf=())


def _pieces(data: bytes, sizes: bytes) -> list[bytes]:
    """Split *data* into pieces whose sizes come from *sizes* (cycled, 1..256)."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        step = 1 + (sizes[i % len(sizes)] if sizes else 255)
        out.append(data[pos : pos + step])
        pos += step
        i += 1
    return out


def connection(data: bytes) -> None:
    """Handshake at input-chosen versions, then arbitrary frames, then EOF."""
    if len(data) < 3:
        return
    ours, theirs = 21 + data[0] % 23, 21 + data[1] % 24  # 44 is out of range on purpose
    conn = Connection(version=ours)
    sizes, body = data[2:6], data[6:]
    try:
        conn.receive_data(struct.pack("<II", theirs, min(ours, theirs)))
        for piece in [*_pieces(body, sizes), b""]:
            conn.receive_data(piece)
            while (event := conn.next_event()) is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    return
        conn.data_to_send()
    except IceservError:
        return


def decode_one(data: bytes) -> None:
    """One payload of an input-chosen type and version; what decodes must re-encode stably."""
    if len(data) < 2:
        return
    msg_type = _TYPES[data[0] % len(_TYPES)] if data[0] < 250 else data[0] * 1000
    version = 21 + data[1] % 23
    try:
        msg = decode(msg_type, data[2:], version)
    except IceservError:
        return
    try:
        # The first trip may normalise (below 39 an unknown-job JOB_DONE's exit
        # code becomes 200, as 1.4 sends it); from then on encoding is stable.
        once = decode(msg_type, encode(msg, version)[8:], version)
    except IceservError:
        return  # a value the wire cannot carry back is refused, not mangled
    if decode(msg_type, encode(once, version)[8:], version) != once:
        text = f"round trip changed {once!r}"
        raise AssertionError(text)


@dataclass(frozen=True)
class _Host:
    nodename: str = "node1"
    ip: str = "192.0.2.1"
    port: int = 10245
    platform: str = "x86_64"
    speed: float = 1.5
    jobs_assigned: int = 1
    max_jobs: int = 4
    load: int = 100
    busy_installing_since: int | None = None
    jobs: tuple[_Job, ...] = ()


@dataclass(frozen=True)
class _Job:
    id: int = 1
    state: str = "COMP"
    submitter: str = "node1"
    server: str = "node1"
    filename: str = "a.c"


@dataclass
class _Control:
    """A fixed scheduler for the telnet target (the SchedulerControl protocol)."""

    blocks: list[str] = field(default_factory=list)

    def uptime_seconds(self) -> int:
        return 7

    def host_count(self) -> int:
        return 1

    def job_count(self) -> int:
        return 1

    def total_jobs(self) -> int:
        return 1

    def list_hosts(self) -> Sequence[_Host]:
        return (_Host(jobs=(_Job(),)),)

    def list_jobs(self) -> Sequence[_Job]:
        return (_Job(),)

    def remove_hosts(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if n == "node1"]

    def block_hosts(self, names: Sequence[str]) -> list[str]:
        self.blocks = (self.blocks + list(names))[-16:]
        return self.remove_hosts(names)

    def unblock_hosts(self, names: Sequence[str]) -> None:
        self.blocks = [b for b in self.blocks if b not in names]

    def blocked(self) -> Sequence[str]:
        return tuple(self.blocks)

    async def internals(self, names: Sequence[str]) -> Sequence[str]:
        return [f"Node Name: {n}" for n in names[:4]]


def _run(control: _Control, line: str) -> None:
    coro = run_command(control, line)
    try:
        coro.send(None)
    except StopIteration as done:
        for text in done.value.texts:
            format_text(text)
    else:
        coro.close()
        msg = "run_command awaited something that never completes"
        raise AssertionError(msg)


def telnet(data: bytes) -> None:
    """Line splitting with an input-chosen cap, and every line through the commands."""
    if len(data) < 2:
        return
    splitter = LineSplitter(max_line=1 + data[0] * 16)
    control = _Control()
    try:
        for piece in _pieces(data[2:], data[1:2]):
            for line in splitter.feed(piece):
                _run(control, line)
    except IceservError:
        return


def confd(data: bytes) -> None:
    """Parse the input as a conf.d file, alone and with a variable in scope."""
    text = data.decode("utf-8", "surrogateescape")
    for scope in (None, _SCOPE):
        try:
            parse_confd(text, "fuzz.conf", scope)
        except IceservError:
            continue


class _TomlFile:
    """One reusable file on a RAM disk when there is one, for the settings loader to read."""

    def __init__(self) -> None:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # noqa: S108
        self._dir = tempfile.TemporaryDirectory(prefix="iceserv-fuzz-", dir=base)
        self.path = Path(self._dir.name) / "iceserv.toml"


_FILE: list[_TomlFile] = []  # created on first use, not at import


def toml(data: bytes) -> None:
    """Load both services' settings with the input as their TOML file."""
    if not _FILE:
        _FILE.append(_TomlFile())
    path = _FILE[0].path
    path.write_bytes(data)
    for service in (Service.DAEMON, Service.SCHEDULER):
        try:
            load_settings(service, ["--config", str(path)], {}, locations=_NO_FILES)
        except IceservError:
            continue


#: A fixed key, nonces and endpoints: the target explores inputs, not keys.
_KEY: Final = bytes(range(48))
_RING: Final = KeyRing((_KEY,))
_NONCE_S: Final = b"\x5a" * 32
_NONCE_D: Final = b"\xa5" * 32
_ENDS: Final = Endpoints(daemon=("192.0.2.9", 40000), scheduler=("192.0.2.1", 8765))


def _frames(body: bytes, sizes: bytes, version: int) -> list[object]:
    """Return what a Connection at *version* decodes from *body* fed in pieces; bounded."""
    conn = Connection(version=version)
    conn.receive_data(struct.pack("<II", version, version))
    events: list[object] = []
    for piece in [*_pieces(body, sizes), b""]:
        conn.receive_data(piece)
        if conn.buffered > MAX_MESSAGE_SIZE + 8:
            text = f"{conn.buffered} bytes buffered"
            raise AssertionError(text)
        while (event := conn.next_event()) is not NEED_DATA:
            if isinstance(event, ConnectionClosed):
                return events
            events.append(event)
    return events


def auth(data: bytes) -> None:
    """Run the authentication messages and datagrams of issue 14 on untrusted bytes."""
    if len(data) < 3:
        return
    decode_probe(data)
    decode_offer(data, _RING, _NONCE_D)
    decode_proven_announcement(data, _RING, float(int.from_bytes(data[:2], "big") << 16))
    with contextlib.suppress(IceservError):
        verify_ticket(_RING, data.decode("utf-8", "replace"), job_id=data[0], client="192.0.2.9",
                      server="192.0.2.1", now=1e9)  # fmt: skip
    try:
        events = _frames(data[3:], data[1:3], 43)
    except IceservError:
        return
    gate = AuthGate(AuthMode.REQUIRE if data[0] & 1 else AuthMode.PREFER, _RING, _NONCE_S, _ENDS)
    for event in events:
        verdict = gate.handle(event)  # type: ignore[arg-type]
        if verdict.refuse:
            break
    daemon = DaemonHandshake(_RING, _NONCE_D, _ENDS)
    daemon.hello()
    for event in events:
        if isinstance(event, AuthChallenge):
            try:
                daemon.answer(event)
            except IceservError:
                break


TARGETS: Final[dict[str, Callable[[bytes], None]]] = {
    "connection": connection,
    "decode": decode_one,
    "telnet": telnet,
    "confd": confd,
    "toml": toml,
    "auth": auth,
}
