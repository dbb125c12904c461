"""Compressed blobs inside FILE_CHUNK (reference §3) and chunking of file data.

Layout: ``u32 uncompressed_len``, ``u32 compressed_len``, then (protocol >= 40
only) ``u32 algorithm``, then the compressed bytes.  Senders use zstd from
protocol 40 on and raw LZO1X-1 below.  ``zstandard`` is imported on first use
and ``lzo`` (python-lzo, the optional ``lzo`` extra) only when an old peer needs
it, so importing the protocol costs neither.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any, Final

from iceserv.errors import LocalProtocolError, RemoteProtocolError
from iceserv.protocol.constants import CHUNK_SIZE, MAX_MESSAGE_SIZE, Compression, MsgType
from iceserv.protocol.features import Feature, supports

if TYPE_CHECKING:
    from collections.abc import Iterator

    from iceserv.protocol.wire import Reader, Writer

__all__ = ["DEFAULT_LEVEL", "iter_chunks", "read_blob", "write_blob"]

#: zstd level when the sender's ``ICECC_COMPRESSION`` is unset or not an integer.
DEFAULT_LEVEL: Final = 1

_FILE_CHUNK: Final = int(MsgType.FILE_CHUNK)


def _import(name: str) -> Any:  # noqa: ANN401 - the bindings ship without type stubs
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        msg = f"compression needs the Python module {name!r}: {exc}"
        if name == "lzo":
            msg = (
                "this peer speaks a protocol older than 40 (icecream 1.2 or older), which "
                f"compresses with LZO, but the Python module 'lzo' is missing ({exc}): install "
                "iceserv's lzo extra, pip install 'iceserv[lzo]' (it builds python-lzo, which "
                "needs liblzo2-dev and a C compiler), or the iceserv .deb, which includes it"
            )
        raise LocalProtocolError(msg) from None


@functools.cache
def _zstd_compressor(level: int) -> Any:  # noqa: ANN401
    # One compressor per level, reused: building a zstd context per chunk costs more
    # than compressing 100 kB at level 1.
    return _import("zstandard").ZstdCompressor(level=level)


@functools.cache
def _zstd_decompressor() -> Any:  # noqa: ANN401
    return _import("zstandard").ZstdDecompressor()


def _compress(data: bytes, algorithm: Compression, level: int) -> bytes:
    if algorithm is Compression.ZSTD:
        return bytes(_zstd_compressor(level).compress(data))
    return bytes(_import("lzo").compress(data, 1, False))  # noqa: FBT003 - raw LZO1X-1


def _zstd_decompress(blob: bytes, size: int) -> bytes:
    # The one-shot decompressor allocates (and fills) whatever size the frame header
    # promises, ignoring max_output_size: a few KiB of RLE blocks could make us write
    # gigabytes.  1.4 decompresses into exactly `size` bytes, so a frame that promises
    # anything else is refused before decompressing.
    declared = _import("zstandard").frame_content_size(blob)
    if declared not in (-1, size):  # -1: the frame does not state its size
        msg = f"FILE_CHUNK promised {size} bytes but its zstd frame {declared}"
        raise RemoteProtocolError(msg, msg_type=_FILE_CHUNK)
    return bytes(_zstd_decompressor().decompress(blob, max_output_size=size))


def _decompress(blob: bytes, algorithm: Compression, size: int) -> bytes:
    try:
        if algorithm is Compression.ZSTD:
            out = _zstd_decompress(blob, size)
        else:
            out = _import("lzo").decompress(blob, False, size)  # noqa: FBT003
    except (LocalProtocolError, RemoteProtocolError):
        raise
    except Exception as exc:  # noqa: BLE001 - the bindings raise their own error types
        msg = f"corrupt {algorithm.name} data in FILE_CHUNK: {exc}"
        raise RemoteProtocolError(msg, msg_type=_FILE_CHUNK) from None
    if len(out) != size:
        msg = f"FILE_CHUNK promised {size} bytes but decompressed to {len(out)}"
        raise RemoteProtocolError(msg, msg_type=_FILE_CHUNK)
    return bytes(out)


def write_blob(writer: Writer, data: bytes, version: int, level: int = DEFAULT_LEVEL) -> int:
    """Append *data* as a compressed blob for *version*; return the compressed size."""
    if len(data) > MAX_MESSAGE_SIZE:
        msg = f"FILE_CHUNK of {len(data)} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit"
        raise LocalProtocolError(msg, msg_type=_FILE_CHUNK)
    algorithm = Compression.ZSTD if supports(version, Feature.ZSTD) else Compression.LZO
    packed = _compress(data, algorithm, level) if data else b""
    writer.u32(len(data))
    writer.u32(len(packed))
    if supports(version, Feature.ZSTD):
        writer.u32(algorithm)
    writer.raw(packed)
    return len(packed)


def read_blob(reader: Reader, version: int) -> tuple[bytes, int]:
    """Read a compressed blob; return ``(data, compressed_size)``."""
    size = reader.u32()
    packed_size = reader.u32()
    algorithm = Compression.LZO
    if supports(version, Feature.ZSTD):
        word = reader.u32()
        try:
            algorithm = Compression(word)
        except ValueError:
            msg = f"unknown compression algorithm {word}"
            raise RemoteProtocolError(msg, msg_type=_FILE_CHUNK) from None
    if size > MAX_MESSAGE_SIZE:
        msg = f"FILE_CHUNK claims {size} uncompressed bytes, over the {MAX_MESSAGE_SIZE} limit"
        raise RemoteProtocolError(msg, msg_type=_FILE_CHUNK)
    if packed_size > reader.remaining:
        msg = f"FILE_CHUNK claims {packed_size} compressed bytes, message holds fewer"
        raise RemoteProtocolError(msg, msg_type=_FILE_CHUNK)
    if size > 0 and packed_size == 0:
        msg = "FILE_CHUNK has data but no compressed bytes"
        raise RemoteProtocolError(msg, msg_type=_FILE_CHUNK)
    packed = reader.raw(packed_size)
    if size == 0:
        return b"", packed_size
    return _decompress(packed, algorithm, size), packed_size


def iter_chunks(data: bytes | memoryview, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield *data* in pieces of at most *size* bytes, as 1.4 senders split file streams."""
    if size <= 0:
        msg = "chunk size must be positive"
        raise ValueError(msg)
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])
