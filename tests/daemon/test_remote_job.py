"""``CompileJob``'s input bound (issue 20): source the compiler has not taken is capped.

A running job used to queue every chunk its client sent, decompressed, whether
or not the compiler read it; a job that gave up at once (its environment is
missing) read nothing at all, so 255 zstd chunks of zeros (~18 KB on the wire)
cost 255 MiB.  Now the shell awaits ``room()`` once ``full``, and a job that
ends, or is killed, makes room for good.
"""

from __future__ import annotations

import asyncio
from typing import Any

from iceserv.daemon.environments import EnvInstallError
from iceserv.daemon.remote_job import INPUT_LIMIT, CompileJob, JobContext
from iceserv.protocol import CompileFile


class _NoEnvironments:
    """An environment cache that has nothing installed."""

    def env_dir(self, target: str, name: str) -> Any:
        msg = f"{target}/{name} is not installed"
        raise EnvInstallError(msg)


class _Compiler:
    """A compiler run that takes whatever it is fed (``CompileRun``'s input side)."""

    def __init__(self) -> None:
        self.taken: list[bytes] = []
        self.closed = False

    async def feed(self, pieces: Any) -> None:
        self.taken += pieces

    async def close_input(self) -> None:
        self.closed = True


def _job() -> CompileJob:
    ctx = JobContext(settings=None, cache=_NoEnvironments(), run_as=None, starter=None,  # type: ignore[arg-type]
                     environ={}, memory_limit_mb=lambda: 0)  # fmt: skip
    msg = CompileFile(job_id=1, environment="nosuchenv", target="x86_64", args=("-c",), lang=0)
    return CompileJob(ctx, msg, 43, "10.0.0.66")


def test_full_over_the_limit():
    job = _job()
    job.feed([b"x" * INPUT_LIMIT], ended=False)
    assert not job.full
    job.feed([b"x"], ended=False)
    assert job.full


def test_a_job_that_gives_up_makes_room():
    """The environment is missing: nothing is read, yet the reader may go on (to its end)."""

    async def scenario() -> bool:
        job = _job()
        job.feed([b"\0" * (INPUT_LIMIT + 1)], ended=False)
        assert job.full
        report = await job.run()
        assert report.give_up
        await asyncio.wait_for(job.room(), 5)
        job.feed([b"\0" * INPUT_LIMIT * 2], ended=False)  # late chunks never block again
        return job.full

    assert asyncio.run(scenario()) is False


def test_a_killed_job_makes_room():
    job = _job()
    job.feed([b"\0" * (INPUT_LIMIT + 1)], ended=False)
    job.kill()
    assert not job.full


def test_room_when_the_compiler_took_the_source():
    async def scenario() -> _Compiler:
        job = _job()
        compiler = _Compiler()
        job.feed([b"a" * INPUT_LIMIT, b"b"], ended=False)
        assert job.full
        streaming = asyncio.create_task(job._stream_source(compiler))  # type: ignore[arg-type]
        await asyncio.wait_for(job.room(), 5)
        job.feed([b"c"], ended=True)
        await asyncio.wait_for(streaming, 5)
        assert not job.full
        return compiler

    compiler = asyncio.run(scenario())
    assert b"".join(compiler.taken) == b"a" * INPUT_LIMIT + b"bc"
    assert compiler.closed
