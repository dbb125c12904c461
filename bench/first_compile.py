"""P7: the first compile through a fresh cluster, real icecream 1.4 against iceserv, one run.

Run (as root, like the test bed): ``.venv/bin/python bench/first_compile.py [--runs 3]
[--wait 3] [--without-prebuild] [--without-push] [--json FILE]``.

Each sample is a new two-host cluster on a namespace bed (``testbed.NetnsBed``
and ``testbed.Cluster``): the scheduler and a daemon without slots on h1
(``-m 0``: the developer's machine, whose jobs all go out), a daemon with two
slots on h2.  Once the scheduler lists both daemons, the benchmark waits until h1's daemon has
run for ``--wait`` seconds (3: issue 17's "a daemon started at least 3 s
earlier"), then times one ``icecc gcc -O2 -c`` of a generated C unit (``--functions``
one-line functions, 40 by default: a small file) on h1
(the real client on the real cluster, ours on ours).  That compile needs the
native environment of gcc (1.4 builds it now, with gzip; iceserv built it at
start, with zstd), sends it to h2, which unpacks it, then compiles.  With
push-ahead (iceserv's default) h1's daemon has usually sent the environment
to h2 before the compile starts, so the compile sends none;
``--without-push`` adds a row of iceserv with ``--no-push-ahead``.  The
object must equal a local ``gcc -O2 -c`` and the job must have run on h2 (the
scheduler's monitor says so), else the benchmark exits 1.  The kinds
alternate every run (real first, then ours first), so a slow phase of the
machine hits both alike.

For iceserv it also says where the time went, from the daemons' JSON logs:
how long the environment build took and how long the client waited for it
(``native_env_built``, ``native_env_sent``), when the client had it
(``env_sent_after_s``, from the compile's start), h2's transfer and unpack
(``env_transfer_started`` to ``env_installed``) and h2's compile
(``job_finished``), and for push-ahead the push's time and whether it was over
before the compile began (``native_env_pushed``; ``env_pushed_before_s`` > 0:
that many seconds before), and how many transfers h2 received
(``env_transfers_on_h2``: 1 either way; from the push or from the client).
``local_gcc_s`` is the same ``gcc -c`` run locally: the
floor of any compile.  Prints every sample, the
load average before and after, medians and the ratio iceserv/1.4.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provenance import provenance
from testbed import ClientPlan, Cluster, DaemonPlan, NetnsBed, OurDaemon

if TYPE_CHECKING:
    from collections.abc import Mapping

Row = dict[str, Any]
LABEL = {
    "real": "1.4",
    "ours": "iceserv",
    "ours-nopush": "iceserv, no push-ahead",
    "ours-cold": "iceserv, no prebuild",
}


def unit_source(functions: int) -> str:
    """A C unit with *functions* small functions and a main (``--functions``)."""
    body = "".join(f"int f{i}(int x) {{ return x * {i} + {i % 7}; }}\n" for i in range(functions))
    last = functions - 1
    return f'#include <stdio.h>\n{body}int main(void) {{ puts("1st"); return f{last}(2); }}\n'


COMPILE_TIMEOUT = 300.0


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _when(record: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(str(record["timestamp"])).timestamp()


def _breakdown(local: OurDaemon, server: OurDaemon, began: float) -> Row:
    """Where an iceserv first compile spent its time, from the two daemons' logs."""
    row: Row = {}
    sent = local.events("native_env_sent")
    if sent:
        row["env_origin"] = sent[0]["origin"]
        row["env_wait_s"] = sent[0]["waited_seconds"]
        row["env_sent_after_s"] = round(_when(sent[0]) - began, 3)
    built = [e for e in local.events("native_env_built") if e["compiler"].endswith("/gcc")]
    if built:
        row["env_build_s"] = built[0]["seconds"]
        row["env_ready_after_start_s"] = round(
            _when(built[0]) - _when(local.events("daemon_started")[0]), 3
        )
    started, installed = server.events("env_transfer_started"), server.events("env_installed")
    if started and installed:
        row["env_transfer_and_unpack_s"] = round(_when(installed[0]) - _when(started[0]), 3)
        row["env_size"] = installed[0].get("size")
    jobs = [e for e in server.events("job_finished") if e.get("where") == "server"]
    if jobs:
        row["compile_on_server_s"] = jobs[0]["real_msec"] / 1000
    row["env_transfers_on_h2"] = len(started)
    pushed = local.events("native_env_pushed")
    if pushed:
        row["env_push_s"] = pushed[0]["seconds"]
        row["env_pushed_before_s"] = round(began - _when(pushed[0]), 3)
    return row


def _remote_jobs(began: Mapping[str, int], client: str, env: Mapping[str, str], server: str) -> int:
    """Jobs begun off h1: the monitor's count, or the real client's own word.

    A real h2 logs in again after an install, under a new id, and the real
    scheduler's monitor does not always report the job's begin; the real
    client's debug log names the host it used.
    """
    count = sum(n for name, n in began.items() if name != client)
    if count:
        return count
    with contextlib.suppress(OSError):
        trace = Path(env["ICECC_LOGFILE"]).read_text(errors="replace")
        return int(f"Have to use host {server}:" in trace)
    return 0


def sample(kind: str, wait: float, workdir: Path, source: str) -> Row:
    """One fresh cluster of *kind*: time its first compile."""
    programs = "real" if kind == "real" else "ours"
    # "ours-cold": our daemons with prebuilds off, as before issue 17 (but zstd);
    # "ours-nopush": prebuilds on, push-ahead off.
    args = {"ours-cold": ("--native-compilers", ""), "ours-nopush": ("--no-push-ahead",)}.get(
        kind, ()
    )
    # The product's default, push-ahead on (the test bed turns it off unless asked).
    env = {OurDaemon.PUSH_AHEAD_ENV: "yes"} if programs == "ours" else {}
    plans = (
        DaemonPlan(programs, max_jobs=0, extra_args=args, extra_env=env),  # type: ignore[arg-type]
        DaemonPlan(programs, max_jobs=2, extra_args=args, extra_env=env),  # type: ignore[arg-type]
    )
    with NetnsBed(2) as bed, Cluster(bed, programs, plans) as cluster:  # type: ignore[arg-type]
        online = time.monotonic()
        local, server = cluster.daemon(0), cluster.daemon(1)
        # The daemons were started before the scheduler listed them: waiting *wait*
        # seconds from here gives each at least that long (P7's "started >= 3 s earlier").
        time.sleep(max(0.0, online + wait - time.monotonic()))
        unit = workdir / f"{kind}-{os.getpid()}-{time.monotonic_ns()}"
        unit.mkdir()
        (unit / "first.c").write_text(source)
        cc, env = cluster.client_command(ClientPlan(programs), 0)  # type: ignore[arg-type]
        monitor = cluster.monitor
        if monitor is None:
            msg = "the cluster has no monitor"
            raise RuntimeError(msg)
        mark = monitor.mark()
        load = loadavg()
        wall = time.time()
        began = time.monotonic()
        result = bed[0].run([*cc.split(), "-O2", "-c", "first.c", "-o", "first.o"], cwd=unit,
                            env=env, timeout=COMPILE_TIMEOUT, check=False,
                            capture_output=True)  # fmt: skip
        seconds = time.monotonic() - began
        monitor.wait_settled(mark, 30.0)
        placement = monitor.placement(since=mark)
        local_began = time.monotonic()
        subprocess.run(["gcc", "-O2", "-c", "first.c", "-o", "local.o"], cwd=unit, check=True,
                       timeout=60)  # fmt: skip
        local_gcc = time.monotonic() - local_began
        identical = (unit / "first.o").exists() and (
            (unit / "first.o").read_bytes() == (unit / "local.o").read_bytes()
        )
        row: Row = {
            "kind": kind,
            "seconds": round(seconds, 3),
            "exit": result.returncode,
            "identical": identical,
            "on_server": _remote_jobs(placement.began, cluster.name(0), env, bed[1].ip),
            "local_gcc_s": round(local_gcc, 3),
            "load_before": load,
            "load_after": loadavg(),
        }
        if isinstance(local, OurDaemon) and isinstance(server, OurDaemon):
            row.update(_breakdown(local, server, wall))
        if result.returncode != 0 or not identical or row["on_server"] != 1:
            row["problem"] = result.stderr.decode(errors="replace")[-2000:] + cluster.log_tails()
        return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh clusters per kind")
    parser.add_argument("--wait", type=float, default=3.0, help="seconds the daemons run first")
    parser.add_argument("--functions", type=int, default=40,
                        help="size of the C unit (default 40 one-line functions)")  # fmt: skip
    parser.add_argument("--without-prebuild", action="store_true",
                        help="also time iceserv with prebuilds off")  # fmt: skip
    parser.add_argument("--without-push", action="store_true",
                        help="also time iceserv with push-ahead off")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the samples and medians here")
    args = parser.parse_args()
    rows: list[Row] = []
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    with tempfile.TemporaryDirectory(prefix="iceserv-p7-") as tmp:
        for run in range(args.runs):
            kinds: tuple[str, ...] = ("real", "ours")
            kinds += ("ours-nopush",) if args.without_push else ()
            kinds += ("ours-cold",) if args.without_prebuild else ()
            order = kinds if run % 2 == 0 else kinds[::-1]
            for kind in order:
                row = sample(kind, args.wait, Path(tmp), unit_source(max(1, args.functions)))
                rows.append(row)
                extra = {k: v for k, v in row.items() if k.endswith("_s") or k.startswith("env")}
                print(f"run {run + 1} {LABEL[kind]:20} {row['seconds']:6.2f} s  exit {row['exit']}"
                      f"  identical {row['identical']}  on h2 {row['on_server']}"
                      f"  load {row['load_before']:.1f}  {extra}", flush=True)  # fmt: skip
                if "problem" in row:
                    print(row["problem"], file=sys.stderr)
    medians = {
        kind: statistics.median(r["seconds"] for r in rows if r["kind"] == kind)
        for kind in LABEL
        if any(r["kind"] == kind for r in rows)
    }
    ratio = medians["ours"] / medians["real"]
    print(f"median first compile: 1.4 {medians['real']:.2f} s, iceserv {medians['ours']:.2f} s,"
          f" iceserv/1.4 {ratio:.2f}")  # fmt: skip
    if "ours-nopush" in medians:
        print(f"iceserv without push-ahead: {medians['ours-nopush']:.2f} s,"
              f" /1.4 {medians['ours-nopush'] / medians['real']:.2f}")  # fmt: skip
    if "ours-cold" in medians:
        print(f"iceserv without prebuild: {medians['ours-cold']:.2f} s")
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    if args.json:
        args.json.write_text(json.dumps({"provenance": provenance(), "samples": rows,
                                         "median_seconds": medians, "ratio": ratio},
                                        indent=1))  # fmt: skip
    return 1 if any("problem" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
