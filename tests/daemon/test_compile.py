"""Tests of the remote compiler command line (§5.1.4), job paths, running and judging a job."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from daemon.fakes import build_fake_env
from iceserv.daemon.compile import (
    EXIT_COMPILER_MISSING,
    EXIT_OUT_OF_MEMORY,
    OOM_TEXTS,
    CompileRun,
    JobOutcome,
    JobPaths,
    _wire_text,
    compiler_command,
    ggc_params,
    is_out_of_memory,
    job_paths,
    new_unique,
    parse_report,
)
from iceserv.daemon.jobstarter import JobStarter
from iceserv.daemon.sandbox import child_environment
from iceserv.protocol import CompileFile, Lang, records
from iceserv.protocol.wire import encode_text

GCC_JOB = CompileFile(
    lang=Lang.C, job_id=7, args=("-O2", "-DFOO=1", "-c", "-fdirectives-only"),
    environment="env", target="x86_64", compiler_name="gcc", input_file="hello.c",
    working_dir="/home/me/proj", output_file="hello.o",
)  # fmt: skip
PLAIN = JobPaths("/tmp", "icecc-7-u.o", "/tmp/icecc-7-u.o", "")
GGC = ["--param", "ggc-min-expand=100", "--param", "ggc-min-heapsize=131072"]


def _job(**changes: object) -> CompileFile:
    return records.replace(GCC_JOB, **changes)


COMMAND_LINES = [
    pytest.param(
        GCC_JOB, {},
        ["/usr/bin/gcc", "-x", "c", "-O2", "-DFOO=1", "-c", "-fdirectives-only",
         "-fpreprocessed", "-", "-o", "icecc-7-u.o", *GGC],
        id="gcc C (the line observed from a real 1.4 daemon)",
    ),
    pytest.param(
        _job(lang=Lang.CXX, compiler_name="g++", args=("-c",)), {},
        ["/usr/bin/g++", "-x", "c++", "-c", "-fpreprocessed", "-", "-o", "icecc-7-u.o", *GGC],
        id="g++ C++",
    ),
    pytest.param(
        _job(compiler_name="clang", args=("-target", "x86_64-pc-linux-gnu", "-c")), {},
        ["/usr/bin/clang", "-x", "c", "-Xclang", "-main-file-name", "-Xclang", "hello.c",
         "-Xclang", "-fdebug-compilation-dir", "-Xclang", "/home/me/proj",
         "-target", "x86_64-pc-linux-gnu", "-c", "-", "-o", "icecc-7-u.o",
         "-no-canonical-prefixes"],
        id="clang: -Xclang extras, no -fpreprocessed, no ggc params",
    ),
    pytest.param(
        _job(compiler_name="clang++", lang=Lang.CXX, input_file="", working_dir="", args=()), {},
        ["/usr/bin/clang++", "-x", "c++", "-", "-o", "icecc-7-u.o", "-no-canonical-prefixes"],
        id="clang++ without input file and working dir",
    ),
    pytest.param(
        _job(lang=Lang.OBJC, args=()), {},
        ["/usr/bin/gcc", "-x", "objective-c", "-fpreprocessed", "-", "-o", "icecc-7-u.o", *GGC],
        id="Objective-C",
    ),
    pytest.param(
        _job(lang=Lang.OBJCXX, args=()), {},
        ["/usr/bin/gcc", "-x", "objective-c++", "-fpreprocessed", "-", "-o", "icecc-7-u.o",
         *GGC],
        id="Objective-C++",
    ),
    pytest.param(
        _job(lang=Lang.CXX, compiler_name="", args=()), {"has_compiler_name": False},
        ["/usr/bin/g++", "-x", "c++", "-fpreprocessed", "-", "-o", "icecc-7-u.o", *GGC],
        id="protocol < 30: no compiler name, g++ by language",
    ),
    pytest.param(
        _job(args=("-c",), dwarf_fission=True), {"server_adds_split_dwarf": True},
        ["/usr/bin/gcc", "-x", "c", "-c", "-gsplit-dwarf", "-fpreprocessed", "-", "-o",
         "icecc-7-u.o", *GGC],
        id="protocol < 41: the server adds -gsplit-dwarf",
    ),
]  # fmt: skip


class TestCompilerCommand:
    @pytest.mark.parametrize(("job", "options", "expected"), COMMAND_LINES)
    def test_command_line(self, job, options, expected):
        """The command line has 1.4's order: compiler, -x, clang extras, args, gcc flags, -o."""
        assert compiler_command(job, PLAIN, mem_limit_mb=2048, **options) == expected

    def test_split_dwarf_maps_the_private_directory_away(self):
        """gcc with split DWARF gets -fdebug-prefix-map for the job's private /tmp directory."""
        job = _job(args=("-gsplit-dwarf", "-c"), dwarf_fission=True)
        paths = job_paths(job, "u")
        argv = compiler_command(job, paths, mem_limit_mb=2048)
        assert argv[-1] == "-fdebug-prefix-map=/tmp/icecc-7-u/=/"
        assert argv[argv.index("-o") + 1] == "hello.o"

    @pytest.mark.parametrize(("mem", "expand", "heapsize"), [
        (100, 36, 12 * 1024), (512, 65, 64 * 1024), (1024, 100, 128 * 1024),
        (8192, 100, 128 * 1024), (16, 31, 4 * 1024),
    ])  # fmt: skip
    def test_ggc_params(self, mem, expand, heapsize):
        """30 % + 70 % of RAM/1 GiB, and RAM/8 clamped to 4..128 MiB (gcc's own heuristics)."""
        assert ggc_params(mem) == ("--param", f"ggc-min-expand={expand}",
                                   "--param", f"ggc-min-heapsize={heapsize}")  # fmt: skip


class TestJobPaths:
    def test_without_split_dwarf(self):
        """The object is a unique file in the environment's /tmp, built from /tmp."""
        paths = job_paths(_job(args=("-O2", "-c")), "abc")  # not reproducible: 1.4's layout
        assert paths == JobPaths("/tmp", "icecc-7-abc.o", "/tmp/icecc-7-abc.o", "")

    @pytest.mark.parametrize(("output", "relative", "object_file"), [
        ("hello.o", "hello.o", "/tmp/icecc-7-u/home/me/proj/hello.o"),
        ("obj/hello.o", "obj/hello.o", "/tmp/icecc-7-u/home/me/proj/obj/hello.o"),
        ("../build/h.o", "../build/h.o", "/tmp/icecc-7-u/home/me/build/h.o"),
        ("/abs/out/h.o", "../../../abs/out/h.o", "/tmp/icecc-7-u/abs/out/h.o"),
    ])  # fmt: skip
    def test_split_dwarf_recreates_the_client_layout(self, output, relative, object_file):
        """The client's cwd and output directory are rebuilt so the .dwo path matches."""
        paths = job_paths(_job(dwarf_fission=True, output_file=output), "u")
        assert paths.cwd == "/tmp/icecc-7-u/home/me/proj"
        assert paths.output == relative
        assert paths.object_file == object_file
        assert paths.dwo_file == object_file[: -len(".o")] + ".dwo"
        assert paths.tmp_root == "/tmp/icecc-7-u"


class TestOutOfMemory:
    @pytest.mark.parametrize("text", OOM_TEXTS)
    def test_texts(self, text):
        """Each of 1.4's out-of-memory texts in stderr marks the failure as out of memory."""
        assert is_out_of_memory(f"cc1: {text} while compiling\n", 0, 1024)

    def test_fault_count_near_the_limit(self):
        """More than 85 % of the limit in page faults counts as out of memory."""
        limit_pages = 1024 * 1024 * 1024 // 4096
        assert is_out_of_memory("", limit_pages * 86 // 100, 1024)
        assert not is_out_of_memory("", limit_pages * 84 // 100, 1024)

    def test_ordinary_error(self):
        """A syntax error is the compiler's verdict, not a memory problem."""
        assert not is_out_of_memory("hello.c:1:1: error: expected ';'\n", 10, 1024)


@pytest.fixture(scope="module")
def fake_env(tmp_path_factory):
    """An environment whose /usr/bin/gcc is a static fake compiler (needs root to chroot)."""
    return build_fake_env(tmp_path_factory.mktemp("fakeenv"))


#: One job helper for the module's jobs, as a daemon has one (stopped at the end).
_STARTER = JobStarter()


@pytest.fixture(scope="module", autouse=True)
def _stop_starter():
    yield
    _STARTER.stop()


async def _fake_job(
    fake_env,
    mode: str,
    *,
    argv: list[str] | None = None,
    environ: dict[str, str] | None = None,
    run_timeout: float = 30,
) -> JobOutcome:
    root, run_as = fake_env
    job = _job(args=(f"-mode={mode}", "-c"))
    paths = job_paths(job, new_unique())
    command = argv or compiler_command(job, paths, mem_limit_mb=512)
    run = CompileRun(env_root=root, argv=command, paths=paths, run_as=run_as, nice=5,
                     mem_limit_mb=512, starter=_STARTER,
                     environ=environ or child_environment({"NOTIFY_SOCKET": "/x"}),
                     run_timeout=run_timeout)  # fmt: skip
    await run.start()
    await run.feed([b"int x;\n" * 1000, b"int y;\n"])
    await run.close_input()
    try:
        return await run.wait()
    finally:
        run.cleanup()


def _run_fake(fake_env, mode: str, **options: Any) -> JobOutcome:
    outcome = asyncio.run(asyncio.wait_for(_fake_job(fake_env, mode, **options), 60))
    assert not list((fake_env[0] / "tmp").iterdir())
    return outcome


class TestCompileRun:
    def test_success_as_the_job_user_inside_the_chroot(self, fake_env):
        """The compiler runs chroot'ed in /tmp as icecc, reads all source, leaves an object."""
        _, run_as = fake_env
        outcome = _run_fake(fake_env, "ok")
        assert outcome.status == 0
        assert outcome.stdout == f"uid={run_as.uid} gid={run_as.gid} cwd=/tmp\n"
        assert outcome.object_data == f"OBJ {7 * 1001}\n".encode()
        assert outcome.real_msec >= 0
        assert outcome.pfaults > 0
        assert not outcome.was_out_of_memory

    def test_compile_error_is_the_compilers_verdict(self, fake_env):
        """A failing compile returns its status and stderr, no object, no local retry."""
        outcome = _run_fake(fake_env, "error")
        assert (outcome.status, outcome.was_out_of_memory) == (1, False)
        assert "error: nope" in outcome.stderr
        assert outcome.object_data == b""

    def test_out_of_memory_text(self, fake_env):
        """1.4's memory texts make the client rebuild locally."""
        outcome = _run_fake(fake_env, "oom")
        assert (outcome.status, outcome.was_out_of_memory) == (EXIT_OUT_OF_MEMORY, True)

    def test_crash_makes_the_client_rebuild_locally(self, fake_env):
        """A compiler killed by a signal is reported as out of memory (our choice over 1.4's)."""
        outcome = _run_fake(fake_env, "crash")
        assert outcome.was_out_of_memory

    def test_missing_object(self, fake_env):
        """Exit 0 without an object file is a failure, not an empty object."""
        outcome = _run_fake(fake_env, "noout")
        assert outcome.status == 1
        assert "no object file" in outcome.stderr

    def test_compiler_that_cannot_start(self, fake_env):
        """A missing compiler binary is a setup failure (the daemon then drops the env)."""
        outcome = _run_fake(fake_env, "ok", argv=["/usr/bin/clang", "-c"])
        assert outcome.setup_failure.startswith("exec:")
        assert outcome.status == EXIT_COMPILER_MISSING

    def test_the_compiler_gets_exactly_the_environment_given(self, fake_env):
        """Every variable reaches the compiler as given ('=' and '--' in values too), no more."""
        environ = {"PATH": "/usr/bin", "LANG": "C", "ODD": "a=b=c", "DASHES": "--", "EMPTY": ""}
        outcome = _run_fake(fake_env, "env", environ=environ)  # prints it, writes no object
        assert sorted(outcome.stdout.splitlines()) == sorted(f"{k}={v}" for k, v in environ.items())

    def test_a_job_past_its_time_is_killed(self, fake_env):
        """A compiler still running at run_timeout is killed with its job process."""
        outcome = _run_fake(fake_env, "slow", run_timeout=0.3)  # the fake sleeps 2 s
        assert "compile job timed out" in outcome.stderr
        assert outcome.status != 0

    def test_jobs_run_side_by_side(self, fake_env):
        """Eight jobs started at once each get their own pipes and their own result."""

        async def many() -> list[JobOutcome]:
            return await asyncio.gather(*(_fake_job(fake_env, "ok") for _ in range(8)))

        outcomes = asyncio.run(asyncio.wait_for(many(), 60))
        assert [o.status for o in outcomes] == [0] * 8
        assert {o.object_data for o in outcomes} == {f"OBJ {7 * 1001}\n".encode()}

    def test_the_job_helper_comes_back_after_it_died(self, fake_env):
        """Killing the long-lived job helper costs nothing: the next job starts a new one."""
        assert _run_fake(fake_env, "ok").status == 0
        helper = _STARTER.helper_pid
        assert helper is not None
        os.kill(helper, signal.SIGKILL)
        assert _run_fake(fake_env, "ok").status == 0
        assert _STARTER.helper_pid not in (None, helper)


class TestHelperReport:
    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            (b"ok 256 120 8 4100\n", {"status": 256, "user_ms": 120, "sys_ms": 8, "faults": 4100}),
            (b"failed exec: No such file or directory\n",
             {"failure": "exec: No such file or directory"}),
            (b"", {}),  # the helper died before reporting
            (b"ok 1 2\n", {}),
            (b"ok x 1 2 3\n", {}),
            (b'{"status": 0}\n', {}),
        ],
    )  # fmt: skip
    def test_report_lines(self, line, expected):
        """The job's one report line is parsed, and anything malformed counts as no report."""
        assert parse_report(line) == expected


class TestWireText:
    def test_bytes_survive_and_nuls_go(self):
        """Undecodable bytes reach the client unchanged; NULs (unsendable) are dropped."""
        text = _wire_text(b"caf\xe9\0 ok")
        assert encode_text(text) == b"caf\xe9 ok"
