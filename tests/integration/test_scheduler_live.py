"""iceserv's scheduler program with the real 1.4 daemons, client and (to compare) scheduler.

* A real ``iceccd`` logs in to ``python -m iceserv.app.scheduler`` and stays.
* A real ``icecc`` client compile goes from daemon A through our scheduler to
  daemon B and yields the same object as local gcc; a monitor (our codec over
  ``BlockingChannel``) sees the job.  The same scenario runs against the real
  ``icecc-scheduler`` and the observable results (who compiled, the MON_*
  events and the MON_STATS keys) must agree.
* Discovery: a real ``iceccd`` without ``-s`` finds our scheduler by UDP
  broadcast, in a network namespace pair, so the default port 8765 is ours.

Every wait is bounded and every process is stopped by its fixture.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from testbed import OurScheduler, wait_for

from iceserv.protocol import (
    Handshake,
    MonGetCS,
    MonJobBegin,
    MonJobDone,
    MonLogin,
    MonStats,
)
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from collections.abc import Callable

    from testbed import RealDaemon, RealScheduler

pytestmark = pytest.mark.live

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'
_REPO = Path(__file__).resolve().parents[2]


class Monitor:
    """A monitor connection that records every event, read with bounded waits."""

    def __init__(self, port: int, *, awake: Callable[[], contextlib.AbstractContextManager[None]]
                 = contextlib.nullcontext) -> None:  # fmt: skip
        with awake():
            self.channel = BlockingChannel.connect("127.0.0.1", port, timeout=20.0)
        self.channel.send(MonLogin())
        self.events: list[Any] = []

    def wait(self, predicate: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """Read events until one satisfies *predicate*; return it."""
        for event in self.events:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.channel.sock.settimeout(left)
            try:
                event = self.channel.receive()
            except TimeoutError:
                break
            if isinstance(event, Handshake):
                continue
            self.events.append(event)
            if predicate(event):
                return event
        msg = f"timed out after {timeout} s waiting for {what}; events: {self.events!r}"
        raise AssertionError(msg)

    def host_ids(self) -> dict[str, int]:
        """Nodename to host id, from the MON_STATS seen so far."""
        ids = {}
        for event in self.events:
            if isinstance(event, MonStats) and event.statmsg.startswith("Name:"):
                ids[event.statmsg.split("\n", 1)[0][5:]] = event.host_id
        return ids

    def close(self) -> None:
        """Close the connection."""
        self.channel.close()


def _stats_of(name: str, *, loaded: bool) -> Callable[[Any], bool]:
    def match(event: Any) -> bool:
        return (isinstance(event, MonStats) and event.statmsg.startswith(f"Name:{name}\n")
                and (not loaded or "LoadAvg1:" in event.statmsg))  # fmt: skip

    return match


def _keys(statmsg: str) -> list[str]:
    return [line.split(":", 1)[0] for line in statmsg.splitlines()]


@dataclass
class CompileOutcome:
    """What a compile scenario showed, with host ids replaced by roles."""

    job_events: list[tuple[str, ...]]
    stats_keys: list[str]
    fixed_values: dict[str, str]


def _compile_scenario(  # noqa: PLR0913 - one scenario, every piece passed in
    scheduler_address: str,
    port: int,
    make_daemon: Callable[..., RealDaemon],
    workdir: Path,
    tag: str,
    *,
    awake: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
) -> CompileOutcome:
    """Daemons A and B, a monitor, one compile A -> B; return what was observed."""
    monitor = Monitor(port, awake=awake)
    try:
        with awake():  # the real scheduler needs waking to accept (reference 7.9)
            return _compile(monitor, scheduler_address, make_daemon, workdir, tag)
    finally:
        monitor.close()


def _compile(
    monitor: Monitor,
    scheduler_address: str,
    make_daemon: Callable[..., RealDaemon],
    workdir: Path,
    tag: str,
) -> CompileOutcome:
    name_a, name_b = f"a{tag}", f"b{tag}"
    daemon_a = make_daemon(name_a, scheduler_address)
    make_daemon(name_b, scheduler_address)
    monitor.wait(_stats_of(name_a, loaded=True), 30, f"STATS of {name_a}")
    stats_b = monitor.wait(_stats_of(name_b, loaded=True), 30, f"STATS of {name_b}")
    ids = monitor.host_ids()
    (workdir / "hello.c").write_text(HELLO_C)
    env = daemon_a.client_env({"ICECC_PREFERRED_HOST": name_b, "ICECC_TEST_REMOTEBUILD": "1"})
    subprocess.run(["icecc", "gcc", "-c", "hello.c", "-o", "remote.o"], cwd=workdir, env=env,
                   check=True, timeout=120)  # fmt: skip
    subprocess.run(["gcc", "-c", "hello.c", "-o", "local.o"], cwd=workdir, check=True,
                   timeout=60)  # fmt: skip
    assert (workdir / "remote.o").read_bytes() == (workdir / "local.o").read_bytes()
    done = monitor.wait(lambda e: isinstance(e, MonJobDone), 30, "MON_JOB_DONE")
    assert done.exitcode == 0
    roles = {ids[name_a]: "A", ids[name_b]: "B"}
    job_events: list[tuple[str, ...]] = []
    for event in monitor.events:
        if isinstance(event, MonGetCS):
            basename = event.filename.rsplit("/", 1)[-1]
            job_events.append(("MON_GET_CS", roles[event.client_id], basename))
        elif isinstance(event, MonJobBegin):
            job_events.append(("MON_JOB_BEGIN", roles[event.host_id]))
        elif isinstance(event, MonJobDone):
            job_events.append(("MON_JOB_DONE", str(event.exitcode),
                               str(event.out_uncompressed > 0)))  # fmt: skip
    pairs = (line.split(":", 1) for line in stats_b.statmsg.splitlines())
    fixed = {key: value for key, value in pairs
             if key in {"MaxJobs", "NoRemote", "Platform", "Version", "Features"}}  # fmt: skip
    return CompileOutcome(job_events, _keys(stats_b.statmsg), fixed)


class TestRealDaemonsWithOurScheduler:
    def test_daemon_logs_in_and_stays(self, our_scheduler, real_daemon_factory):
        """A real iceccd logs in, accepts CS_CONF (it stays and sends STATS) and is probed."""
        monitor = Monitor(our_scheduler.port or 0)
        try:
            daemon = real_daemon_factory(f"n{os.getpid()}", our_scheduler.address)
            event = monitor.wait(_stats_of(daemon.name, loaded=True), 30, "the daemon's STATS")
            assert "Version:43\n" in event.statmsg
            assert "Features:env_xz env_zstd\n" in event.statmsg
        finally:
            monitor.close()
        (login,) = our_scheduler.events("daemon_logged_in")
        assert login["nodename"] == daemon.name
        assert login["protocol"] == 43
        assert "Connected to scheduler" in daemon.log_text()
        assert not our_scheduler.events("daemon_logged_out")
        assert not our_scheduler.events("probe_failed")  # its port accepted the probe

    def test_remote_compile_matches_real_scheduler(
        self, our_scheduler, real_scheduler: RealScheduler, real_daemon_factory, tmp_path
    ):
        """A -> B compile: byte-identical object, same MON_* events as with the real scheduler."""
        ours = _compile_scenario(our_scheduler.address, our_scheduler.port or 0,
                                 real_daemon_factory, _mkdir(tmp_path / "ours"), "o")  # fmt: skip
        assert ours.job_events == [
            ("MON_GET_CS", "A", "hello.c"),
            ("MON_JOB_BEGIN", "B"),
            ("MON_JOB_DONE", "0", "True"),
        ]
        (finished,) = our_scheduler.wait_events("job_finished", 1)
        assert finished["exitcode"] == 0
        real = _compile_scenario(real_scheduler.address, real_scheduler.port or 0,
                                 real_daemon_factory, _mkdir(tmp_path / "real"), "r",
                                 awake=real_scheduler.awake)  # fmt: skip
        assert ours.job_events == real.job_events
        assert ours.stats_keys == real.stats_keys
        assert ours.fixed_values == real.fixed_values


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


class TestDiscovery:
    def test_real_daemon_finds_us_by_broadcast(self, netns_hosts, real_daemon_factory):
        """A real iceccd without -s broadcasts, accepts our UDP reply and logs in."""
        scheduler_host, daemon_host = netns_hosts(2)
        ours = OurScheduler(host=scheduler_host, port=8765, loopback_only=False)
        ours.start()
        try:
            name = f"d{os.getpid()}"
            daemon = real_daemon_factory(name, None, host=daemon_host, netname=ours.netname)
            wait_for(lambda: ours.alive() and daemon.check_alive()
                     and any(e["nodename"] == name for e in ours.events("daemon_logged_in")),
                     40, "the daemon to find us and log in",
                     context=lambda: ours.log_tail() + "\n" + daemon.log_tail())  # fmt: skip
            (login,) = ours.events("daemon_logged_in")
            assert login["peer"] == daemon_host.ip
            assert f"Connected to scheduler (I am known as {daemon_host.ip})" in daemon.log_text()
        finally:
            assert ours.stop() == 0
