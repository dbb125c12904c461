"""Run one fuzz target for a number of inputs: ``python -m fuzz.run TARGET --runs N``.

With Atheris installed (``pip install atheris``) the target runs under
libFuzzer with coverage feedback from ``iceserv``'s code (``--engine
atheris``, the default then); otherwise, or with ``--engine random``, a
seeded mutation loop of our own feeds it.  Both start from seeds built here
(valid frames, telnet commands, the sample conf.d and TOML files of
``etc/``).  Only ``IceservError`` may escape a target: anything else stops
the run with the exception and the input (saved as ``crash-*`` in the
current directory), and the exit status is non-zero.  At the end the random
engine prints ``fuzz TARGET: N inputs in S s, C crashes``, libFuzzer its
``Done N runs in S second(s)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

_ROOT: Final = Path(__file__).resolve().parents[1]
_NAMES: Final = ("connection", "decode", "telnet", "confd", "toml", "auth")
_TELNET: Final = (b"listcs\r\n", b"listjobs\n", b"removecs node1 x\n", b"blockcs a\tb\n",
                  b"unblockcs a\n", b"listblocks\n", b"internals node1\n", b"help\nquit\n",
                  b"LISTCS\r\r\n\x00caf\xc3\xa9 x\n")  # fmt: skip


def _seeds(name: str) -> list[bytes]:
    """Return valid inputs for *name* to start mutating from."""
    if name in ("connection", "decode"):
        from iceserv.protocol import (  # noqa: PLC0415 - iceserv loads after instrumentation
            EnvEntry,
            GetCS,
            JobDone,
            Login,
            Message,
            Stats,
            UseCS,
        )
        from iceserv.protocol.messages import encode  # noqa: PLC0415

        msgs: list[Message] = [
            GetCS(versions=(EnvEntry("x86_64", "gcc.tar.zst"),), filename="a.c", lang=1),
            UseCS(job_id=3, port=10245, hostname="10.0.0.2", host_platform="x86_64"),
            JobDone(job_id=3, user_msec=120, out_uncompressed=5000), Stats(load=300),
            Login(port=10245, max_kids=4, nodename="n1", host_platform="x86_64"),
        ]  # fmt: skip
        frames = [encode(m, 43) for m in msgs]
        if name == "decode":
            return [bytes([m.TYPE, 22]) + f[8:] for m, f in zip(msgs, frames, strict=True)]
        return [bytes([22, 22, 7, 3, 200, 1, 0, 0]) + b"".join(frames)]
    if name == "telnet":
        return [bytes([3, 5]) + line for line in _TELNET]
    if name == "auth":
        return _auth_seeds()
    if name == "confd":
        return [path.read_bytes() for path in sorted((_ROOT / "etc/conf.d").iterdir())]
    return [(_ROOT / "etc/iceserv/iceserv.toml").read_bytes(),
            b"[daemon]\nmax_processes = 4\n[scheduler]\nport = 8765\n"]  # fmt: skip


def _auth_seeds() -> list[bytes]:
    """Return a daemon's hello and proof, a LOGIN, a monitor, and the datagrams (issue 14)."""
    from fuzz.targets import _ENDS, _NONCE_D, _NONCE_S, _RING  # noqa: PLC0415 - after instrumenting
    from iceserv.protocol import AuthHello, AuthProof, Login, MonLogin  # noqa: PLC0415
    from iceserv.protocol.auth import (  # noqa: PLC0415
        DaemonHandshake,
        SchedulerHandshake,
        encode_probe,
    )
    from iceserv.protocol.messages import encode  # noqa: PLC0415

    daemon = DaemonHandshake(_RING, _NONCE_D, _ENDS)
    challenge = SchedulerHandshake(_RING, _NONCE_S, _ENDS).challenge(daemon.hello())
    proof = daemon.answer(challenge)
    login = Login(port=10245, max_kids=4, nodename="n1", host_platform="x86_64")
    frames = [encode(m, 43) for m in (daemon.hello(), proof, login)]
    return [
        bytes([1, 7, 200]) + b"".join(frames),
        bytes([0, 3, 1]) + encode(login, 43),
        bytes([1, 9, 9]) + encode(MonLogin(), 43),
        bytes([1, 2, 2]) + encode(AuthProof("00" * 32), 43) + encode(AuthHello("x", ()), 43),
        bytes([1, 1, 1]) + encode(challenge, 43),
        encode_probe(_NONCE_D, _RING),
    ]


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One random edit: flip, insert, delete, duplicate, splice or an interesting byte."""
    buf = bytearray(data)
    for _ in range(1 + rng.randrange(4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.randbytes(1 + rng.randrange(8))
        elif op == 2 and buf:
            del buf[pos : pos + 1 + rng.randrange(16)]
        elif op == 3 and buf:
            buf[pos:pos] = buf[pos : pos + 1 + rng.randrange(32)]
        elif op == 4:
            other = rng.choice(pool)
            start = rng.randrange(len(other) + 1)
            buf[pos:] = other[start:]
        elif buf:
            buf[pos % len(buf)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 10, 13, 32, 34, 36, 39, 91))
    return bytes(buf[:4096])


def _random_engine(name: str, target: Callable[[bytes], None], runs: int, seed: int) -> int:
    rng = random.Random(seed)  # noqa: S311 - input generation, not security
    pool = _seeds(name)
    done = 0
    start = time.perf_counter()
    data = b""
    try:
        for data in pool:
            target(data)
            done += 1
        while done < runs:
            data = _mutate(rng, rng.choice(pool), pool)
            target(data)
            done += 1
            if done % 64 == 0 and len(pool) < 512:
                pool.append(data)  # keep some variety without coverage feedback
    except Exception:
        crash = Path(f"crash-{name}-{done}")
        crash.write_bytes(data)
        _report(name, done, time.perf_counter() - start, 1)
        sys.stderr.write(f"input saved to {crash}\n")
        raise
    _report(name, done, time.perf_counter() - start, 0)
    return 0


def _report(name: str, runs: int, seconds: float, crashes: int) -> None:
    sys.stdout.write(f"fuzz {name}: {runs} inputs in {seconds:.0f} s, {crashes} crashes\n")
    sys.stdout.flush()


def _atheris_engine(name: str, runs: int, seed: int) -> int:
    import atheris  # type: ignore[import-untyped]  # noqa: PLC0415 - optional

    with atheris.instrument_imports(include=["iceserv"]):
        from fuzz.targets import TARGETS  # noqa: PLC0415 - iceserv must load instrumented

    with tempfile.TemporaryDirectory(prefix=f"iceserv-fuzz-{name}-") as corpus:
        for i, data in enumerate(_seeds(name)):
            (Path(corpus) / f"seed-{i}").write_bytes(data)
        argv = [sys.argv[0], f"-runs={runs}", f"-seed={seed}", "-max_len=4096",
                "-rss_limit_mb=4096", "-print_final_stats=1", corpus]  # fmt: skip
        atheris.Setup(argv, TARGETS[name])
        # libFuzzer ends the process itself: "Done N runs in S second(s)" and
        # exit 0, or the uncaught exception, a crash-* file and a non-zero exit.
        atheris.Fuzz()
    return 0


def main() -> int:
    """Parse the command line and run the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("target", choices=_NAMES)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    has_atheris = importlib.util.find_spec("atheris") is not None
    parser.add_argument("--engine", choices=("atheris", "random"),
                        default="atheris" if has_atheris else "random")  # fmt: skip
    args = parser.parse_args()
    if args.engine == "atheris":
        return _atheris_engine(args.target, args.runs, args.seed)
    from fuzz.targets import TARGETS  # noqa: PLC0415 - after argument parsing, as above

    return _random_engine(args.target, TARGETS[args.target], args.runs, args.seed)


if __name__ == "__main__":
    sys.exit(main())
