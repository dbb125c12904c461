"""Placement throughput: GET_CS answered per second, memory and login time, 100 to 5,000 daemons.

Run (as root, like the test bed): ``.venv/bin/python bench/placement.py
[--daemons 100 1000] [--outstanding 200] [--seconds 10] [--warmup 3] [--verbose 0]
[--json FILE]``.

For each daemon count, iceserv's scheduler (``python -m iceserv.app.scheduler``)
and the real ``icecc-scheduler`` 1.4 run one after the other (order
alternating), each fresh, on loopback with the same flags (``-p P -n NET -i lo
-l LOG``, ``-v`` times ``--verbose``: none by default, as a production
scheduler runs; the test bed's ``-vvv``/``-vv`` would mostly measure
logging; ours also gets ``--max-connections 16384``, as its default budget of
4,096 connections would refuse a 5,000-daemon farm, and 1.4 has none).  Each
measurement runs in a fresh driver process.  The simulated daemons are lean
callback protocols (:class:`Daemon`: our codec, 4 slots, a loopback address
and a probe listener each; ``bench/load.py``'s task-per-read daemons cost the
driver more than the scheduler at farm scale).  Their probe listeners open
first (the daemons run before they log in); then they log in, in batches of
100 (against 1.4 a thread-free UDP poke every 0.3 s wakes its main loop, which
otherwise re-arms its listening socket only after unrelated activity,
reference 7.9), and the login time runs until telnet ``listcs`` lists every
one of them.

Then a closed loop keeps ``--outstanding`` GET_CS in flight: every USE_CS or
NO_CS makes the next daemon in turn ask again, and the daemon the answer
names runs the job at once (JOB_BEGIN, JOB_DONE reporting a 100-300 ms
compile, no waiting: the scheduler, not the slots, is the limit).  After
``--warmup`` seconds, answers are counted for ``--seconds``: GET_CS answered
per second.  Over the same window the scheduler's CPU time (utime + stime from
``/proc``) gives its CPU cost per 1,000 answers, and this driver's own CPU use
shows whether it, not the scheduler, was the limit (it has one core of two).
RSS (VmRSS) is read before any login, after the logins and after the run,
with the peak (VmHWM).  Prints the figures and the ratios iceserv/1.4;
``--json FILE`` writes them.  A scheduler link that ends before the run closes
it is reported ("links LOST"): a healthy run has none.  ``--profile FILE``
runs ours under cProfile (pstats in ``FILE.<daemons>``).

``--http-scrape`` compares ours with itself instead: once plain and once with
``--http`` (the web endpoint on), alternating which goes first per daemon count.
Both runs cut the measured window into segments of ``--segment`` seconds in the
pattern A B B A A B B A ...  (balanced against any drift within a run); in the
``--http`` run a separate process (as a Prometheus server would be) scrapes
``/metrics`` 10 times a second during the B segments only (asking for gzip, as
Prometheus does; a request every 0.1 s on time, also while earlier ones are still
being answered), and the A segments
have the endpoint on but idle.  It prints, per pair and over all pairs, the
GET_CS/s ratios scraped (B) over plain (B), endpoint idle (A) over plain (A), and
scraped over idle within the one ``--http`` process (B/A, divided by the plain
run's B/A), with the scheduler's CPU per 1,000 answers in each, and the scrapes'
p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from load import ENV, Tally, rss_kib
from provenance import provenance
from testbed.hosts import free_scheduler_port
from testbed.procs import clean_env, listening_tcp_ports, make_workdir, stop_process
from testbed.wait import wait_for

from iceserv.protocol import (
    NEED_DATA,
    Connection,
    GetCS,
    Handshake,
    JobBegin,
    JobDone,
    JobDoneFlag,
    Login,
    NoCS,
    Stats,
    UseCS,
)

ROOT = Path(__file__).resolve().parents[1]

REAL_SCHEDULER = "/usr/sbin/icecc-scheduler"
LOGIN_BATCH = 100
LOGIN_TIMEOUT = 300.0
#: Our scheduler's connection budget in the benchmark (farm scale: up to 5,000 daemons and more).
MAX_CONNECTIONS = 16384
DRAIN_TIMEOUT = 60.0
TICKS = os.sysconf("SC_CLK_TCK")
LABEL = {"ours": "iceserv", "real": "1.4", "ours+http": "iceserv+http"}


#: The scraper runs in its own process, as a Prometheus server would: scraping from this
#: driver's loop would slow the driver's GET_CS, not the scheduler's placements.
SCRAPER = """
import gzip, json, socket, sys, threading, time
port, start, seconds, segment = int(sys.argv[1]), *map(float, sys.argv[2:5])
request = (b"GET /metrics HTTP/1.1\\r\\nHost: bench\\r\\nConnection: close\\r\\n"
           b"Accept-Encoding: gzip\\r\\n\\r\\n")  # as Prometheus asks
taken, failed = [], []
def get(record=True):
    begin = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(request)
            reply = b"".join(iter(lambda: sock.recv(65536), b""))
        head, _, body = reply.partition(b"\\r\\n\\r\\n")
        if not head.startswith(b"HTTP/1.1 200") or b"# TYPE" not in gzip.decompress(body):
            failed.append(repr(reply[:80]))
    except OSError as exc:
        failed.append(repr(exc))
    if record:
        taken.append(time.perf_counter() - begin)
get(record=False)  # in the warm-up: the first request's one-time costs are not the steady state
# A request every 0.1 s in the B segments, on time even while earlier ones are still open
# (a saturated scheduler answers in several tenths of a second).
threads, tick = [], start
while tick < start + seconds:
    index = int((tick - start) // segment)
    if index % 4 in (1, 2):
        time.sleep(max(0.0, tick - time.monotonic()))
        threads.append(threading.Thread(target=get))
        threads[-1].start()
    tick += 0.1
for thread in threads:
    thread.join()
if failed:
    sys.exit(f"GET /metrics failed: {failed[:3]}")
print(json.dumps(taken))
"""


#: The driver's daemons read into one buffer: a plain Protocol's 256 KiB ``bytes`` per read
#: costs ~17 us (an mmap and an unmap), which would be measured instead of the scheduler.
READ_BUFFER = memoryview(bytearray(256 * 1024))


class Daemon(asyncio.BufferedProtocol):
    """One simulated iceccd on its scheduler link: a lean transport protocol, no tasks.

    Like ``bench/load.py``'s daemons (our codec, 4 slots, a loopback address
    of its own, a probe listener), but driven by callbacks: at farm scale the
    driver's per-message cost (a task, a ``wait_for`` and stream objects per
    read in load.py) would otherwise be measured instead of the scheduler's.
    A job it is named for runs at once: JOB_BEGIN and JOB_DONE (reporting a
    100-300 ms compile) go out together.
    """

    def __init__(self, index: int, slots: int, tally: Tally, rng: random.Random) -> None:
        self.name = f"load{index:02d}"
        self.address = f"127.1.{index // 250 % 256}.{index % 250 + 1}"
        self.max_kids = slots
        self.tally = tally
        self.rng = rng
        self.conn = Connection()
        self.port = 0
        self.peers: dict[int, Daemon] = {}
        self.clients = 0
        self.transport: asyncio.Transport | None = None
        self.probe_server: asyncio.Server | None = None
        self.handshake: asyncio.Future[None] | None = None
        self.lost = False
        self.closing = False

    ports_taken: ClassVar[set[int]] = set()
    #: Scheduler links that ended before the run closed them (a healthy run has none).
    links_lost: ClassVar[list[str]] = []

    async def listen_for_probes(self) -> None:
        """Open the compile port the scheduler probes (the daemon's, before it logs in)."""
        # USE_CS names a server by its port here (a scheduler may call any loopback address
        # "localhost"), so two daemons must not share one: the kernel may give one port to
        # two addresses.
        for _ in range(64):
            server = await asyncio.start_server(lambda _r, w: w.close(), self.address, 0)
            self.port = server.sockets[0].getsockname()[1]
            if self.port not in Daemon.ports_taken:
                break
            server.close()
        else:  # a shared port would send a job's reports down another daemon's link
            msg = f"no port of its own for {self.name} in 64 tries"
            raise RuntimeError(msg)
        Daemon.ports_taken.add(self.port)
        self.probe_server = server

    async def start(self, scheduler_port: int) -> None:
        """Connect from the daemon's own address, shake hands, LOGIN and the first STATS."""
        loop = asyncio.get_running_loop()
        self.handshake = loop.create_future()
        await loop.create_connection(lambda: self, "127.0.0.1", scheduler_port,
                                     local_addr=(self.address, 0))  # fmt: skip
        await self.handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - TCP
        self.transport = transport
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost and not self.closing:
            Daemon.links_lost.append(f"{self.name}: {exc!r}")
        self.lost = True
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionError("closed by the scheduler"))

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def get_buffer(self, sizehint: int) -> memoryview:  # noqa: ARG002 - any size will do
        return READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.receive_data(READ_BUFFER[:nbytes])  # copied: the buffer is the next read's
        while (event := self.conn.next_event()) is not NEED_DATA:
            if isinstance(event, UseCS | NoCS):
                self.tally.clients_answered += 1
                server = self if isinstance(event, NoCS) else self.peers[event.port]
                server.compile(event.job_id, own=server is self)
                if self.tally.on_answer is not None:
                    self.tally.on_answer()
            elif isinstance(event, Handshake):
                self.conn.send(Login(port=self.port, max_kids=self.max_kids, envs=(ENV,),
                                     nodename=self.name, host_platform="x86_64",
                                     chroot_possible=True, supported_features=3))  # fmt: skip
                self.conn.send(Stats(load=0))
                if self.handshake is not None and not self.handshake.done():
                    self.handshake.set_result(None)
        self.flush()

    def submit(self, client_id: int) -> None:
        """Ask for one compile server (GET_CS)."""
        self.clients += 1
        self.conn.send(GetCS(versions=(ENV,), filename=f"src/f{client_id}.c", lang=0, count=1,
                             target="x86_64", arg_flags=0x8, client_id=client_id,
                             client_count=self.clients))  # fmt: skip
        self.flush()

    def compile(self, job_id: int, *, own: bool) -> None:
        """Run job *job_id* at once: JOB_BEGIN, then JOB_DONE."""
        seconds = self.rng.uniform(0.1, 0.3)
        flags = JobDoneFlag.FROM_SUBMITTER if own else JobDoneFlag.FROM_SERVER
        self.conn.send(JobBegin(job_id, int(time.time()), self.clients))
        self.conn.send(JobDone(job_id=job_id, real_msec=int(seconds * 1000),
                               user_msec=int(seconds * 1000), out_uncompressed=20_000,
                               flags=int(flags), client_count=self.clients))  # fmt: skip
        self.flush()
        self.tally.done_total += 1

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()
        if self.probe_server is not None:
            self.probe_server.close()


def scraped_segment(index: int) -> bool:
    """Whether segment *index* of the window is a B segment (scraped in the ``--http`` run)."""
    return index % 4 in (1, 2)


async def scraped(scraper: asyncio.subprocess.Process) -> list[float]:
    """The seconds each scrape took, once the scraper process ends."""
    out, _ = await scraper.communicate()
    if scraper.returncode != 0:
        msg = f"the scraper failed ({scraper.returncode})"
        raise RuntimeError(msg)
    return list(json.loads(out))


async def scrape(port: int, start: float, args: argparse.Namespace) -> asyncio.subprocess.Process:
    """Start the scraper process: /metrics 10 times a second in the B segments of the window.

    *start* is the window's start on ``time.monotonic()`` (the same clock in every process).
    """
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRAPER, str(port), repr(start), str(args.seconds),
        str(args.segment), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


class Scheduler:
    """One scheduler program on loopback, started with the same flags for both kinds.

    Kind ``ours+http`` is ours with ``--http 127.0.0.1:PORT`` (the endpoint on).
    """

    def __init__(self, kind: str, verbose: int, profile: Path | None = None) -> None:
        self.kind = kind
        self.http_port = free_scheduler_port() if kind == "ours+http" else None
        self.workdir = make_workdir(f"place-{kind}")
        self.port = free_scheduler_port()
        self.netname = f"PL{os.getpid()}{kind.upper()}"
        program = [REAL_SCHEDULER] if kind == "real" else [sys.executable, "-m",
                                                            "iceserv.app.scheduler"]  # fmt: skip
        if profile is not None and kind != "real":  # cProfile writes it at the clean exit
            program[1:1] = ["-m", "cProfile", "-o", str(profile)]
        argv = [*program, "-p", str(self.port), "-n", self.netname, "-i", "lo",
                "-l", str(self.workdir / "scheduler.log")] + ["-v"] * verbose  # fmt: skip
        if self.http_port is not None:
            argv += ["--http", f"127.0.0.1:{self.http_port}"]
        if kind != "real":  # 1.4 has no such budget; ours admits 4,096 connections by default
            argv += ["--max-connections", str(MAX_CONNECTIONS)]
        env = clean_env({"ICECC_TESTS": "1", "PYTHONPATH": str(ROOT)})
        with (self.workdir / "scheduler.out").open("wb") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        wait_for(lambda: self.alive() and {self.port, self.port + 1} <= listening_tcp_ports(
            self.proc.pid), 30, f"the {kind} scheduler to listen")  # fmt: skip

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            tail = (self.workdir / "scheduler.out").read_text(errors="replace")[-2000:]
            msg = f"the {self.kind} scheduler exited with {self.proc.returncode}: {tail}"
            raise RuntimeError(msg)
        return True

    def cpu_seconds(self) -> float:
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """The scheduler's (user, system) CPU seconds so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / TICKS, int(fields[12]) / TICKS  # utime, stime

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return code


async def poke_loop(port: int, stop: asyncio.Event) -> None:
    """Wake 1.4's main loop with a discovery byte every 0.3 s (reference 7.9)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)  # noqa: FBT003 - the socket API
        while not stop.is_set():
            with contextlib.suppress(OSError):
                sock.sendto(bytes([43]), ("127.0.0.1", port))
                while True:
                    sock.recv(512)  # drop the answers
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.3)


async def listed_hosts(telnet_port: int) -> int:
    """How many hosts telnet ``listcs`` shows (one bounded session)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", telnet_port), 30)
    try:
        for _ in range(2):
            await asyncio.wait_for(reader.readline(), 30)  # the greeting
        writer.write(b"listcs\n")
        await writer.drain()
        count = 0
        while True:
            line = (await asyncio.wait_for(reader.readline(), 60)).decode(errors="replace")
            if not line or line.rstrip("\r\n") == "200 done":
                return count
            count += line.startswith(" load")
    finally:
        writer.close()


async def log_in(daemons: list[Daemon], scheduler: Scheduler) -> float:
    """Log *daemons* in (their probe listeners are open already); return the seconds taken."""
    start = time.perf_counter()
    for first in range(0, len(daemons), LOGIN_BATCH):
        batch = daemons[first : first + LOGIN_BATCH]
        await asyncio.wait_for(asyncio.gather(*(d.start(scheduler.port) for d in batch)),
                               LOGIN_TIMEOUT)  # fmt: skip
    deadline = time.monotonic() + LOGIN_TIMEOUT
    while (listed := await listed_hosts(scheduler.port + 1)) < len(daemons):
        scheduler.alive()
        if time.monotonic() > deadline:
            msg = f"only {listed} of {len(daemons)} daemons listed after {LOGIN_TIMEOUT} s"
            raise TimeoutError(msg)
        await asyncio.sleep(0.5)
    return time.perf_counter() - start


async def measure(scheduler: Scheduler, args: argparse.Namespace, count: int) -> dict[str, Any]:  # noqa: PLR0915
    pid = scheduler.proc.pid
    rss_idle = rss_kib(pid)[0]
    rng = random.Random(args.seed)  # noqa: S311 - simulated compile statistics
    tally = Tally(expected=1 << 62)
    daemons = [Daemon(i, args.slots, tally, rng) for i in range(count)]
    Daemon.links_lost.clear()
    for first in range(0, count, LOGIN_BATCH):  # the daemons run before they log in
        await asyncio.gather(*(d.listen_for_probes() for d in daemons[first : first + LOGIN_BATCH]))
    stop_poking = asyncio.Event()
    poker = asyncio.create_task(poke_loop(scheduler.port, stop_poking))
    try:
        login_s = await log_in(daemons, scheduler)
    finally:
        stop_poking.set()
        await poker
    peers = {d.port: d for d in daemons}
    for daemon in daemons:
        daemon.peers = peers
    await asyncio.sleep(2.0)  # the first STATS and the reachability probes settle
    rss_logged_in = rss_kib(pid)[0]
    client_ids = itertools.count(1)
    submitters = itertools.cycle(daemons)
    submitting = True

    def ask() -> None:
        next(submitters).submit(next(client_ids))

    def on_answer() -> None:
        if submitting:
            ask()

    tally.on_answer = on_answer
    for _ in range(args.outstanding):
        ask()
    window_start = time.monotonic() + args.warmup
    scraper = None
    if scheduler.http_port is not None:  # started early: its interpreter starts in the warm-up
        scraper = await scrape(scheduler.http_port, window_start, args)
    await asyncio.sleep(max(0.0, window_start - time.monotonic()))
    answered0, cpu0, own0 = tally.clients_answered, scheduler.cpu_seconds(), time.process_time()
    system0 = scheduler.cpu_split()[1]
    start = time.perf_counter()
    classes = await segmented(tally, scheduler, args, window_start)
    rates = classes.pop("rates")
    answered1, cpu1, own1 = tally.clients_answered, scheduler.cpu_seconds(), time.process_time()
    system1 = scheduler.cpu_split()[1]
    elapsed = time.perf_counter() - start  # the window only, not the scraper's last request
    scrapes: list[float] = []
    if scraper is not None:
        scrapes = await scraped(scraper)
    submitting = False
    asked = next(client_ids) - 1
    with contextlib.suppress(TimeoutError):  # let the last answers and JOB_DONEs arrive
        await asyncio.wait_for(_settled(tally, asked), DRAIN_TIMEOUT)
    scheduler.alive()
    rss_after, rss_peak = rss_kib(pid)
    for daemon in daemons:
        daemon.close()
    answered = answered1 - answered0
    return {
        "daemons": count,
        "login_s": round(login_s, 1),
        "get_cs_per_s": round(answered / elapsed, 1),
        "answered_in_window": answered,
        "window_s": round(elapsed, 2),
        "scheduler_cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 1),
        "scheduler_cpu_ms_per_1000": round(1e6 * (cpu1 - cpu0) / max(answered, 1), 1),
        "scheduler_system_pct": round(100 * (system1 - system0) / elapsed, 1),
        "driver_cpu_pct": round(100 * (own1 - own0) / elapsed, 1),
        "asked": asked,
        "links_lost": len(Daemon.links_lost),
        "links_lost_first": Daemon.links_lost[:3],
        "answered": tally.clients_answered,
        "done": tally.done_total,
        "rss_kib_idle": rss_idle,
        "rss_kib_logged_in": rss_logged_in,
        "rss_kib_after": rss_after,
        "rss_kib_peak": rss_peak,
        "loadavg": os.getloadavg()[0],
        "segments": {
            name: {
                "get_cs_per_s": round(answers / seconds, 1) if seconds else None,
                "scheduler_cpu_ms_per_1000": round(1e6 * cpu / max(answers, 1), 1),
                "seconds": round(seconds, 3),
                "answers": answers,
                "cpu_s": round(cpu, 3),
            }
            for name, (answers, cpu, seconds) in classes.items()
        },
        "segment_rates": rates,
        "scrapes": len(scrapes),
        "scrape_ms_p50": round(1000 * sorted(scrapes)[len(scrapes) // 2], 2) if scrapes else None,
        "scrape_ms_p99": round(1000 * sorted(scrapes)[int(len(scrapes) * 0.99)], 2)
        if scrapes
        else None,
    }


async def segmented(tally: Tally, scheduler: Scheduler, args: argparse.Namespace,
                    window_start: float) -> dict[str, list[float]]:  # fmt: skip
    """Per segment class (A: not scraped, B: scraped in the ``--http`` run): answers, CPU, s.

    ``classes["rates"]`` lists every segment's GET_CS/s in order.
    """
    classes: dict[str, list[float]] = {"A": [0, 0.0, 0.0], "B": [0, 0.0, 0.0], "rates": []}
    segments = max(1, round(args.seconds / args.segment)) if args.http_scrape else 1
    mark = (tally.clients_answered, scheduler.cpu_seconds(), time.perf_counter())
    for index in range(segments):
        end = window_start + min(args.seconds, (index + 1) * args.segment)
        if index == segments - 1:
            end = window_start + args.seconds
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        now = (tally.clients_answered, scheduler.cpu_seconds(), time.perf_counter())
        into = classes["B" if scraped_segment(index) else "A"]
        for field in range(3):
            into[field] += now[field] - mark[field]
        classes["rates"].append(round((now[0] - mark[0]) / max(now[2] - mark[2], 1e-9), 1))
        mark = now
    return classes


async def _settled(tally: Tally, asked: int) -> None:
    while tally.clients_answered < asked or tally.done_total < tally.clients_answered:  # noqa: ASYNC110 - load.py's Tally has no event for this
        await asyncio.sleep(0.1)


def measure_one(kind: str, key: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start a fresh scheduler of *kind*, measure it with *count* daemons, stop it."""
    profile = None
    if args.profile is not None and kind != "real":
        profile = args.profile.with_name(f"{args.profile.name}.{key}")
    scheduler = Scheduler(kind, args.verbose, profile)
    try:
        result = asyncio.run(measure(scheduler, args, count))
    finally:
        code = scheduler.stop()
    result["exit_code"] = code
    return result


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need <= hard or (soft < need and hard == resource.RLIM_INFINITY):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    elif soft < need:
        msg = f"need {need} file descriptors, the hard limit is {hard} (ulimit -Hn)"
        raise SystemExit(msg)


def show(kind: str, r: dict[str, Any]) -> None:
    print(f"  {LABEL[kind]:<8} {r['daemons']:>5} daemons: {r['get_cs_per_s']:8.1f} GET_CS/s "
          f"(scheduler CPU {r['scheduler_cpu_pct']:5.1f} %, "
          f"{r['scheduler_system_pct']:5.1f} % of it in the kernel, "
          f"{r['scheduler_cpu_ms_per_1000']:7.1f} ms per 1000; driver CPU "
          f"{r['driver_cpu_pct']:5.1f} %)  RSS idle {r['rss_kib_idle'] / 1024:.1f} MiB, "
          f"logged in {r['rss_kib_logged_in'] / 1024:.1f}, after {r['rss_kib_after'] / 1024:.1f}, "
          f"peak {r['rss_kib_peak'] / 1024:.1f} MiB; logins {r['login_s']} s; "
          f"{r['answered']}/{r['asked']} answered, {r['done']} done"
          + (f"; {r['links_lost']} links LOST, e.g. {r['links_lost_first']}"
             if r["links_lost"] else "")
          + (f"; {r['scrapes']} scrapes of /metrics, p50 {r['scrape_ms_p50']} ms, "
             f"p99 {r['scrape_ms_p99']} ms" if r["scrapes"] else ""), flush=True)  # fmt: skip


def scrape_ratios(plain: list[dict[str, Any]], http: list[dict[str, Any]]) -> dict[str, float]:
    """The ``--http-scrape`` ratios over the runs given (sums of answers, CPU and seconds)."""

    def rate(runs: list[dict[str, Any]], name: str) -> tuple[float, float]:
        segments = [r["segments"][name] for r in runs]
        answers = sum(s["answers"] for s in segments)
        return (answers / sum(s["seconds"] for s in segments),
                1e6 * sum(s["cpu_s"] for s in segments) / max(answers, 1))  # fmt: skip

    (plain_a, plain_a_cpu), (plain_b, plain_b_cpu) = rate(plain, "A"), rate(plain, "B")
    (idle, idle_cpu), (scraped, scraped_cpu) = rate(http, "A"), rate(http, "B")
    return {
        "scraped_over_plain": round(scraped / plain_b, 3),
        "idle_over_plain": round(idle / plain_a, 3),
        "scraped_over_idle": round((scraped / idle) / (plain_b / plain_a), 3),
        "cpu_per_1000_scraped_over_plain": round(scraped_cpu / plain_b_cpu, 3),
        "cpu_per_1000_idle_over_plain": round(idle_cpu / plain_a_cpu, 3),
        "cpu_per_1000_scraped_over_idle": round(
            (scraped_cpu / idle_cpu) / (plain_b_cpu / plain_a_cpu), 3),
    }  # fmt: skip


def show_ratios(what: str, ratios: dict[str, float]) -> None:
    print(f"{what}: GET_CS/s scraped/plain {ratios['scraped_over_plain']}, endpoint idle/plain "
          f"{ratios['idle_over_plain']}, scraped/idle in one process "
          f"{ratios['scraped_over_idle']}; CPU per 1000 answers scraped/plain "
          f"{ratios['cpu_per_1000_scraped_over_plain']}, idle/plain "
          f"{ratios['cpu_per_1000_idle_over_plain']}, scraped/idle "
          f"{ratios['cpu_per_1000_scraped_over_idle']}", flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--daemons", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--outstanding", type=int, default=200, help="GET_CS kept in flight")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--verbose", type=int, default=0, help="-v count for both schedulers")
    parser.add_argument("--only", choices=("ours", "real"))
    parser.add_argument("--http-scrape", action="store_true",
                        help="ours with and without /metrics scraped 10x/s")  # fmt: skip
    parser.add_argument("--segment", type=float, default=1.0,
                        help="--http-scrape: seconds per A/B segment of the window")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path,
                        help="run ours under cProfile: pstats to FILE.<daemons>")  # fmt: skip
    args = parser.parse_args()
    raise_fd_limit(3 * max(args.daemons) + 256)  # per daemon: its link, its probe listener, a probe
    start_state = provenance()
    kinds = [k for k in ("ours", "real") if args.only in (None, k)]
    if args.http_scrape:
        kinds = ["ours", "ours+http"]
    results: dict[str, dict[str, Any]] = {k: {} for k in kinds}
    print(f"closed loop of {args.outstanding} GET_CS, {args.warmup:g} s warm-up, "
          f"{args.seconds:g} s measured; schedulers with -v x{args.verbose}",
          flush=True)  # fmt: skip
    keys = [str(c) if args.daemons.count(c) == 1 else f"{c}#{n}" for n, c in
            enumerate(args.daemons)]  # fmt: skip
    for number, (key, count) in enumerate(zip(keys, args.daemons, strict=True)):
        for kind in kinds if number % 2 == 0 else kinds[::-1]:
            # Each measurement in a fresh driver process, as each scheduler is fresh: nothing
            # of one run's thousands of sockets and objects is left to disturb the next.
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                results[kind][key] = pool.submit(measure_one, kind, key, count, args).result()
            show(kind, results[kind][key])
    ratios = {}
    if args.http_scrape:
        for key in keys:
            ratios[key] = scrape_ratios([results["ours"][key]], [results["ours+http"][key]])
            show_ratios(f"pair {key}", ratios[key])
        ratios["all"] = scrape_ratios(list(results["ours"].values()),
                                      list(results["ours+http"].values()))  # fmt: skip
        show_ratios("over all pairs", ratios["all"])
    elif len(kinds) == 2:
        for count in keys:
            ours, real = results["ours"][count], results["real"][count]
            ratios[count] = {key: round(ours[key] / real[key], 2) for key in
                             ("get_cs_per_s", "scheduler_cpu_ms_per_1000", "rss_kib_logged_in",
                              "rss_kib_peak")}  # fmt: skip
            print(f"ratios iceserv/1.4 at {count} daemons: "
                  + ", ".join(f"{k} {v}" for k, v in ratios[count].items()))  # fmt: skip
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        out = {"provenance": start_state, "settings": settings, "results": results,
               "ratios_iceserv_over_real": ratios}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
