"""Remote-compile throughput and added latency: the real 1.4 ``iceccd`` and ours as compile servers.

Run (as root): ``.venv/bin/python bench/remote_compile.py [--rounds 3] [--latency-jobs 10]
[--unit-jobs 24] [--parallel 4] [--slots 2] [--scheduler real|ours] [--json FILE]``.

Topology (one ``testbed.NetnsBed`` of three hosts, one ``testbed.Cluster``):
h1 runs the scheduler (the real ``icecc-scheduler`` 1.4 unless
``--scheduler ours``) and the client; h2 runs the real ``iceccd`` and h3 ours,
each with ``--slots`` slots and a frozen ``/proc/stat`` (``IdleCpuHost``),
both logged in to the same scheduler.  Only the compile server differs.

The client is our codec, driven the way ``tests/integration/test_protocol_live.py``
drives a remote compile, from inside h1's network namespace: a
submitter logged in to the scheduler as a daemon without slots asks GET_CS
with ``preferred_host`` set to the server under test and gets USE_CS; then a
connection to that server sends (first time only) the real
``icecc-create-env`` tarball of ``/usr/bin/gcc`` with VERIFY_ENV,
COMPILE_FILE (``-O2 -c -fdirectives-only``, as 1.4's client sends) and the
unit preprocessed with ``gcc -E -fdirectives-only``, and reads COMPILE_RESULT
and the object.  Every object is compared with a local gcc build.  Units are
zstd's (``testbed.project``, pinned sdist from PyPI).

Per round, measured:

* latency: ``--latency-jobs`` jobs of one unit (``--unit``) on each server and
  as bare compiles, one at a time, interleaved job by job (the machine's noise
  hits all three alike).
  "server" time is USE_CS received -> object received (connect, send,
  compile, answer); "total" adds GET_CS -> USE_CS.  The bare compiler time is
  the same compile run locally (``gcc -x c -O2 -c -fdirectives-only
  -fpreprocessed -`` on the same preprocessed source, no chroot, at niceness
  5 like the daemons' compilers).  Added
  latency = median server (or total) time - median bare time (the bare time
  includes starting ``nice``, about 1 ms, so added latencies read ~1 ms low).
* throughput, one unit: ``--unit-jobs`` jobs of that unit, ``--parallel`` in
  flight (queued at the scheduler while the server's slots are busy): jobs/s;
  then the mix: the 33 units once each, ``--parallel`` in flight.  1.4,
  iceserv and bare gcc (``--parallel`` local compiles) take turns, the order
  rotating every round.

For the throughput phases the CPU time of each server's whole process tree
(``/proc/PID/stat`` utime + stime + cutime + cstime of the daemon and its
living descendants, such as iceserv's job helper: with them the job processes
and the compilers, all reaped by the end of a phase) per job is
reported too, against the bare compiles' (``getrusage(RUSAGE_CHILDREN)``):
unlike wall time it does not depend on what else the machine runs.

The first job on each server installs the environment; it is run first, timed
apart ("first job") and left out of everything else.  Prints medians over the
rounds and the ratios iceserv/1.4; ``--json FILE`` writes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance import provenance
from testbed import (
    Cluster,
    DaemonPlan,
    NetnsBed,
    Project,
    RealEnv,
    RealScheduler,
    build_real_env,
    reference_build,
    unpack_project,
)
from testbed.netns import run_in_netns
from testbed.project import CFLAGS, CPPFLAGS, build_env

from iceserv.protocol import (
    NEED_DATA,
    CompileFile,
    CompileResult,
    ConfCS,
    Connection,
    End,
    EnvEntry,
    EnvTransfer,
    FileChunk,
    GetCS,
    Handshake,
    Lang,
    Login,
    Stats,
    UseCS,
    VerifyEnv,
    VerifyEnvResult,
)

ROOT = Path(__file__).resolve().parents[1]

TIMEOUT = 120.0
TICKS = os.sysconf("SC_CLK_TCK")
REMOTE_ARGS = ("-O2", "-c", "-fdirectives-only")
SERVERS = {"real": 1, "ours": 2}  # bed index of each compile server
LABEL = {"real": "1.4", "ours": "iceserv", "bare": "bare gcc"}
ORDER = ("real", "ours", "bare")
NICE = 5  # both daemons run their compilers at niceness 5 by default; so does the bare compile


@dataclass(frozen=True)
class Unit:
    source: str  # e.g. lib/decompress/zstd_ddict.c
    obj: str  # e.g. obj/decompress/zstd_ddict.o
    preprocessed: bytes


@dataclass
class Peer:
    """A codec connection over asyncio streams; every read is bounded."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: Connection = field(default_factory=Connection)

    @classmethod
    async def open(cls, host: str, port: int) -> Peer:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
        peer = cls(reader, writer)
        if not isinstance(await peer.receive(), Handshake):
            msg = f"no handshake from {host}:{port}"
            raise TypeError(msg)
        return peer

    async def flush(self) -> None:
        if data := self.conn.data_to_send():
            self.writer.write(data)
            await self.writer.drain()

    async def send(self, *messages: Any) -> None:
        for msg in messages:
            self.conn.send(msg)
        await self.flush()

    async def send_file(self, data: bytes) -> None:
        self.conn.send_file(data)
        await self.flush()

    async def receive(self) -> Any:
        while (event := self.conn.next_event()) is NEED_DATA:
            data = await asyncio.wait_for(self.reader.read(1 << 20), TIMEOUT)
            if not data:
                msg = "connection closed"
                raise ConnectionError(msg)
            self.conn.receive_data(data)
            await self.flush()
        return event

    async def receive_file(self) -> bytes:
        parts = []
        while not isinstance(event := await self.receive(), End):
            if not isinstance(event, FileChunk):
                msg = f"expected FILE_CHUNK, got {event!r}"
                raise TypeError(msg)
            parts.append(event.data)
        return b"".join(parts)

    def close(self) -> None:
        self.writer.close()


class Submitter:
    """Our codec logged in to the scheduler as a daemon with no slots; hands out USE_CS."""

    def __init__(self, env: RealEnv) -> None:
        self.env = env
        self.waiting: dict[int, asyncio.Future[UseCS]] = {}
        self.ids = itertools.count(1)

    async def start(self, host: str, port: int) -> None:
        self.peer = await Peer.open(host, port)
        await self.peer.send(
            Login(port=0, max_kids=0, nodename="bench-client", host_platform="x86_64",
                  chroot_possible=False, noremote=True, supported_features=3),
            Stats(load=0, load_avg1=0, load_avg5=0, load_avg10=0, free_mem=4096),
        )  # fmt: skip
        self.task = asyncio.create_task(self.dispatch())

    async def dispatch(self) -> None:
        while True:
            while (event := self.peer.conn.next_event()) is NEED_DATA:
                data = await self.peer.reader.read(1 << 16)  # the run's timeouts bound it
                if not data:
                    return
                self.peer.conn.receive_data(data)
            if isinstance(event, UseCS) and event.client_id in self.waiting:
                self.waiting.pop(event.client_id).set_result(event)
            elif not isinstance(event, ConfCS):
                print(f"  submitter: unexpected {event!r}", flush=True)

    async def get_cs(self, server: str, filename: str) -> UseCS:
        client_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[client_id] = future
        await self.peer.send(GetCS(versions=(EnvEntry("x86_64", self.env.name),),
                                   filename=filename, lang=Lang.C, count=1, target="x86_64",
                                   client_id=client_id, preferred_host=server,
                                   minimal_host_version=21, client_count=client_id))  # fmt: skip
        return await asyncio.wait_for(future, TIMEOUT)

    def close(self) -> None:
        self.task.cancel()
        self.peer.close()


@dataclass
class Bench:
    submitter: Submitter
    env: RealEnv
    reference: dict[str, bytes]
    workdir: Path
    server_pids: dict[str, int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    bare_outputs: itertools.count[int] = field(default_factory=itertools.count)

    async def job(self, server: str, unit: Unit) -> dict[str, float]:
        """One remote compile; the phases' wall times in seconds."""
        start = time.perf_counter()
        use = await self.submitter.get_cs(server, unit.source)
        placed = time.perf_counter()
        peer = await Peer.open(use.hostname, use.port)
        try:
            if not use.got_env:
                await peer.send(EnvTransfer(self.env.name, use.host_platform))
                await peer.send_file(self.env.path.read_bytes())
                await peer.send(VerifyEnv(self.env.name, use.host_platform))
                if await peer.receive() != VerifyEnvResult(ok=True):
                    msg = f"{server} did not verify the environment"
                    raise RuntimeError(msg)
            await peer.send(CompileFile(lang=Lang.C, job_id=use.job_id, args=REMOTE_ARGS,
                                        environment=self.env.name, target=use.host_platform,
                                        compiler_name="gcc", input_file=unit.source,
                                        working_dir=str(self.workdir),
                                        output_file=unit.obj))  # fmt: skip
            await peer.send_file(unit.preprocessed)
            result = await peer.receive()
            if not isinstance(result, CompileResult) or result.status != 0:
                msg = f"{server} failed {unit.source}: {result!r}"
                raise RuntimeError(msg)
            obj = await peer.receive_file()
        finally:
            peer.close()
        done = time.perf_counter()
        if obj != self.reference[unit.obj]:
            self.wrong.append(f"{server} {unit.source}")
        return {"total": done - start, "scheduler": placed - start, "server": done - placed}

    async def bare(self, unit: Unit) -> float:
        """The same compile, locally, without icecream (the server's command minus chroot)."""
        # One output per call: they run in parallel.
        out = self.workdir / f"bare-{next(self.bare_outputs)}.o"
        start = time.perf_counter()
        argv = ["nice", "-n", str(NICE), "gcc", "-x", "c", *REMOTE_ARGS, "-fpreprocessed", "-",
                "-o", str(out)]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.PIPE, env=build_env())
        await asyncio.wait_for(proc.communicate(unit.preprocessed), TIMEOUT)
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or out.read_bytes() != self.reference[unit.obj]:
            self.wrong.append(f"bare {unit.source}")
        out.unlink(missing_ok=True)
        return seconds

    async def latency(self, unit: Unit, count: int) -> dict[str, list[dict[str, float]]]:
        """``count`` jobs each of 1.4, iceserv and bare gcc, one at a time, interleaved."""
        out: dict[str, list[dict[str, float]]] = {who: [] for who in ORDER}
        for i in range(count):
            for who in ORDER[i % 3 :] + ORDER[: i % 3]:
                if who == "bare":
                    out[who].append({"bare": await self.bare(unit)})
                else:
                    out[who].append(await self.job(server_name(who), unit))
        return out

    async def throughput(self, who: str, units: list[Unit], parallel: int) -> dict[str, float]:
        """Jobs/s with ``parallel`` in flight, and the median phases of the jobs."""
        queue = list(reversed(units))
        jobs: list[dict[str, float]] = []

        async def worker() -> None:
            while queue:
                unit = queue.pop()
                if who == "bare":
                    jobs.append({"bare": await self.bare(unit)})
                else:
                    jobs.append(await self.job(server_name(who), unit))

        cpu0 = self.cpu(who)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(parallel)))
        out = {"jobs_per_s": round(len(units) / (time.perf_counter() - start), 3)}
        await asyncio.sleep(0.5)  # the server reaps its last job's processes
        out["cpu_ms_per_job"] = round((self.cpu(who) - cpu0) * 1000 / len(units), 1)
        return out | {f"median_{k}_s": median([j[k] for j in jobs]) for k in jobs[0]}

    def cpu(self, who: str) -> float:
        """CPU seconds so far of a server's process tree (reaped children included), or of the
        bare compiles (this process's reaped children: nothing else ends during a phase)."""
        if who == "bare":
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            return usage.ru_utime + usage.ru_stime
        return sum(_own_and_reaped_cpu(pid) for pid in _tree(self.server_pids[who]))


def server_name(kind: str) -> str:
    return f"h{SERVERS[kind] + 1}-{kind}"


def preprocess(project: Project) -> dict[str, Unit]:
    units = {}
    for source, obj in zip(project.sources, project.objects, strict=True):
        argv = ["gcc", *CPPFLAGS.split(), *CFLAGS.split(), "-E", "-fdirectives-only", source]
        done = subprocess.run(argv, cwd=project.root, env=build_env(), capture_output=True,
                              check=True, timeout=TIMEOUT)  # fmt: skip
        units[source] = Unit(source, obj, done.stdout)
    return units


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


async def drive(args: argparse.Namespace, scheduler: tuple[str, int], bench_parts: dict[str, Any],
                log: list[str]) -> dict[str, Any]:  # fmt: skip
    """Everything that talks to the cluster; runs inside h1's network namespace."""
    units: dict[str, Unit] = bench_parts["units"]
    unit = units[args.unit]
    submitter = Submitter(bench_parts["env"])
    await submitter.start(*scheduler)
    bench = Bench(submitter, bench_parts["env"], bench_parts["reference"], bench_parts["workdir"],
                  bench_parts["server_pids"])  # fmt: skip
    out: dict[str, Any] = {"first_job": {}, "rounds": []}
    try:
        for kind in SERVERS:  # install the environment: not part of the figures
            out["first_job"][kind] = await bench.job(server_name(kind), unit)
            log.append(f"  first job on {LABEL[kind]} (environment transfer and install): "
                       f"{out['first_job'][kind]['total']:.2f} s")  # fmt: skip
            print(log[-1], flush=True)
        for number in range(args.rounds):
            shift = number % 3
            row: dict[str, Any] = {who: {} for who in ORDER}
            latencies = await bench.latency(unit, args.latency_jobs)
            for who in ORDER[shift:] + ORDER[:shift]:
                load = os.getloadavg()[0]
                one = await bench.throughput(who, [unit] * args.unit_jobs, args.parallel)
                mix = await bench.throughput(who, list(units.values()), args.parallel)
                row[who] = {"latency": latencies[who], "unit_jobs_per_s": one["jobs_per_s"],
                            "mix_jobs_per_s": mix["jobs_per_s"], "unit": one, "mix": mix,
                            "loadavg_before": load}  # fmt: skip
                key = "bare" if who == "bare" else "server"
                print(f"  round {number + 1} {LABEL[who]:<9} latency median "
                      f"{median([j[key] for j in latencies[who]]) * 1000:7.1f} ms  unit "
                      f"{one['jobs_per_s']:6.2f} jobs/s  mix {mix['jobs_per_s']:6.2f} jobs/s  "
                      f"load {load:.2f}", flush=True)  # fmt: skip
                print(f"    CPU per job: unit {one['cpu_ms_per_job']} ms, mix "
                      f"{mix['cpu_ms_per_job']} ms", flush=True)  # fmt: skip
                if who != "bare":
                    print(f"    mix phases (median): waiting for USE_CS "
                          f"{mix['median_scheduler_s'] * 1000:.1f} ms, on the server "
                          f"{mix['median_server_s'] * 1000:.1f} ms", flush=True)  # fmt: skip
            out["rounds"].append(row)
    finally:
        submitter.close()
    out["wrong_objects"] = bench.wrong
    return out


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    rounds = raw["rounds"]
    bare = median([j["bare"] for r in rounds for j in r["bare"]["latency"]])
    out: dict[str, Any] = {"bare_compile_s": bare}
    for who in ("real", "ours", "bare"):
        fig: dict[str, Any] = {
            "unit_jobs_per_s": median([r[who]["unit_jobs_per_s"] for r in rounds]),
            "mix_jobs_per_s": median([r[who]["mix_jobs_per_s"] for r in rounds]),
            "unit_cpu_ms_per_job": median([r[who]["unit"]["cpu_ms_per_job"] for r in rounds]),
            "mix_cpu_ms_per_job": median([r[who]["mix"]["cpu_ms_per_job"] for r in rounds]),
        }
        if who != "bare":
            jobs = [j for r in rounds for j in r[who]["latency"]]
            for phase in ("server", "total", "scheduler"):
                fig[f"{phase}_s"] = median([j[phase] for j in jobs])
            fig["added_latency_ms"] = round((fig["server_s"] - bare) * 1000, 1)
            fig["added_latency_with_scheduler_ms"] = round((fig["total_s"] - bare) * 1000, 1)
        out[who] = fig
    real, ours = out["real"], out["ours"]
    out["ratios_iceserv_over_real"] = {
        key: round(ours[key] / real[key], 2) for key in ("unit_jobs_per_s", "mix_jobs_per_s",
                                                         "server_s", "total_s",
                                                         "unit_cpu_ms_per_job",
                                                         "mix_cpu_ms_per_job")
    }  # fmt: skip
    # Added latencies can be near zero: their difference says more than their ratio.
    out["added_latency_iceserv_minus_real_ms"] = round(
        ours["added_latency_ms"] - real["added_latency_ms"], 1)  # fmt: skip
    return out


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    start_state = provenance()
    built = reference_build(workdir / "reference")
    tarball, reference = built.tarball, built.reference
    units = preprocess(unpack_project(tarball, workdir / "zstd"))
    if args.unit not in units:
        msg = f"--unit must be one of {sorted(units)}"
        raise SystemExit(msg)
    env = build_real_env("/usr/bin/gcc", dest_dir=workdir / "env")
    plans = [None, DaemonPlan("real", max_jobs=args.slots), DaemonPlan("ours", max_jobs=args.slots)]
    parts = {"units": units, "env": env, "reference": reference, "workdir": workdir / "zstd"}
    log: list[str] = []
    with NetnsBed(3) as bed, Cluster(bed, args.scheduler, plans) as cluster:
        scheduler = cluster.scheduler
        awake = (scheduler.awake() if isinstance(scheduler, RealScheduler)
                 else contextlib.nullcontext())  # fmt: skip
        parts["server_pids"] = {kind: cluster.daemon(index).proc.pid  # type: ignore[union-attr]
                                for kind, index in SERVERS.items()}  # fmt: skip
        with awake:  # the real scheduler accepts our submitter late otherwise (reference 7.9)
            raw = run_in_netns(bed[0].name, lambda: asyncio.run(
                drive(args, (bed[0].ip, 8765), parts, log)), timeout=args.timeout)  # fmt: skip
        placement = cluster.monitor.placement() if cluster.monitor else None
    result = summarise(raw)
    result["provenance"] = start_state
    result.update({"unit": args.unit, "unit_preprocessed_bytes": len(units[args.unit].preprocessed),
                   "units_in_mix": len(units), "slots": args.slots, "parallel": args.parallel,
                   "latency_jobs": args.latency_jobs, "unit_jobs": args.unit_jobs,
                   "rounds": args.rounds, "scheduler": args.scheduler,
                   "env_tarball_bytes": env.path.stat().st_size,
                   "first_job_s": {k: round(v["total"], 2) for k, v in raw["first_job"].items()},
                   "jobs_began": dict(placement.began) if placement else {},
                   "wrong_objects": raw["wrong_objects"], "raw_rounds": raw["rounds"]})  # fmt: skip
    return result


def report(r: dict[str, Any]) -> None:
    print(f"\nunit {r['unit']} ({r['unit_preprocessed_bytes']:,} bytes preprocessed), bare compile "
          f"median {r['bare_compile_s'] * 1000:.1f} ms; {r['slots']} slots per server, "
          f"{r['parallel']} jobs in flight for throughput")  # fmt: skip
    for who in ("real", "ours"):
        f = r[who]
        print(f"  {LABEL[who]:<8} server {f['server_s'] * 1000:7.1f} ms (added "
              f"{f['added_latency_ms']:6.1f} ms), with scheduler {f['total_s'] * 1000:7.1f} ms "
              f"(added {f['added_latency_with_scheduler_ms']:6.1f} ms); throughput unit "
              f"{f['unit_jobs_per_s']:.2f}, mix {f['mix_jobs_per_s']:.2f} jobs/s; CPU per job "
              f"unit {f['unit_cpu_ms_per_job']} ms, mix {f['mix_cpu_ms_per_job']} ms")  # fmt: skip
    b = r["bare"]
    print(f"  bare gcc  throughput unit {b['unit_jobs_per_s']:.2f} jobs/s, "
          f"mix {b['mix_jobs_per_s']:.2f} jobs/s (same parallelism, no icecream); CPU per job "
          f"unit {b['unit_cpu_ms_per_job']} ms, mix {b['mix_cpu_ms_per_job']} ms")  # fmt: skip
    ratios = ", ".join(f"{k} {v}" for k, v in r["ratios_iceserv_over_real"].items())
    more = r["added_latency_iceserv_minus_real_ms"]
    print(f"ratios iceserv/1.4: {ratios}; iceserv adds {more} ms more per job than 1.4")
    if r["wrong_objects"]:
        print(f"OBJECTS DIFFERING FROM THE LOCAL BUILD: {r['wrong_objects']}")


def _tree(pid: int) -> list[int]:
    """*pid* and its living descendants (iceserv's daemon keeps a job helper as a child)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in task.read_text().split()]
    return found


def _own_and_reaped_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of *pid* in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / TICKS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-jobs", type=int, default=10)
    parser.add_argument("--unit-jobs", type=int, default=24)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--unit", default="lib/decompress/zstd_ddict.c")
    parser.add_argument("--scheduler", choices=("real", "ours"), default="real")
    parser.add_argument("--timeout", type=float, default=3600.0, help="for the whole run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/remote_compile.py needs root (network namespaces)", file=sys.stderr)
        return 2
    print(f"remote compiles from h1 to the real iceccd (h2) and ours (h3), {args.scheduler} "
          f"scheduler; {args.rounds} rounds, order rotating", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="iceserv-bench-remote-") as tmp:
        result = run(args, Path(tmp))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["wrong_objects"] else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
