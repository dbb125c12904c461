"""SchedulerInterface over a fake facade, exported on a private bus, called with dbus-fast.

These check what busctl cannot show well: D-Bus error names, argument
checks, the exact signal bodies for odd values, coalescing on a real bus,
and the package's import boundary.  The fake is a real object satisfying
``SchedulerFacade`` (mypy checks the real scheduler against it in ``app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import structlog.testing
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from hypothesis import given, settings
from hypothesis import strategies as st

from iceserv.service.dbus import (
    SCHEDULER_INTERFACE,
    SCHEDULER_PATH,
    SchedulerInterface,
    export_on_bus,
)
from iceserv.service.dbus import scheduler as dbus_scheduler

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

N = SCHEDULER_INTERFACE
P = SCHEDULER_PATH


@dataclass(frozen=True)
class FakeJob:
    id: int
    state: str
    submitter: str
    server: str
    filename: str
    queued_at: float | None = None
    started_at: float | None = None


@dataclass
class FakeScheduler:
    """A SchedulerFacade whose answers the test sets."""

    hosts: int = 0
    observers: list[Any] = field(default_factory=list)
    block_list: list[str] = field(default_factory=list)
    jobs: list[FakeJob] | None = None
    on_list_jobs: Callable[[], None] | None = None

    def started_at(self) -> float:
        return 1_700_000_000.5

    def uptime_seconds(self) -> int:
        return 7

    def netname(self) -> str:
        return "TESTNET"

    def host_count(self) -> int:
        return self.hosts

    def jobs_running(self) -> int:
        return 0

    def jobs_queued(self) -> int:
        return 0

    def total_jobs(self) -> int:
        return 0

    def list_hosts(self) -> list[Any]:
        return []

    def list_jobs(self) -> list[FakeJob]:
        if self.on_list_jobs is not None:
            self.on_list_jobs()
        if self.jobs is not None:
            return self.jobs
        return [FakeJob(3, "PEND", "laptop", "<unknown>", "a.c", 1.5, None)]

    def blocked(self) -> list[str]:
        return self.block_list

    def drained(self) -> list[str]:
        return []

    def remove_hosts(self, names: list[str], /) -> list[str]:
        return [name for name in names if name == "known"]

    def block_hosts(self, names: list[str], /) -> list[str]:
        self.block_list += names
        return []

    def unblock_hosts(self, _names: list[str], /) -> None:
        return None

    def drain_hosts(self, _names: list[str], /) -> list[str]:
        return []

    def resume_hosts(self, _names: list[str], /) -> None:
        return None

    def add_observer(self, observer: Any, /) -> None:
        self.observers.append(observer)

    def remove_observer(self, observer: Any, /) -> None:
        self.observers.remove(observer)


@pytest.fixture(scope="module")
def bus_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A private session-type bus that allows everything (services.md §5.4): address, pid."""
    exe = shutil.which("dbus-daemon") or pytest.fail("dbus-daemon missing: run ./bin/setup")
    directory: Path = tmp_path_factory.mktemp("bus")
    conf = directory / "bus.conf"
    conf.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        f"<busconfig><type>session</type><listen>unix:dir={directory}</listen>"
        '<auth>EXTERNAL</auth><policy context="default"><allow send_destination="*"/>'
        '<allow eavesdrop="true"/><allow own="*"/></policy></busconfig>'
    )
    proc = subprocess.Popen([exe, f"--config-file={conf}", "--nofork", "--nopidfile",
                             "--print-address=1"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip(), proc.pid
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def session_bus(bus_daemon: tuple[str, int]) -> str:
    """The private bus's address."""
    return bus_daemon[0]


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 20))


@contextlib.asynccontextmanager
async def exported(
    address: str, fake: FakeScheduler, interval: float = 0.2
) -> AsyncIterator[tuple[SchedulerInterface, Any, MessageBus]]:
    """The interface over *fake* on the bus at *address*, attached, and a client of it."""
    interface = SchedulerInterface(fake, version="9.9", interval=interval)
    export = await export_on_bus(address, N, P, interface)
    assert export is not None
    interface.attach()
    client = await MessageBus(bus_address=address).connect()
    try:
        yield interface, export, client
    finally:
        interface.detach()
        client.disconnect()
        await export.close()


async def invoke(client: MessageBus, member: str, signature: str = "", *body: Any) -> Message:
    reply = await client.call(Message(destination=N, path=P, interface=N, member=member,
                                      signature=signature, body=list(body)))  # fmt: skip
    assert reply is not None
    return reply


class TestMethods:
    def test_error_names_and_argument_checks(self, session_bus):
        """RemoveHost of an unknown host and empty or over-long names are typed errors."""

        async def scenario():
            async with exported(session_bus, FakeScheduler()) as (_, _, client):
                unknown = await invoke(client, "RemoveHost", "s", "nobody-here")
                ok = await invoke(client, "RemoveHost", "s", "known")
                empty = await invoke(client, "BlockHost", "s", "")
                long = await invoke(client, "DrainHost", "s", "x" * 256)
                return unknown, ok, empty, long

        unknown, ok, empty, long = run(scenario)
        assert (unknown.message_type, unknown.error_name) == (
            MessageType.ERROR, f"{N}.Error.UnknownHost")  # fmt: skip
        assert ok.message_type is MessageType.METHOD_RETURN
        for reply in (empty, long):
            assert reply.error_name == "org.freedesktop.DBus.Error.InvalidArgs"

    def test_lists_and_constant_properties(self, session_bus):
        """ListJobs maps states and times; StartTime is microseconds; Version as given."""

        async def scenario():
            async with exported(session_bus, FakeScheduler()) as (_, _, client):
                jobs = await invoke(client, "ListJobs")
                props = await client.call(Message(
                    destination=N, path=P, interface="org.freedesktop.DBus.Properties",
                    member="GetAll", signature="s", body=[N]))  # fmt: skip
                return jobs, props

        jobs, props = run(scenario)
        assert [list(row) for row in jobs.body[0]] == [
            [3, "laptop", "", "a.c", "queued", 1_500_000, 0]
        ]
        values = {name: variant.value for name, variant in props.body[0].items()}
        assert values["StartTime"] == 1_700_000_000_500_000
        assert (values["Version"], values["NetName"], values["Uptime"]) == ("9.9", "TESTNET", 7)


class TestSignals:
    def test_observer_calls_become_signals_and_changes_are_coalesced(self, session_bus):
        """Observer calls emit signals at once; 50 host-count changes are one PropertiesChanged."""

        async def scenario():
            fake = FakeScheduler()
            async with exported(session_bus, fake, interval=0.3) as (_, _, client):
                seen: list[Message] = []
                # Our object's signals only: the bus's own NameAcquired for this client may
                # arrive after the handler is added.
                client.add_message_handler(
                    lambda m: (
                        seen.append(m)
                        if m.message_type is MessageType.SIGNAL and m.path == P
                        else None
                    )
                )
                await client.call(Message(
                    destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                    body=[f"type='signal',path='{P}'"]))  # fmt: skip
                (observer,) = fake.observers
                observer.host_joined("farm1", "10.0.0.1")
                observer.job_started(FakeJob(4, "COMP", "laptop", "farm1", "b.c"))
                observer.job_finished(FakeJob(4, "COMP", "laptop", "<unknown>", "b.c"), -1)
                for count in range(1, 51):
                    fake.hosts = count
                    observer.cluster_changed()
                observer.host_left("farm1", "10.0.0.1")
                members = {"HostLeft", "PropertiesChanged"}  # the last signal of each kind
                async with asyncio.timeout(10):
                    while not members <= {m.member for m in seen}:  # noqa: ASYNC110 - bus signals
                        await asyncio.sleep(0.01)
            return fake, seen

        fake, seen = run(scenario)
        assert fake.observers == []  # detached
        bodies = [(m.member, m.body) for m in seen]
        assert bodies[:3] == [
            ("HostJoined", ["farm1", "10.0.0.1"]),
            ("JobStarted", [4, "laptop", "farm1", "b.c"]),
            ("JobFinished", [4, "laptop", "", "b.c", -1]),
        ]
        changes = [m.body for m in seen if m.member == "PropertiesChanged"]
        assert len(changes) == 1
        assert {k: v.value for k, v in changes[0][1].items()} == {"HostCount": 50}
        assert ("HostLeft", ["farm1", "10.0.0.1"]) in bodies

    def test_no_bus_is_none_and_one_warning(self):
        """export_on_bus returns None, with one dbus_unavailable warning, when nobody listens."""

        async def scenario():
            interface = SchedulerInterface(FakeScheduler(), version="9.9")
            return await export_on_bus("unix:path=/nonexistent/bus", N, P, interface)

        with structlog.testing.capture_logs() as logs:
            assert run(scenario) is None
        (line,) = [entry for entry in logs if entry["event"].startswith("dbus")]
        assert (line["event"], line["log_level"]) == ("dbus_unavailable", "warning")


class TestPackage:
    def test_does_not_import_scheduler_or_daemon_and_service_does_not_load_dbus(self):
        """service.dbus imports neither scheduler nor daemon; iceserv.service loads no dbus_fast."""
        code = (
            "import sys, iceserv.service\n"
            "print('dbus_fast' in sys.modules)\n"
            "import iceserv.service.dbus\n"
            "print([m for m in sys.modules if m.startswith(('iceserv.scheduler',"
            " 'iceserv.daemon', 'iceserv.app', 'iceserv.config', 'iceserv.telnet'))])\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, check=True)  # fmt: skip
        assert proc.stdout.split("\n")[:2] == ["False", "[]"]


class _SentReplies:
    """Stands for the bus in ``answer_directly``: keeps the reply sent, with a serial."""

    sent: Message

    def send(self, message: Message) -> None:
        message.serial = 3
        self.sent = message


class TestLongLists:
    """Issue 19 item 4: ListJobs at tens of thousands of jobs."""

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(("keep", "change", "drop", "add")),
                              st.integers(0, 50)), max_size=40))  # fmt: skip
    def test_list_jobs_equals_fresh_structs_after_random_changes(self, steps):
        """ListJobs reuses the struct (and the marshalled record) of a job whose view is the
        same object; after any sequence of kept, changed, dropped and added jobs it equals a
        fresh conversion, and the reply built from the records is dbus-fast's, byte for byte
        (the table of records pruned at every call here)."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(dbus_scheduler, "_SLACK", 0)
            self._random_changes(steps)

    def _random_changes(self, steps: list[tuple[str, int]]) -> None:
        fake = FakeScheduler(jobs=[])
        interface = SchedulerInterface(fake, version="9.9")
        bus = _SentReplies()
        call = Message(destination=N, path=P, interface=N, member="ListJobs", serial=7,
                       sender=":1.9")  # fmt: skip

        def dbus_fast_reply(jobs: list[tuple[Any, ...]]) -> bytes:
            reply = Message.new_method_return(call, "a(usssstt)", [jobs])
            reply.serial = bus.sent.serial
            return bytes(reply._marshall(negotiate_unix_fd=False))

        jobs: dict[int, FakeJob] = {}
        states = ("PEND", "WAIT", "COMP")
        for kind, key in steps:
            if kind == "add" or (kind == "change" and key not in jobs):
                jobs[key] = FakeJob(key, "PEND", "sub", "<unknown>", f"f{key}.c", 1.0 + key)
            elif kind == "change":
                old = jobs[key]
                jobs[key] = FakeJob(key, states[(states.index(old.state) + 1) % 3], "sub",
                                    f"cs{key}", old.filename, old.queued_at, 2.0 + key)  # fmt: skip
            elif kind == "drop":
                jobs.pop(key, None)
            fake.jobs = [jobs[k] for k in sorted(jobs)]
            expected = [(j.id, j.submitter, "" if j.server == "<unknown>" else j.server,
                         j.filename, {"PEND": "queued", "WAIT": "assigned",
                                      "COMP": "compiling"}[j.state],
                         round(j.queued_at * 1e6) if j.queued_at else 0,
                         round(j.started_at * 1e6) if j.started_at else 0)
                        for j in fake.jobs]  # fmt: skip
            assert SchedulerInterface.list_jobs.__wrapped__(interface) == expected
            assert interface.answer_directly(bus, P, call)
            assert bytes(bus.sent._marshall(negotiate_unix_fd=False)) == dbus_fast_reply(expected)

    def test_list_jobs_on_the_bus_is_answered_from_kept_records(self, bus_daemon):
        """Over a real bus ListJobs is answered with the records kept per job view (not
        dbus-fast's marshalling); after jobs change, are dropped and added, the caller
        (dbus-fast unmarshalling) still gets exactly the fresh structs."""
        address, _ = bus_daemon
        fake = FakeScheduler(jobs=[FakeJob(i, "PEND", "sub", "<unknown>", f"dir/f{i}.c", 1.5 + i)
                                   for i in range(1, 200)])  # fmt: skip

        async def scenario():
            async with exported(address, fake) as (interface, _, client):
                first = await invoke(client, "ListJobs")
                jobs = [j for j in fake.jobs if j.id % 7] + [FakeJob(500, "COMP", "sübmitter",
                        "cs", "ä/" * 9 + "x.c", 3.0, 4.25)]  # fmt: skip
                jobs[3] = FakeJob(jobs[3].id, "WAIT", "sub", "cs3", "x.c", 1.0, 2.0)
                fake.jobs = jobs
                second = await invoke(client, "ListJobs")
                fresh = SchedulerInterface.list_jobs.__wrapped__(interface)
                kept = set(interface._job_records)
                return first, second, fresh, kept

        first, second, fresh, kept = run(scenario)
        assert first.message_type is MessageType.METHOD_RETURN
        assert len(first.body[0]) == 199
        assert second.signature == "a(usssstt)"
        assert [tuple(job) for job in second.body[0]] == fresh
        assert kept >= {job[0] for job in fresh}

    def test_reply_larger_than_the_socket_buffer_while_signalling_keeps_the_name(self, bus_daemon):
        """A 13 MB ListJobs reply that the bus cannot take at once (more than the 8 MiB send
        buffer), followed at once by a signal: the bus connection stays (dbus-fast alone
        would close it on the BlockingIOError of the full socket, and the name would be gone)."""
        address, pid = bus_daemon
        jobs = [FakeJob(i, "PEND", "submitter", "<unknown>", f"src/{i:06d}/" + "x" * 400 + ".c")
                for i in range(1, 30_001)]  # fmt: skip
        fake = FakeScheduler(jobs=jobs)

        async def scenario():
            async with exported(address, fake) as (interface, export, client):
                loop = asyncio.get_running_loop()

                def stall_bus() -> None:
                    # The bus reads nothing until SIGCONT: the reply fills our socket buffer,
                    # and the signal below is sent while the reply is still half written.
                    fake.on_list_jobs = None
                    os.kill(pid, signal.SIGSTOP)
                    loop.call_soon(interface.job_started, jobs[0])
                    loop.call_later(0.3, os.kill, pid, signal.SIGCONT)

                fake.on_list_jobs = stall_bus
                try:
                    with structlog.testing.capture_logs() as logs:
                        reply = await invoke(client, "ListJobs")
                        owner = await client.call(Message(
                            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                            interface="org.freedesktop.DBus", member="NameHasOwner",
                            signature="s", body=[N]))  # fmt: skip
                    return reply, owner, export.bus.connected, logs
                finally:
                    os.kill(pid, signal.SIGCONT)

        reply, owner, connected, logs = run(scenario)
        assert reply.message_type is MessageType.METHOD_RETURN
        assert len(reply.body[0]) == 30_000
        assert owner is not None
        assert owner.body == [True]
        assert connected
        assert not [log for log in logs if log["event"] == "dbus_disconnected"]
