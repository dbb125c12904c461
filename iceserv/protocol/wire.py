"""Primitive encodings of the icecream wire format (reference §1.6).

``u32`` and ``i32`` are 4 bytes big-endian; a ``bool`` is a ``u32``; a string is a
``u32`` length that counts a trailing NUL, then the bytes and the NUL.  The
:class:`Reader` never reads past the end of its frame and reports every
shortfall as :class:`~iceserv.errors.RemoteProtocolError`.  Text is kept as
``str`` decoded from UTF-8 with ``surrogateescape``, so any byte string a peer
sends round-trips unchanged.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from iceserv.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["EnvEntry", "Reader", "Writer", "decode_text", "encode_text"]

_U32: Final = struct.Struct(">I")
_I32: Final = struct.Struct(">i")
_U32_MAX: Final = 0xFFFF_FFFF
_I32_MIN: Final = -(1 << 31)
_I32_MAX: Final = (1 << 31) - 1


class EnvEntry(NamedTuple):
    """One ``(platform, name)`` pair of an environment list; its meaning depends on the message."""

    platform: str
    name: str


def encode_text(text: str) -> bytes:
    """Return the wire bytes of *text* (UTF-8, lone surrogates as the bytes they escape)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        msg = f"string cannot be put on the wire: {exc.reason}"
        raise LocalProtocolError(msg) from None


def decode_text(raw: bytes | memoryview) -> str:
    """Return *raw* (bytes from the wire) as ``str``; undecodable bytes are escaped."""
    return bytes(raw).decode("utf-8", "surrogateescape")


class Writer:
    """Accumulates the payload of one message."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u32(self, value: int) -> None:
        """Append an unsigned 32-bit integer."""
        if not 0 <= value <= _U32_MAX:
            msg = f"u32 field out of range: {value}"
            raise LocalProtocolError(msg)
        self._parts.append(_U32.pack(value))

    def i32(self, value: int) -> None:
        """Append a signed C ``int`` as its 32-bit two's-complement pattern."""
        if not _I32_MIN <= value <= _I32_MAX:  # what a C int holds, so it decodes back
            msg = f"i32 field out of range: {value}"
            raise LocalProtocolError(msg)
        self._parts.append(_U32.pack(value & _U32_MAX))

    def boolean(self, value: bool) -> None:  # noqa: FBT001 - mirrors the other field writers
        """Append a bool as a ``u32`` 0 or 1."""
        self._parts.append(_U32.pack(1 if value else 0))

    def string(self, value: str) -> None:
        """Append a string: length including the NUL, the bytes, the NUL."""
        raw = encode_text(value)
        if b"\0" in raw:
            msg = "string contains a NUL byte, which the wire format cannot carry"
            raise LocalProtocolError(msg)
        self._parts.append(_U32.pack(len(raw) + 1))
        self._parts.append(raw + b"\0")

    def strings(self, values: tuple[str, ...]) -> None:
        """Append a string list: count, then each string."""
        self.u32(len(values))
        for value in values:
            self.string(value)

    def envs(self, values: tuple[EnvEntry, ...]) -> None:
        """Append an environment list: count, then ``(platform, name)`` string pairs."""
        self.u32(len(values))
        for platform, name in values:
            self.string(platform)
            self.string(name)

    def raw(self, data: bytes) -> None:
        """Append bytes unchanged."""
        self._parts.append(data)

    def getvalue(self) -> bytes:
        """Return everything appended so far."""
        return b"".join(self._parts)


class Reader:
    """Reads fields from exactly one frame's payload; see :meth:`finish`."""

    __slots__ = ("_data", "_pos", "_type")

    def __init__(self, data: bytes | memoryview, msg_type: int | None = None) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._type = msg_type

    def _fail(self, what: str) -> RemoteProtocolError:
        return RemoteProtocolError(what, msg_type=self._type)

    @property
    def remaining(self) -> int:
        """Bytes of the payload not read yet."""
        return len(self._data) - self._pos

    def u32(self) -> int:
        """Read an unsigned 32-bit integer."""
        end = self._pos + 4
        if end > len(self._data):
            msg = "message truncated: expected a 4-byte integer"
            raise self._fail(msg)
        (value,) = _U32.unpack_from(self._data, self._pos)
        self._pos = end
        return int(value)

    def i32(self) -> int:
        """Read a signed 32-bit integer (two's complement)."""
        end = self._pos + 4
        if end > len(self._data):
            msg = "message truncated: expected a 4-byte integer"
            raise self._fail(msg)
        (value,) = _I32.unpack_from(self._data, self._pos)
        self._pos = end
        return int(value)

    def boolean(self) -> bool:
        """Read a bool; like 1.4, any non-zero word is true."""
        return self.u32() != 0

    def string(self) -> str:
        """Read a string up to its first NUL.

        A length of 0 is the empty string.  A length beyond the frame is an error
        here at once (1.4 reads ``""`` and then fails the exact-consumption check,
        which is the same outcome with a vaguer message).
        """
        length = self.u32()
        if length == 0:
            return ""
        end = self._pos + length
        if end > len(self._data):
            msg = f"string of {length} bytes runs past the end of the message"
            raise self._fail(msg)
        chunk = self._data[self._pos : end]
        self._pos = end
        raw = bytes(chunk)
        nul = raw.find(b"\0")
        return decode_text(raw if nul < 0 else raw[:nul])

    def strings(self) -> tuple[str, ...]:
        """Read a string list."""
        count = self.u32()
        # Each string needs at least its 4-byte length: reject absurd counts before looping.
        if count * 4 > self.remaining:
            msg = f"list of {count} strings cannot fit in the message"
            raise self._fail(msg)
        return tuple(self.string() for _ in range(count))

    def envs(self) -> tuple[EnvEntry, ...]:
        """Read an environment list."""
        count = self.u32()
        if count * 8 > self.remaining:
            msg = f"list of {count} environments cannot fit in the message"
            raise self._fail(msg)
        return tuple(EnvEntry(self.string(), self.string()) for _ in range(count))

    def raw(self, length: int) -> bytes:
        """Read *length* bytes unchanged."""
        end = self._pos + length
        if length < 0 or end > len(self._data):
            msg = f"expected {length} bytes of data, message is shorter"
            raise self._fail(msg)
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        return chunk

    def finish(self) -> None:
        """Check the exact-consumption rule (§1.5): every payload byte was read."""
        if self._pos != len(self._data):
            extra = len(self._data) - self._pos
            msg = f"message has {extra} unexpected trailing bytes"
            raise self._fail(msg)
