"""``iceserv status``: a live scheduler's telnet port, the text and JSON views, exit 69."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from iceserv.app.status import (
    EX_UNAVAILABLE,
    ClusterStatus,
    StatusHost,
    StatusJob,
    collect,
    render_text,
)
from iceserv.scheduler import SchedulerServer, SchedulerServerSettings
from iceserv.telnet import serve_telnet

if TYPE_CHECKING:
    from collections.abc import Iterator


class _Clock:
    def now(self) -> float:
        return time.time()


@pytest.fixture(scope="module")
def scheduler() -> Iterator[int]:
    """A scheduler with its telnet port on loopback (no daemons); yields its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[Any, Any]:
        settings = SchedulerServerSettings(address="127.0.0.1", port=0, netname="statustest")
        server = SchedulerServer(settings, clock=_Clock(), rng=random.Random(1))  # noqa: S311
        await server.start()
        telnet = await serve_telnet(server.control, "127.0.0.1", server.port + 1)
        return server, telnet

    server, telnet = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield server.port
    finally:
        asyncio.run_coroutine_threadsafe(telnet.close(), loop).result(30)
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iceserv.app.cli", "status", *args],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


class TestStatus:
    def test_telnet_port_of_a_named_scheduler(self, scheduler: int):
        """--scheduler HOST:PORT reads the telnet port (PORT + 1)."""
        status = collect(f"127.0.0.1:{scheduler}", {})
        assert status.source == f"telnet 127.0.0.1:{scheduler + 1}"
        assert (status.hosts, status.queued, status.running) == ([], 0, 0)

    def test_json_and_text(self, scheduler: int):
        """--json is one document; the text has the headline."""
        done = _status("--scheduler", f"127.0.0.1:{scheduler}", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["hosts"] == []
        text = _status("--scheduler", f"127.0.0.1:{scheduler}").stdout
        assert "0 hosts, 0/0 slots busy, 0 running, 0 queued" in text

    def test_watch_refreshes_until_interrupted(self, scheduler: int):
        """--watch prints the view again and again; Ctrl-C ends it with status 0."""
        argv = [sys.executable, "-m", "iceserv.app.cli", "status", "--scheduler",
                f"127.0.0.1:{scheduler}", "--watch", "0.2"]  # fmt: skip
        # A shell's background job ignores SIGINT, and Python keeps an ignored SIGINT
        # ignored: give the child the terminal's default, as a user's Ctrl-C finds it.
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                preexec_fn=_default_sigint)  # noqa: PLW1509 - no threads started
        try:
            assert proc.stdout is not None
            headlines = 0
            while headlines < 2:
                line = proc.stdout.readline()
                assert line, "status --watch ended"
                headlines += line.startswith("0 hosts, 0/0 slots busy")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            proc.kill()
            proc.wait(10)

    def test_nothing_answers(self, tmp_path):
        """No bus and no telnet port: exit 69 with one line naming both tries."""
        env = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/none"}
        done = _status(env=env)
        assert done.returncode == EX_UNAVAILABLE
        lines = done.stderr.splitlines()
        assert len(lines) == 1, lines
        assert f"D-Bus unix:path={tmp_path}/none" in lines[0]
        assert "telnet 127.0.0.1:8766" in lines[0] or "telnet 127.0.0.1" in lines[0]
        bad = _status("--scheduler", "127.0.0.1:1")
        assert bad.returncode == EX_UNAVAILABLE
        assert bad.stderr.count("\n") == 1
        assert "telnet 127.0.0.1:2" in bad.stderr


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class TestRenderText:
    def test_hosts_jobs_and_colour(self):
        """Each host has a row with slots, load and speed, its jobs below; colour only if asked."""
        job = StatusJob(12, "COMP", "laptop", "farm1", "src/a.c", started_at=98.0)
        status = ClusterStatus("D-Bus x", "lab", [
            StatusHost("farm1", "10.0.0.2", "x86_64", 4, 1, 250, 1.5, draining=True, jobs=[job]),
        ], queued=2, running=1)  # fmt: skip
        plain = render_text(status, now=100.0)
        assert plain.splitlines()[1] == "1 hosts, 1/4 slots busy, 1 running, 2 queued"
        assert "farm1" in plain
        assert "25%" in plain
        assert "draining" in plain
        assert "    12 COMP   2.0s src/a.c from laptop" in plain
        assert "\x1b[" not in plain
        assert "\x1b[" in render_text(status, colour=True, now=100.0)

    def test_auth_state_is_a_flag(self):
        """A host's authentication state (issue 14) is shown unless it is off or not known."""
        status = ClusterStatus("D-Bus x", "lab", [
            StatusHost("new", "10.0.0.2", "x86_64", 4, 0, 0, 1.0, auth="authenticated"),
            StatusHost("old", "10.0.0.3", "x86_64", 4, 0, 0, 1.0, no_remote=True,
                       auth="unauthenticated"),
            StatusHost("plain", "10.0.0.4", "x86_64", 4, 0, 0, 1.0, auth="off"),
        ], queued=0, running=0)  # fmt: skip
        rows = {line.split()[0]: line for line in render_text(status, now=0.0).splitlines()[4:]}
        assert rows["new"].endswith(" authenticated")
        assert rows["old"].endswith(" no-remote,unauthenticated")
        assert "authenticated" not in rows["plain"]
