"""CompileJob: what 1.4 derives from an analysed job (arg_flags, names, command lines, colours)."""

from __future__ import annotations

import pytest

from iceserv.client.env import ClientEnv
from iceserv.client.job import (
    LANG_C,
    LANG_CUSTOM,
    LANG_CXX,
    LOCAL,
    REMOTE,
    REST,
    CompileJob,
    absolute,
    colorify,
    colorify_wanted,
    has_color_output,
    output_needs_workaround,
)


def job(*args: tuple[str, int], name: str = "gcc", lang: int = LANG_C, **kw: object) -> CompileJob:
    return CompileJob(compiler_name=name, lang=lang, args=tuple(args), **kw)  # type: ignore[arg-type]


class TestArgFlags:
    @pytest.mark.parametrize(("args", "flags"), [
        ((), 0), (("-g",), 0x1), (("-ggdb",), 0x1), (("-g3",), 0x2), (("-g3", "-g"), 0x1),
        (("-g", "-g3"), 0x2), (("-O",), 0x4), (("-O1",), 0x4), (("-O2",), 0x8), (("-O3",), 0x10),
        (("-Os",), 0x10), (("-Ofast",), 0x10), (("-O2", "-O0"), 0), (("-O3", "-O2"), 0x8),
        (("-g", "-O2"), 0x9), (("-",), 0), (("hello.c",), 0), (("-gsplit-dwarf",), 0x1),
    ])  # fmt: skip
    def test_bits(self, args, flags):
        """g/g3 and O levels as 1.4's argumentFlags computes them; later ones win."""
        assert job(*((a, REST) for a in args)).arg_flags() == flags

    def test_local_arguments_count_too(self):
        """1.4 scans every argument, local ones included."""
        assert job(("-O2", LOCAL)).arg_flags() == 0x8


class TestNames:
    @pytest.mark.parametrize(("name", "lang", "remote"), [
        ("gcc", LANG_C, "gcc"), ("gcc", LANG_CXX, "g++"), ("c++", LANG_CXX, "g++"),
        ("cc", LANG_C, "gcc"), ("clang", LANG_CXX, "clang"), ("clang++-14", LANG_CXX, "clang"),
        ("x86_64-linux-gnu-gcc-12", LANG_C, "gcc"),
    ])  # fmt: skip
    def test_remote_compiler_name(self, name, lang, remote):
        """Environments hold gcc, g++ and clang under fixed names."""
        assert job(name=name, lang=lang).remote_compiler_name() == remote

    def test_get_cs_filename(self):
        """Remote args, then rest args, then the absolute input, each after a slash."""
        j = job(("-O2", REST), ("-I", LOCAL), ("inc", LOCAL), ("-c", REMOTE))
        assert j.get_cs_filename("/src/a.c") == "/-c/-O2/src/a.c"

    @pytest.mark.parametrize(("out", "dwo"), [("a.o", "a.dwo"), ("dir.x/a", "dir.dwo"),
                                              ("a", "a.dwo")])  # fmt: skip
    def test_dwo_file(self, out, dwo):
        """The .dwo replaces the output's last extension (1.4's rfind('.'))."""
        assert job(output_file=out).dwo_file() == dwo

    @pytest.mark.parametrize(("path", "cwd", "expected"), [
        ("a.c", "/w", "/w/a.c"), ("../x/a.c", "/w/sub", "/w/x/a.c"), ("/a/./b//c", "/", "/a/b/c"),
        ("/../a", "/", "/a"), ("", "/w", ""),
    ])  # fmt: skip
    def test_absolute(self, path, cwd, expected):
        """1.4 get_absfilename folds /../, /./ and // textually."""
        assert absolute(path, cwd) == expected


class TestCommandLines:
    def test_local_argv(self):
        """All args in order, the input, -o output; -fdirectives-only never runs locally."""
        j = job(("-O2", REST), ("-I", LOCAL), ("inc", LOCAL), ("-c", REMOTE),
                ("-fdirectives-only", REMOTE), input_file="a.c", output_file="a.o")  # fmt: skip
        assert j.local_argv("/usr/bin/gcc") == ["/usr/bin/gcc", "-O2", "-I", "inc", "-c", "a.c",
                                                "-o", "a.o"]  # fmt: skip

    def test_cpp_argv_drops_pch_and_module_flags(self, tmp_path, monkeypatch):
        """-include of a PCH-only header, -include-pch, -fpch-preprocess, modules: dropped."""
        monkeypatch.chdir(tmp_path)
        (tmp_path / "pch.h.gch").write_text("")
        (tmp_path / "real.h").write_text("")
        (tmp_path / "x.pch").write_text("")
        j = job(("-include", LOCAL), ("pch.h", LOCAL), ("-include", LOCAL), ("real.h", LOCAL),
                ("-include-pch", LOCAL), ("x.pch", LOCAL), ("-fpch-preprocess", REST),
                ("-fmodules", LOCAL), ("-fmodules-cache-path=/m", LOCAL), ("-O2", REST),
                ("-c", REMOTE), input_file="a.c")  # fmt: skip
        env = ClientEnv.from_mapping({})
        argv = j.cpp_argv("/usr/bin/gcc", env, lambda p: (tmp_path / p).exists())
        assert argv == ["/usr/bin/gcc", "-include", "real.h", "-O2", "-E", "a.c",
                        "-fdirectives-only"]  # fmt: skip

    @pytest.mark.parametrize(("name", "environ", "tail"), [
        ("gcc", {}, ["-fdirectives-only"]), ("gcc", {"ICECC_REMOTE_CPP": "0"}, []),
        ("clang", {}, []), ("clang", {"ICECC_CLANG_REMOTE_CPP": "1"}, ["-frewrite-includes"]),
        ("clang", {"ICECC_REMOTE_CPP": "1", "ICECC_CLANG_REMOTE_CPP": "0"},
         ["-frewrite-includes"]),
    ])  # fmt: skip
    def test_remote_preprocessing_switches(self, name, environ, tail):
        """gcc rewrites by default, clang only when asked; ICECC_REMOTE_CPP overrides both."""
        argv = job(name=name, input_file="a.c").cpp_argv(
            "/cc", ClientEnv.from_mapping(environ), lambda _p: False
        )
        assert argv == ["/cc", "-E", "a.c", *tail]

    def test_preprocessed_input_is_sent_as_is(self):
        """.i and .ii inputs go through cat."""
        env = ClientEnv.from_mapping({})
        assert job(input_file="a.ii").cpp_argv("/cc", env, lambda _p: False) == [
            "/bin/cat", "a.ii",
        ]  # fmt: skip


class TestColours:
    @pytest.mark.parametrize(("name", "environ", "terminal", "compiler", "ours"), [
        ("gcc", {}, False, False, False),
        ("gcc", {}, True, False, True),
        ("gcc", {"GCC_COLORS": "x"}, True, True, False),
        ("gcc", {"ICECC_COLOR_DIAGNOSTICS": "1"}, True, True, False),
        ("gcc", {"ICECC_COLOR_DIAGNOSTICS": "0"}, True, False, False),
        ("gcc", {"EMACS": "t"}, True, False, False),
        ("clang", {}, True, True, False),
    ])  # fmt: skip
    def test_who_colours(self, name, environ, terminal, compiler, ours):
        """The compiler colours (clang, or gcc when told), else the wrapper on a terminal."""
        j = job(name=name)
        env = ClientEnv.from_mapping(environ)
        assert has_color_output(j, env, color_terminal=terminal) is compiler
        assert colorify_wanted(j, env, color_terminal=terminal) is ours

    def test_colorify(self):
        """error lines bold red, warning lines cyan, the rest unchanged."""
        text = "a.c:1: error: x\na.c:2: warning: y\nnote\n"
        assert colorify(text) == ("\x1b[1;31ma.c:1: error: x\x1b[0m\n"
                                  "\x1b[36ma.c:2: warning: y\x1b[0m\nnote\n")  # fmt: skip

    @pytest.mark.parametrize(("name", "environ", "no_caret", "needed"), [
        ("gcc", {}, False, True), ("gcc", {"ICECC_CARET_WORKAROUND": "0"}, False, False),
        ("gcc", {"ICECC_CARET_WORKAROUND": "1"}, False, True), ("gcc", {}, True, False),
        ("clang", {}, False, False),
    ])  # fmt: skip
    def test_caret_workaround(self, name, environ, no_caret, needed):
        """gcc output is redone locally unless told otherwise or carets are off."""
        j = job(name=name, explicit_no_caret=no_caret)
        assert output_needs_workaround(j, ClientEnv.from_mapping(environ)) is needed

    def test_custom_commands_are_never_coloured(self):
        """icerun commands keep their output as it is."""
        j = job(name="make", lang=LANG_CUSTOM)
        assert not colorify_wanted(j, ClientEnv.from_mapping({}), color_terminal=True)


class TestRecord:
    def test_evolve_and_equality(self):
        """evolve() copies; equal fields compare equal; the repr names fields."""
        a = job(("-c", REMOTE), input_file="a.c")
        b = a.evolve(input_file="b.c")
        assert (a.input_file, b.input_file) == ("a.c", "b.c")
        assert a == a.evolve()
        assert a != b
        assert "input_file='a.c'" in repr(a)
