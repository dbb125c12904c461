"""Tests of iceserv.protocol.compression: compressed blobs (reference §3) and chunking."""

from __future__ import annotations

import resource
import sys

import lzo
import pytest
import zstandard

from iceserv.errors import LocalProtocolError, RemoteProtocolError
from iceserv.protocol.compression import iter_chunks, read_blob, write_blob
from iceserv.protocol.connection import Connection
from iceserv.protocol.messages import FileChunk
from iceserv.protocol.wire import Reader, Writer

MIB = 1 << 20
#: Compressible but not trivial: level 19 finds more than level 1 in it.
TEXT = b"".join(b"line %d: the quick brown fox jumps over the lazy dog %d\n" % (i, i * i % 97)
                for i in range(3000))  # fmt: skip


def blob(data: bytes, version: int, level: int = 1) -> bytes:
    """The bytes write_blob appends."""
    w = Writer()
    write_blob(w, data, version, level)
    return w.getvalue()


def words(raw: bytes, n: int) -> list[int]:
    """The first *n* big-endian u32 words of *raw*."""
    return [int.from_bytes(raw[i : i + 4], "big") for i in range(0, 4 * n, 4)]


class TestIterChunks:
    """Senders cut file data into pieces of at most 100 000 bytes (§2.2 FILE_CHUNK)."""

    @pytest.mark.parametrize(
        ("size", "pieces"),
        [
            (0, []),
            (1, [1]),
            (99_999, [99_999]),
            (100_000, [100_000]),
            (100_001, [100_000, 1]),
            (250_000, [100_000, 100_000, 50_000]),
        ],
    )
    def test_default_size(self, size, pieces):
        """Pieces are 100 000 bytes except the last, and nothing is empty."""
        data = bytes(i % 251 for i in range(size))
        chunks = list(iter_chunks(data))
        assert [len(c) for c in chunks] == pieces
        assert b"".join(chunks) == data

    def test_custom_size_and_memoryview(self):
        """A given size and a memoryview input work too."""
        assert list(iter_chunks(memoryview(b"abcdefg"), 3)) == [b"abc", b"def", b"g"]

    @pytest.mark.parametrize("size", [0, -1])
    def test_size_must_be_positive(self, size):
        """A chunk size below 1 is a programming error."""
        with pytest.raises(ValueError):
            list(iter_chunks(b"abc", size))


class TestWriteBlob:
    """The sender's side of §3.1."""

    @pytest.mark.parametrize("version", [40, 41, 43])
    def test_zstd_from_40(self, version):
        """From 40: sizes, algorithm 1, and the zstd frame a level-1 compressor makes."""
        raw = blob(TEXT, version)
        expected = zstandard.ZstdCompressor(level=1).compress(TEXT)
        assert words(raw, 3) == [len(TEXT), len(expected), 1]
        assert raw[12:] == expected

    @pytest.mark.parametrize("version", [21, 30, 39])
    def test_lzo_below_40(self, version):
        """Below 40: sizes, no algorithm word, and raw LZO1X-1."""
        raw = blob(TEXT, version)
        expected = lzo.compress(TEXT, 1, False)  # noqa: FBT003
        assert words(raw, 2) == [len(TEXT), len(expected)]
        assert raw[8:] == expected
        assert lzo.decompress(raw[8:], False, len(TEXT)) == TEXT  # noqa: FBT003

    def test_missing_lzo_names_the_extra(self, monkeypatch):
        """Without python-lzo, an old peer's blob fails with the extra to install, not a trace."""
        monkeypatch.setitem(sys.modules, "lzo", None)  # import lzo now raises ImportError
        with pytest.raises(LocalProtocolError, match=r"pip install 'iceserv\[lzo\]'"):
            blob(TEXT, 39)

    def test_level_is_honoured(self):
        """The zstd level the sender asks for is the one used."""
        fast = zstandard.ZstdCompressor(level=1).compress(TEXT)
        best = zstandard.ZstdCompressor(level=19).compress(TEXT)
        assert fast != best  # otherwise this test could not tell the levels apart
        assert blob(TEXT, 43, level=19)[12:] == best
        assert blob(TEXT, 43, level=1)[12:] == fast

    def test_connection_level(self):
        """A Connection's compression_level reaches the FILE_CHUNKs it sends."""
        conn = Connection(compression_level=19)
        conn.receive_data(b"\x2b\0\0\0" * 2)
        conn.next_event()
        conn.data_to_send()
        conn.send(FileChunk(TEXT))
        frame = conn.data_to_send()
        assert frame[20:] == zstandard.ZstdCompressor(level=19).compress(TEXT)

    @pytest.mark.parametrize(("version", "header"), [(43, [0, 0, 1]), (39, [0, 0])])
    def test_empty_chunk(self, version, header):
        """An empty chunk is legal: zero sizes (§2.2), and it reads back empty."""
        raw = blob(b"", version)
        assert words(raw, len(header)) == header
        assert len(raw) == 4 * len(header)
        r = Reader(raw)
        assert read_blob(r, version) == (b"", 0)
        r.finish()

    def test_returns_compressed_size(self):
        """write_blob reports how many compressed bytes it wrote."""
        w = Writer()
        packed = write_blob(w, TEXT, 43)
        assert packed == len(w.getvalue()) - 12

    def test_largest_chunk(self):
        """1 MiB of data is the most a chunk may carry."""
        assert words(blob(b"\0" * MIB, 43), 1) == [MIB]
        with pytest.raises(LocalProtocolError):
            blob(b"\0" * (MIB + 1), 43)


class TestReadBlob:
    """The receiver's side of §3.1."""

    @pytest.mark.parametrize("version", [39, 43])
    def test_round_trip(self, version):
        """read_blob gives back the data and the compressed size."""
        raw = blob(TEXT, version)
        r = Reader(raw)
        data, packed = read_blob(r, version)
        r.finish()
        assert data == TEXT
        assert packed == len(raw) - (12 if version >= 40 else 8)

    def test_largest_size_accepted(self):
        """A chunk of exactly 1 MiB uncompressed is accepted."""
        packed = zstandard.ZstdCompressor().compress(b"\0" * MIB)
        raw = (MIB).to_bytes(4, "big") + len(packed).to_bytes(4, "big") + b"\0\0\0\1" + packed
        assert read_blob(Reader(raw), 43)[0] == b"\0" * MIB

    def test_zstd_without_content_size(self):
        """A zstd frame that does not state its size (streaming encoders) is accepted."""
        packed = zstandard.ZstdCompressor(write_content_size=False).compress(TEXT)
        raw = len(TEXT).to_bytes(4, "big") + len(packed).to_bytes(4, "big") + b"\0\0\0\1" + packed
        assert read_blob(Reader(raw), 43)[0] == TEXT

    def test_zstd_bomb(self):
        """A small frame whose header promises far more than the chunk's size is refused cheaply.

        The frame is 32 KiB of RLE blocks that expand to 512 MiB; the blob says 5 bytes.
        """
        block = 128 * 1024
        count = 4096
        rle = b"".join(
            ((i == count - 1) | (1 << 1) | (block << 3)).to_bytes(3, "little") + b"A"
            for i in range(count)
        )
        frame = b"\x28\xb5\x2f\xfd\xa0" + (block * count).to_bytes(4, "little") + rle
        raw = (5).to_bytes(4, "big") + len(frame).to_bytes(4, "big") + b"\0\0\0\1" + frame
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(RemoteProtocolError):
            read_blob(Reader(raw), 43)
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        assert grown_kib < 64 * 1024
