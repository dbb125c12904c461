"""The I/O of one remote compile and of VERIFY_ENV: the environment check, the compiler, its result.

This module owns :class:`CompileJob`, what the shell runs for the core's
``StartCompile`` (upstream ``daemon/serve.cpp``, ``handle_connection``):
find the environment (a missing compiler removes it, exit 110), build the
command line (:func:`~iceserv.daemon.compile.compiler_command`), run the
compiler (:class:`~iceserv.daemon.compile.CompileRun`) fed with the source
the core passes on (``FeedCompile``), and return a
:class:`~iceserv.daemon.effects.CompileReport`.  Source handed on but not yet
taken by the compiler is bounded: over :data:`INPUT_LIMIT` bytes the shell
awaits :meth:`CompileJob.room` before it reads the client again (as 1.4
blocks on its write to the compiler), and a job that ends without reading
(a missing environment, a kill) makes room at once.  What the client and the
scheduler are told, and when the job is stopped, is the core's business
(:mod:`iceserv.daemon.core`); this module sends nothing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

import structlog

from iceserv.daemon.compile import (
    CompileRun,
    JobOutcome,
    JobPaths,
    compiler_command,
    job_paths,
    new_unique,
)
from iceserv.daemon.effects import CompileReport
from iceserv.daemon.environments import EnvInstallError
from iceserv.daemon.states import EXIT_COMPILER_MISSING
from iceserv.protocol import Feature
from iceserv.protocol.features import supports

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from iceserv.daemon.environments import EnvironmentCache
    from iceserv.daemon.jobstarter import JobStarter
    from iceserv.daemon.sandbox import RunAs
    from iceserv.daemon.settings import ServerSettings
    from iceserv.protocol import CompileFile

__all__ = ["INPUT_LIMIT", "CompileJob", "JobContext", "verify_environment"]

log = structlog.get_logger()

#: Source a running job holds for its compiler before its client is not read (bytes).
INPUT_LIMIT: Final = 1 << 20


class JobContext:
    """What every compile needs from the daemon: settings, cache, job user, starter, memory."""

    def __init__(  # noqa: PLR0913 - the daemon's parts, all keyword-only
        self,
        *,
        settings: ServerSettings,
        cache: EnvironmentCache,
        run_as: RunAs,
        starter: JobStarter,
        environ: Mapping[str, str],
        memory_limit_mb: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.run_as = run_as
        self.starter = starter
        self.environ = environ
        self.memory_limit_mb = memory_limit_mb


class CompileJob:
    """One running remote compile; :meth:`run` returns its report."""

    def __init__(self, ctx: JobContext, job: CompileFile, protocol: int, peer: str) -> None:
        self.ctx = ctx
        self.job = job
        self.protocol = protocol
        self._input: asyncio.Queue[tuple[Sequence[bytes], bool]] = asyncio.Queue()
        self._queued = 0  # bytes fed and not yet taken by the compiler
        self._room = asyncio.Event()
        self._room.set()
        self._ended = False
        self._run: CompileRun | None = None
        self._killed = False
        self._log = log.bind(peer=peer, job_id=job.job_id, env=f"{job.target}/{job.environment}")

    def feed(self, pieces: Sequence[bytes], *, ended: bool) -> None:
        """Queue source for the compiler (and the end of it)."""
        self._input.put_nowait((pieces, ended))
        self._queued += sum(len(piece) for piece in pieces)
        if self._queued > INPUT_LIMIT and not self._ended:
            self._room.clear()

    @property
    def full(self) -> bool:
        """Whether the compiler has more than :data:`INPUT_LIMIT` bytes still to take."""
        return not self._room.is_set()

    async def room(self) -> None:
        """Return once the compiler took the source down to the limit, or the job ended."""
        await self._room.wait()

    def _taken(self, pieces: Sequence[bytes]) -> None:
        self._queued -= sum(len(piece) for piece in pieces)
        if self._queued <= INPUT_LIMIT:
            self._room.set()

    def _end(self) -> None:
        """Nothing more is taken: whoever waits for room goes on (the core ends the client)."""
        self._ended = True
        self._room.set()

    def kill(self) -> None:
        """Kill the compiler (the client left, cancelled, or sent nothing in time)."""
        self._killed = True
        self._end()
        if self._run is not None:
            self._run.kill()
        self._input.put_nowait(((), True))

    async def run(self) -> CompileReport:
        """Check the environment, compile, and report; never raises for the job's failures."""
        try:
            return await self._compile()
        finally:
            self._end()

    async def _compile(self) -> CompileReport:
        ctx, job = self.ctx, self.job
        try:
            env_root = ctx.cache.env_dir(job.target, job.environment)
        except EnvInstallError as exc:
            return CompileReport(give_up=str(exc), give_up_code=EXIT_COMPILER_MISSING)
        if not ctx.cache.usable(job.target, job.environment):
            text = f"{env_root}/usr/bin/as is not executable, installed environment removed?"
            removed = ctx.cache.remove(job.target, job.environment)
            return CompileReport(
                give_up=text, give_up_code=EXIT_COMPILER_MISSING, env_removed=removed
            )
        mem = ctx.memory_limit_mb()
        paths = job_paths(job, new_unique())
        argv = compiler_command(
            job,
            paths,
            mem_limit_mb=mem,
            has_compiler_name=supports(self.protocol, Feature.COMPILER_NAME),
            server_adds_split_dwarf=not supports(self.protocol, Feature.SINGLE_ARGS_LIST),
        )
        self._log.debug("compiler_started", argv=argv)
        settings = ctx.settings
        self._run = run = CompileRun(
            env_root=env_root,
            argv=argv,
            paths=paths,
            run_as=ctx.run_as,
            nice=settings.nice,
            mem_limit_mb=mem,
            environ=ctx.environ,
            starter=ctx.starter,
            write_timeout=settings.write_timeout,
            run_timeout=settings.compile_timeout,
        )
        try:
            await run.start()
            if self._killed:
                run.kill()
            await self._stream_source(run)
            outcome = await run.wait()
        finally:
            run.cleanup()
        if outcome.setup_failure:
            self._log.warning("compiler_did_not_start", reason=outcome.setup_failure)
            return _report(outcome, give_up="compiler did not start")
        return _report(outcome)

    async def _stream_source(self, run: CompileRun) -> None:
        while not self._killed:
            pieces, ended = await self._input.get()
            if pieces and not self._killed:
                await run.feed(pieces)
            self._taken(pieces)
            if ended:
                break
        await run.close_input()


def _report(outcome: JobOutcome, give_up: str = "") -> CompileReport:
    return CompileReport(
        status=outcome.status,
        was_out_of_memory=outcome.was_out_of_memory,
        stdout=outcome.stdout,
        stderr=outcome.stderr,
        real_msec=outcome.real_msec,
        user_msec=outcome.user_msec,
        sys_msec=outcome.sys_msec,
        pfaults=outcome.pfaults,
        object_data=outcome.object_data,
        dwo_data=outcome.dwo_data,
        give_up=give_up,
        give_up_code=EXIT_COMPILER_MISSING if give_up else 0,
    )


async def verify_environment(ctx: JobContext, target: str, environment: str) -> bool:
    """Run ``/bin/true`` chroot'ed in the environment as the job user (VERIFY_ENV)."""
    try:
        env_root = ctx.cache.env_dir(target, environment)
    except EnvInstallError:
        return False
    if not (env_root / "bin" / "true").is_file():
        return False
    ctx.cache.acquire(target, environment)
    run = CompileRun(
        env_root=env_root,
        argv=["/bin/true"],
        paths=JobPaths("/", "", "", ""),
        run_as=ctx.run_as,
        nice=ctx.settings.nice,
        mem_limit_mb=ctx.memory_limit_mb(),
        environ=ctx.environ,
        starter=ctx.starter,
        run_timeout=ctx.settings.source_gap_timeout,
    )
    try:
        await run.start()
        await run.close_input()
        outcome = await run.wait()
    finally:
        ctx.cache.release(target, environment)
    return outcome.status == 0 and not outcome.setup_failure
