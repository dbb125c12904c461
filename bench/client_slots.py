"""How fast ``icecc --slots`` answers (issue 17.4: <= 50 ms), with our and the real 1.4 scheduler.

Run: ``.venv/bin/python bench/client_slots.py [--runs N]`` (as root: the
daemons run jobs as ``icecc``).  On loopback (free ports, this process's
namespace) it starts our scheduler with our daemons A (``-m 2``) and B
(``-m 3``), and the real ``icecc-scheduler`` 1.4 with our daemon C, then
times, interleaved N times each:

* ``python -I -S -c pass``: the interpreter's floor;
* ``icecc --slots`` through A (the cluster's count: daemon → our scheduler
  → back) and through C (a 1.4 scheduler: C answers alone, on stderr why),
  each run as a user runs it: the ``.venv/bin/icecc`` launcher (``-IS``);
* the question alone, in this process (``ask_daemon``: connect to the
  daemon's iceserv endpoint, handshake, SLOTS_QUERY, SLOTS_ANSWER).

1.4 has no slot count, so there is no 1.4 row to compare with; the 1.4
scheduler row is the fallback path.  Prints medians and p90 in ms and the
load average; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

from testbed import LOOPBACK, OurDaemon, OurScheduler, RealScheduler, SchedulerMonitor, wait_for

from iceserv.client.env import ClientEnv
from iceserv.client.slotcount import ask_daemon

REPO = Path(__file__).resolve().parents[1]
ICECC = REPO / ".venv" / "bin" / "icecc"


def _time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env)
    _, status, _ = os.wait4(pid, 0)
    took = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        msg = f"{argv} failed with {status}"
        raise RuntimeError(msg)
    return took


def _env(daemon: OurDaemon) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
            "ICECC_TEST_SOCKET": str(daemon.socket_path)}  # fmt: skip


def _ask_in_process(daemon: OurDaemon) -> float:
    saved = os.environ.get("ICECC_TEST_SOCKET")
    os.environ["ICECC_TEST_SOCKET"] = str(daemon.socket_path)
    try:
        env = ClientEnv.current()
        start = time.perf_counter()
        answer, why = ask_daemon(env)
        took = time.perf_counter() - start
    finally:
        if saved is None:
            os.environ.pop("ICECC_TEST_SOCKET", None)
        else:
            os.environ["ICECC_TEST_SOCKET"] = saved
    if answer is None:
        raise RuntimeError(why)
    return took


def _row(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return f"{name:<46} median {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms"


def main() -> int:
    """Start the clusters, time the variants, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    with contextlib.ExitStack() as stack:
        ours = OurScheduler(host=LOOPBACK).start()
        stack.callback(ours.stop)
        real = RealScheduler(host=LOOPBACK).start()
        stack.callback(real.stop)
        monitor = stack.enter_context(SchedulerMonitor(LOOPBACK, ("127.0.0.1", ours.port)))
        daemons = {}
        for name, jobs, scheduler in (("A", 2, ours), ("B", 3, ours), ("C", 2, real)):
            daemon = OurDaemon(f"slots{name}", host=LOOPBACK, max_jobs=jobs,
                               scheduler=scheduler.address, netname=scheduler.netname)  # fmt: skip
            daemons[name] = daemon.start()
            stack.callback(daemon.stop)
        monitor.wait_online(["slotsA", "slotsB"], 60.0)
        daemons["C"].wait_listed(real, timeout=60.0)
        wait_for(lambda: ask_daemon_total(daemons["A"]) == 5, 30.0, "the cluster's 5 slots")
        floor = [sys.executable, "-I", "-S", "-c", "pass"]
        variants = {
            "python -I -S -c pass (floor)": lambda: _time(floor, {}),
            "icecc --slots, our scheduler (cluster: 5)": lambda: _time(
                [str(ICECC), "--slots"], _env(daemons["A"])
            ),
            "icecc --slots --free, our scheduler": lambda: _time(
                [str(ICECC), "--slots", "--free"], _env(daemons["A"])
            ),
            "icecc --slots, 1.4 scheduler (local: 2)": lambda: _time(
                [str(ICECC), "--slots"], _env(daemons["C"])
            ),
            "question alone, our scheduler (in process)": lambda: _ask_in_process(daemons["A"]),
            "question alone, 1.4 scheduler (in process)": lambda: _ask_in_process(daemons["C"]),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(runs):
            for name, run in variants.items():
                times[name].append(run())
    load = os.getloadavg()
    loads = " ".join(f"{value:.2f}" for value in load)
    print(f"icecc --slots, {runs} runs each, load average {loads}")
    for name, values in times.items():
        print(_row(name, values))
    return 0


def ask_daemon_total(daemon: OurDaemon) -> int:
    """The cluster's total as *daemon* reports it (0 until the scheduler answers)."""
    os.environ["ICECC_TEST_SOCKET"] = str(daemon.socket_path)
    answer, _ = ask_daemon(ClientEnv.current())
    return answer.total if answer is not None and answer.source == "cluster" else 0


if __name__ == "__main__":
    sys.exit(main())
