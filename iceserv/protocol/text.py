r"""Line rules of the scheduler's telnet text channel (reference §1.7).

No handshake and no framing: a line is the run of bytes before the first byte
below 0x20, and the control bytes that directly follow it *in the data received
so far* are skipped, so ``"\r\n"`` in one read ends one line while ``"\r"``
and ``"\n"`` in separate reads make an extra empty line, as in 1.4.  Outgoing
text gets a ``"\n"`` unless it already ends with one.
"""

from __future__ import annotations

from typing import Final

from iceserv.errors import RemoteProtocolError
from iceserv.protocol.wire import decode_text, encode_text

__all__ = ["MAX_LINE", "LineSplitter", "format_text"]

#: Longest line accepted; telnet commands are a few words.
MAX_LINE: Final = 4096


def _first_control(buf: bytearray) -> int:
    for i, byte in enumerate(buf):
        if byte < 0x20:
            return i
    return -1


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
        while (end := _first_control(self._buf)) >= 0:
            if end > self._max:  # refused below, whether or not its end came in this read
                break
            lines.append(decode_text(bytes(self._buf[:end])))
            skip = end
            while skip < len(self._buf) and self._buf[skip] < 0x20:
                skip += 1
            del self._buf[:skip]
        if len(self._buf) > self._max:
            msg = f"text line longer than {self._max} bytes"
            raise RemoteProtocolError(msg)
        return lines


def format_text(text: str) -> bytes:
    """Return *text* as sent on the text channel: with a trailing newline."""
    raw = encode_text(text)
    return raw if raw.endswith(b"\n") else raw + b"\n"
