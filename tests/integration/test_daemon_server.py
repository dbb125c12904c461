"""Our daemon in-process against a scripted scheduler and scripted clients (sockets on 127.0.0.1).

Covers the local-client side of 1.4's daemon that the live tests only pass
through on the happy path: GET_CS forwarding with client id and count,
USE_CS/NO_CS routing (another host, ourselves, no scheduler), JOB_DONE from
the submitter for abandoned requests, local jobs and their slot order,
compile-yourself accounting, BLACKLIST_HOST_ENV, GET_INTERNALS, LOGIN
contents, probes, and losing the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from typing import TYPE_CHECKING, Any

import pytest
from daemon.fakes import build_fake_env
from structlog.testing import capture_logs

from iceserv.daemon import Daemon, RunAs, ServerSettings
from iceserv.daemon.jobstarter import JobStarter
from iceserv.daemon.states import State
from iceserv.protocol import (
    NEED_DATA,
    BlacklistHostEnv,
    CompileFile,
    CompileResult,
    ConfCS,
    Connection,
    ConnectionClosed,
    End,
    EnvTransfer,
    FileChunk,
    GetCS,
    GetInternalStatus,
    Handshake,
    JobBegin,
    JobDone,
    JobDoneFlag,
    JobLocalBegin,
    JobLocalDone,
    Login,
    Message,
    NoCS,
    Stats,
    StatusText,
    UseCS,
    VerifyEnv,
    VerifyEnvResult,
)
from iceserv.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

WAIT = 10.0


class Peer:
    """One end of a binary channel in the test (a client, or the scheduler's side)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = Connection()
        self.writer.write(self.conn.data_to_send())

    async def receive(self) -> Message | None:
        """The next message (None when the other side closed); the handshake is skipped."""
        async with asyncio.timeout(WAIT):
            while True:
                event = self.conn.next_event()
                self.writer.write(self.conn.data_to_send())
                if isinstance(event, ConnectionClosed):
                    return None
                if event is NEED_DATA:
                    self.conn.receive_data(await self.reader.read(65536))
                elif not isinstance(event, Handshake):
                    return event

    async def expect(self, kind: type) -> Any:
        """Receive (skipping STATS unless that is wanted) and check the type."""
        while True:
            msg = await self.receive()
            if kind is Stats or not isinstance(msg, Stats):
                assert isinstance(msg, kind), msg
                return msg

    async def send(self, *messages: Message) -> None:
        while self.conn.state.name != "OPEN":
            event = self.conn.next_event()
            self.writer.write(self.conn.data_to_send())
            if event is NEED_DATA:
                async with asyncio.timeout(WAIT):
                    self.conn.receive_data(await self.reader.read(65536))
        for msg in messages:
            self.conn.send(msg)
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class FakeScheduler:
    """A TCP listener on 127.0.0.1 that hands out the daemon's connections."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[Peer] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.connections.put(Peer(reader, writer))

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def daemon(self) -> tuple[Peer, Login]:
        """Wait for the daemon's connection and its LOGIN; answer with CS_CONF."""
        async with asyncio.timeout(WAIT):
            peer = await self.connections.get()
        login = await peer.expect(Login)
        await peer.send(ConfCS())
        return peer, login


def _settings(tmp_path: Path, **changes: Any) -> ServerSettings:
    proc = tmp_path / "proc"  # a machine that is idle whatever else runs here
    proc.mkdir(exist_ok=True)
    (proc / "stat").write_text("cpu  0 0 0 1000 0 0 0 0\n")
    (proc / "meminfo").write_text("MemTotal: 8000000 kB\nMemFree: 7000000 kB\n")
    options: dict[str, Any] = {
        "proc_dir": proc,
        "unix_socket": tmp_path / "iceccd.socket", "env_basedir": tmp_path / "envs",
        "listen_addresses": ("127.0.0.1",), "port": 0, "nodename": "testnode", "max_kids": 1,
        "fast_reconnect": True,
    }  # fmt: skip
    options.update(changes)
    return ServerSettings(**options)


def run(tmp_path: Path, scenario: Callable[..., Awaitable[None]], *, scheduler: bool = True,
        fake_env: tuple[Path, RunAs] | None = None, **changes: Any) -> None:  # fmt: skip
    """Start a fake scheduler (optional) and our daemon, run *scenario*, stop everything.

    With *fake_env* the daemon runs jobs as its user and has it installed as
    ``x86_64/fake``.
    """

    async def main() -> None:
        fake = FakeScheduler()
        await fake.start()
        if scheduler:
            changes.setdefault("scheduler", ("127.0.0.1", fake.port))
        settings = _settings(tmp_path, **changes)
        run_as = RunAs("me", os.getuid(), os.getgid(), switch=False)
        if fake_env is not None:
            run_as = fake_env[1]
        starter = JobStarter()
        daemon = Daemon(settings, run_as=run_as, clock=FakeClock(), starter=starter)
        await daemon.start()
        if fake_env is not None:
            staging = daemon.cache.new_staging()
            shutil.copytree(fake_env[0], staging, symlinks=True, dirs_exist_ok=True)
            daemon.cache.commit("x86_64/fake", daemon.cache.env_dir("x86_64", "fake"), staging)
        try:
            await scenario(daemon, fake, settings)
        finally:
            await daemon.stop()
            starter.stop()
            assert fake.server is not None
            fake.server.close()

    asyncio.run(asyncio.wait_for(main(), 60))


async def client(settings: ServerSettings) -> Peer:
    reader, writer = await asyncio.open_unix_connection(str(settings.unix_socket))
    return Peer(reader, writer)


GET_CS = GetCS(filename="src/a.c", target="x86_64", minimal_host_version=21)


class TestLogin:
    def test_login_contents_and_internals(self, tmp_path):
        """LOGIN carries port, slots, node, platform, chroot and features; internals answered."""

        async def scenario(daemon: Daemon, fake: FakeScheduler, _: ServerSettings) -> None:
            peer, login = await fake.daemon()
            assert login.port == daemon.port > 0
            assert (login.max_kids, login.nodename, login.supported_features) == (3, "testnode", 3)
            assert login.chroot_possible is True
            assert login.noremote is False
            await peer.expect(Stats)
            await peer.send(GetInternalStatus())
            text = await peer.expect(StatusText)
            assert "Node Name: testnode" in text.text

        run(tmp_path, scenario, max_kids=3)

    def test_no_remote_announces_port_zero(self, tmp_path):
        """Without a TCP listener LOGIN says port 0 and noremote."""

        async def scenario(_: Daemon, fake: FakeScheduler, __: ServerSettings) -> None:
            _, login = await fake.daemon()
            assert (login.port, login.noremote) == (0, True)

        run(tmp_path, scenario, listen_addresses=())


class TestGetCS:
    def test_forwarded_and_answer_passed_back(self, tmp_path):
        """GET_CS goes on with our client id and count; USE_CS for another host comes back."""

        async def scenario(_: Daemon, fake: FakeScheduler, settings: ServerSettings) -> None:
            sched, _ = await fake.daemon()
            first = await client(settings)
            await first.send(GET_CS)
            forwarded = await sched.expect(GetCS)
            assert (forwarded.client_id, forwarded.client_count) == (1, 1)
            assert forwarded.filename == "src/a.c"
            use = UseCS(job_id=5, port=4242, hostname="10.0.0.9", host_platform="x86_64",
                        client_id=1, matched_job_id=3)  # fmt: skip
            await sched.send(use)
            assert await first.expect(UseCS) == use
            await first.send(End())  # good bye: nothing more for the scheduler
            await sched.send(GetInternalStatus())
            await sched.expect(StatusText)

        run(tmp_path, scenario)

    def test_no_scheduler_means_compile_yourself(self, tmp_path):
        """Without a scheduler connection the client is told to use 127.0.0.1 at once."""

        async def scenario(_: Daemon, __: FakeScheduler, settings: ServerSettings) -> None:
            peer = await client(settings)
            await peer.send(GET_CS)
            use = await peer.expect(UseCS)
            assert (use.hostname, use.job_id, use.host_platform, use.got_env) == (
                "127.0.0.1", 1, "x86_64", True)  # fmt: skip

        run(tmp_path, scenario, scheduler=False)

    def test_no_cs_and_use_cs_to_ourselves(self, tmp_path):
        """NO_CS, and USE_CS naming our own address and port, become USE_CS 127.0.0.1."""

        async def scenario(daemon: Daemon, fake: FakeScheduler, settings: ServerSettings) -> None:
            sched, login = await fake.daemon()
            a, b = await client(settings), await client(settings)
            await a.send(GET_CS)
            await b.send(GET_CS)
            await sched.expect(GetCS)
            await sched.expect(GetCS)
            await sched.send(NoCS(job_id=7, client_id=1))
            use = await a.expect(UseCS)
            assert (use.hostname, use.port, use.job_id, use.client_id) == (
                "127.0.0.1", login.port, 7, 1)  # fmt: skip
            await sched.send(UseCS(job_id=8, port=login.port, hostname=daemon.own_ip,
                                   host_platform="x86_64", client_id=2))  # fmt: skip
            # One slot (max_kids 1): b waits until a reports its job done.
            await a.send(CompileFile(job_id=7, environment="__client"))
            assert (await sched.expect(JobBegin)).job_id == 7
            await a.send(JobDone(job_id=7, real_msec=10, out_uncompressed=99,
                                 flags=JobDoneFlag.FROM_SUBMITTER))  # fmt: skip
            done = await sched.expect(JobDone)
            assert (done.job_id, done.out_uncompressed, done.client_count) == (7, 99, 2)
            use_b = await b.expect(UseCS)
            assert (use_b.hostname, use_b.job_id) == ("127.0.0.1", 8)

        run(tmp_path, scenario)


class TestAbandoned:
    def test_answers_for_clients_that_left(self, tmp_path):
        """Clients leaving in each waiting state are reported as 1.4 does."""

        async def scenario(_: Daemon, fake: FakeScheduler, settings: ServerSettings) -> None:
            sched, _ = await fake.daemon()
            waiting = await client(settings)
            await waiting.send(GET_CS)
            await sched.expect(GetCS)
            waiting.close()  # before any answer: the scheduler only knows the client id
            done = await sched.expect(JobDone)
            assert (done.job_id, done.exitcode) == (1, 118)
            assert done.flags == JobDoneFlag.FROM_SUBMITTER | JobDoneFlag.UNKNOWN_JOB_ID
            await sched.send(UseCS(job_id=11, hostname="10.0.0.9", port=1, client_id=1))
            late = await sched.expect(JobDone)  # nobody wants it any more
            assert (late.job_id, late.exitcode, late.flags) == (11, 107, JobDoneFlag.FROM_SUBMITTER)
            remote = await client(settings)
            await remote.send(GET_CS)
            await sched.expect(GetCS)
            await sched.send(UseCS(job_id=12, hostname="10.0.0.9", port=1, client_id=2))
            await remote.expect(UseCS)
            remote.close()  # compiled elsewhere but vanished without END
            gone = await sched.expect(JobDone)
            assert (gone.job_id, gone.exitcode, gone.flags) == (12, 118, JobDoneFlag.FROM_SUBMITTER)

        run(tmp_path, scenario)


class TestLocalJobs:
    def test_link_jobs_take_turns_and_report(self, tmp_path):
        """JOB_LOCAL_BEGIN: go signal when a slot is free, JOB_LOCAL_DONE when the client goes."""

        async def scenario(_: Daemon, fake: FakeScheduler, settings: ServerSettings) -> None:
            sched, _ = await fake.daemon()
            a, b = await client(settings), await client(settings)
            await a.send(JobLocalBegin(stime=1, outfile="/p/a.out"))
            assert await a.expect(JobLocalBegin) == JobLocalBegin()
            begin = await sched.expect(JobLocalBegin)
            assert (begin.outfile, begin.id) == ("/p/a.out", 1)
            await b.send(JobLocalBegin(stime=1, outfile="/p/b.out"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    await b.receive()
                    raise AssertionError("b got a slot while a holds the only one")  # noqa: EM101
            a.close()
            assert await sched.expect(JobLocalDone) == JobLocalDone(job_id=1)
            assert await b.expect(JobLocalBegin) == JobLocalBegin()
            await sched.expect(JobLocalBegin)

        run(tmp_path, scenario)

    def test_blacklist_forwarded(self, tmp_path):
        """BLACKLIST_HOST_ENV goes to the scheduler unchanged."""

        async def scenario(_: Daemon, fake: FakeScheduler, settings: ServerSettings) -> None:
            sched, _ = await fake.daemon()
            peer = await client(settings)
            msg = BlacklistHostEnv("env", "x86_64", "10.0.0.9")
            await peer.send(msg)
            assert await sched.expect(BlacklistHostEnv) == msg

        run(tmp_path, scenario)


class TestSchedulerLoss:
    def test_clients_dropped_and_login_again(self, tmp_path):
        """Losing the scheduler drops waiting clients; the daemon logs in again (3 s)."""

        async def scenario(daemon: Daemon, fake: FakeScheduler, settings: ServerSettings) -> None:
            sched, _ = await fake.daemon()
            probe = await asyncio.open_connection("127.0.0.1", daemon.port)
            probe[1].close()  # a reachability probe: connect, send nothing, close
            waiting = await client(settings)
            await waiting.send(GET_CS)
            await sched.expect(GetCS)
            sched.close()
            assert await waiting.receive() is None
            again, login = await fake.daemon()
            assert login.nodename == "testnode"
            again.close()

        run(tmp_path, scenario)


@pytest.fixture(scope="module")
def fake_env(tmp_path_factory):
    """A chroot-able environment whose compiler is the static fake from tests/daemon/fakes.py."""
    return build_fake_env(tmp_path_factory.mktemp("fakeenv"))


SOURCE = b"int x;\n" * 20_000


def _job(job_id: int, mode: str = "ok", env: str = "fake") -> CompileFile:
    return CompileFile(job_id=job_id, args=(f"-mode={mode}", "-c"), environment=env,
                       target="x86_64", compiler_name="gcc", input_file="a.c",
                       working_dir="/src", output_file="a.o")  # fmt: skip


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():  # noqa: ASYNC110 - polls daemon internals from the outside
            await asyncio.sleep(0.02)


async def remote(daemon: Daemon) -> Peer:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    return Peer(reader, writer)


async def submit(daemon: Daemon, job: CompileFile, source: bytes = SOURCE) -> Peer:
    peer = await remote(daemon)
    await peer.send(job)
    peer.conn.send_file(source)
    peer.writer.write(peer.conn.data_to_send())
    await peer.writer.drain()
    return peer


async def result(peer: Peer) -> tuple[CompileResult, bytes]:
    answer = await peer.expect(CompileResult)
    data = b""
    if answer.status == 0:
        while isinstance(chunk := await peer.receive(), FileChunk):
            data += chunk.data
        assert isinstance(chunk, End)
    return answer, data


class TestRemoteJobs:
    def test_compile_and_statistics(self, tmp_path, fake_env):
        """COMPILE_FILE + source: result and object to the client, JOB_BEGIN/JOB_DONE to S."""

        async def scenario(daemon: Daemon, fake: FakeScheduler, _: ServerSettings) -> None:
            sched, _ = await fake.daemon()
            peer = await submit(daemon, _job(21))
            answer, obj = await result(peer)
            assert (answer.status, answer.was_out_of_memory, answer.have_dwo) == (0, False, False)
            assert obj == f"OBJ {len(SOURCE)}\n".encode()
            begin = await sched.expect(JobBegin)
            assert (begin.job_id, begin.client_count) == (21, 1)
            done = await sched.expect(JobDone)
            assert (done.job_id, done.exitcode, done.flags) == (21, 0, JobDoneFlag.FROM_SERVER)
            assert done.in_uncompressed == len(SOURCE)
            assert 0 < done.in_compressed < len(SOURCE)
            assert done.out_uncompressed == done.out_compressed == len(obj)

        run(tmp_path, scenario, fake_env=fake_env)

    def test_queued_job_preloads_its_source(self, tmp_path, fake_env):
        """With the only slot busy, a second client's source is read while it waits."""

        async def scenario(daemon: Daemon, fake: FakeScheduler, _: ServerSettings) -> None:
            sched, _ = await fake.daemon()
            slow = await submit(daemon, _job(31, mode="slow"))
            assert (await sched.expect(JobBegin)).job_id == 31
            big = b"int y;\n" * 600_000  # 4 MB: far more than socket buffers hold
            queued = await submit(daemon, _job(32), big)  # returns once the daemon took it all

            def preloaded() -> bool:
                return daemon.core.source_received(2) == len(big)

            await until(preloaded)  # all of it read and buffered while it waits
            assert daemon.slots.waiting() == 1
            assert daemon.core.state_of(1) is State.COMPILING
            answer, _ = await result(slow)
            assert answer.status == 0
            assert (await sched.expect(JobDone)).job_id == 31
            assert (await sched.expect(JobBegin)).job_id == 32
            answer, obj = await result(queued)
            assert obj == f"OBJ {len(big)}\n".encode()

        run(tmp_path, scenario, fake_env=fake_env)

    def test_client_gone_or_cancelling(self, tmp_path, fake_env):
        """EOF before END, or any message after END, kills the job; the slot is free again."""

        async def scenario(daemon: Daemon, fake: FakeScheduler, _: ServerSettings) -> None:
            sched, _ = await fake.daemon()
            peer = await remote(daemon)
            await peer.send(_job(41), FileChunk(b"int z;\n"))
            await sched.expect(JobBegin)
            peer.close()
            done = await sched.expect(JobDone)
            assert (done.job_id, done.flags) == (41, JobDoneFlag.FROM_SERVER)
            assert done.exitcode != 0
            cancel = await submit(daemon, _job(42, mode="slow"))
            await sched.expect(JobBegin)
            await cancel.send(End())  # a message after END: the client cancelled
            assert await cancel.receive() is None  # closed without COMPILE_RESULT
            assert (await sched.expect(JobDone)).exitcode == 118
            answer, _ = await result(await submit(daemon, _job(43)))
            assert answer.status == 0

        run(tmp_path, scenario, fake_env=fake_env)

    def test_queued_job_abandoned(self, tmp_path, fake_env):
        """A client leaving while its job waits for a slot: JOB_DONE from the server, no begin."""

        async def scenario(daemon: Daemon, fake: FakeScheduler, _: ServerSettings) -> None:
            sched, _ = await fake.daemon()
            running = await submit(daemon, _job(51, mode="slow"))  # keep it: GC would close it
            await sched.expect(JobBegin)
            queued = await submit(daemon, _job(52))
            queued.close()
            done = await sched.expect(JobDone)
            assert (done.job_id, done.flags) == (52, JobDoneFlag.FROM_SERVER)
            assert (await result(running))[0].status == 0

        run(tmp_path, scenario, fake_env=fake_env)

    def test_heap_trimmed_after_compressible_queued_source(self, tmp_path, fake_env):
        """A queued client that left 4 MiB of zeros buffered (a few KB on the wire) gets its
        heap handed back: the trim counts what its chunks decompressed to, not the wire
        (glibc alone returns freed heap only from its top, which one small chunk can pin).
        """

        async def scenario(daemon: Daemon, fake: FakeScheduler, _: ServerSettings) -> None:
            sched, _ = await fake.daemon()
            running = await submit(daemon, _job(71, mode="slow"))
            await sched.expect(JobBegin)
            zeros = b"\0" * (4 << 20)
            queued = await remote(daemon)
            await queued.send(_job(72))
            queued.conn.send_file(zeros)
            wire = queued.conn.data_to_send()
            assert len(wire) < 64 * 1024  # far below the 1 MiB that calls for a trim
            queued.writer.write(wire)
            await until(lambda: daemon.core.source_received(2) == len(zeros))
            queued.close()
            await until(lambda: any(e["event"] == "heap_trimmed" for e in logs))
            assert (await result(running))[0].status == 0

        with capture_logs() as logs:
            run(tmp_path, scenario, fake_env=fake_env)

    def test_missing_environment_and_verify(self, tmp_path, fake_env):
        """An unknown environment: STATUS_TEXT and exit 110; VERIFY_ENV runs bin/true."""

        async def scenario(daemon: Daemon, fake: FakeScheduler, _: ServerSettings) -> None:
            sched, _ = await fake.daemon()
            peer = await submit(daemon, _job(61, env="nope"))
            text = await peer.expect(StatusText)
            assert "usr/bin/as is not executable" in text.text
            await sched.expect(JobBegin)
            assert (await sched.expect(JobDone)).exitcode == 110
            checker = await remote(daemon)
            await checker.send(VerifyEnv("fake", "x86_64"))
            assert await checker.expect(VerifyEnvResult) == VerifyEnvResult(ok=True)
            await checker.send(VerifyEnv("nope", "x86_64"))
            assert await checker.expect(VerifyEnvResult) == VerifyEnvResult(ok=False)

        run(tmp_path, scenario, fake_env=fake_env)


class TestEnvironmentTransfer:
    @pytest.mark.parametrize(
        "chunks",
        [[b"this is not a tarball" * 100], [b"\x1f\x8b\x08" + b"\xff" * 4000]],
        ids=["garbage", "damaged-gzip"],
    )
    def test_refused_install_is_re_announced(self, tmp_path, chunks):
        """A tarball the daemon refuses: the client hears why, the scheduler gets a LOGIN.

        The scheduler counts the host busy installing until that LOGIN (and
        drops it after 120 s), so without it the host would be lost to the
        cluster; 1.4's daemon re-announces after every install, failed or not.
        """

        async def scenario(daemon: Daemon, fake: FakeScheduler, _: ServerSettings) -> None:
            sched, first = await fake.daemon()
            assert first.envs == ()
            peer = await remote(daemon)
            await peer.send(EnvTransfer("broken", "x86_64"), *(FileChunk(c) for c in chunks),
                            End())  # fmt: skip
            text = await peer.expect(StatusText)
            assert "environment x86_64/broken not installed" in text.text
            again = await sched.expect(Login)
            assert again.envs == ()
            assert daemon.slots.used == 0  # the install slot is free again

        run(tmp_path, scenario)


class TestDrain:
    def test_drain_reports_full_load_at_once_and_resume_the_real_one(self, tmp_path):
        """drain() sends STATS with load 1000 right away; resume() sends the real load again."""

        async def scenario(daemon: Daemon, fake: FakeScheduler, settings: ServerSettings) -> None:
            peer, _ = await fake.daemon()
            first = await peer.expect(Stats)
            assert first.load < 1000
            daemon.drain()
            assert (await peer.expect(Stats)).load == 1000
            assert daemon.draining
            local = await client(settings)  # local clients are still served
            await local.send(GET_CS)
            assert isinstance(await peer.expect(GetCS), GetCS)
            local.close()
            daemon.resume()
            assert (await peer.expect(Stats)).load == first.load
            assert not daemon.draining

        run(tmp_path, scenario)
