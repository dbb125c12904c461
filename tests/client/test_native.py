"""-march=native expansion: the flags the local compiler would use (1.4's diff of -###)."""

from __future__ import annotations

import subprocess

import pytest

from iceserv.client.job import REST, CompileJob
from iceserv.client.native import arch_flags, replace_native

GCC_NORMAL = (' /usr/lib/gcc/x86_64-linux-gnu/12/cc1 -E -quiet - "-mtune=generic" '
              '"-march=x86-64" -dumpbase -\nCOLLECT_GCC_OPTIONS\n')  # fmt: skip
GCC_NATIVE = (' /usr/lib/gcc/x86_64-linux-gnu/12/cc1 -E -quiet - "-march=znver3" -mmmx -msse '
              "--param l1-cache-size=32 -mtune=znver3 -dumpbase -\n"
              "COLLECT_GCC_OPTIONS\n")  # fmt: skip
CLANG_NORMAL = ' "/usr/lib/llvm-14/bin/clang" "-cc1" "-E" "-target-cpu" "x86-64" "-x" "c"\n'
CLANG_NATIVE = (' "/usr/lib/llvm-14/bin/clang" "-cc1" "-E" "-target-cpu" "znver3" '
                '"-target-feature" "+avx2" "-x" "c"\n')  # fmt: skip


class TestDiff:
    def test_gcc(self):
        """gcc: the differing cc1 arguments, quotes removed."""
        assert arch_flags(GCC_NORMAL, GCC_NATIVE, clang=False) == [
            "-march=znver3", "-mmmx", "-msse", "--param", "l1-cache-size=32", "-mtune=znver3",
        ]  # fmt: skip

    def test_clang_backs_up_to_the_option_and_adds_xclang(self):
        """clang: '-target-cpu' is taken along with its value; each flag gets -Xclang."""
        assert arch_flags(CLANG_NORMAL, CLANG_NATIVE, clang=True) == [
            "-Xclang", "-target-cpu", "-Xclang", "znver3", "-Xclang", "-target-feature",
            "-Xclang", "+avx2",
        ]  # fmt: skip

    def test_no_difference(self):
        """A flag that changes nothing expands to nothing."""
        assert arch_flags(GCC_NORMAL, GCC_NORMAL, clang=False) == []

    def test_unusable_output(self):
        """Without a cc1 line (gcc) the expansion fails."""
        assert arch_flags("no compiler here\n", "nor here\n", clang=False) is None

    def test_real_gcc_expands_to_an_explicit_march(self):
        """With the real gcc the first flag is an explicit -march=."""
        probe = ["gcc", "-###", "-E", "-"]
        normal = subprocess.run(probe, input="", capture_output=True, text=True, timeout=60,
                                check=True).stderr  # fmt: skip
        native = subprocess.run([*probe, "-march=native"], input="", capture_output=True,
                                text=True, timeout=60, check=True).stderr  # fmt: skip
        flags = arch_flags(normal, native, clang=False)
        assert flags
        assert flags[0].startswith("-march=")
        assert "-march=native" not in flags


@pytest.mark.parametrize("first", ["-march=native", "-mtune=native"])
def test_replace_native(first):
    """The flags go where the first -m...=native was; later ones are dropped."""
    job = CompileJob(compiler_name="gcc", args=(("-O2", REST), (first, REST), ("-c", 1),
                                         ("-mcpu=native", REST)))  # fmt: skip
    assert replace_native(job, ["-march=x", "-mavx"]).all_flags() == [
        "-O2", "-march=x", "-mavx", "-c",
    ]  # fmt: skip
