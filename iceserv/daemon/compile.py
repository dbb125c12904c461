"""Remote compile jobs: the 1.4 compiler command line, running it chroot'ed, judging the result.

This module owns what upstream ``daemon/workit.cpp`` (``work_it``) and
``daemon/serve.cpp`` (``handle_connection``) do for one COMPILE_FILE: build
the command line (§5.1.4), run it through :mod:`iceserv.daemon._jobexec`
(chroot into the environment, job user, ``RLIMIT_AS``, ``nice``,
``PATH=/usr/bin``) with the source on stdin, collect stdout, stderr, exit
status and resource usage, recognise out-of-memory and out-of-disk failures,
and pick up the object (and ``.dwo``) the compiler wrote below the
environment's ``tmp``.  It knows nothing about connections or slots.

Deliberate difference from 1.4: a compiler killed by a signal is reported
with ``was_out_of_memory`` set, so the client rebuilds locally instead of
failing with 1.4's odd status 105.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import resource
import shutil
import signal
import stat
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from iceserv.daemon import reproducible
from iceserv.daemon.jobstarter import JobStartError
from iceserv.daemon.states import (
    EXIT_CLIENT_KILLED,
    EXIT_COMPILER_MISSING,
    EXIT_IO_ERROR,
    EXIT_OUT_OF_MEMORY,
)
from iceserv.protocol import Lang
from iceserv.protocol.wire import decode_text

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from iceserv.daemon.jobstarter import JobStarter, StartedJob
    from iceserv.daemon.sandbox import RunAs
    from iceserv.protocol import CompileFile

__all__ = [
    "EXIT_CLIENT_KILLED",
    "EXIT_COMPILER_MISSING",
    "EXIT_IO_ERROR",
    "EXIT_OUT_OF_MEMORY",
    "CompileRun",
    "JobOutcome",
    "JobPaths",
    "compiler_command",
    "ggc_params",
    "is_out_of_memory",
    "job_paths",
    "new_unique",
]


_LANG_NAMES: Final = {
    Lang.C: "c",
    Lang.CXX: "c++",
    Lang.OBJC: "objective-c",
    Lang.OBJCXX: "objective-c++",
}
#: stderr texts that mean "the compiler ran out of memory" (upstream ``work_it``).
OOM_TEXTS: Final = (
    "memory exhausted",
    "out of memory",
    "annot allocate memory",
    "failed to map segment from shared object",
    'Assertion `NewElts && "Out of memory"\' failed',
    "terminate called after throwing an instance of 'std::bad_alloc'",
    "llvm::MallocSlabAllocator::Allocate",
)
_MIN_FREE_DISK: Final = 10 * 1024 * 1024
#: stdout and stderr each stop growing here: COMPILE_RESULT must fit in one 1 MiB frame.
OUTPUT_LIMIT: Final = 400_000
_OBJECT_LIMIT: Final = 1 << 30


def ggc_params(mem_limit_mb: int) -> tuple[str, str, str, str]:
    """Gcc's garbage-collector parameters for a memory limit (upstream ``services/gcc.cpp``)."""
    expand = int(30 + min(70.0, mem_limit_mb / 1024 * 70))
    heapsize = min(max(mem_limit_mb // 8, 4), 128) * 1024
    return ("--param", f"ggc-min-expand={expand}", "--param", f"ggc-min-heapsize={heapsize}")


@dataclass(frozen=True, slots=True)
class JobPaths:
    """Where a job runs and writes, as seen inside the chroot (``tmp_root`` "" without fission)."""

    cwd: str
    output: str
    object_file: str
    dwo_file: str
    tmp_root: str = ""
    #: Reproducible jobs (:mod:`iceserv.daemon.reproducible`): where the source is
    #: written and how the compiler names it; "" for 1.4's source on stdin.
    source_file: str = ""
    input_arg: str = ""


def job_paths(job: CompileFile, unique: str) -> JobPaths:
    """Choose the working directory and output names of *job* (``unique`` makes them private).

    A gcc job whose objects can be made identical to local ones is laid out
    by :func:`iceserv.daemon.reproducible.layout`: the client's working
    directory, source and output recreated below a private ``/tmp``
    directory.  Otherwise, without split DWARF the object is
    ``/tmp/icecc-<job>-<unique>.o`` built from ``/tmp``; with it, the
    client's working directory and output directory are recreated below a
    private ``/tmp`` directory so the ``.dwo`` path written into the object
    matches the client's (upstream ``handle_connection``).
    """
    if reproducible.applies(job, job.compiler_name or (job.args[:1] or ("",))[0]):
        found = reproducible.layout(job, f"/tmp/icecc-{job.job_id}-{unique}")  # noqa: S108
        return JobPaths(
            cwd=found.cwd,
            output=found.output,
            object_file=found.object_file,
            dwo_file=found.dwo_file,
            tmp_root=found.tmp_root,
            source_file=found.source,
            input_arg=found.input_arg,
        )
    if not job.dwarf_fission:
        name = f"icecc-{job.job_id}-{unique}.o"
        return JobPaths("/tmp", name, f"/tmp/{name}", "")  # noqa: S108 - inside the chroot
    tmp_root = f"/tmp/icecc-{job.job_id}-{unique}"  # noqa: S108 - inside the chroot
    cwd = posixpath.normpath("/" + (job.working_dir or "/").lstrip("/"))
    output = job.output_file or posixpath.basename(job.input_file).rsplit(".", 1)[0] + ".o"
    absolute = posixpath.normpath(posixpath.join(cwd, output))
    relative = posixpath.relpath(absolute, cwd)
    object_file = tmp_root + absolute
    return JobPaths(
        cwd=tmp_root + cwd,
        output=relative,
        object_file=object_file,
        dwo_file=object_file.rsplit(".", 1)[0] + ".dwo",
        tmp_root=tmp_root,
    )


def compiler_command(
    job: CompileFile,
    paths: JobPaths,
    *,
    mem_limit_mb: int,
    has_compiler_name: bool = True,
    server_adds_split_dwarf: bool = False,
) -> list[str]:
    """Return the remote compiler command line for *job* (reference §5.1.4).

    1.4's, unless *paths* is a reproducible layout (``source_file`` set):
    then the source file is compiled as an ordinary one, without
    ``-fpreprocessed``, ``-fdirectives-only`` or the ggc parameters (the
    job's ``RLIMIT_AS`` bounds the memory), and the job directory is mapped
    back to ``/`` in the debug information (:mod:`iceserv.daemon.reproducible`).

    ``has_compiler_name`` is False below protocol 30 (then gcc/g++ by
    language); ``server_adds_split_dwarf`` is True below protocol 41, where
    the server appends ``-gsplit-dwarf`` itself for a split-DWARF job.
    """
    if has_compiler_name and job.compiler_name:
        name = job.compiler_name
    else:
        name = "g++" if job.lang == Lang.CXX else "gcc"
    clang = "clang" in name
    argv = [f"/usr/bin/{name}", "-x", _LANG_NAMES.get(Lang(job.lang), "c")]
    if paths.source_file and not clang:
        return _reproducible_command(argv, job, paths, split=server_adds_split_dwarf)
    if clang:
        if job.input_file:
            argv += ["-Xclang", "-main-file-name", "-Xclang", job.input_file]
        if job.working_dir:
            argv += ["-Xclang", "-fdebug-compilation-dir", "-Xclang", job.working_dir]
    argv += job.args
    if server_adds_split_dwarf and job.dwarf_fission:
        argv.append("-gsplit-dwarf")
    if not clang:
        argv.append("-fpreprocessed")
    argv += ["-", "-o", paths.output]
    if clang:
        argv.append("-no-canonical-prefixes")
    else:
        argv += ggc_params(mem_limit_mb)
        if job.dwarf_fission and paths.tmp_root:
            argv.append(f"-fdebug-prefix-map={paths.tmp_root}/=/")
    return argv


def _reproducible_command(
    argv: list[str], job: CompileFile, paths: JobPaths, *, split: bool
) -> list[str]:
    """Finish a reproducible job's command line (see :mod:`iceserv.daemon.reproducible`)."""
    argv += [arg for arg in job.args if arg != reproducible.DIRECTIVES_ONLY]
    if split and job.dwarf_fission:
        argv.append("-gsplit-dwarf")
    # -nostdinc: the stream holds every header already, and in the chroot (no /usr/include)
    # gcc would fail to find stdc-predef.h for its implicit pre-include.  gcc does not
    # record -nostdinc or -fdebug-prefix-map in DW_AT_producer.
    return [
        *argv,
        "-nostdinc",
        paths.input_arg,
        "-o",
        paths.output,
        f"-fdebug-prefix-map={paths.tmp_root}/=/",
    ]


def is_out_of_memory(stderr: str, faults: int, mem_limit_mb: int, page_size: int = 4096) -> bool:
    """Whether a failed compile ran out of memory (fault count near the limit, or its texts)."""
    if faults * page_size * 100 > 85 * mem_limit_mb * 1024 * 1024:
        return True
    return any(text in stderr for text in OOM_TEXTS)


@dataclass(slots=True)
class JobOutcome:
    """What a compile produced; ``setup_failure`` is set when the compiler never started."""

    status: int = 0
    was_out_of_memory: bool = False
    stdout: str = ""
    stderr: str = ""
    real_msec: int = 0
    user_msec: int = 0
    sys_msec: int = 0
    pfaults: int = 0
    setup_failure: str = ""
    object_data: bytes = b""
    dwo_data: bytes | None = None


#: Seconds to wait for a killed job's report pipe to close.
_KILLED_TIMEOUT: Final = 5.0


class CompileRun:
    """One compiler process in an environment: start, feed stdin, wait, collect, clean up."""

    def __init__(  # noqa: PLR0913 - everything a job needs, all keyword-only
        self,
        *,
        env_root: Path,
        argv: Sequence[str],
        paths: JobPaths,
        run_as: RunAs,
        nice: int,
        mem_limit_mb: int,
        environ: Mapping[str, str],
        starter: JobStarter,
        write_timeout: float = 30.0,
        run_timeout: float = 3600.0,
    ) -> None:
        self.starter = starter
        self.env_root = env_root
        self.write_timeout = write_timeout
        self.run_timeout = run_timeout
        self.argv = list(argv)
        self.paths = paths
        self.run_as = run_as
        self.nice = nice
        self.mem_limit_mb = mem_limit_mb
        self.environ = dict(environ)
        self._job: StartedJob | None = None
        self._start_failure = ""
        self._report_done = False
        self._readers: list[asyncio.Task[bytes]] = []
        self._started = 0.0
        self._input_broken = False
        self._source_fd: int | None = None
        self._filter = reproducible.SourceFilter()

    def _outside(self, inside: str) -> Path:
        return self.env_root / inside.lstrip("/")

    async def start(self) -> None:
        """Create the job's directories and start the job (and so the compiler).

        A reproducible job (``paths.source_file``) creates its source file
        instead; its compiler starts in :meth:`close_input`, once the file is whole.
        """
        if self.paths.tmp_root:
            directories = [self.paths.cwd, posixpath.dirname(self.paths.object_file)]
            if self.paths.source_file:
                directories.append(posixpath.dirname(self.paths.source_file))
            for directory in directories:
                path = self._outside(directory)
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
            if self.paths.source_file:
                try:  # a fresh private directory: O_EXCL and O_NOFOLLOW keep it ours
                    self._source_fd = os.open(
                        self._outside(self.paths.source_file),
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o644,
                    )
                except OSError as exc:
                    self._start_failure = f"source file: {exc}"
                    return
            _chown_below(self._outside(self.paths.tmp_root), self.run_as)
        if self.paths.source_file:
            return
        await self._start_job()

    async def _start_job(self) -> None:
        words = [
            str(self.env_root),
            self.paths.cwd,
            "1" if self.run_as.switch else "0",
            str(self.run_as.uid),
            str(self.run_as.gid),
            str(self.nice),
            str(self.mem_limit_mb * 1024 * 1024),
            *(f"{name}={value}" for name, value in self.environ.items()),
            "--",
            *self.argv,
        ]
        self._started = time.monotonic()
        try:
            self._job = job = await self.starter.start(words)
        except JobStartError as exc:
            self._start_failure = f"start: {exc}"
            return
        self._readers = [
            asyncio.create_task(_read_capped(job.stdout, OUTPUT_LIMIT)),
            asyncio.create_task(_read_capped(job.stderr, OUTPUT_LIMIT)),
            asyncio.create_task(_read_capped(job.report, 4096)),
        ]

    async def feed(self, pieces: Sequence[bytes]) -> None:
        """Write source to the compiler; a compiler that stopped reading is not an error."""
        if self._source_fd is not None:
            try:
                for piece in pieces:
                    _write_all(self._source_fd, self._filter.feed(piece))
            except OSError:
                self._input_broken = True
            return
        job = self._job
        if job is None or self._input_broken:
            return
        try:
            for piece in pieces:
                job.stdin.write(piece)
            async with asyncio.timeout(self.write_timeout):
                await job.stdin.drain()
        except (ConnectionError, TimeoutError):
            self._input_broken = True  # 1.4 keeps reading the client's data and drops it

    async def close_input(self) -> None:
        """Signal the end of the source (a reproducible job's compiler starts now)."""
        if self._source_fd is not None:
            try:
                _write_all(self._source_fd, self._filter.finish())
            except OSError:
                self._input_broken = True
            finally:
                os.close(self._source_fd)
                self._source_fd = None
            if self._input_broken:
                self._start_failure = "cannot write the source file"
                return
            await self._start_job()
        if self._job is not None:
            with contextlib.suppress(ConnectionError):
                self._job.stdin.close()

    def kill(self) -> None:
        """Kill the job process and the compiler (their own process group).

        Only while the job has not reported: after that its process has exited
        and, reaped by the job helper, its pid may already belong to another.
        """
        if self._job is not None and not self._report_done:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._job.pid, signal.SIGKILL)

    async def wait(self) -> JobOutcome:
        """Wait for the compiler and collect everything; kill it after ``run_timeout`` s."""
        if self._job is None:
            if not self._start_failure:
                msg = "compile job not started"
                raise RuntimeError(msg)
            return JobOutcome(setup_failure=self._start_failure, status=EXIT_COMPILER_MISSING)
        reporting = self._readers[2]
        try:
            async with asyncio.timeout(self.run_timeout):
                out, err = await asyncio.gather(*self._readers[:2])
                raw = await asyncio.shield(reporting)
        except TimeoutError:
            self.kill()
            out, err = b"", b"compile job timed out\n"
            raw = b""
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_KILLED_TIMEOUT):
                    raw = await reporting  # EOF once the job process is dead
        self._report_done = True
        with contextlib.suppress(ConnectionError):
            self._job.stdin.close()
        real_ms = int((time.monotonic() - self._started) * 1000)
        report = parse_report(raw)
        outcome = JobOutcome(stdout=_wire_text(out), stderr=_wire_text(err), real_msec=real_ms)
        if not report:
            outcome.status, outcome.was_out_of_memory = EXIT_IO_ERROR, True
            return outcome
        if report.get("failure"):
            outcome.setup_failure = str(report["failure"])
            outcome.status = EXIT_COMPILER_MISSING
            return outcome
        outcome.user_msec = _number(report, "user_ms")
        outcome.sys_msec = _number(report, "sys_ms")
        outcome.pfaults = _number(report, "faults")
        self._judge(outcome, _number(report, "status"))
        if outcome.status == 0 and self.paths.object_file:
            self._collect(outcome)
        return outcome

    def _judge(self, outcome: JobOutcome, wait_status: int) -> None:
        if os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == 0:
            return
        if is_out_of_memory(
            outcome.stderr, outcome.pfaults, self.mem_limit_mb, resource.getpagesize()
        ):
            outcome.status, outcome.was_out_of_memory = EXIT_OUT_OF_MEMORY, True
            return
        disk = shutil.disk_usage(self.env_root)
        if disk.free < _MIN_FREE_DISK or "o space left on device" in outcome.stderr:
            outcome.status, outcome.was_out_of_memory = EXIT_OUT_OF_MEMORY, True
            return
        if os.WIFEXITED(wait_status):
            outcome.status = os.WEXITSTATUS(wait_status)
        else:
            outcome.status, outcome.was_out_of_memory = EXIT_OUT_OF_MEMORY, True

    def _collect(self, outcome: JobOutcome) -> None:
        data = _read_job_file(self.env_root, self.paths.object_file)
        if data is None:
            outcome.status = 1
            outcome.stderr += "ICECC: the compiler wrote no object file\n"
            return
        outcome.object_data = data
        if self.paths.dwo_file:
            outcome.dwo_data = _read_job_file(self.env_root, self.paths.dwo_file)

    def cleanup(self) -> None:
        """Remove what the job wrote below the environment's ``tmp``."""
        if self.paths.tmp_root:
            shutil.rmtree(self._outside(self.paths.tmp_root), ignore_errors=True)
        else:
            self._outside(self.paths.object_file).unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def new_unique() -> str:
    """Return a short random name part for a job's files."""
    return uuid.uuid4().hex[:12]


def _wire_text(data: bytes) -> str:
    """Compiler output as a wire string: bytes kept as they are, NULs dropped (cf. 1.4)."""
    return decode_text(data.replace(b"\0", b""))


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Read to EOF, keeping at most *limit* bytes (the rest is drained and dropped)."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept)


def parse_report(raw: bytes) -> dict[str, object]:
    """Parse the job's report line.

    ``ok STATUS USER_MS SYS_MS FAULTS`` or ``failed TEXT``, see
    :mod:`iceserv.daemon._jobexec`; anything else (a job process that died) is ``{}``.
    """
    kind, _, rest = raw.decode(errors="replace").strip().partition(" ")
    if kind == "failed":
        return {"failure": rest or "unknown"}
    fields = rest.split()
    if kind != "ok" or len(fields) != 4 or not all(f.lstrip("-").isdigit() for f in fields):
        return {}
    return dict(zip(("status", "user_ms", "sys_ms", "faults"), map(int, fields), strict=True))


def _number(report: dict[str, object], key: str) -> int:
    value = report.get(key, 0)
    return value if isinstance(value, int) else 0


def _read_job_file(root: Path, inside: str) -> bytes | None:
    """Read a file the job wrote below *root*, never following a link on the way.

    The job user owns the directories below ``tmp``; walking them component
    by component with ``O_NOFOLLOW`` keeps a hostile compiler from making the
    daemon read a file outside the environment.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    parts = [part for part in inside.split("/") if part]
    try:
        fd = os.open(root, flags | os.O_DIRECTORY)
        for part in parts[:-1]:
            next_fd = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
        os.close(fd)
    except (OSError, IndexError):
        with contextlib.suppress(OSError, UnboundLocalError):
            os.close(fd)
        return None
    with os.fdopen(file_fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > _OBJECT_LIMIT:
            return None
        return handle.read(_OBJECT_LIMIT)


def _chown_below(path: Path, run_as: RunAs) -> None:
    """Give the job user the directories a split-DWARF job writes into."""
    if not run_as.switch:
        return
    for dirpath, _, _ in os.walk(path):
        os.lchown(dirpath, run_as.uid, run_as.gid)
