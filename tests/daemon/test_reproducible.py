"""Reproducible remote gcc jobs: when they apply, their layout, the stream filter, real gcc.

The last class runs the real gcc the way a reproducible job runs it (the
filtered directives-only stream written below a job directory, the command
line of ``compiler_command``, without the chroot) and compares the object
with a plain local ``gcc -c`` byte for byte, ``-g`` included.  The whole path
through a cluster is ``tests/integration/test_reproducible_live.py``.
"""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iceserv.daemon.compile import compiler_command, job_paths
from iceserv.daemon.reproducible import SourceFilter, applies, layout
from iceserv.protocol import CompileFile, Lang, records

if TYPE_CHECKING:
    from pathlib import Path

JOB = CompileFile(
    lang=Lang.C, job_id=7, args=("-g", "-O2", "-c", "-fdirectives-only"), environment="env",
    target="x86_64", compiler_name="gcc", input_file="src/hello.c",
    working_dir="/home/me/proj", output_file="obj/hello.o",
)  # fmt: skip
HEAD = (b'# 0 "src/hello.c"\n# 1 "/home/me/proj//"\n# 0 "<built-in>"\n'
        b'#define __STDC__ 1\n# 0 "<built-in>"\n#define __GNUC__ 12\n'
        b'# 0 "<command-line>"\n#define FOO 1\n'
        b'# 1 "/usr/include/stdc-predef.h" 1 3 4\n#define __STDC_IEC_559__ 1\n'
        b'# 0 "<command-line>" 2\n# 1 "src/hello.c"\nint x;\n')  # fmt: skip
FILTERED = (b'# 0 "src/hello.c"\n\n# 0 "<built-in>"\n\n# 0 "<built-in>"\n\n'
            b'# 0 "<command-line>"\n#define FOO 1\n# 1 "/usr/include/stdc-predef.h" 1 3 4\n'
            b'#define __STDC_IEC_559__ 1\n# 0 "<command-line>" 2\n'
            b'# 1 "src/hello.c"\nint x;\n')  # fmt: skip


def _job(**changes: object) -> CompileFile:
    return records.replace(JOB, **changes)


class TestApplies:
    def test_a_gcc_directives_only_job(self):
        """gcc, -fdirectives-only among the arguments and a named source: reproducible."""
        assert applies(JOB, "gcc")
        assert applies(_job(compiler_name="g++", lang=Lang.CXX), "g++")

    @pytest.mark.parametrize("job", [
        _job(args=("-g", "-c")),  # the client preprocessed fully (1.4's mode stays)
        _job(compiler_name="clang"),
        _job(input_file=""),
        _job(input_file="pre.i"),
        _job(input_file="pre.ii"),
        _job(args=(*JOB.args, "-pedantic")),
        _job(args=(*JOB.args, "-Wpedantic")),
        _job(args=(*JOB.args, "-fdebug-prefix-map=/home/me=.")),
        _job(args=(*JOB.args, "-ffile-prefix-map=/home/me=.")),
        _job(input_file="../../../../etc/passwd"),
        _job(input_file="/abs/../../x.c"),
    ])  # fmt: skip
    def test_jobs_that_keep_the_14_mode(self, job):
        """Where the modes are not equivalent, or the input leaves the job directory: 1.4's."""
        assert not applies(job, job.compiler_name)


class TestLayout:
    @pytest.mark.parametrize(("name", "source", "arg"), [
        ("src/hello.c", "/tmp/j/home/me/proj/src/hello.c", "src/hello.c"),
        ("../other/x.c", "/tmp/j/home/me/other/x.c", "../other/x.c"),
        ("/abs/x.c", "/tmp/j/abs/x.c", "/tmp/j/abs/x.c"),
    ])  # fmt: skip
    def test_the_client_tree_below_the_job_directory(self, name, source, arg):
        """The source sits where the client's is, below the job directory; cwd likewise."""
        found = layout(_job(input_file=name), "/tmp/j")
        assert (found.cwd, found.source, found.input_arg) == ("/tmp/j/home/me/proj", source, arg)
        assert found.output == "obj/hello.o"
        assert found.object_file == "/tmp/j/home/me/proj/obj/hello.o"

    def test_command_line(self):
        """No -fpreprocessed, -fdirectives-only or ggc parameters; the job dir maps to /."""
        paths = job_paths(JOB, "u")
        assert paths.source_file == "/tmp/icecc-7-u/home/me/proj/src/hello.c"
        assert compiler_command(JOB, paths, mem_limit_mb=1024) == [
            "/usr/bin/gcc", "-x", "c", "-g", "-O2", "-c", "-nostdinc", "src/hello.c", "-o",
            "obj/hello.o",
            "-fdebug-prefix-map=/tmp/icecc-7-u/=/",
        ]  # fmt: skip


class TestSourceFilter:
    def test_head(self):
        """Built-in definitions and the working-directory marker go; the rest stays."""
        stream = SourceFilter()
        assert stream.feed(HEAD) + stream.finish() == FILTERED

    @given(st.lists(st.integers(1, len(HEAD) - 1), max_size=8))
    def test_any_chunking(self, cuts):
        """However the stream is cut into chunks, the result is the same."""
        stream, out, last = SourceFilter(), b"", 0
        for cut in sorted(set(cuts)):
            out += stream.feed(HEAD[last:cut])
            last = cut
        out += stream.feed(HEAD[last:]) + stream.finish()
        assert out == FILTERED

    def test_after_the_head_nothing_changes(self):
        """#define lines of the source itself and later built-in names pass untouched."""
        stream = SourceFilter()
        body = b'#define __GNUC__ 99\n# 5 "<built-in>"\n#define Y 2\n'
        assert stream.feed(HEAD + body) + stream.finish() == FILTERED + body


SOURCES = {
    "src/hello.c": "#include <stdio.h>\n#define SQ(x) ((x)*(x))\nstatic int  f(int a)"
    ' { return SQ(a) + 1; }\nint main(void) { printf("%d\\n", f(3)); '
    "return FOO; }\n",
    "src/h.cc": "#include <vector>\n#include <string>\nnamespace { int anon(int x) "
    "{ return x * 2; } }\nstruct S { std::vector<std::string> v; int f() const "
    '{ return anon((int)v.size()); } };\nint use() { S s; s.v.push_back("x"); '
    "return s.f() + FOO; }\nstatic S gs;\n",
}


class TestRealGcc:
    """The reproducible command line on real gcc gives the local object (no chroot here)."""

    @pytest.mark.parametrize("name", ["src/hello.c", "src/h.cc"])
    @pytest.mark.parametrize("flags", [("-g", "-O2"), ("-g", "-O0"), ("-O2",)])
    @pytest.mark.parametrize("absolute", [False, True])
    def test_byte_identical(self, tmp_path: Path, name, flags, absolute):
        """-g objects from the job directory equal a local gcc -c, byte for byte."""
        compiler, lang = ("g++", Lang.CXX) if name.endswith(".cc") else ("gcc", Lang.C)
        proj = tmp_path / "home" / "proj"
        (proj / "src").mkdir(parents=True)
        (proj / "obj").mkdir()
        (proj / name).write_text(SOURCES[name])
        given_name = str(proj / name) if absolute else name
        local = ["/usr/bin/" + compiler, *flags, "-DFOO=1", "-c", given_name, "-o", "obj/l.o"]
        subprocess.run(local, cwd=proj, check=True, timeout=120)
        stream = subprocess.run(["/usr/bin/" + compiler, *flags, "-DFOO=1", "-E",
                                 "-fdirectives-only", given_name], cwd=proj, check=True,
                                capture_output=True, timeout=120).stdout  # fmt: skip
        job = _job(lang=lang, compiler_name=compiler, input_file=given_name,
                   working_dir=str(proj), output_file="obj/r.o",
                   args=(*flags, "-c", "-fdirectives-only"))  # fmt: skip
        root = tmp_path / "env"  # stands for the chroot
        paths = job_paths(job, "u")
        filtered = SourceFilter()
        source = root / paths.source_file.lstrip("/")
        source.parent.mkdir(parents=True)
        (root / paths.object_file.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(filtered.feed(stream) + filtered.finish())
        argv = compiler_command(job, paths, mem_limit_mb=1024)
        # Without a chroot the job directory's paths get the env root in front.
        outside = str(root) + paths.tmp_root
        argv = [a.replace(paths.tmp_root, outside) for a in argv]
        done = subprocess.run(argv, cwd=str(root) + paths.cwd, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        remote = root / paths.object_file.lstrip("/")
        assert remote.read_bytes() == (proj / "obj" / "l.o").read_bytes()
        assert os.path.getsize(remote) > 0  # noqa: PTH202
