"""One remote compile for a client, from its slot to JOB_DONE, and VERIFY_ENV.

This module owns the sequence upstream ``daemon/main.cpp``
(``handle_old_request``, ``handle_compile_done``) and ``daemon/serve.cpp``
(``handle_connection``) run for a TOCOMPILE client once it has a slot:
JOB_BEGIN to the scheduler, the environment check, the compiler
(:class:`~iceserv.daemon.compile.CompileRun`) fed from the job's
:class:`~iceserv.daemon.slots.SourceBuffer` (filled by the session, also
while the job waited), COMPILE_RESULT with the object (and ``.dwo``), and
JOB_DONE with the statistics the scheduler rates the server by (reference
§2.2: sizes in and out, times, page faults, FROM_SERVER, client count).

Failures follow 1.4: no input for 60 s, EOF or a stray message before END
kill the compiler and answer with ``was_out_of_memory`` (exit 107, so the
client rebuilds locally); any message after END cancels the job (exit 118,
no result); a missing compiler removes the environment (exit 110).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

import structlog

from iceserv.daemon.compile import (
    EXIT_CLIENT_KILLED,
    EXIT_COMPILER_MISSING,
    EXIT_IO_ERROR,
    CompileRun,
    JobOutcome,
    JobPaths,
    compiler_command,
    job_paths,
    new_unique,
)
from iceserv.daemon.environments import EnvInstallError
from iceserv.protocol import CompileResult, Feature, JobBegin, JobDone, JobDoneFlag

if TYPE_CHECKING:
    from collections.abc import Mapping

    from iceserv.daemon.environments import EnvironmentCache
    from iceserv.daemon.sandbox import RunAs
    from iceserv.daemon.settings import ServerSettings
    from iceserv.daemon.slots import SourceBuffer
    from iceserv.protocol import CompileFile, Connection, Message

__all__ = ["JobClient", "JobHost", "RemoteJob", "verify_environment"]

log = structlog.get_logger()


class JobHost(Protocol):
    """What a job needs from the daemon."""

    settings: ServerSettings
    cache: EnvironmentCache
    run_as: RunAs
    child_environ: Mapping[str, str]

    @property
    def client_count(self) -> int:
        """Connected clients."""
        ...

    def to_scheduler(self, msg: Message) -> bool:
        """Send *msg* to the scheduler (dropped when there is none)."""
        ...

    def memory_limit_mb(self) -> int:
        """Return the address-space limit of one job now."""
        ...

    def reannounce(self) -> None:
        """Re-send LOGIN (an environment was removed)."""
        ...


class JobClient(Protocol):
    """The session the job answers."""

    client_id: int
    peer: str
    conn: Connection

    def send(self, msg: Message) -> None:
        """Queue a message."""
        ...

    def send_file(self, data: bytes) -> None:
        """Queue a file as FILE_CHUNKs and END."""
        ...

    async def flush(self) -> None:
        """Wait until queued data left (bounded)."""
        ...

    def error_text(self, text: str) -> None:
        """Send STATUS_TEXT."""
        ...

    def close(self) -> None:
        """End the connection."""
        ...

    def job_finished(self) -> None:
        """Free the job's slot; the client may continue."""
        ...


class RemoteJob:
    """A COMPILE_FILE from a client; see the module docstring."""

    def __init__(
        self, host: JobHost, client: JobClient, job: CompileFile, source: SourceBuffer
    ) -> None:
        self.host = host
        self.client = client
        self.job = job
        self.source = source
        self.wake = asyncio.Event()
        self.running = False
        self._abort_code = 0
        self._run: CompileRun | None = None
        self._log = log.bind(peer=client.peer, job_id=job.job_id,
                             env=f"{job.target}/{job.environment}")  # fmt: skip
        host.cache.acquire(job.target, job.environment)

    def abort(self, exit_code: int) -> None:
        """Stop the job: input failed (107) or the client cancelled or left (118)."""
        if not self._abort_code:
            self._abort_code = exit_code
        if self._run is not None:
            self._run.kill()
        self.wake.set()

    def report_unstarted(self, exit_code: int) -> None:
        """Report a job whose client left while it still waited for a slot."""
        self.host.cache.release(self.job.target, self.job.environment)
        self.host.to_scheduler(self._job_done(exit_code, JobOutcome()))

    def _job_done(self, exit_code: int, outcome: JobOutcome) -> JobDone:
        size = len(outcome.object_data) + len(outcome.dwo_data or b"")
        return JobDone(
            job_id=self.job.job_id, exitcode=exit_code, real_msec=outcome.real_msec,
            user_msec=outcome.user_msec, sys_msec=outcome.sys_msec, pfaults=outcome.pfaults,
            in_compressed=self.source.in_compressed, in_uncompressed=self.source.in_uncompressed,
            out_compressed=size, out_uncompressed=size, flags=JobDoneFlag.FROM_SERVER,
            client_count=self.host.client_count,
        )  # fmt: skip

    async def run(self) -> None:
        """Compile (the slot is held), answer the client and the scheduler."""
        self.running = True
        host, job = self.host, self.job
        host.to_scheduler(JobBegin(job_id=job.job_id, stime=int(time.time()),
                                   client_count=host.client_count))  # fmt: skip
        outcome = JobOutcome()
        try:
            outcome = await self._compile()
        finally:
            self.running = False
            if self._run is not None:
                self._run.cleanup()
            host.cache.release(job.target, job.environment)
            exit_code = self._abort_code or outcome.status
            host.to_scheduler(self._job_done(exit_code, outcome))
            self._log.info(
                "job_finished", where="server", exitcode=exit_code,
                in_bytes=self.source.in_uncompressed, in_compressed=self.source.in_compressed,
                out_bytes=len(outcome.object_data) + len(outcome.dwo_data or b""),
                real_msec=outcome.real_msec, user_msec=outcome.user_msec,
                sys_msec=outcome.sys_msec, oom=outcome.was_out_of_memory,
            )  # fmt: skip
            self.client.job_finished()

    async def _compile(self) -> JobOutcome:
        host, job, client = self.host, self.job, self.client
        try:
            env_root = host.cache.env_dir(job.target, job.environment)
        except EnvInstallError as exc:
            return self._give_up(str(exc), EXIT_COMPILER_MISSING)
        if not host.cache.usable(job.target, job.environment):
            text = f"{env_root}/usr/bin/as is not executable, installed environment removed?"
            if host.cache.remove(job.target, job.environment):
                host.reannounce()
            return self._give_up(text, EXIT_COMPILER_MISSING)
        mem = host.memory_limit_mb()
        paths = job_paths(job, new_unique())
        argv = compiler_command(
            job, paths, mem_limit_mb=mem,
            has_compiler_name=client.conn.supports(Feature.COMPILER_NAME),
            server_adds_split_dwarf=not client.conn.supports(Feature.SINGLE_ARGS_LIST),
        )  # fmt: skip
        self._log.debug("compiler_started", argv=argv)
        self._run = CompileRun(env_root=env_root, argv=argv, paths=paths, run_as=host.run_as,
                               nice=host.settings.nice, mem_limit_mb=mem,
                               environ=host.child_environ,
                               write_timeout=host.settings.write_timeout,
                               run_timeout=host.settings.compile_timeout)  # fmt: skip
        await self._run.start()
        await self._stream_source(self._run)
        outcome = await self._run.wait()
        if outcome.setup_failure:
            self._log.warning("compiler_did_not_start", reason=outcome.setup_failure)
            return self._give_up("compiler did not start", EXIT_COMPILER_MISSING, outcome)
        if self._abort_code == EXIT_CLIENT_KILLED:
            return outcome  # cancelled or gone: no result
        if self._abort_code:
            outcome.status, outcome.was_out_of_memory = self._abort_code, True
            outcome.object_data, outcome.dwo_data = b"", None
        await self._answer(outcome)
        return outcome

    async def _stream_source(self, run: CompileRun) -> None:
        timeout = self.host.settings.source_gap_timeout
        while True:
            pieces = self.source.take()
            if pieces:
                await run.feed(pieces)
            if self._abort_code or (self.source.ended and not self.source.pending):
                break
            self.wake.clear()
            if self.source.pending or self.source.ended:
                continue
            try:
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
            except TimeoutError:
                self._log.warning("source_timed_out", timeout=timeout)
                self.abort(EXIT_IO_ERROR)
        await run.close_input()

    def _give_up(self, text: str, exit_code: int, outcome: JobOutcome | None = None) -> JobOutcome:
        self.client.error_text(text)
        self.client.close()
        outcome = outcome or JobOutcome()
        outcome.status = exit_code
        self._abort_code = self._abort_code or exit_code
        return outcome

    async def _answer(self, outcome: JobOutcome) -> None:
        client = self.client
        have_dwo = outcome.dwo_data is not None and client.conn.supports(
            Feature.COMPILE_RESULT_DWO
        )
        client.send(CompileResult(err=outcome.stderr, out=outcome.stdout, status=outcome.status,
                                  was_out_of_memory=outcome.was_out_of_memory,
                                  have_dwo=have_dwo and outcome.status == 0))  # fmt: skip
        if outcome.status == 0:
            client.send_file(outcome.object_data)
            if have_dwo and outcome.dwo_data is not None:
                client.send_file(outcome.dwo_data)
        await client.flush()


async def verify_environment(host: JobHost, target: str, environment: str) -> bool:
    """Run ``/bin/true`` chroot'ed in the environment as the job user (VERIFY_ENV)."""
    try:
        env_root = host.cache.env_dir(target, environment)
    except EnvInstallError:
        return False
    if not (env_root / "bin" / "true").is_file():
        return False
    host.cache.acquire(target, environment)
    run = CompileRun(env_root=env_root, argv=["/bin/true"], paths=JobPaths("/", "", "", ""),
                     run_as=host.run_as, nice=host.settings.nice,
                     mem_limit_mb=host.memory_limit_mb(), environ=host.child_environ,
                     run_timeout=host.settings.source_gap_timeout)  # fmt: skip
    try:
        await run.start()
        await run.close_input()
        outcome = await run.wait()
    finally:
        host.cache.release(target, environment)
    return outcome.status == 0 and not outcome.setup_failure
