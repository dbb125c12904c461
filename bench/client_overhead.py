"""Per-call overhead of the compiler wrapper: plain gcc, the real 1.4 ``icecc`` and ours.

Run: ``.venv/bin/python bench/client_overhead.py [--runs N]``.  Compiles a
trivial C file (``gcc -c hello.c``) N times per variant, interleaved so that
machine noise hits every variant alike, and prints the median wall time per
call, the wrapper's overhead over plain gcc, and ours relative to 1.4's:

* ``ICECC=disable``: the local path, no daemon contacted (lock files only);
* no daemon: nothing listens (``HOME`` and the socket paths are empty, TCP
  127.0.0.1:10245 refuses), so the wrapper looks for one and builds locally;
* daemon slot: a fake local daemon on ``ICECC_TEST_SOCKET`` gives the go
  signal for a local job (``-E``), the path where our wrapper must load the
  protocol.

Each wrapper is called as ``icecc gcc -c hello.c``; ours through a launcher
like the console script pip installs (``#!<venv python>``).  "bare python"
is the floor for any wrapper written in Python: a script that only starts
the interpreter, spawns gcc and waits.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from testbed.client_fakes import FakeDaemon, write_launcher

Env = dict[str, str]
REAL_ICECC = "/usr/bin/icecc"
# The floor for any Python wrapper: start the interpreter, spawn the compiler, wait.
BARE = """#!{python}
import os, sys
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], dict(os.environ))
sys.exit(os.waitstatus_to_exitcode(os.wait4(pid, 0)[1]))
"""
GCC = "/usr/bin/gcc"


def run_once(argv: list[str], env: dict[str, str], cwd: str) -> float:
    """Wall seconds of one run (spawned without subprocess's own overhead)."""
    start = time.perf_counter()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        pid = os.posix_spawn(argv[0], argv, env)
    finally:
        os.chdir(old)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        msg = f"{argv} failed with {status}"
        raise RuntimeError(msg)
    return elapsed


def measure(variants: dict[str, tuple[list[str], dict[str, str]]], runs: int,
            cwd: str) -> dict[str, float]:  # fmt: skip
    """Median milliseconds per variant, runs interleaved round-robin."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for argv, env in variants.values():  # warm-up: page cache, pyc files
        run_once(argv, env, cwd)
    for _ in range(runs):
        for name, (argv, env) in variants.items():
            times[name].append(run_once(argv, env, cwd))
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def report(title: str, medians: dict[str, float]) -> None:
    gcc = medians["gcc"]
    real, ours = medians["real icecc"], medians["our icecc"]
    print(f"\n{title}")
    for name, value in medians.items():
        extra = "" if name == "gcc" else f"  overhead {value - gcc:6.1f} ms"
        print(f"  {name:12s} {value:7.1f} ms{extra}")
    print(f"  ours / real: {ours / real:.2f}x per call, "
          f"{(ours - gcc) / max(real - gcc, 0.01):.1f}x the wrapper overhead")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per variant (default 40)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="icecc-bench-") as tmp:
        work = Path(tmp)
        (work / "hello.c").write_text("int main(void) { return 0; }\n")
        ours = str(write_launcher(work / "icecc", sys.executable))
        base = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C"}

        bare = work / "bare-python-wrapper"
        bare.write_text(BARE.format(python=sys.executable))
        bare.chmod(0o755)

        def variants(env: dict[str, str], *extra: str) -> dict[str, tuple[list[str], Env]]:
            compile_args = ["-c", "hello.c", *extra]
            return {
                "gcc": ([GCC, *compile_args], base),
                "real icecc": ([REAL_ICECC, "gcc", *compile_args], env),
                "our icecc": ([ours, "gcc", *compile_args], env),
                "bare python": ([str(bare), GCC, *compile_args], env),
            }

        print(f"{args.runs} runs per variant, median wall time per call ({os.cpu_count()} CPUs)")
        report("ICECC=disable (local, no daemon contacted):",
               measure(variants({**base, "ICECC": "disable"}), args.runs, tmp))
        report("no daemon running (looked for, then local):",
               measure(variants(base), args.runs, tmp))
        daemon = FakeDaemon(work / "daemon.sock").start()
        try:
            slot_env = {**base, "ICECC_TEST_SOCKET": str(work / "daemon.sock")}
            report("daemon slot for a local job (-E, JOB_LOCAL_BEGIN):",
                   measure(variants(slot_env, "-E", "-o", "hello.i"), args.runs, tmp))
        finally:
            daemon.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
