"""Tests for iceserv.service.lifecycle: reload and graceful stop against a fake service."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from structlog.testing import capture_logs

from iceserv.errors import ConfigError
from iceserv.service.lifecycle import Lifecycle


class FakeNotifier:
    """Records what the life cycle tells the manager, as (kind, argument) pairs."""

    watchdog_interval = None

    def __init__(self):
        self.sent = []

    def ready(self, status=None):
        self.sent.append(("ready", status))

    def status(self, text):
        self.sent.append(("status", text))

    def reloading(self):
        self.sent.append(("reloading", None))

    def stopping(self, status=None):
        self.sent.append(("stopping", status))

    def extend_timeout(self, seconds):
        self.sent.append(("extend", seconds))

    def watchdog(self):
        self.sent.append(("watchdog", None))

    def kinds(self):
        return [kind for kind, _ in self.sent if kind not in ("status", "extend")]


class FakeService:
    """A service with *jobs* running; each job finishes when its event is set."""

    def __init__(self, jobs=0):
        self.jobs = [asyncio.Event() for _ in range(jobs)]
        self.calls = []
        self.reload_error = None
        self.text = "idle"

    def status(self):
        return self.text

    async def reload(self):
        self.calls.append("reload")
        if self.reload_error is not None:
            raise self.reload_error
        return ["max_processes"]

    async def stop_accepting(self):
        self.calls.append("stop_accepting")

    def in_flight(self):
        return sum(not job.is_set() for job in self.jobs)

    async def wait_idle(self):
        for job in self.jobs:
            await job.wait()

    async def close(self):
        self.calls.append(f"close({self.in_flight()} left)")


async def until(predicate) -> None:
    """Let the loop run until *predicate* holds; fail after 5 s."""
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - the lifecycle runs on this loop
            await asyncio.sleep(0.001)


def _readies(notifier) -> int:
    return notifier.kinds().count("ready")


async def _start(service, notifier, **kwargs):
    lifecycle = Lifecycle(service, notifier, **kwargs)
    task = asyncio.create_task(lifecycle.run())
    await until(lambda: _readies(notifier))  # it runs: READY was sent
    return lifecycle, task


class TestReload:
    def test_reload_order(self):
        """A reload sends RELOADING, reloads, then READY with the current status."""

        async def main():
            service, notifier = FakeService(), FakeNotifier()
            lifecycle, task = await _start(service, notifier)
            service.text = "reloaded"
            lifecycle.request_reload()
            await until(lambda: _readies(notifier) == 2)
            lifecycle.request_stop()
            assert await asyncio.wait_for(task, 2) == 0
            return service, notifier

        with capture_logs() as logs:
            service, notifier = asyncio.run(main())
        assert notifier.sent[:3] == [("ready", "idle"), ("reloading", None), ("ready", "reloaded")]
        assert service.calls == ["reload", "stop_accepting", "close(0 left)"]
        (done,) = [e for e in logs if e["event"] == "config_reloaded"]
        assert done["changed"] == ["max_processes"]

    def test_invalid_config_keeps_running(self):
        """A ConfigError is one reload_failed event with path:line; READY follows; still up."""
        error = ConfigError(
            "bad", details=("/etc/conf.d/iceccd:3: ICECCD_MAX_PROCESSES='eight': not an integer",)
        )

        async def main():
            service, notifier = FakeService(), FakeNotifier()
            service.reload_error = error
            lifecycle, task = await _start(service, notifier)
            lifecycle.request_reload()
            await until(lambda: _readies(notifier) == 2)
            assert not task.done()
            lifecycle.request_stop()
            return notifier, await asyncio.wait_for(task, 2)

        with capture_logs() as logs:
            notifier, code = asyncio.run(main())
        assert code == 0
        assert notifier.kinds() == ["ready", "reloading", "ready", "stopping"]
        (failed,) = [e for e in logs if e["event"] == "reload_failed"]
        assert failed["error"] == error.details[0]
        assert failed["log_level"] == "error"

    def test_signals_coalesce(self):
        """Several SIGHUPs during one reload cause one more reload, not one each."""

        async def main():
            service, notifier = FakeService(), FakeNotifier()
            lifecycle, task = await _start(service, notifier)
            for _ in range(5):
                lifecycle.request_reload()
            await until(lambda: _readies(notifier) == 2)
            lifecycle.request_stop()
            await asyncio.wait_for(task, 2)
            return service

        assert asyncio.run(main()).calls.count("reload") == 1

    def test_status_changes_are_reported(self):
        """The status text is polled and sent when it changes."""

        async def main():
            service, notifier = FakeService(), FakeNotifier()
            lifecycle, task = await _start(service, notifier, status_interval=0.01)
            service.text = "1 host, 0/4 jobs running"
            await until(lambda: ("status", service.text) in notifier.sent)
            lifecycle.request_stop()
            await asyncio.wait_for(task, 2)
            return notifier

        assert ("status", "1 host, 0/4 jobs running") in asyncio.run(main()).sent


class TestStop:
    def test_waits_for_running_job(self):
        """SIGTERM: STOPPING, stop accepting, wait for the job, close with none left, exit 0."""

        async def main():
            service, notifier = FakeService(jobs=1), FakeNotifier()
            lifecycle, task = await _start(service, notifier, grace=5)
            lifecycle.request_stop()
            # Waiting for the job: it extends the stop time-out with the manager meanwhile.
            await until(lambda: any(kind == "extend" for kind, _ in notifier.sent))
            assert not task.done()
            assert service.calls == ["stop_accepting"]
            service.jobs[0].set()
            return service, notifier, await asyncio.wait_for(task, 2)

        service, notifier, code = asyncio.run(main())
        assert code == 0
        assert service.calls == ["stop_accepting", "close(0 left)"]
        assert notifier.sent[1] == ("stopping", "stopping, 1 jobs running")
        extends = [value for kind, value in notifier.sent if kind == "extend"]
        assert extends
        assert all(value > 5 for value in extends)

    def test_grace_period_cancels(self):
        """A job still running when the grace period ends is cancelled; exit is still 0."""

        async def main():
            service, notifier = FakeService(jobs=2), FakeNotifier()
            service.jobs[0].set()
            lifecycle, task = await _start(service, notifier, grace=0.1)
            lifecycle.request_stop()
            return service, await asyncio.wait_for(task, 2)

        with capture_logs() as logs:
            service, code = asyncio.run(main())
        assert code == 0
        assert service.calls == ["stop_accepting", "close(1 left)"]
        (cancelled,) = [e for e in logs if e["event"] == "jobs_cancelled"]
        assert (cancelled["count"], cancelled["reason"]) == (1, "grace period over")

    def test_second_signal_cancels_at_once(self):
        """A second SIGTERM during the grace period stops waiting."""

        async def main():
            service, notifier = FakeService(jobs=1), FakeNotifier()
            lifecycle, task = await _start(service, notifier, grace=60)
            lifecycle.request_stop()
            await until(lambda: "stop_accepting" in service.calls)  # waiting for the job now
            lifecycle.request_stop()
            return service, await asyncio.wait_for(task, 2)

        with capture_logs() as logs:
            service, code = asyncio.run(main())
        assert code == 0
        assert service.calls[-1] == "close(1 left)"
        assert [e["reason"] for e in logs if e["event"] == "jobs_cancelled"] == ["second signal"]

    def test_reload_ignored_while_stopping(self):
        """A SIGHUP after SIGTERM does not reload a stopping service."""

        async def main():
            service, notifier = FakeService(jobs=1), FakeNotifier()
            lifecycle, task = await _start(service, notifier, grace=1)
            lifecycle.request_stop()
            await until(lambda: "stop_accepting" in service.calls)
            lifecycle.request_reload()
            service.jobs[0].set()
            await asyncio.wait_for(task, 2)
            return service

        assert "reload" not in asyncio.run(main()).calls


class TestSignals:
    @pytest.mark.parametrize(("signum", "call"), [(signal.SIGHUP, "reload"),
                                                   (signal.SIGTERM, "stop_accepting"),
                                                   (signal.SIGINT, "stop_accepting")])  # fmt: skip
    def test_real_signals(self, signum, call):
        """The installed handlers route real signals to reload and stop."""

        async def main():
            service, notifier = FakeService(), FakeNotifier()
            lifecycle = Lifecycle(service, notifier)
            loop = asyncio.get_running_loop()
            lifecycle.install_signal_handlers(loop)
            try:
                task = asyncio.create_task(lifecycle.run())
                await until(lambda: _readies(notifier))
                os.kill(os.getpid(), signum)
                await until(lambda: call in service.calls)
                lifecycle.request_stop()
                await asyncio.wait_for(task, 2)
            finally:
                lifecycle.remove_signal_handlers(loop)
            return service

        assert call in asyncio.run(main()).calls
