"""The local-vs-remote decision of 1.4's ``icecc`` (reference §8.4), row by row.

Each ``Row`` is one case of the reference, or one quirk of the 1.4 code
found while re-implementing it.  Every row runs twice:

* ``TestAnalyse``: through the pure ``iceserv.client.args.analyse``; the
  decision must be the row's.
* ``TestAgainstReal``: through the real ``/usr/bin/icecc`` and through our
  wrapper, each against a fake local daemon (which hands remote jobs to a
  fake compile server) with logging fake compilers on ``PATH``.  The
  decision must be the row's, and the two transcripts must be equal: every
  message on every daemon connection (GET_CS with its ``arg_flags``, file
  name, minimal version...; JOB_LOCAL_BEGIN), the COMPILE_FILE and source
  the server got, every compiler call (the preprocessor's and the local
  compile's argument vectors, ``_ICECC_SAFEGUARD``), the exit status and the
  files left behind.

Quirks of 1.4 we reproduce on purpose (each has a row): ``-s`` and other
prefixes of ``-save-temps=`` force a local build while ``-save-temps=obj``
does not; ``-Wp,-MF,x`` eats the next argument; ``-MFx`` (joined) is local;
only the last piece of a ``-Wa,`` list decides; a repeated ``-arch`` is not
refused; an input without a dot goes remote when ``-o`` is given; ``-x``
is overridden by a C++/ObjC file extension; ``-pedantic`` turns remote
preprocessing off but leaves ``-D`` in the remote arguments; a tarball with
an unknown suffix in ``ICECC_VERSION`` still takes its platform's place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from testbed.client_fakes import FakeDaemon, FakeServer

from iceserv.client import local
from iceserv.client.args import analyse
from iceserv.client.env import ClientEnv
from iceserv.client.job import LANG_C, LANG_CUSTOM, LANG_CXX, LANG_OBJC, LANG_OBJCXX
from iceserv.client.respfile import expand_response_files
from iceserv.protocol import Lang, UseCS

if TYPE_CHECKING:
    from client.bed import WrapperBed


@dataclass(frozen=True)
class Row:
    """One decision case: ``args`` after the compiler, and whether the job goes remote."""

    id: str
    args: tuple[str, ...]
    remote: bool
    compiler: str = "gcc"
    env: dict[str, str | None] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    dirs: tuple[str, ...] = ()
    mode: str = "icecc"  # "icecc" (icecc gcc ...), "symlink" (gcc -> icecc), "icerun"
    by_args: bool = True  # decided by the argument analysis alone (else by env/daemon)
    lang: int | None = None  # expected job language, if the row is about it


def r(id_: str, *args: str, remote: bool, **kw: object) -> Row:
    return Row(id_, args, remote, **kw)  # type: ignore[arg-type]


C = ("-c", "hello.c")
ROWS = [
    # --- distributed ----------------------------------------------------------------
    r("plain", *C, "-o", "hello.o", remote=True),
    r("derived-output", *C, remote=True),
    r("cxx-by-extension", "-c", "hello.cpp", remote=True, lang=LANG_CXX),
    r("cxx-by-name", *C, remote=True, compiler="g++", lang=LANG_CXX),
    r("cc-name", *C, remote=True, compiler="cc", lang=LANG_C),
    r("c++-name", *C, remote=True, compiler="c++", lang=LANG_CXX),
    r("versioned-name", *C, remote=True, compiler="gcc-12"),
    r("objc", "-c", "hello.m", remote=True, lang=LANG_OBJC),
    r("objcxx", "-c", "hello.mm", remote=True, lang=LANG_OBJCXX),
    r("S-output", "-S", "hello.c", remote=True),
    r("S-wins-over-c", "-c", "-S", "hello.c", remote=True),
    r("arg-flags-O2-g", "-O2", "-g", *C, remote=True),
    r("arg-flags-g3-Os", "-g3", "-Os", *C, remote=True),
    r("arg-flags-O0-clears", "-O2", "-O0", "-ggdb", *C, remote=True),
    r("defines-includes", "-DFOO=1", "-UBAR", "-D", "X", "-I", "inc", "-Iinc2", "-include",
      "hdr.h", "-isystem", "sys", *C, remote=True),
    r("param", "--param", "max-inline-insns-single=100", *C, remote=True),
    r("MD-adds-MF", "-MD", *C, remote=True),
    r("MMD-MF", "-MMD", "-MF", "dep.d", "-MP", *C, remote=True),
    r("MT-MQ", "-MD", "-MT", "target", "-MQ", "quoted", *C, remote=True),
    r("Wp-MD", "-Wp,-MD,dep.d", *C, remote=True),
    r("Wa-option", "-Wa,--noexecstack", *C, remote=True),
    r("Wa-readable-file", "-Wa,extra.s", *C, remote=True),
    r("Wa-last-piece-decides", "-Wa,-alh=listing.txt,--noexecstack", *C, remote=True),
    r("split-dwarf", "-gsplit-dwarf", "-g", *C, "-o", "hello.o", remote=True),
    r("x-cxx", "-x", "c++", *C, remote=True, lang=LANG_CXX),
    r("x-overridden-by-extension", "-x", "c", "-c", "hello.cpp", remote=True, lang=LANG_CXX),
    r("pedantic-stops-remote-cpp", "-pedantic", "-DX", *C, remote=True),
    r("unused-macros-stops-remote-cpp", "-Wunused-macros", "-DX", *C, remote=True),
    r("remote-cpp-off", "-DX", *C, remote=True, env={"ICECC_REMOTE_CPP": "0"}),
    r("clang-adds-target", *C, remote=True, compiler="clang"),
    r("clang-explicit-target", "-target", "x86_64-pc-linux-gnu", *C, remote=True,
      compiler="clang"),
    r("clang-rewrite-includes", "-DX", *C, remote=True, compiler="clang",
      env={"ICECC_CLANG_REMOTE_CPP": "1"}),
    r("clang++", "-c", "hello.cpp", remote=True, compiler="clang++", lang=LANG_CXX),
    r("march-native", "-march=native", "-O2", *C, remote=True),
    r("preprocessed-input", "-c", "hello.i", remote=True),
    r("preprocessed-cxx-input", "-c", "hello.ii", remote=True, lang=LANG_CXX),
    r("no-dot-input-with-o", "-c", "hello", "-o", "hello.o", remote=True),
    r("fplugin-readable", "-fplugin=plugin.so", *C, remote=True),
    r("xclang-load-readable", "-Xclang", "-load", "-Xclang", "plugin.so", *C, remote=True,
      compiler="clang"),
    r("xclang-other", "-Xclang", "-fno-pch-timestamp", *C, remote=True, compiler="clang"),
    r("color-auto-dropped", "-fdiagnostics-color=auto", *C, remote=True),
    r("no-caret", "-fno-diagnostics-show-caret", *C, remote=True),
    r("save-temps-obj-not-local", "-save-temps=obj", *C, remote=True),
    r("input-charset-joined", "-finput-charset=UTF-8", *C, remote=True),
    r("arch-twice", "-arch", "x86_64", "-arch", "i386", *C, remote=True),
    r("response-file", "@args.rsp", remote=True),
    r("symlink-gcc", "-O2", *C, remote=True, mode="symlink"),
    r("symlink-g++", "-c", "hello.cpp", remote=True, mode="symlink", compiler="g++"),
    r("preferred-host", *C, remote=True, env={"ICECC_PREFERRED_HOST": "bighost"}),
    r("ignore-unverified", *C, remote=True, env={"ICECC_IGNORE_UNVERIFIED": "1"}),
    r("env-compression-xz", *C, remote=True, env={"ICECC_ENV_COMPRESSION": "xz"}),
    r("env-compression-zstd", *C, remote=True, env={"ICECC_ENV_COMPRESSION": "zstd"}),
    r("icecc-version-list", *C, remote=True,
      env={"ICECC_VERSION": "<ENV>,aarch64:<ENV>,i686:<ENV>=arm-linux"}),
    r("native-environment", *C, remote=True, env={"ICECC_VERSION": None}, by_args=False),
    r("icecc-cc", *C, remote=True, env={"ICECC_CC": "<BIN>/gcc-12"}),
    r("caret-workaround-off", *C, remote=True, env={"ICECC_CARET_WORKAROUND": "0"}),
    # --- always local -----------------------------------------------------------------
    r("preprocess-only", "-E", "hello.c", remote=False),
    r("E-with-c", "-E", *C, remote=False),
    r("syntax-only", "-fsyntax-only", *C, remote=False),
    r("fdump", "-fdump-tree-all", *C, remote=False),
    r("time-report", "-ftime-report", *C, remote=False),
    r("combine", "-combine", *C, remote=False),
    r("M", "-M", "hello.c", remote=False),
    r("MM", "-MM", *C, remote=False),
    r("MF-joined", "-MFdep.d", *C, remote=False),
    r("Wp-MF-eats-next", "-Wp,-MF,dep.d", *C, remote=False),
    r("B-joined", "-B/usr/lib/gcc", *C, remote=False),
    r("B-separate", "-B", "/usr/lib/gcc", *C, remote=False),
    r("Wa-listing", "-Wa,-alh=listing.txt", *C, remote=False),
    r("Wa-response-file", "-Wa,@asm.rsp", *C, remote=False),
    r("Wa-missing-file", "-Wa,missing.s", *C, remote=False),
    r("coverage", "--coverage", *C, remote=False),
    r("profile-arcs", "-fprofile-arcs", *C, remote=False),
    r("profile-use", "-fprofile-use", *C, remote=False),
    r("save-temps", "-save-temps", *C, remote=False),
    r("s-is-a-save-temps-prefix", "-s", *C, remote=False),
    r("branch-probabilities", "-fbranch-probabilities", *C, remote=False),
    r("x-assembler", "-x", "assembler", *C, remote=False),
    r("x-missing-value", *C, "-x", remote=False),
    r("exec-charset", "-fexec-charset", *C, remote=False),
    r("output-stdout", *C, "-o", "-", remote=False),
    r("input-stdin", "-c", "-", "-o", "x.o", remote=False),
    r("include-dash-O", "-I", "-O2", *C, remote=False),
    r("fplugin-missing", "-fplugin=missing.so", *C, remote=False),
    r("building-pch-with-obj", "-Xclang", "-building-pch-with-obj", *C, remote=False,
      compiler="clang"),
    r("link", "hello.c", "-o", "hello", remote=False),
    r("two-inputs", "-c", "hello.c", "other.c", remote=False),
    r("autoconf-test", "-c", "conftest.c", remote=False),
    r("cmake-check", "-c", "CheckTypeSize.c", remote=False),
    r("assembler-s", "-c", "asm.s", remote=False),
    r("assembler-S", "-c", "asm.S", remote=False),
    r("fortran", "-c", "prog.f", remote=False),
    r("unknown-extension", "-c", "weird.xyz", remote=False),
    r("output-is-a-directory", *C, "-o", "outdir", remote=False, dirs=("outdir",)),
    r("no-dot-input-no-o", "-c", "hello", remote=False),
    r("custom-command", "-c", "hello.c", remote=False, compiler="true", lang=LANG_CUSTOM),
    r("icerun", *C, remote=False, mode="icerun", lang=LANG_CUSTOM),
    r("icecc-no", *C, remote=False, env={"ICECC": "no"}, by_args=False),
    r("extrafiles-missing", *C, remote=False, env={"ICECC_EXTRAFILES": "<W>/missing.txt"},
      by_args=False),
    r("icecc-version-symlink", *C, remote=False, env={"ICECC_VERSION": "<W>/link.tar.gz"},
      by_args=False),
    r("icecc-version-too-small", *C, remote=False, env={"ICECC_VERSION": "<W>/small.tar.gz"},
      by_args=False),
    r("icecc-version-unknown-suffix", *C, remote=False,
      env={"ICECC_VERSION": "<W>/env.zip,<ENV>"}, by_args=False),
    r("icecc-version-prefix-mismatch", *C, remote=False,
      env={"ICECC_VERSION": "<ENV>=arm-linux"}, by_args=False),
]
FILES = {"asm.rsp": "-alh\n", "small.tar.gz": "tiny", "env.zip": "x" * 600}


def _id(row: Row) -> str:
    return row.id


class TestTable:
    def test_ids_are_unique(self):
        """Every row has its own id."""
        assert len({row.id for row in ROWS}) == len(ROWS)

    def test_both_decisions_are_covered(self):
        """The table has many rows of each kind."""
        assert sum(row.remote for row in ROWS) > 40
        assert sum(not row.remote for row in ROWS) > 40

    def test_languages_agree_with_the_protocol(self):
        """The wrapper's language numbers are iceserv.protocol.Lang's."""
        ours = (LANG_C, LANG_CXX, LANG_OBJC, LANG_OBJCXX, LANG_CUSTOM)
        assert ours == (Lang.C, Lang.CXX, Lang.OBJC, Lang.OBJCXX, Lang.CUSTOM)


def _expand(value: str, bed: WrapperBed) -> str:
    return (value.replace("<ENV>", str(bed.tarball))
            .replace("<BIN>", str(bed.compiler.bin)))  # fmt: skip


class TestAnalyse:
    @pytest.mark.parametrize("row", [row for row in ROWS if row.by_args], ids=_id)
    def test_decision(self, row: Row, bed: WrapperBed, monkeypatch):
        """analyse() decides as the row says (and finds the row's language)."""
        bed.prepare(FILES, row.dirs, {"link.tar.gz": str(bed.tarball)})
        monkeypatch.chdir(bed.workdir)
        environ = {**bed.base_env(), **{k: _expand(v, bed) for k, v in row.env.items()
                                        if v is not None}}  # fmt: skip
        env = ClientEnv.from_mapping(environ)
        args = expand_response_files(["icecc", *row.args], local.read_response_file)[1:]
        analysis = analyse(
            args, compiler_name=row.compiler, compiler_path=row.compiler,
            icerun=row.mode == "icerun", env=env, cwd=str(bed.workdir),
            readable=local.readable, irregular=local.irregular,
        )  # fmt: skip
        assert (analysis.local_reason is None) == row.remote, analysis
        if row.lang is not None:
            assert analysis.job.lang == row.lang


def _argv(bed: WrapperBed, which: str, row: Row) -> tuple[list[str], dict[str, str]]:
    program = bed.program(which, row.mode)
    if row.mode != "symlink":
        return [program, row.compiler, *row.args], {}
    links = bed.root / f"links-{which}"
    links.mkdir(exist_ok=True)
    link = links / row.compiler
    if not link.is_symlink():
        link.symlink_to(program)
    path = f"{links}:{bed.compiler.bin}:/usr/bin:/bin"
    return [str(link), *row.args], {"PATH": path}


def _run(bed: WrapperBed, which: str, row: Row):
    argv, extra = _argv(bed, which, row)
    env = {k: (None if v is None else _expand(v, bed)) for k, v in row.env.items()}
    env.update(extra)
    if row.env.get("ICECC_VERSION", "") is None:
        daemon = FakeDaemon(bed.root / "d.sock", native=str(bed.tarball))
    else:
        daemon = FakeDaemon(bed.root / "d.sock")
    server = FakeServer()
    daemon.use_cs = UseCS(job_id=42, port=-1, hostname="localhost", host_platform="x86_64",
                          got_env=True, client_id=1)  # fmt: skip
    links = {"link.tar.gz": str(bed.tarball)}
    return bed.run(argv, env=env, files=FILES, dirs=row.dirs, links=links, daemon=daemon,
                   server=server)  # fmt: skip


class TestAgainstReal:
    @pytest.mark.parametrize("row", ROWS, ids=_id)
    def test_same_as_real_icecc(self, row: Row, bed: WrapperBed):
        """The real 1.4 client and ours decide alike and leave identical transcripts."""
        real = _run(bed, "real", row)
        ours = _run(bed, "ours", row)
        assert real.remote == row.remote, real.stderr.decode()
        assert ours.remote == row.remote, ours.stderr.decode()
        assert ours.status == real.status, (ours.stderr.decode(), real.stderr.decode())
        assert ours.daemon == real.daemon
        assert ours.server == real.server
        assert ours.calls == real.calls
        assert ours.files == real.files
        assert ours.stdout == real.stdout
