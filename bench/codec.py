"""Throughput of iceserv's protocol codec: FILE_CHUNK (with compression) and GET_CS.

Run: ``.venv/bin/python bench/codec.py [--seconds S]``.  Prints one line per
case with MB/s or messages/s, and for FILE_CHUNK the ratio to the bare
compression library on the same data (the floor any implementation in any
language pays), so the figure says how much the Python framing adds.

``SEALED`` rows (issue 14 item 4) measure the encrypted channel: FILE_CHUNKs
encoded and sealed as AES-256-GCM records through a sealed
:class:`~iceserv.protocol.Connection`, and opened and decoded on the other
side, against the bare AEAD on the same frames, plus the CPU seconds per
GB the sealing adds.

Inputs: a preprocessed C++ translation unit (``g++ -E`` of common standard
headers, what clients stream) and a slice of gzip data (what environment
tarballs look like: incompressible).
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import time
from typing import TYPE_CHECKING

import zstandard

from iceserv.protocol import CHUNK_SIZE, EnvEntry, FileChunk, GetCS
from iceserv.protocol.compression import iter_chunks
from iceserv.protocol.messages import decode, encode
from iceserv.testing import ConnectionPair

if TYPE_CHECKING:
    from collections.abc import Callable

SOURCE = b"#include <iostream>\n#include <vector>\n#include <map>\n#include <string>\n"


def preprocessed_source() -> bytes:
    out = subprocess.run(
        ["g++", "-E", "-fdirectives-only", "-x", "c++", "-"],
        input=SOURCE, capture_output=True, check=True,
    )  # fmt: skip
    return out.stdout


def rate(
    fn: Callable[[], int], seconds: float, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Return units per second of *fn* (which returns units done per call) on *clock*."""
    fn()  # warm-up
    done = 0
    start = clock()
    while (elapsed := clock() - start) < seconds:
        done += fn()
    return done / elapsed


def bench_chunks(name: str, data: bytes, version: int, seconds: float) -> None:
    chunks = list(iter_chunks(data, CHUNK_SIZE))
    frames = [encode(FileChunk(c), version) for c in chunks]

    def enc() -> int:
        for c in chunks:
            encode(FileChunk(c), version)
        return len(data)

    def dec() -> int:
        for f in frames:
            decode(74, f[8:], version)
        return len(data)

    cctx = zstandard.ZstdCompressor(level=1)
    dctx = zstandard.ZstdDecompressor()
    packed = [cctx.compress(c) for c in chunks]

    def raw_enc() -> int:
        for c in chunks:
            cctx.compress(c)
        return len(data)

    def raw_dec() -> int:
        for p, c in zip(packed, chunks, strict=True):
            dctx.decompress(p, max_output_size=len(c))
        return len(data)

    mb = 1e6
    e, d = rate(enc, seconds) / mb, rate(dec, seconds) / mb
    if version >= 40:
        re_, rd = rate(raw_enc, seconds) / mb, rate(raw_dec, seconds) / mb
        extra = (
            f"  (bare zstd {re_:8.1f} / {rd:8.1f} MB/s; codec/bare {e / re_:.2f} / {d / rd:.2f})"
        )
    else:
        extra = ""
    ratio = sum(len(f) for f in frames) / len(data)
    print(f"FILE_CHUNK {name:<12} v{version}: encode {e:8.1f} MB/s  decode {d:8.1f} MB/s"
          f"  wire/raw {ratio:.3f}{extra}")  # fmt: skip


def _open_pair(key: bytes | None) -> ConnectionPair:
    """A handshaken Connection pair, a → b sealed with *key* (None: clear)."""
    from iceserv.protocol.sealing import Opener, Sealer  # noqa: PLC0415 - the cipher library

    p = ConnectionPair()
    for _ in range(3):
        p.events(p.a)
        p.events(p.b)
    if key is not None:
        p.a.seal_output(Sealer(key))
        p.b.open_input(Opener(key))
    return p


def _through(key: bytes | None, chunks: list[bytes]) -> tuple[Callable[[], int], ...]:
    """(send, receive) of *chunks* as FILE_CHUNKs through a pair sealed with *key* or clear."""
    total = sum(map(len, chunks))
    sender = _open_pair(key)
    wire = []
    for c in chunks:
        sender.a.send(FileChunk(c))
        wire.append(sender.a.data_to_send())

    def send() -> int:
        p = _open_pair(key)
        for c in chunks:
            p.a.send(FileChunk(c))
            p.a.data_to_send()
        return total

    def receive() -> int:
        p = _open_pair(key)
        for w in wire:
            p.b.receive_data(w)
            p.b.next_event()
        return total

    return send, receive


def bench_sealed(name: str, data: bytes, seconds: float) -> None:
    """FILE_CHUNKs through a sealed Connection pair against the clear one, in CPU time.

    The machine is shared, so these rows use process CPU time, not wall time:
    what sealing costs this process per byte, whatever else runs.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    chunks = list(iter_chunks(data, CHUNK_SIZE))
    frames = [encode(FileChunk(c), 43) for c in chunks]
    key = os.urandom(32)
    aead = AESGCM(key)

    def bare() -> int:
        for f in frames:
            aead.encrypt(bytes(12), f, None)
        return sum(map(len, frames))

    mb = 1e6
    sealed = [rate(f, seconds, time.process_time) / mb for f in _through(key, chunks)]
    clear = [rate(f, seconds, time.process_time) / mb for f in _through(None, chunks)]
    wire = rate(bare, seconds, time.process_time) / mb
    added = [(1 / s - 1 / c) * 1e3 for s, c in zip(sealed, clear, strict=True)]
    print(f"SEALED     {name:<12} v43: send {sealed[0]:8.1f} MB/s  receive {sealed[1]:8.1f} MB/s"
          f"  (clear {clear[0]:8.1f} / {clear[1]:8.1f} MB/s; bare AES-256-GCM {wire:8.1f} MB/s"
          f" of frames; sealing adds {added[0]:.2f} / {added[1]:.2f} CPU s per GB)")  # fmt: skip


def bench_get_cs(seconds: float) -> None:
    msg = GetCS(
        versions=(EnvEntry("x86_64", "8b59cf5c35b2033fe114a01a619d2eea"),),
        filename="proj/src/hello.c", lang=1, count=1, target="x86_64", arg_flags=8,
        client_id=3, minimal_host_version=21, client_count=4, niceness=5,
    )  # fmt: skip
    frame = encode(msg, 43)
    payload = frame[8:]

    def enc() -> int:
        for _ in range(1000):
            encode(msg, 43)
        return 1000

    def dec() -> int:
        for _ in range(1000):
            decode(71, payload, 43)
        return 1000

    e, d = rate(enc, seconds), rate(dec, seconds)
    print(f"GET_CS ({len(frame)} bytes) v43: encode {e:10,.0f} msg/s  decode {d:10,.0f} msg/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per case")
    args = parser.parse_args()
    source = preprocessed_source()
    tarball = gzip.compress(os.urandom(1 << 20))[: 1 << 20]
    print(f"inputs: preprocessed C++ {len(source):,} bytes; gzip data {len(tarball):,} bytes")
    for version in (43, 39):
        bench_chunks("source", source, version, args.seconds)
        bench_chunks("tarball", tarball, version, args.seconds)
    bench_sealed("source", source, args.seconds)
    bench_sealed("tarball", tarball, args.seconds)
    bench_get_cs(args.seconds)


if __name__ == "__main__":
    main()
