"""Scheduler discovery over UDP (reference §4): requests, replies, choice, announcements.

A requester broadcasts one byte, its protocol version.  A scheduler answers in
one of four layouts chosen by that byte, and requesters pick the highest
version, then the longest-running scheduler, among replies for their net name.
Schedulers also broadcast ``ICF`` announcements so that a worse scheduler can
hand its clients over.  Everything here is pure: datagrams in, values out.

The 33..37 layouts carry numbers in the scheduler's host byte order; 1.4 ran
on little-endian hosts in practice, so they are read and written little-endian.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final, TypeVar

from iceserv.errors import LocalProtocolError
from iceserv.protocol.constants import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
from iceserv.protocol.features import Feature, supports
from iceserv.protocol.records import record
from iceserv.protocol.wire import decode_text, encode_text

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DEFAULT_NETNAME",
    "SchedulerInfo",
    "choose_scheduler",
    "decode_announcement",
    "decode_reply",
    "decode_request",
    "encode_announcements",
    "encode_reply",
    "encode_request",
    "is_better",
]

DEFAULT_NETNAME: Final = "ICECREAM"

_BIG_REPLY: Final = 268
_MID_REPLY: Final = 32
_SMALL_REPLY: Final = 16
_NAME_AT: Final = 13  # netname offset in replies
_ANNOUNCE_NAME_AT: Final = 12  # netname offset in ICF announcements
_BE_HEADER: Final = struct.Struct(">BIII")  # marker, version, start high, start low
_LE_HEADER: Final = struct.Struct("<BIQ")  # marker, version, start time
_ICF_HEADER: Final = struct.Struct(">3sBII")
#: Replies in the pre-33 layout carry no version; 1.4 assumes this one.
_LEGACY_VERSION: Final = 32

T = TypeVar("T")


@record
class SchedulerInfo:
    """What a discovery reply or announcement says about a scheduler."""

    version: int
    start_time: int
    netname: str


def encode_request(version: int = PROTOCOL_VERSION) -> bytes:
    """Return the one-byte discovery request of a requester speaking *version*."""
    if not 0 < version < 256:
        msg = f"discovery version {version} does not fit in one byte"
        raise LocalProtocolError(msg)
    return bytes([version])


def decode_request(datagram: bytes) -> int | None:
    """Return the requester's version if *datagram* is a request a scheduler answers."""
    if len(datagram) == 1 and datagram[0] >= MIN_PROTOCOL_VERSION:
        return datagram[0]
    return None


def _name_field(netname: str, size: int) -> bytes:
    raw = encode_text(netname)[: size - 1]  # always leave room for the NUL
    return raw.ljust(size, b"\0")


def _read_name(raw: bytes) -> str:
    return decode_text(raw.split(b"\0", 1)[0])


def encode_reply(requester: int, info: SchedulerInfo) -> bytes:
    """Return the scheduler's reply to a request from version *requester* (§4.3).

    The marker byte wraps around for requesters near 255, as 1.4's byte arithmetic does.
    """
    if not 0 <= info.start_time < 1 << 64 or not 0 <= info.version < 1 << 32:
        msg = "scheduler version or start time out of range"
        raise LocalProtocolError(msg)
    if not 0 <= requester <= 255:
        msg = f"requester version {requester} is not a byte"
        raise LocalProtocolError(msg)
    if supports(requester, Feature.DISCOVERY_REPLY_BIG_ENDIAN):
        head = _BE_HEADER.pack(
            (requester + 3) & 0xFF,
            info.version,
            info.start_time >> 32,
            info.start_time & 0xFFFF_FFFF,
        )
        return head + _name_field(info.netname, _BIG_REPLY - _NAME_AT)
    if supports(requester, Feature.DISCOVERY_REPLY_VERSIONED):
        size = _BIG_REPLY if supports(requester, Feature.SCHEDULER_ANNOUNCEMENTS) else _MID_REPLY
        head = _LE_HEADER.pack((requester + 2) & 0xFF, info.version, info.start_time)
        return head + _name_field(info.netname, size - _NAME_AT)
    return bytes([(requester + 1) & 0xFF]) + _name_field(info.netname, _SMALL_REPLY - 1)


def decode_reply(datagram: bytes, own_version: int = PROTOCOL_VERSION) -> SchedulerInfo | None:
    """Parse a reply received by a requester of *own_version*; ``None`` if it is not one.

    Accepts exactly the four layouts 1.4 accepts (§4.4) and drops versions
    outside 1..127, as 1.4 does.
    """
    size = len(datagram)
    marker = datagram[0] if datagram else -1
    # 1.4 overwrites a reply's last byte with NUL before reading the name.
    if size == _SMALL_REPLY and marker == own_version + 1:
        return SchedulerInfo(_LEGACY_VERSION, 0, _read_name(datagram[1:-1]))
    if size == _BIG_REPLY and marker == own_version + 3:
        _, version, high, low = _BE_HEADER.unpack_from(datagram)
        start = (high << 32) | low
    elif size in (_MID_REPLY, _BIG_REPLY) and marker == own_version + 2:
        _, version, start = _LE_HEADER.unpack_from(datagram)
    else:
        return None
    if not 1 <= version < 128:
        return None
    return SchedulerInfo(version, start, _read_name(datagram[_NAME_AT:-1]))


def is_better(a: SchedulerInfo, b: SchedulerInfo) -> bool:
    """Return whether scheduler *a* beats *b*: higher version, else started earlier."""
    return (a.version, -a.start_time) > (b.version, -b.start_time)


def choose_scheduler(
    replies: Iterable[tuple[T, SchedulerInfo]], netname: str = DEFAULT_NETNAME
) -> tuple[T, SchedulerInfo] | None:
    """Pick the scheduler a requester for *netname* connects to (§4.4).

    *replies* pairs each reply with where it came from (e.g. the source
    address).  Net names compare case-insensitively; among matches the highest
    version wins, then the earliest start time, then the first received.
    """
    wanted = (netname or DEFAULT_NETNAME).casefold()
    best: tuple[T, SchedulerInfo] | None = None
    for origin, info in replies:
        if info.netname.casefold() != wanted:
            continue
        if best is None or is_better(info, best[1]):
            best = (origin, info)
    return best


def encode_announcements(info: SchedulerInfo) -> tuple[bytes, bytes]:
    """Return the legacy ``ICE`` and the current ``ICF`` scheduler announcements (§4.5)."""
    name = encode_text(info.netname)
    if not name or len(name) > 255:
        msg = "a scheduler announcement needs a net name of 1..255 bytes"
        raise LocalProtocolError(msg)
    legacy = (
        b"ICE"
        + bytes([info.version & 0xFF])
        + struct.pack("<Q", info.start_time)
        + bytes([len(name)])
        + name[:-1]
        + b"\0"
    )
    current = _ICF_HEADER.pack(
        b"ICF", info.version & 0xFF, info.start_time >> 32, info.start_time & 0xFFFF_FFFF
    ) + _name_field(info.netname, _BIG_REPLY - _ANNOUNCE_NAME_AT)
    return legacy, current


def decode_announcement(datagram: bytes) -> SchedulerInfo | None:
    """Parse an ``ICF`` announcement; ``None`` for anything else (1.4 ignores the rest)."""
    if len(datagram) != _BIG_REPLY or not datagram.startswith(b"ICF"):
        return None
    _, version, high, low = _ICF_HEADER.unpack_from(datagram)
    return SchedulerInfo(version, (high << 32) | low, _read_name(datagram[_ANNOUNCE_NAME_AT:]))
