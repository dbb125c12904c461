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
the machine hits each alike.  ``--race`` adds warm builds on the iceserv
cluster with ``ICECC_RACE=1`` (our client races a local build whenever a
local lock slot is free) and the ratio race/iceserv.  Every build must
succeed with all 33 objects byte-identical to a local gcc build (else the
benchmark exits 1).

Prints per build the wall time, where the jobs began (monitor
``MON_JOB_BEGIN`` per host; h1's count includes the "compile it yourself"
jobs of its own daemon) and the load average, then medians and the ratio
iceserv/real (of the medians, the median of the round-by-round ratios, and
of the fastest builds).  ``--json FILE`` writes everything.

``--auth`` (issue 14 item 4, the cost of authentication and encryption)
replaces the two clusters by three iceserv clusters on their own beds:
``auth = off``, ``require`` and ``require`` + ``encrypt = yes`` (one network
key, from the environment as a packaged service gets it), built in the same
rotating rounds, with ratios to ``off``.  Every build also reports the CPU
seconds it cost: the scheduler's, the daemons' and their children's (all
processes of the bed's namespaces) plus make's tree (the client side) —
a figure the machine's other load barely moves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
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
from testbed.netns import netns_pids
from testbed.project import build_env

ROOT = Path(__file__).resolve().parents[1]

Row = dict[str, Any]
KINDS = ("real", "ours")
#: ``--auth``: iceserv clusters under auth off, require, and require with encryption.
AUTH_KINDS = ("ours", "ours-require", "ours-encrypt")
AUTH_ENV = {"ours": {}, "ours-require": {"ICECC_AUTH": "require"},
            "ours-encrypt": {"ICECC_AUTH": "require", "ICECC_ENCRYPT": "yes"}}  # fmt: skip
LABEL = {"real": "1.4", "ours": "iceserv", "local": "local gcc", "race": "iceserv+race",
         "ours-require": "require", "ours-encrypt": "req+enc"}  # fmt: skip
#: ``--race``: our client with ICECC_RACE=1 on the iceserv cluster (issue 17, item 3).
CLIENTS = {"real": ClientPlan("real"), "ours": ClientPlan("ours"),
           "race": ClientPlan("ours", extra_env={"ICECC_RACE": "1"}),
           "ours-require": ClientPlan("ours"), "ours-encrypt": ClientPlan("ours")}  # fmt: skip
BUILD_TIMEOUT = 900.0


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _keyed_env(kind: str, key: Path | None) -> dict[str, str]:
    if kind not in AUTH_KINDS or not AUTH_ENV[kind] or key is None:
        return {}
    return {"ICECC_NETWORK_KEY_FILE": str(key), **AUTH_ENV[kind]}


def cpu_seconds(bed: NetnsBed) -> float:
    """CPU seconds so far of every process in *bed* and its reaped children, and ours'."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for name in bed.netns_names:
        for pid in netns_pids(name):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    own = resource.getrusage(resource.RUSAGE_CHILDREN)  # make's tree once waited for
    return total / tick + own.ru_utime + own.ru_stime


def start_clusters(stack: contextlib.ExitStack, beds: dict[str, NetnsBed],
                   slots: int, key: Path | None = None) -> dict[str, Cluster]:  # fmt: skip
    clusters = {}
    for kind, bed in beds.items():
        start = time.monotonic()
        env = _keyed_env(kind, key)
        program = "ours" if kind in AUTH_KINDS else kind
        plans = [DaemonPlan(program, max_jobs=slots, extra_env=env)] * 3  # type: ignore[arg-type]
        cluster = Cluster(bed, program, plans, scheduler_env=env)  # type: ignore[arg-type]
        stack.callback(cluster.stop)
        clusters[kind] = cluster.start()
        print(f"  {LABEL[kind]} cluster up in {time.monotonic() - start:.1f} s", flush=True)
    return clusters


def cluster_build(cluster: Cluster, kind: str, project: Project, reference: dict[str, bytes],
                  jobs: int) -> dict[str, Any]:  # fmt: skip
    load = loadavg()
    cpu = cpu_seconds(cluster.bed)
    result = cluster.build(project, reference, CLIENTS[kind], on=0, jobs=jobs,
                           timeout=BUILD_TIMEOUT)  # fmt: skip
    cpu = cpu_seconds(cluster.bed) - cpu
    # Node names are "<host>-<kind>"; report by host.
    began = {name.split("-", 1)[0]: n for name, n in sorted(result.placement.began.items())}
    problems = result.problems()
    if kind == "race":
        # Racing, the loser is cancelled: remote jobs the local build beat end with the
        # client gone (118), and a job whose remote side never started is not counted.
        # What must hold is make's success and every object identical.
        problems = [p for p in problems if p.startswith(("make failed", "objects differ"))]
    return {
        "seconds": round(result.seconds, 2),
        "ok": not problems,
        "problems": problems,
        "cancelled": [code for _, code in result.placement.failed],
        "identical": result.units - len(result.different) - len(result.missing),
        "units": result.units,
        "began": began,
        "local_only": sum(result.placement.local.values()),
        "loadavg_before": load,
        "cpu_seconds": round(cpu, 2),
    }


def local_build(project: Project, reference: dict[str, bytes], jobs: int) -> dict[str, Any]:
    load = loadavg()
    project.clean()
    start = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(project.make_argv("gcc", jobs), cwd=project.root, env=build_env(),
                          capture_output=True, timeout=BUILD_TIMEOUT, check=False)  # fmt: skip
    seconds = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    different, missing = project.compare(reference)
    ok = done.returncode == 0 and not different and not missing
    return {"seconds": round(seconds, 2), "ok": ok,
            "problems": [] if ok else [f"make exit {done.returncode}", *different, *missing],
            "identical": len(project.sources) - len(different) - len(missing),
            "units": len(project.sources), "loadavg_before": load,
            "cpu_seconds": round(cpu, 2)}  # fmt: skip


def show(round_name: str, kind: str, r: dict[str, Any]) -> None:
    where = ", ".join(f"{h} {n}" for h, n in r.get("began", {}).items())
    status = "ok" if r["ok"] else f"FAILED {r['problems']}"
    print(f"  {round_name:<7} {LABEL[kind]:<10} {r['seconds']:7.2f} s  "
          f"{r['identical']}/{r['units']} identical  {where or '-':<22} "
          f"load {r['loadavg_before']:.2f}  cpu {r.get('cpu_seconds', 0):7.2f} s  {status}",
          flush=True)  # fmt: skip


def figures(builds: list[dict[str, Any]]) -> dict[str, Any]:
    times = [float(b["seconds"]) for b in builds]
    out: dict[str, Any] = {"n": len(times), "median": round(statistics.median(times), 2),
                              "min": min(times), "max": max(times), "all": times}  # fmt: skip
    cpus = [float(b["cpu_seconds"]) for b in builds if "cpu_seconds" in b]
    if cpus:
        out["cpu_median"] = round(statistics.median(cpus), 2)
        out["cpu_all"] = cpus
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
    kinds = AUTH_KINDS if args.auth else KINDS
    key = None
    if args.auth:
        key = workdir / "network.key"
        key.write_bytes(secrets.token_bytes(64))
        key.chmod(0o600)
    warm_kinds = (*kinds, "local", *(("race",) if args.race else ()))
    projects = {kind: unpack_project(tarball, workdir / kind) for kind in warm_kinds}
    builds: dict[str, dict[str, list[Row]]] = {
        "cold": {k: [] for k in kinds}, "warm": {k: [] for k in warm_kinds},
    }  # fmt: skip
    order = list(warm_kinds)
    with contextlib.ExitStack() as beds_stack:
        beds = {kind: beds_stack.enter_context(NetnsBed(3)) for kind in kinds}
        clusters: dict[str, Cluster] = {}
        if not args.cold:
            stack = beds_stack.enter_context(contextlib.ExitStack())
            clusters = start_clusters(stack, beds, args.slots, key)
        for cold_round in range(args.cold):
            stack = beds_stack.enter_context(contextlib.ExitStack())
            print(f"starting the clusters (cold round {cold_round + 1})", flush=True)
            clusters = start_clusters(stack, beds, args.slots, key)
            for kind in kinds if cold_round % 2 == 0 else kinds[::-1]:
                r = cluster_build(clusters[kind], kind, projects[kind], reference, args.jobs)
                builds["cold"][kind].append(r)
                show(f"cold {cold_round + 1}", kind, r)
            if cold_round < args.cold - 1:
                stack.close()
        for warm_round in range(args.runs):
            shift = warm_round % len(order)
            for kind in order[shift:] + order[:shift]:
                if kind == "local":
                    r = local_build(projects["local"], reference, args.jobs)
                else:
                    cluster = clusters["ours" if kind == "race" else kind]
                    r = cluster_build(cluster, kind, projects[kind], reference, args.jobs)
                builds["warm"][kind].append(r)
                show(f"warm {warm_round + 1}", kind, r)
    return builds


def summarise(args: argparse.Namespace, builds: dict[str, dict[str, list[Row]]]) -> dict[str, Any]:
    summary = {phase: {kind: figures(rows) for kind, rows in per_kind.items() if rows}
               for phase, per_kind in builds.items()}  # fmt: skip
    if args.auth:
        return _summarise_auth(args, builds, summary)
    ratios = {phase: round(s["ours"]["median"] / s["real"]["median"], 2)
              for phase, s in summary.items() if "real" in s and "ours" in s}  # fmt: skip
    for phase, per_kind in builds.items():  # round by round: slow phases of the machine cancel
        pairs = [o["seconds"] / r["seconds"] for r, o in zip(per_kind["real"], per_kind["ours"],
                                                              strict=True)]  # fmt: skip
        if pairs:
            ratios[f"{phase} paired median"] = round(statistics.median(pairs), 2)
    warm = summary["warm"]
    ratios["warm fastest"] = round(warm["ours"]["min"] / warm["real"]["min"], 2)
    if "race" in warm:
        ratios["warm race/iceserv"] = round(warm["race"]["median"] / warm["ours"]["median"], 2)
    if "local" in warm:
        for kind in KINDS:
            ratios[f"warm {kind}/local"] = round(warm[kind]["median"] / warm["local"]["median"], 2)
    ok = all(b["ok"] for per_kind in builds.values() for rows in per_kind.values() for b in rows)
    return {"project": "zstd 1.5.7.2 lib (33 C units, -O2)", "hosts": 3, "slots": args.slots,
            "make_jobs": args.jobs, "runs": args.runs, "cold_runs": args.cold,
            "cores": os.cpu_count(), "summary": summary, "ratios_iceserv_over_real": ratios,
            "builds": builds, "all_ok": ok}  # fmt: skip


def _summarise_auth(args: argparse.Namespace, builds: dict[str, dict[str, list[Row]]],
                    summary: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Ratios of require and require+encrypt to auth off: medians, paired, CPU."""
    ratios: dict[str, float] = {}
    for phase, per_kind in builds.items():
        for kind in AUTH_KINDS[1:]:
            if not per_kind.get(kind) or not per_kind.get("ours"):
                continue
            s = summary[phase]
            name = f"{phase} {LABEL[kind]}/off"
            ratios[name] = round(s[kind]["median"] / s["ours"]["median"], 3)
            pairs = [k["seconds"] / o["seconds"]
                     for o, k in zip(per_kind["ours"], per_kind[kind], strict=True)]  # fmt: skip
            ratios[f"{name} paired median"] = round(statistics.median(pairs), 3)
            if "cpu_median" in s[kind] and s["ours"].get("cpu_median"):
                ratios[f"{name} cpu"] = round(s[kind]["cpu_median"] / s["ours"]["cpu_median"], 3)
    ok = all(b["ok"] for per_kind in builds.values() for rows in per_kind.values() for b in rows)
    return {"project": "zstd 1.5.7.2 lib (33 C units, -O2)", "hosts": 3, "slots": args.slots,
            "make_jobs": args.jobs, "runs": args.runs, "cold_runs": args.cold,
            "cores": os.cpu_count(), "summary": summary, "ratios_over_auth_off": ratios,
            "builds": builds, "all_ok": ok}  # fmt: skip


def report(result: dict[str, Any]) -> None:
    summary = result["summary"]
    print("\nmedian wall time (min-max), jobs begun per host summed over the builds:")
    for phase in ("cold", "warm"):
        for kind, f in summary[phase].items():
            where = ", ".join(f"{h} {n}" for h, n in f.get("began_total", {}).items())
            print(f"  {phase:<5} {LABEL[kind]:<10} {f['median']:7.2f} s "
                  f"({f['min']:.2f}-{f['max']:.2f}, n={f['n']}) "
                  f"cpu {f.get('cpu_median', 0):.2f} s  {where}")  # fmt: skip
    if "ratios_over_auth_off" in result:
        print("ratios to auth off: " + ", ".join(
            f"{k} {v}" for k, v in result["ratios_over_auth_off"].items()))  # fmt: skip
        return
    ratios = result["ratios_iceserv_over_real"]
    print("ratios iceserv/1.4 (median wall time): "
          + ", ".join(f"{k} {v}" for k, v in ratios.items()))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="warm rounds (default 3)")
    parser.add_argument("--cold", type=int, default=1, help="cold rounds, fresh clusters each")
    parser.add_argument("--jobs", type=int, default=6, help="make -jN (default 6)")
    parser.add_argument("--slots", type=int, default=2, help="daemon slots per host (default 2)")
    parser.add_argument(
        "--race", action="store_true", help="also build warm with our client and ICECC_RACE=1"
    )
    parser.add_argument(
        "--auth", action="store_true",
        help="iceserv clusters under auth off, require and require+encrypt (issue 14)",
    )  # fmt: skip
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
