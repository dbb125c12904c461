r"""Line rules of the scheduler's telnet text channel (reference §1.7).

No handshake and no framing: a line is the run of bytes before the first byte
below 0x20 *or at or above 0x80* (1.4 compares a signed ``char``, so every
non-ASCII byte ends a line too -- observed on the real scheduler, where
``caf\xc3\xa9 x`` is the two commands ``caf`` and `` x``; the reference's §1.7
only names the bytes below 0x20), and the terminators that directly follow it
*in the data received so far* are skipped, so ``"\r\n"`` in one read ends one line while ``"\r"``
and ``"\n"`` in separate reads make an extra empty line, as in 1.4.  Outgoing
text gets a ``"\n"`` unless it already ends with one.
"""

from __future__ import annotations

import re
from typing import Final

from iceserv.errors import RemoteProtocolError
from iceserv.protocol.wire import decode_text, encode_text

__all__ = ["MAX_LINE", "LineSplitter", "format_text"]

#: Longest line accepted; telnet commands are a few words.
MAX_LINE: Final = 4096


_TERMINATOR: Final = re.compile(rb"[\x00-\x1f\x80-\xff]")
_TERMINATORS: Final = re.compile(rb"[\x00-\x1f\x80-\xff]*")


def _first_terminator(buf: bytearray) -> int:
    found = _TERMINATOR.search(buf)
    return -1 if found is None else found.start()


class LineSplitter:
    """Turns the bytes of a text channel into lines; never buffers more than *max_line*."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> list[str]:
        """Add received *data*; return the complete lines it finished."""
        self._buf += data
        lines: list[str] = []
        while (end := _first_terminator(self._buf)) >= 0:
            if end > self._max:  # refused below, whether or not its end came in this read
                break
            lines.append(decode_text(bytes(self._buf[:end])))
            run = _TERMINATORS.match(self._buf, end)
            del self._buf[: run.end() if run else end + 1]
        if len(self._buf) > self._max:
            msg = f"text line longer than {self._max} bytes"
            raise RemoteProtocolError(msg)
        return lines


def format_text(text: str) -> bytes:
    """Return *text* as sent on the text channel: with a trailing newline."""
    raw = encode_text(text)
    return raw if raw.endswith(b"\n") else raw + b"\n"
