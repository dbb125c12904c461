"""The option tables of icecream 1.4's ``client/arg.cpp``, as data.

Owns which compiler options take a separate value, which force a local
build, which languages ``-x`` and file extensions select, and the
classification of the compiler by its name.  Only constants and two tiny
pure functions; :mod:`iceserv.client.args` walks these tables.
"""

from iceserv.client.job import LANG_C, LANG_CUSTOM, LANG_CXX, LANG_OBJC, LANG_OBJCXX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "CONFIGURE_PREFIXES",
    "COVERAGE",
    "EXT_LANGS",
    "FILE_PREFIXES",
    "LOCAL_EXTS",
    "NATIVE",
    "PATH_OPTIONS",
    "SAVE_TEMPS_QUIRK",
    "WITH_SPACE",
    "X_LANGS",
    "language_of",
    "needs_space",
]

# 1.4 is_argument_with_space(): options whose value is the next argument.
WITH_SPACE: "Final" = frozenset(
    (
        "-dyld-prefix",
        "-gcc-toolchain",
        "--param",
        "--sysroot",
        "--system-header-prefix",
        "-target",
        "--assert",
        "--allowable_client",
        "-arch",
        "-arch_only",
        "-arcmt-migrate-report-output",
        "--prefix",
        "-bundle_loader",
        "-dependency-dot",
        "-dependency-file",
        "-dylib_file",
        "-exported_symbols_list",
        "--bootclasspath",
        "--CLASSPATH",
        "--classpath",
        "--resource",
        "--encoding",
        "--extdirs",
        "-filelist",
        "-fmodule-implementation-of",
        "-fmodule-name",
        "-fmodules-user-build-path",
        "-fnew-alignment",
        "-force_load",
        "--output-class-directory",
        "-framework",
        "-frewrite-map-file",
        "-ftrapv-handler",
        "-image_base",
        "-init",
        "-install_name",
        "-lazy_framework",
        "-lazy_library",
        "-meabi",
        "-mhwdiv",
        "-mllvm",
        "-module-dependency-dir",
        "-mthread-model",
        "-multiply_defined",
        "-multiply_defined_unused",
        "-rpath",
        "--rtlib",
        "-seg_addr_table",
        "-seg_addr_table_filename",
        "-segs_read_only_addr",
        "-segs_read_write_addr",
        "-serialize-diagnostics",
        "--serialize-diagnostics",
        "-std",
        "--stdlib",
        "--force-link",
        "-umbrella",
        "-unexported_symbols_list",
        "-weak_library",
        "-weak_reference_mismatches",
        "-B",
        "-D",
        "-U",
        "-I",
        "-i",
        "--include-directory",
        "-L",
        "-l",
        "--library-directory",
        "-MF",
        "-MT",
        "-MQ",
        "-cxx-isystem",
        "-c-isystem",
        "-idirafter",
        "--include-directory-after",
        "-iframework",
        "-iframeworkwithsysroot",
        "-imacros",
        "-imultilib",
        "-iprefix",
        "--include-prefix",
        "-iquote",
        "-include",
        "-include-pch",
        "-isysroot",
        "-isystem",
        "-isystem-after",
        "-ivfsoverlay",
        "-iwithprefix",
        "--include-with-prefix",
        "--include-with-prefix-after",
        "-iwithprefixbefore",
        "--include-with-prefix-before",
        "-iwithsysroot",
    )
)
# Path-style options with a separate value: local only; a value "-O..." forces local.
PATH_OPTIONS: "Final" = WITH_SPACE & frozenset(
    (
        "-I",
        "-i",
        "--include-directory",
        "-L",
        "-l",
        "--library-directory",
        "-cxx-isystem",
        "-c-isystem",
        "-idirafter",
        "--include-directory-after",
        "-iframework",
        "-iframeworkwithsysroot",
        "-imacros",
        "-imultilib",
        "-iprefix",
        "--include-prefix",
        "-iquote",
        "-include",
        "-include-pch",
        "-isysroot",
        "-isystem",
        "-isystem-after",
        "-ivfsoverlay",
        "-iwithprefix",
        "--include-with-prefix",
        "--include-with-prefix-after",
        "-iwithprefixbefore",
        "--include-with-prefix-before",
        "-iwithsysroot",
    )
)
COVERAGE: "Final" = frozenset(
    (
        "-fprofile-arcs",
        "-ftest-coverage",
        "--coverage",
        "-frepo",
        "-fprofile-generate",
        "-fprofile-use",
        "-save-temps",
        "--save-temps",
        "-fbranch-probabilities",
    )
)
# 1.4 tests str_startswith(a, "-save-temps=") with the arguments swapped: it matches
# every *prefix* of "-save-temps=" / "--save-temps=" ("-s", "--", "-save"...), and never
# "-save-temps=obj".  Reproduced, because it decides local vs remote.
SAVE_TEMPS_QUIRK: "Final" = frozenset(
    word[:n] for word in ("-save-temps=", "--save-temps=") for n in range(1, len(word) + 1)
)
X_LANGS: "Final" = {
    "c": LANG_C,
    "c++": LANG_CXX,
    "objective-c": LANG_OBJC,
    "objective-c++": LANG_OBJCXX,
}
EXT_LANGS: "Final" = {
    "cc": LANG_CXX,
    "cpp": LANG_CXX,
    "cxx": LANG_CXX,
    "cp": LANG_CXX,
    "c++": LANG_CXX,
    "C": LANG_CXX,
    "ii": LANG_CXX,
    "mi": LANG_OBJC,
    "m": LANG_OBJC,
    "mii": LANG_OBJCXX,
    "mm": LANG_OBJCXX,
    "M": LANG_OBJCXX,
}
LOCAL_EXTS: "Final" = frozenset(("s", "S", "ads", "adb", "f", "for", "FOR", "F", "fpp", "FPP", "r"))
FILE_PREFIXES: "Final" = ("-fplugin=", "-fsanitize-blacklist=", "-fprofile-sample-use=")
CONFIGURE_PREFIXES: "Final" = (
    "conftest.",
    "tmp.conftest.",
    "CheckIncludeFile.",
    "CheckFunctionExists.",
    "CheckSymbolExists.",
    "CheckTypeSize.",
    "CheckPrototypeDefinition.",
)
NATIVE: "Final" = ("-march=native", "-mcpu=native", "-mtune=native")


def needs_space(arg: str) -> bool:
    """1.4 ``is_argument_with_space``: *arg*'s value is the next argument."""
    return arg in WITH_SPACE


def language_of(compiler_name: str) -> int:
    """Job language from the compiler's basename (1.4 ``is_cpp_compiler``/``is_c_compiler``)."""
    if "g++" in compiler_name or "clang++" in compiler_name or compiler_name == "c++":
        return LANG_CXX
    if "++" in compiler_name:
        return LANG_CUSTOM
    if "gcc" in compiler_name or "clang" in compiler_name or compiler_name == "cc":
        return LANG_C
    return LANG_CUSTOM
