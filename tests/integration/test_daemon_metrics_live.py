"""Our ``iceccd --http``: its ``/metrics`` during real compiles, parsed with ``prometheus_client``.

A real icecream 1.4 scheduler, a real 1.4 ``iceccd`` as the client's local
daemon and ours as the compile server, with ``--http`` on a free loopback
port.  Real ``icecc`` clients compile one unit that builds and one that
fails on our daemon, link through ours (JOB_LOCAL_BEGIN) and compile with
ours as their local daemon and the compile server (USE_CS to itself).
``/metrics`` is scraped ten times a second the whole time: every counter
only grows, the daemon's series never change in number, and at the end each
total agrees with what our log says happened.  A second test sends bad HTTP
to the endpoint: 4xx or a closed connection, never a crash or a hang.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Self

import pytest
from prometheus_client.parser import text_string_to_metric_families
from testbed import OurDaemon, wait_for
from testbed.hosts import free_port
from testbed.procs import listening_tcp_ports

from iceserv._version import VERSION
from iceserv.web.daemon_exposition import SERIES

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.live

GOOD_C = "".join(f"int f{i}(int x) {{ return x * {i} + {i % 7}; }}\n" for i in range(200))
BAD_C = "int broken(void) { return no_such_variable; }\n"
MAIN_C = "int main(void) { return 0; }\n"
#: Counters (and histogram counts and sums) of the daemon: they may only grow.
MONOTONIC = ("_total", "_count", "_sum", "_bucket")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _get(port: int, path: str = "/metrics") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Scraper:
    """Scrapes ``/metrics`` ten times a second in a thread; checks each scrape against the last."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latest: Samples = {}
        self.scrapes = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                status, body = _get(self.port)
            except OSError as exc:
                self.problems.append(f"scrape failed: {exc}")
                continue
            if status != 200:
                self.problems.append(f"status {status}")
                continue
            self.check(_parse(body.decode()))

    def check(self, samples: Samples) -> None:
        ours = [key for key in samples if not key[0].startswith("iceserv_daemon_process_")]
        if len(ours) != SERIES:
            self.problems.append(f"{len(ours)} series, not {SERIES}")
        for key, value in self.latest.items():
            if key[0].endswith(MONOTONIC) and samples.get(key, -1) < value:
                self.problems.append(f"{key} went from {value} to {samples.get(key)}")
        self.latest = samples
        self.scrapes += 1

    def wait(self, what: str, predicate: Any, daemon: OurDaemon, timeout: float = 30) -> Samples:
        """Wait until the latest scrape satisfies *predicate*; return it."""
        wait_for(lambda: self.latest and predicate(self.latest), timeout, what,
                 context=daemon.log_tail)  # fmt: skip
        return self.latest


@pytest.fixture
def metrics_daemon(real_scheduler: Any) -> Iterator[tuple[OurDaemon, int]]:
    """Our daemon, compile server of the real scheduler's cluster, with ``--http``."""
    port = free_port()
    daemon = OurDaemon("ourmetrics", real_scheduler.address,
                       extra_args=["--http", f"127.0.0.1:{port}"])  # fmt: skip
    daemon.start()
    try:
        yield daemon, port
    finally:
        daemon.stop()


def _icecc(workdir: Path, env: dict[str, str], *args: str) -> int:
    return subprocess.run(["/usr/bin/icecc", "gcc", *args], cwd=workdir, env=env,
                          capture_output=True, timeout=180, check=False).returncode  # fmt: skip


class TestDuringRealCompiles:
    def test_counters_grow_and_agree_with_the_log(
        self, real_scheduler, real_daemon_factory, metrics_daemon, tmp_path
    ):
        """Remote ok + failed, a link and a self-compile: every total matches our log."""
        ours, port = metrics_daemon
        (listening,) = ours.events("http_listening")
        assert listening["port"] == port
        ours.wait_listed(real_scheduler)
        local = real_daemon_factory("realmetrics", real_scheduler)
        local.wait_logged_in(real_scheduler)
        for name, text in (("good.c", GOOD_C), ("bad.c", BAD_C), ("main.c", MAIN_C)):
            (tmp_path / name).write_text(text)
        remote_env = local.client_env({"ICECC_PREFERRED_HOST": "ourmetrics",
                                       "ICECC_TEST_REMOTEBUILD": "1"})  # fmt: skip
        own_env = ours.client_env({"ICECC_PREFERRED_HOST": "ourmetrics"})
        with Scraper(port) as scraper, real_scheduler.awake():
            first = scraper.wait("a first scrape", lambda _: True, ours)
            assert _value(first, "iceserv_daemon_slots", state="total") == ours.max_jobs
            assert _value(first, "iceserv_daemon_jobs_finished_total") == 0
            assert _value(first, "iceserv_daemon_environments", kind="received") == 0
            assert _icecc(tmp_path, remote_env, "-O2", "-c", "good.c", "-o", "good.o") == 0
            assert _icecc(tmp_path, remote_env, "-c", "bad.c", "-o", "bad.o") != 0
            assert _icecc(tmp_path, own_env, "-c", "main.c", "-o", "main.o") == 0
            assert _icecc(tmp_path, own_env, "main.o", "good.o", "-o", "prog") == 0
            done = scraper.wait(
                "two remote compiles, a link and a self-compile in /metrics",
                lambda s: (
                    _value(s, "iceserv_daemon_jobs_finished_total") >= 2
                    and _value(s, "iceserv_daemon_jobs_started_total", kind="local") >= 1
                    and _value(s, "iceserv_daemon_slots", state="used") == 0
                ),
                ours,
            )
        assert scraper.problems == [], scraper.problems[:10]
        assert scraper.scrapes >= 10
        jobs = [e for e in ours.wait_events("job_finished", 2) if e["where"] == "server"]
        assert sorted(e["exitcode"] == 0 for e in jobs) == [False, True]
        assert _value(done, "iceserv_daemon_jobs_started_total", kind="remote") == len(jobs)
        assert _value(done, "iceserv_daemon_jobs_finished_total") == len(jobs)
        assert _value(done, "iceserv_daemon_jobs_failed_total", reason="compile_error") == 1
        for reason in ("out_of_memory", "killed", "not_started"):
            assert _value(done, "iceserv_daemon_jobs_failed_total", reason=reason) == 0
        assert _value(done, "iceserv_daemon_jobs_started_total", kind="local") == 1
        assert _value(done, "iceserv_daemon_jobs_started_total", kind="self") == 1
        assert _value(done, "iceserv_daemon_compile_seconds_count") == len(jobs)
        assert _value(done, "iceserv_daemon_compile_seconds_sum") == pytest.approx(
            sum(e["real_msec"] for e in jobs) / 1000
        )
        (installed,) = ours.events("env_installed")
        assert _value(done, "iceserv_daemon_env_installs_total", result="ok") == 1
        assert _value(done, "iceserv_daemon_env_install_seconds_count") == 1
        assert _value(done, "iceserv_daemon_environments", kind="received") == 1
        native = ours.events("native_env_sent")
        assert _value(done, "iceserv_daemon_native_env_builds_total", result="ok") == len(native)
        assert _value(done, "iceserv_daemon_environments", kind="native") == (1 if native else 0)
        assert _value(done, "iceserv_daemon_cache_bytes") >= installed["cache_size"]
        for kind in ("remote", "local"):
            for state in ("running", "waiting"):
                assert _value(done, "iceserv_daemon_jobs", kind=kind, state=state) == 0
        assert _value(done, "iceserv_daemon_scheduler_connected") == 1
        assert _value(done, "iceserv_daemon_info", nodename="ourmetrics",
                      platform=os.uname().machine, version=VERSION) == 1  # fmt: skip
        assert _value(done, "iceserv_daemon_process_open_fds") > 0


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send *data*; return what comes back until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                reply += chunk
    return reply


def _status(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1."), reply[:200]
    return int(reply.split(b" ", 2)[1])


class TestBadHttp:
    BAD: tuple[tuple[bytes, tuple[int, ...]], ...] = (
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", (404,)),
        (b"GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", (404,)),
        (b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", (404, 400)),
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
         (405,)),
        (b"DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", (405,)),
        (b"BREW /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", (405, 400)),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", (400, 431)),
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", (400, 414)),
        (b"GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n", (400, 505)),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, (400,)),
    )  # fmt: skip

    def test_bad_requests_get_4xx_and_the_daemon_keeps_serving(self, metrics_daemon):
        """Unknown paths, other methods, huge headers, junk: 4xx; /metrics and jobs still work."""
        ours, port = metrics_daemon
        for data, expected in self.BAD:
            reply = _raw(port, data)
            assert _status(reply) in expected, (data[:40], reply[:200])
        # A client that sends nothing is cut off (after the 10 s idle time-out), no hang.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as silent:
            started = time.monotonic()
            assert silent.recv(1) == b""
            assert time.monotonic() - started < 25
        status, body = _get(port)
        assert status == 200
        assert len([k for k in _parse(body.decode()) if "_process_" not in k[0]]) == SERIES
        ours.check_alive()


class TestOffByDefault:
    def test_no_http_listener_unless_asked_and_a_taken_address_is_survived(self):
        """Without --http only the daemon's port listens; a taken --http address is logged."""
        plain = OurDaemon("ournohttp", None).start()
        try:
            assert plain.proc is not None
            assert listening_tcp_ports(plain.proc.pid) == {plain.port}
        finally:
            plain.stop()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            busy = OurDaemon("ourbusyhttp", None, extra_args=["--http", f"127.0.0.1:{port}"])
            busy.start()
            try:
                (failed,) = busy.events("http_listener_failed")
                assert failed["address"] == f"127.0.0.1:{port}"
                busy.check_alive()
                assert busy.proc is not None
                assert listening_tcp_ports(busy.proc.pid) == {busy.port}
            finally:
                assert busy.stop() == 0
