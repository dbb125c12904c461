"""A real build through a 3-host cluster: every program real icecream 1.4, then every one iceserv.

Run (as root, like the test bed): ``.venv/bin/python bench/cluster.py [--runs 3]
[--cold 1] [--jobs 6] [--slots 2] [--json FILE]``.

The project is ``testbed/project.py``'s: zstd's C library, 33 units,
from the ``zstd`` sdist on PyPI pinned by sha256 (fetched with pip on first
use, cached in ``/var/cache/iceserv-test``), compiled ``-O2`` one object per
unit.  Two namespace beds of three hosts each (``testbed.NetnsBed``) hold two
whole clusters (``testbed.Cluster``), both started before the first build:

* real: ``icecc-scheduler`` 1.4 on h1, a real ``iceccd`` on h1, h2 and h3
  (found by broadcast), ``make -jN CC="/usr/bin/icecc gcc"`` on h1;
* iceserv: our scheduler on h1, our daemon on every host, our ``icecc``
  (a console-script launcher, as pip installs it) in the same make.

Every daemon has ``--slots`` slots and sees a frozen ``/proc/stat``
(``testbed.IdleCpuHost``: all hosts share this machine's CPUs, so otherwise a
busy host makes the others report load 1000).  A plain ``make -jN`` with gcc
in the root namespace is the baseline.

Each build starts from a clean ``obj/``.  The first build on a fresh cluster
is *cold*: the local daemon builds the native compiler environment
(``icecc-create-env``) and h2/h3 receive and unpack it before their first
job.  ``--cold N`` restarts both clusters N times for N cold samples; then
``--runs`` *warm* rounds follow on the last clusters, environments installed.
The order of real, iceserv and local rotates every round, so a slow phase of
the machine hits each alike.  Every build must succeed with all 33 objects
byte-identical to a local gcc build (else the benchmark exits 1).

Prints per build the wall time, where the jobs began (monitor
``MON_JOB_BEGIN`` per host; h1's count includes the "compile it yourself"
jobs of its own daemon) and the load average, then medians and the ratio
iceserv/real (of the medians, the median of the round-by-round ratios, and
of the fastest builds).  ``--json FILE`` writes everything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from provenance import provenance
from testbed import (
    ClientPlan,
    Cluster,
    DaemonPlan,
    NetnsBed,
    Project,
    reference_build,
    unpack_project,
)
from testbed.project import build_env

ROOT = Path(__file__).resolve().parents[1]

Row = dict[str, Any]
KINDS = ("real", "ours")
LABEL = {"real": "1.4", "ours": "iceserv", "local": "local gcc"}
BUILD_TIMEOUT = 900.0


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def start_clusters(stack: contextlib.ExitStack, beds: dict[str, NetnsBed],
                   slots: int) -> dict[str, Cluster]:  # fmt: skip
    clusters = {}
    for kind in KINDS:
        start = time.monotonic()
        cluster = Cluster(beds[kind], kind, [DaemonPlan(kind, max_jobs=slots)] * 3)
        stack.callback(cluster.stop)
        clusters[kind] = cluster.start()
        print(f"  {LABEL[kind]} cluster up in {time.monotonic() - start:.1f} s", flush=True)
    return clusters


def cluster_build(cluster: Cluster, kind: str, project: Project, reference: dict[str, bytes],
                  jobs: int) -> dict[str, Any]:  # fmt: skip
    load = loadavg()
    result = cluster.build(project, reference, ClientPlan(kind), on=0, jobs=jobs,
                           timeout=BUILD_TIMEOUT)  # fmt: skip
    # Node names are "<host>-<kind>"; report by host.
    began = {name.split("-", 1)[0]: n for name, n in sorted(result.placement.began.items())}
    return {
        "seconds": round(result.seconds, 2),
        "ok": not result.problems(),
        "problems": result.problems(),
        "identical": result.units - len(result.different) - len(result.missing),
        "units": result.units,
        "began": began,
        "local_only": sum(result.placement.local.values()),
        "loadavg_before": load,
    }


def local_build(project: Project, reference: dict[str, bytes], jobs: int) -> dict[str, Any]:
    load = loadavg()
    project.clean()
    start = time.monotonic()
    done = subprocess.run(project.make_argv("gcc", jobs), cwd=project.root, env=build_env(),
                          capture_output=True, timeout=BUILD_TIMEOUT, check=False)  # fmt: skip
    seconds = time.monotonic() - start
    different, missing = project.compare(reference)
    ok = done.returncode == 0 and not different and not missing
    return {"seconds": round(seconds, 2), "ok": ok,
            "problems": [] if ok else [f"make exit {done.returncode}", *different, *missing],
            "identical": len(project.sources) - len(different) - len(missing),
            "units": len(project.sources), "loadavg_before": load}  # fmt: skip


def show(round_name: str, kind: str, r: dict[str, Any]) -> None:
    where = ", ".join(f"{h} {n}" for h, n in r.get("began", {}).items())
    status = "ok" if r["ok"] else f"FAILED {r['problems']}"
    print(f"  {round_name:<7} {LABEL[kind]:<10} {r['seconds']:7.2f} s  "
          f"{r['identical']}/{r['units']} identical  {where or '-':<22} "
          f"load {r['loadavg_before']:.2f}  {status}", flush=True)  # fmt: skip


def figures(builds: list[dict[str, Any]]) -> dict[str, Any]:
    times = [float(b["seconds"]) for b in builds]
    out: dict[str, Any] = {"n": len(times), "median": round(statistics.median(times), 2),
                              "min": min(times), "max": max(times), "all": times}  # fmt: skip
    began: Counter[str] = Counter()
    for b in builds:
        began.update(b.get("began", {}))
    if began:
        out["began_total"] = dict(sorted(began.items()))
    return out


def run_builds(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, list[Row]]]:
    """All builds: cold rounds on fresh clusters, then warm rounds; order rotating."""
    built = reference_build(workdir / "reference")
    tarball, reference = built.tarball, built.reference
    projects = {kind: unpack_project(tarball, workdir / kind) for kind in (*KINDS, "local")}
    builds: dict[str, dict[str, list[Row]]] = {
        "cold": {k: [] for k in KINDS}, "warm": {k: [] for k in (*KINDS, "local")},
    }  # fmt: skip
    order = ["real", "ours", "local"]
    with contextlib.ExitStack() as beds_stack:
        beds = {kind: beds_stack.enter_context(NetnsBed(3)) for kind in KINDS}
        for cold_round in range(args.cold):
            stack = beds_stack.enter_context(contextlib.ExitStack())
            print(f"starting both clusters (cold round {cold_round + 1})", flush=True)
            clusters = start_clusters(stack, beds, args.slots)
            for kind in KINDS if cold_round % 2 == 0 else KINDS[::-1]:
                r = cluster_build(clusters[kind], kind, projects[kind], reference, args.jobs)
                builds["cold"][kind].append(r)
                show(f"cold {cold_round + 1}", kind, r)
            if cold_round < args.cold - 1:
                stack.close()
        for warm_round in range(args.runs):
            shift = warm_round % 3
            for kind in order[shift:] + order[:shift]:
                if kind == "local":
                    r = local_build(projects["local"], reference, args.jobs)
                else:
                    r = cluster_build(clusters[kind], kind, projects[kind], reference, args.jobs)
                builds["warm"][kind].append(r)
                show(f"warm {warm_round + 1}", kind, r)
    return builds


def summarise(args: argparse.Namespace, builds: dict[str, dict[str, list[Row]]]) -> dict[str, Any]:
    summary = {phase: {kind: figures(rows) for kind, rows in per_kind.items() if rows}
               for phase, per_kind in builds.items()}  # fmt: skip
    ratios = {phase: round(s["ours"]["median"] / s["real"]["median"], 2)
              for phase, s in summary.items() if "real" in s and "ours" in s}  # fmt: skip
    for phase, per_kind in builds.items():  # round by round: slow phases of the machine cancel
        pairs = [o["seconds"] / r["seconds"] for r, o in zip(per_kind["real"], per_kind["ours"],
                                                              strict=True)]  # fmt: skip
        if pairs:
            ratios[f"{phase} paired median"] = round(statistics.median(pairs), 2)
    warm = summary["warm"]
    ratios["warm fastest"] = round(warm["ours"]["min"] / warm["real"]["min"], 2)
    if "local" in warm:
        for kind in KINDS:
            ratios[f"warm {kind}/local"] = round(warm[kind]["median"] / warm["local"]["median"], 2)
    ok = all(b["ok"] for per_kind in builds.values() for rows in per_kind.values() for b in rows)
    return {"project": "zstd 1.5.7.2 lib (33 C units, -O2)", "hosts": 3, "slots": args.slots,
            "make_jobs": args.jobs, "runs": args.runs, "cold_runs": args.cold,
            "cores": os.cpu_count(), "summary": summary, "ratios_iceserv_over_real": ratios,
            "builds": builds, "all_ok": ok}  # fmt: skip


def report(result: dict[str, Any]) -> None:
    summary = result["summary"]
    print("\nmedian wall time (min-max), jobs begun per host summed over the builds:")
    for phase in ("cold", "warm"):
        for kind, f in summary[phase].items():
            where = ", ".join(f"{h} {n}" for h, n in f.get("began_total", {}).items())
            print(f"  {phase:<5} {LABEL[kind]:<10} {f['median']:7.2f} s "
                  f"({f['min']:.2f}-{f['max']:.2f}, n={f['n']})  {where}")  # fmt: skip
    ratios = result["ratios_iceserv_over_real"]
    print("ratios iceserv/1.4 (median wall time): "
          + ", ".join(f"{k} {v}" for k, v in ratios.items()))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="warm rounds (default 3)")
    parser.add_argument("--cold", type=int, default=1, help="cold rounds, fresh clusters each")
    parser.add_argument("--jobs", type=int, default=6, help="make -jN (default 6)")
    parser.add_argument("--slots", type=int, default=2, help="daemon slots per host (default 2)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/cluster.py needs root (network namespaces)", file=sys.stderr)
        return 2
    print(f"zstd (33 units) through 3 hosts x {args.slots} slots, make -j{args.jobs}; "
          f"{args.cold} cold + {args.runs} warm rounds, order rotating", flush=True)  # fmt: skip
    start_state = provenance()
    with tempfile.TemporaryDirectory(prefix="iceserv-bench-cluster-") as tmp:
        result = summarise(args, run_builds(args, Path(tmp)))
    result["provenance"] = start_state
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
