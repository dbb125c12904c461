"""Tests for iceserv.service.notify: exact datagrams, their order, the watchdog, the environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from notifybed import FakeManager

from iceserv.service.notify import (
    MANAGER_VARIABLES,
    ServiceNotifier,
    child_environment,
    run_watchdog,
    scrub_environment,
)


@pytest.fixture
def manager(tmp_path):
    """A fake manager bound at a path; NOTIFY_SOCKET is its path."""
    path = tmp_path / "notify.sock"
    fake = FakeManager(str(path), str(path))
    yield fake
    fake.close()


@pytest.fixture
def abstract_manager():
    """A fake manager on an abstract socket; NOTIFY_SOCKET is ``@name``."""
    name = f"iceserv-test-{os.getpid()}-{time.monotonic_ns()}"
    fake = FakeManager("@" + name, b"\0" + name.encode())
    yield fake
    fake.close()


def _notifier(monkeypatch, manager, **extra):
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    return ServiceNotifier.from_environ(os.environ, debug=True)


class TestMessages:
    def test_life_cycle_datagrams_in_order(self, monkeypatch, manager):
        """Start, status, reload, stop: one datagram each, exactly these bytes, in this order."""
        clock = iter([5_000_123_456, 6_000_000_999])
        notifier = _notifier(monkeypatch, manager)
        notifier._monotonic_ns = lambda: next(clock)
        notifier.ready("0 hosts, 0/0 jobs running")
        notifier.status("1 host, 0/4 jobs running")
        notifier.status("1 host, 0/4 jobs running")  # unchanged: not sent again
        notifier.reloading()
        notifier.ready("1 host, 1/4 jobs running")
        notifier.stopping("stopping, 1 jobs running")
        notifier.extend_timeout(15)
        notifier.reloading()
        assert manager.messages(0.2) == [
            "READY=1\nSTATUS=0 hosts, 0/0 jobs running",
            "STATUS=1 host, 0/4 jobs running",
            "RELOADING=1\nMONOTONIC_USEC=5000123",
            "READY=1\nSTATUS=1 host, 1/4 jobs running",
            "STOPPING=1\nSTATUS=stopping, 1 jobs running",
            "EXTEND_TIMEOUT_USEC=15000000",
            "RELOADING=1\nMONOTONIC_USEC=6000000",
        ]

    def test_sender_is_our_pid(self, monkeypatch, manager):
        """Datagrams carry our PID in SCM_CREDENTIALS (what NotifyAccess=main checks)."""
        _notifier(monkeypatch, manager).ready()
        assert manager.receive() == (os.getpid(), "READY=1")

    def test_abstract_socket(self, monkeypatch, abstract_manager):
        """NOTIFY_SOCKET=@name reaches an abstract socket."""
        _notifier(monkeypatch, abstract_manager).stopping()
        assert abstract_manager.receive()[1] == "STOPPING=1"

    def test_real_monotonic_clock(self, monkeypatch, manager):
        """MONOTONIC_USEC is CLOCK_MONOTONIC in microseconds, taken when reloading."""
        notifier = _notifier(monkeypatch, manager)
        before = time_us()
        notifier.reloading()
        after = time_us()
        first, second = manager.receive()[1].split("\n")
        assert first == "RELOADING=1"
        assert before <= int(second.removeprefix("MONOTONIC_USEC=")) <= after

    def test_status_is_one_line(self, monkeypatch, manager):
        """A newline in a status text cannot start a second assignment."""
        _notifier(monkeypatch, manager).status("a\nREADY=1")
        assert manager.receive()[1] == "STATUS=a READY=1"

    def test_no_socket_is_silent(self, monkeypatch):
        """Without NOTIFY_SOCKET every call is a no-op."""
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        notifier = ServiceNotifier.from_environ(os.environ, debug=True)
        notifier.ready("x")
        notifier.watchdog()
        assert notifier.enabled is False
        assert notifier.watchdog_interval is None

    def test_vsock_is_treated_as_absent(self, monkeypatch):
        """A NOTIFY_SOCKET sdnotify cannot reach (vsock:) disables notification."""
        monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
        assert ServiceNotifier.from_environ(os.environ, debug=True).enabled is False

    def test_gone_manager_is_ignored(self, monkeypatch, tmp_path):
        """A manager socket that disappears does not make the service fail (debug off)."""

        path = tmp_path / "gone.sock"
        fake = FakeManager(str(path), str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notifier = ServiceNotifier.from_environ(os.environ)
        fake.close()
        path.unlink()
        notifier.ready("still fine")


def time_us():
    return time.monotonic_ns() // 1000


class TestWatchdog:
    @pytest.mark.parametrize(
        ("pid_value", "armed"), [(None, True), ("self", True), ("1", False), ("junk", False)]
    )
    def test_armed_only_for_our_pid(self, monkeypatch, manager, pid_value, armed):
        """WATCHDOG_USEC counts only when WATCHDOG_PID is unset or our PID."""
        extra = {"WATCHDOG_USEC": "3000000"}
        if pid_value is not None:
            extra["WATCHDOG_PID"] = str(os.getpid()) if pid_value == "self" else pid_value
        notifier = _notifier(monkeypatch, manager, **extra)
        assert notifier.watchdog_interval == (1.5 if armed else None)

    def test_pings_every_half_period(self, monkeypatch, manager):
        """run_watchdog sends WATCHDOG=1 at once and then every WATCHDOG_USEC / 2."""
        notifier = _notifier(monkeypatch, manager, WATCHDOG_USEC="200000")

        def five() -> list[tuple[float, str]]:
            received = []
            for _ in range(5):
                text = manager.receive(5.0)[1]
                received.append((time.monotonic(), text))
            return received

        started = time.monotonic()

        async def main():
            task = asyncio.create_task(run_watchdog(notifier))
            try:
                return await asyncio.get_running_loop().run_in_executor(None, five)
            finally:
                task.cancel()

        received = asyncio.run(main())
        assert [text for _, text in received] == ["WATCHDOG=1"] * 5
        # At once, then one every 0.1 s and never faster: the fifth is due 0.4 s after the start.
        assert received[-1][0] - started >= 0.39, [t - started for t, _ in received]

    def test_unarmed_returns(self, monkeypatch, manager):
        """Without WATCHDOG_USEC the watchdog task ends at once and sends nothing."""
        notifier = _notifier(monkeypatch, manager)
        asyncio.run(asyncio.wait_for(run_watchdog(notifier), 1))
        assert manager.messages(0.1) == []


class TestEnvironment:
    def test_from_environ_removes_manager_variables(self, monkeypatch, manager):
        """After reading them, the notifier removes NOTIFY_SOCKET, WATCHDOG_* and LISTEN_*."""
        for name in MANAGER_VARIABLES:
            monkeypatch.setenv(name, manager.address if name == "NOTIFY_SOCKET" else "1")
        notifier = ServiceNotifier.from_environ(os.environ, debug=True)
        assert not set(MANAGER_VARIABLES) & set(os.environ)
        notifier.ready()  # still reaches the manager: it was read before removal
        assert manager.receive()[1] == "READY=1"

    def test_child_environment(self):
        """Compilers get everything but the manager's variables."""
        environ = {"PATH": "/usr/bin", "NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1",
                   "WATCHDOG_PID": "1", "LISTEN_FDS": "2", "LISTEN_PID": "1",
                   "LISTEN_FDNAMES": "a", "ICECC_VERSION": "x.tar.gz"}  # fmt: skip
        assert child_environment(environ) == {"PATH": "/usr/bin", "ICECC_VERSION": "x.tar.gz"}
        assert "NOTIFY_SOCKET" in environ  # the original is untouched

    def test_scrub_in_place(self):
        """scrub_environment removes the variables from the mapping itself."""
        environ = {"A": "1", "LISTEN_FDS": "3", "WATCHDOG_USEC": "9"}
        scrub_environment(environ)
        assert environ == {"A": "1"}

    def test_spawned_process_does_not_inherit(self, monkeypatch, manager):
        """A process spawned after start-up sees none of the manager's variables."""
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")
        _notifier(monkeypatch, manager, LISTEN_FDS="1")
        code = (
            "import os; print(sorted(k for k in os.environ "
            "if k.startswith(('NOTIFY', 'WATCHDOG', 'LISTEN'))))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        assert out.strip() == "[]"
