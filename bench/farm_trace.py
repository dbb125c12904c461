"""Write a synthetic farm-scale build for ``iceserv sim``: N units drawn from the shipped traces.

Run: ``.venv/bin/python bench/farm_trace.py --units 20000 --hosts 1000 --out DIR``, then
``time .venv/bin/python -m iceserv.app.cli sim DIR/farm.jsonl --cluster DIR/farm-cluster.json
--make-jobs 400``.

Each unit is a job of ``bench/traces/{binutils,libuv,shared}.jsonl`` drawn at
random (source and object sizes, CPU time, language, flags and environment as
recorded), renamed so that files are distinct, and submitted by one of
``--submitters`` developer machines (the first hosts of the cluster).  The
cluster has ``--hosts`` hosts: the submitters (speed 1, 4 slots) and build
servers with 4, 8 or 16 slots and speeds between 0.5 and 2.0, drawn with
``--seed``; every host is present from the start.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TRACES = Path(__file__).resolve().parent / "traces"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--units", type=int, default=20_000)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--submitters", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible synthetic workload
    recorded = [
        json.loads(line)
        for name in ("binutils", "libuv", "shared")
        for line in (TRACES / f"{name}.jsonl").read_text().splitlines()
        if line.strip()
    ]
    submitters = [f"dev{i + 1}" for i in range(args.submitters)]
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "farm.jsonl").open("w") as out:
        for unit in range(args.units):
            job = dict(rng.choice(recorded))
            job["submit"] = 0.0
            job["submitter"] = submitters[unit % len(submitters)]
            job["file"] = f"unit{unit:05d}/{job.get('file', 'input.c')}"
            out.write(json.dumps(job) + "\n")
    hosts = [{"name": name, "speed": 1.0, "slots": 4} for name in submitters]
    hosts += [{"name": f"cs{i:04d}", "speed": round(rng.uniform(0.5, 2.0), 2),
               "slots": rng.choice([4, 8, 8, 16])}
              for i in range(args.hosts - len(submitters))]  # fmt: skip
    cluster = {"comment": f"{args.hosts} hosts, synthetic (bench/farm_trace.py --seed {args.seed})",
               "hosts": hosts, "bandwidth": 125_000_000, "env_size": 60_000_000,
               "install_seconds": 2.0}  # fmt: skip
    (args.out / "farm-cluster.json").write_text(json.dumps(cluster, indent=1) + "\n")
    print(f"wrote {args.units} units and {args.hosts} hosts to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
