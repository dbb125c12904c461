"""One client connection to the daemon (Unix socket or TCP): its state machine and handlers.

This module owns what upstream ``daemon/main.cpp`` does per ``Client``:
local clients (GET_NATIVE_ENV, GET_CS forwarded to the scheduler and the
answer passed back, "compile it yourself", local jobs, JOB_DONE,
BLACKLIST_HOST_ENV) and remote clients (TRANFER_ENV, VERIFY_ENV,
COMPILE_FILE, whose compile itself is :class:`~iceserv.daemon.remote_job.RemoteJob`).
The daemon (:mod:`iceserv.daemon.server`) owns the slots, the scheduler
link and the registry of sessions and reaches a session only through its
public methods.

The state machine (its diagram and the meaning of each state) is
described in :mod:`iceserv.daemon.states`; this module carries out the
transitions: each message type has one handler, which checks that the
message is valid in the current state (otherwise the peer broke the
protocol) and changes the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from iceserv.daemon.compile import EXIT_CLIENT_KILLED, EXIT_IO_ERROR
from iceserv.daemon.env_transfer import EXIT_ENV_FAILED, EnvReceiver
from iceserv.daemon.native import NativeEnvError
from iceserv.daemon.remote_job import RemoteJob, verify_environment
from iceserv.daemon.slots import SourceBuffer, SourceTooLargeError, Work
from iceserv.daemon.states import EXIT_GOOD_BYE, State, end_report, read_timeout
from iceserv.errors import ProtocolError, RemoteProtocolError
from iceserv.protocol import (
    NEED_DATA,
    BlacklistHostEnv,
    CompileFile,
    Connection,
    ConnectionClosed,
    End,
    EnvTransfer,
    Feature,
    FileChunk,
    GetCS,
    GetNativeEnv,
    Handshake,
    JobBegin,
    JobDone,
    JobLocalBegin,
    NoCS,
    StatusText,
    UseCS,
    UseNativeEnv,
    VerifyEnv,
    VerifyEnvResult,
)
from iceserv.protocol.records import replace

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from iceserv.daemon.environments import EnvironmentCache
    from iceserv.daemon.native import NativeEnvironments
    from iceserv.daemon.remote_job import JobHost
    from iceserv.daemon.settings import ServerSettings
    from iceserv.daemon.slots import Slots
    from iceserv.protocol import Message

__all__ = ["ClientSession", "SessionHost"]

log = structlog.get_logger()

_READ_SIZE: Final = 65536
_CLIENT_ENV: Final = "__client"
_EXIT_PROTOCOL: Final = 120
_EXIT_NATIVE_FAILED: Final = 121


class SessionHost(Protocol):
    """What a session needs from the daemon."""

    settings: ServerSettings
    slots: Slots
    cache: EnvironmentCache
    native: NativeEnvironments

    @property
    def client_count(self) -> int:
        """Connected clients (for GET_CS, JOB_BEGIN, JOB_DONE)."""
        ...

    @property
    def port(self) -> int:
        """Our TCP port (0 without one), for USE_CS to ourselves."""
        ...

    @property
    def scheduler_connected(self) -> bool:
        """Whether the daemon is logged in to a scheduler."""
        ...

    def to_scheduler(self, msg: Message) -> bool:
        """Send *msg* to the scheduler; False when there is none."""
        ...

    def schedule(self) -> None:
        """Hand out free slots."""
        ...

    def job_host(self) -> JobHost:
        """Return what a remote compile job needs from the daemon."""
        ...

    def reannounce(self) -> None:
        """Re-send LOGIN (environments changed)."""
        ...

    def job_cpu(self, msec: int) -> None:
        """Count CPU time of a job a client ran under our slot as idle."""
        ...


class ClientSession:
    """One client connection; :meth:`run` serves it until it ends."""

    def __init__(
        self,
        host: SessionHost,
        client_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        self.host = host
        self.client_id = client_id
        self.peer = peer
        self.state = State.NEW
        self.job_id = 0
        self.conn = Connection()
        self._reader = reader
        self._writer = writer
        self._use_cs: UseCS | None = None
        self._outfile = ""
        self._job: RemoteJob | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._exit_override: int | None = None
        self._log = log.bind(peer=peer, client_id=client_id)
        self._env = EnvReceiver(host, self, self._log)
        self._handlers: dict[type, Callable[[Message], Awaitable[None]]] = {
            GetNativeEnv: self._get_native_env, GetCS: self._get_cs, End: self._end,
            JobLocalBegin: self._job_local_begin, JobDone: self._job_done,
            BlacklistHostEnv: self._blacklist, EnvTransfer: self._transfer_env,
            VerifyEnv: self._verify_env, CompileFile: self._compile_file,
            FileChunk: self._file_chunk,
        }  # fmt: skip

    # --- output ----------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Queue *msg* for the client (written at once, drained by :meth:`flush`)."""
        if self._writer.is_closing():
            return
        self.conn.send(msg)
        self._writer.write(self.conn.data_to_send())

    def send_file(self, data: bytes) -> None:
        """Queue *data* as FILE_CHUNKs and END."""
        if not self._writer.is_closing():
            self.conn.send_file(data)
            self._writer.write(self.conn.data_to_send())

    async def flush(self) -> None:
        """Wait until the client took what was queued (bounded by the write time-out)."""
        try:
            async with asyncio.timeout(self.host.settings.write_timeout):
                await self._writer.drain()
        except (OSError, TimeoutError):
            self.close()

    def error_text(self, text: str) -> None:
        """Tell the client why we give up (STATUS_TEXT, protocol >= 23), as 1.4 does."""
        self._log.warning("client_error_sent", text=text)
        if self.conn.supports(Feature.STATUS_TEXT_FROM_JOB):
            self.send(StatusText(text))

    @property
    def compiling(self) -> bool:
        """Whether a compiler runs for this client right now."""
        return self.state is State.COMPILING

    def drop(self, exit_code: int) -> None:
        """End this client from outside (scheduler lost: 116), reporting *exit_code*."""
        self._exit_override = exit_code
        self.close()

    def close(self) -> None:
        """Stop serving this client."""
        self._closing = True
        self._writer.close()

    # --- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Handshake, then handle messages until the client goes; report the end."""
        exit_code = EXIT_CLIENT_KILLED
        try:
            self._writer.write(self.conn.data_to_send())
            async with asyncio.timeout(self.host.settings.handshake_timeout):
                first = await self._read_event()
            if not isinstance(first, Handshake):
                self._log.debug("connection_without_handshake")  # e.g. a scheduler probe
                return
            while not self._closing:
                try:
                    async with asyncio.timeout(self._read_timeout()):
                        event = await self._read_event()
                except TimeoutError:
                    self._log.warning("client_timed_out", state=self.state.name)
                    exit_code = EXIT_IO_ERROR
                    break
                if event is None:
                    break
                handler = self._handlers.get(type(event))
                if handler is None:
                    text = f"unexpected {type(event).__name__} in state {self.state.name}"
                    raise RemoteProtocolError(text, msg_type=int(getattr(event, "TYPE", 0)))
                await handler(event)  # type: ignore[arg-type]
                await self.flush()
            if self._closing and self.state is State.NEW:
                exit_code = EXIT_GOOD_BYE
        except ProtocolError as exc:
            self._log.warning("client_protocol_error", error=str(exc), state=self.state.name)
            exit_code = _EXIT_PROTOCOL
        except (OSError, TimeoutError) as exc:
            self._log.info("client_connection_failed", error=str(exc) or type(exc).__name__)
        finally:
            await self.ended(exit_code)

    async def _read_event(self) -> Message | Handshake | None:
        while True:
            event = self.conn.next_event()
            out = self.conn.data_to_send()
            if out:
                self._writer.write(out)
            if isinstance(event, ConnectionClosed):
                return None
            if event is not NEED_DATA:
                return event
            self.conn.receive_data(await self._reader.read(_READ_SIZE))

    def _read_timeout(self) -> float:
        ended = self._job is not None and self._job.source.ended
        return read_timeout(self.state, self.host.settings, stream_ended=ended)

    # --- local clients ---------------------------------------------------------------

    def _expect(self, msg: Message, *states: State) -> None:
        if self.state not in states:
            text = f"{type(msg).__name__} in state {self.state.name}"
            raise RemoteProtocolError(text, msg_type=int(msg.TYPE))

    async def _get_native_env(self, msg: Message) -> None:
        assert isinstance(msg, GetNativeEnv)  # noqa: S101 - dispatched by type
        self._expect(msg, State.NEW)
        self.state = State.WAIT_NATIVE
        self._task = asyncio.create_task(self._native(msg))

    async def _native(self, msg: GetNativeEnv) -> None:
        try:
            path = await self.host.native.get(msg.compiler, msg.extrafiles, msg.compression)
        except (NativeEnvError, OSError) as exc:
            self._log.warning("native_env_failed", compiler=msg.compiler, error=str(exc))
            self.send(End())
            await self.flush()
            self.close()
            self._exit_override = _EXIT_NATIVE_FAILED
            return
        self._log.info("native_env_sent", compiler=msg.compiler, path=str(path))
        self.send(UseNativeEnv(str(path)))
        self.state = State.NEW
        await self.flush()

    async def _get_cs(self, msg: Message) -> None:
        assert isinstance(msg, GetCS)  # noqa: S101
        self._expect(msg, State.NEW, State.JOB_DONE)
        self.state = State.WAIT_FOR_CS
        if not self.host.scheduler_connected:
            # No scheduler: nobody to ask, so the client compiles itself (1.4 does the same).
            self.job_id = self.client_id
            self._pending(UseCS(job_id=self.client_id, port=self.host.port,
                                hostname="127.0.0.1", host_platform=msg.target, got_env=True,
                                client_id=1))  # fmt: skip
            return
        forwarded = replace(msg, client_id=self.client_id, client_count=self.host.client_count)
        self.host.to_scheduler(forwarded)

    def scheduler_answer(self, msg: UseCS | NoCS, own_ip: str) -> None:
        """USE_CS or NO_CS for this client arrived from the scheduler."""
        if self.state is not State.WAIT_FOR_CS:
            self._log.warning("unexpected_scheduler_answer", state=self.state.name)
            return
        self.job_id = msg.job_id
        port = self.host.port
        if isinstance(msg, NoCS):
            self._pending(UseCS(job_id=msg.job_id, port=port, hostname="127.0.0.1",
                                got_env=True, client_id=1))  # fmt: skip
        elif msg.hostname == own_ip and msg.port == port:
            self._pending(UseCS(job_id=msg.job_id, port=port, hostname="127.0.0.1",
                                host_platform=msg.host_platform, got_env=True, client_id=1,
                                matched_job_id=msg.matched_job_id))  # fmt: skip
        else:
            if msg.hostname == "127.0.0.1":
                # Another daemon on this host: clients read 127.0.0.1 as "compile it
                # yourself", so name the same address in a way they connect to (issue 13).
                msg = replace(msg, hostname="localhost")
            self.state = State.WAIT_COMPILE
            self.send(msg)
            self._log.info("compile_server_assigned", job_id=msg.job_id,
                           server=f"{msg.hostname}:{msg.port}")  # fmt: skip
            asyncio.get_running_loop().create_task(self.flush())

    def _pending(self, use_cs: UseCS) -> None:
        self._use_cs = use_cs
        self.state = State.PENDING_USE_CS
        self.host.slots.enqueue(self.client_id, Work.USE_CS_SELF)
        self.host.schedule()

    def granted(self, work: Work) -> None:
        """Start *work*, for which the daemon gave this client a slot."""
        if work is Work.USE_CS_SELF and self._use_cs is not None:
            self.state = State.CLIENT_WORK
            self.send(self._use_cs)
        elif work is Work.LINK:
            self.state = State.CLIENT_WORK
            self.send(JobLocalBegin())
            self.host.to_scheduler(
                JobLocalBegin(stime=int(time.time()), outfile=self._outfile, id=self.client_id)
            )
        elif work is Work.COMPILE and self._job is not None:
            self.state = State.COMPILING
            self._task = asyncio.create_task(self._job.run())
            return
        asyncio.get_running_loop().create_task(self.flush())

    async def _job_local_begin(self, msg: Message) -> None:
        assert isinstance(msg, JobLocalBegin)  # noqa: S101
        self._expect(msg, State.NEW, State.JOB_DONE)
        self._outfile = msg.outfile
        self.state = State.LINK_WAIT
        self.host.slots.enqueue(self.client_id, Work.LINK)
        self.host.schedule()

    async def _job_done(self, msg: Message) -> None:
        assert isinstance(msg, JobDone)  # noqa: S101
        self._expect(msg, State.CLIENT_WORK)
        self.host.slots.release(self.client_id)
        self.state = State.JOB_DONE
        self.job_id = 0  # the scheduler will not need it any more
        if msg.user_msec + msg.sys_msec <= msg.real_msec:  # plausible figures only, as 1.4
            self.host.job_cpu(msg.user_msec + msg.sys_msec)
        self.host.to_scheduler(replace(msg, client_count=self.host.client_count))
        self._log.info("job_finished", job_id=msg.job_id, where="client", exitcode=msg.exitcode,
                       real_msec=msg.real_msec, out_bytes=msg.out_uncompressed)  # fmt: skip
        self.host.schedule()

    async def _blacklist(self, msg: Message) -> None:
        assert isinstance(msg, BlacklistHostEnv)  # noqa: S101
        self.host.to_scheduler(msg)

    async def _end(self, _: Message) -> None:
        if self.state in (State.INSTALLING, State.TO_COMPILE, State.COMPILING):
            await self._stream_end()
            return
        self._exit_override = EXIT_GOOD_BYE
        self._closing = True

    # --- remote clients --------------------------------------------------------------

    def _refuse_remote(self) -> bool:
        if self.host.settings.chroot_possible:
            return False
        self.error_text("this daemon cannot chroot and accepts no remote jobs")
        self.close()
        return True

    async def _transfer_env(self, msg: Message) -> None:
        assert isinstance(msg, EnvTransfer)  # noqa: S101
        self._expect(msg, State.NEW)
        if self._refuse_remote():
            return
        if await self._env.begin(msg):
            self.state = State.INSTALLING
        else:
            self._exit_override = EXIT_ENV_FAILED

    async def _file_chunk(self, msg: Message) -> None:
        assert isinstance(msg, FileChunk)  # noqa: S101
        if self.state is State.INSTALLING:
            if not await self._env.chunk(msg.data):
                self._exit_override = EXIT_ENV_FAILED
            return
        if self._job is None or self.state not in (State.TO_COMPILE, State.COMPILING):
            self._expect(msg, State.INSTALLING, State.TO_COMPILE)
            return
        try:
            self._job.source.push(msg.data, msg.compressed_size)
        except (SourceTooLargeError, ValueError) as exc:
            self.error_text(str(exc))
            self._job.abort(EXIT_IO_ERROR)
            self.close()
            return
        self._job.wake.set()

    async def _stream_end(self) -> None:
        if self.state is State.INSTALLING:
            if await self._env.finish():
                self.state = State.NEW
            else:
                self._exit_override = EXIT_ENV_FAILED
        elif self._job is not None:
            if self._job.source.ended:
                self._job.abort(EXIT_CLIENT_KILLED)  # any message after END: client cancelled
                self.close()
                return
            self._job.source.end()
            self._job.wake.set()

    async def _verify_env(self, msg: Message) -> None:
        assert isinstance(msg, VerifyEnv)  # noqa: S101
        self._expect(msg, State.NEW)
        if self._refuse_remote():
            return
        ok = await verify_environment(self.host.job_host(), msg.target, msg.environment)
        self._log.info("env_verified", env=f"{msg.target}/{msg.environment}", ok=ok)
        self.send(VerifyEnvResult(ok=ok))

    async def _compile_file(self, msg: Message) -> None:
        assert isinstance(msg, CompileFile)  # noqa: S101
        if msg.environment == _CLIENT_ENV:
            self._expect(msg, State.CLIENT_WORK)
            # The client compiles itself under our slot: tell the scheduler it began.
            self.host.to_scheduler(JobBegin(job_id=msg.job_id, stime=int(time.time()),
                                            client_count=self.host.client_count))  # fmt: skip
            return
        self._expect(msg, State.NEW)
        if self._refuse_remote():
            return
        source = SourceBuffer(self.host.settings.source_buffer_limit)
        self._job = RemoteJob(self.host.job_host(), self, msg, source)
        self.state = State.TO_COMPILE
        self.host.slots.enqueue(self.client_id, Work.COMPILE)
        self.host.schedule()

    def job_finished(self) -> None:
        """Free the slot of the remote job, which sent its result (or gave up)."""
        self._job = None
        if self.state is State.COMPILING:
            self.state = State.NEW
        self.host.slots.release(self.client_id)
        self.host.schedule()

    # --- the end ---------------------------------------------------------------------

    async def ended(self, exit_code: int) -> None:
        """Report the end of this client as 1.4's ``handle_end`` does, free its slot, close."""
        exit_code = self._exit_override or exit_code
        job = self._job
        if job is not None and job.running:
            job.abort(exit_code if exit_code != EXIT_GOOD_BYE else EXIT_CLIENT_KILLED)
        if self._task is not None and not self._task.done():
            if job is not None:  # a compile reports its own end: let it (bounded)
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    async with asyncio.timeout(self.host.settings.write_timeout):
                        await asyncio.shield(self._task)
            self._task.cancel()  # e.g. waiting for a native environment (the build goes on)
        await self._env.abort()
        self.host.slots.release(self.client_id)
        self._report_end(exit_code, job)
        self._writer.close()
        self.host.schedule()

    def _report_end(self, exit_code: int, job: RemoteJob | None) -> None:
        if self.state is State.TO_COMPILE and job is not None:
            job.report_unstarted(exit_code)
            return
        report = end_report(self.state, exit_code, job_id=self.job_id, client_id=self.client_id,
                            client_count=self.host.client_count)  # fmt: skip
        if report is not None:
            self.host.to_scheduler(report)
