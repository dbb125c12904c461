"""Replies whose body is marshalled here, piece by piece, instead of by dbus-fast at once.

This module owns :class:`PrebuiltReply` and :func:`struct_array_body`.  A
``ListJobs`` reply at 20,000 queued jobs is a 2 MB array of structs; dbus-fast
marshals it in one piece on the event loop (35 ms and more on a busy host),
and everything else the scheduler serves waits meanwhile (issue 19 item 4).
A struct whose members end with a 64-bit value (``(usssstt)``) starts and
ends on an 8-byte boundary, so its marshalled bytes do not depend on where
in the array it lies: the caller keeps each element's bytes while the job
is unchanged (:func:`job_record`), and a reply is the array's length, the
padding to 8 and the elements joined.

Only the D-Bus wire format (the specification's "Marshaling" section) is
used: little endian, as dbus-fast writes; the header is dbus-fast's own,
made for an empty array of the same signature, with its body length set to
the real one.  Tests compare every byte with dbus-fast's marshalling.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from dbus_fast import Message, MessageType

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["MAX_ARRAY_BYTES", "PrebuiltReply", "job_record", "struct_array_body"]

#: The specification's limit on an array's length in bytes (64 MiB).
MAX_ARRAY_BYTES: Final = 1 << 26
_U32: Final = struct.Struct("<I")
_U64S: Final = struct.Struct("<QQ")
#: The body of an empty array of 8-aligned elements: its length (0) and the padding to 8.
_EMPTY_ARRAY: Final = bytes(8)
_LITTLE_ENDIAN: Final = ord("l")
_ZEROS: Final = bytes(8)
#: Marshalled strings remembered by :func:`job_record` at most (then forgotten at once).
_STRINGS_KEPT: Final = 4096


def _string(text: str) -> bytes:
    """Marshal a string at a 4-aligned offset, with the padding to the next 4-aligned one."""
    data = text.encode()
    return _U32.pack(len(data)) + data + _ZEROS[: 4 - len(data) % 4]  # NUL included


def _known(text: str, strings: dict[str, bytes]) -> bytes:
    """Return ``_string(text)``, remembered in *strings* (names and states repeat)."""
    piece = strings.get(text)
    if piece is None:
        if len(strings) >= _STRINGS_KEPT:
            strings.clear()
        piece = strings[text] = _string(text)
    return piece


def job_record(
    job: tuple[int, str, str, str, str, int, int], strings: dict[str, bytes] | None = None
) -> bytes:
    """Marshal one ``(usssstt)`` struct as it lies at an 8-aligned offset (a multiple of 8).

    *strings* (the caller's, kept between calls) remembers the marshalled
    client, server and state, which few jobs do not share.
    """
    job_id, client, server, filename, state, queued, started = job
    memo = {} if strings is None else strings
    head = b"".join(
        (
            _U32.pack(job_id),
            _known(client, memo),
            _known(server, memo),
            _string(filename),
            _known(state, memo),
        )
    )
    times = _U64S.pack(queued, started)
    return head + times if len(head) % 8 == 0 else head + _ZEROS[:4] + times


def struct_array_body(records: Sequence[bytes]) -> bytes:
    """Return the body of an array of 8-aligned struct *records* (each 8*k bytes long)."""
    elements = b"".join(records)
    return _U32.pack(len(elements)) + _ZEROS[:4] + elements


class PrebuiltReply(Message):
    """A method return whose (single-argument) body is already marshalled.

    dbus-fast sends it as any reply: it asks the message for its bytes
    (``_marshall``), which are the header dbus-fast makes for an empty array
    of *signature*, with the real body length, then *body*.
    """

    __slots__ = ("_raw_body",)
    _raw_body: bytes

    @classmethod
    def to(cls, call: Message, signature: str, body: bytes) -> PrebuiltReply:
        """Return the reply to *call* with *signature* (one array argument) and *body*."""
        reply = cls(
            message_type=MessageType.METHOD_RETURN,
            reply_serial=call.serial,
            destination=call.sender,
            signature=signature,
            body=[[]],
        )
        reply._raw_body = body
        return reply

    def _marshall(self, negotiate_unix_fd: bool) -> bytearray:  # noqa: FBT001 - dbus-fast's
        empty = super()._marshall(negotiate_unix_fd)
        if empty[0] != _LITTLE_ENDIAN or not empty.endswith(_EMPTY_ARRAY):
            msg = "dbus-fast marshalled an empty array unexpectedly"
            raise RuntimeError(msg)
        head = empty[: -len(_EMPTY_ARRAY)]
        head[4:8] = _U32.pack(len(self._raw_body))
        head += self._raw_body
        return head
