"""One compile job as the argument analysis leaves it, and what is derived from it.

Owns :class:`CompileJob` (1.4's ``CompileJob`` as far as the client fills it): the
compiler name, the language, every argument tagged *local* (only for
preprocessing), *remote* (only for the compile server) or *rest* (both), the
input and output files, and the flags the analysis noticed.  Also the pure
functions 1.4 derives from a job: the ``arg_flags`` statistics bits, the
GET_CS file name, the compiler name sent to the server, the local command
line, the preprocessor command line, and whether includes are rewritten
locally (``compiler_only_rewrite_includes``).  No I/O here.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Final

    from iceserv.client.env import ClientEnv

__all__ = [
    "LANG_C",
    "LANG_CUSTOM",
    "LANG_CXX",
    "LANG_OBJC",
    "LANG_OBJCXX",
    "LOCAL",
    "REMOTE",
    "REST",
    "CompileJob",
    "absolute",
    "colorify",
    "colorify_wanted",
    "has_color_output",
    "output_needs_workaround",
]

# Argument classes (1.4 ``Argument_Type``).
LOCAL: "Final" = 0  # preprocessing only: never sent to the compile server
REMOTE: "Final" = 1  # compile server only
REST: "Final" = 2  # both

# Job languages; the same numbers as iceserv.protocol.Lang, which the wrapper
# cannot import before it talks to a daemon (a test checks they agree).
LANG_C: "Final" = 0
LANG_CXX: "Final" = 1
LANG_OBJC: "Final" = 2
LANG_OBJCXX: "Final" = 3
LANG_CUSTOM: "Final" = 4

# Flags dropped from the preprocessor command line (1.4 ``call_cpp``).
_MODULE_FLAGS: "Final" = frozenset({"-fmodules", "-fcxx-modules", "-fmodules-ts"})


class CompileJob:
    """A compile job; treat it as immutable and derive changed copies with :meth:`evolve`."""

    __slots__ = (
        "args",
        "block_rewrite_includes",
        "compiler_name",
        "compiler_path",
        "dwarf_fission",
        "explicit_color",
        "explicit_no_caret",
        "input_file",
        "lang",
        "output_file",
    )

    def __init__(  # noqa: PLR0913 - one parameter per field of a plain record
        self,
        *,
        compiler_name: str,
        compiler_path: str = "",
        lang: int = LANG_C,
        args: tuple[tuple[str, int], ...] = (),
        input_file: str = "",
        output_file: str = "",
        dwarf_fission: bool = False,
        explicit_color: bool = False,
        explicit_no_caret: bool = False,
        block_rewrite_includes: bool = False,
    ) -> None:
        self.compiler_name = compiler_name  # basename, e.g. "gcc", "clang++-14"
        self.compiler_path = compiler_path  # as given to "icecc NAME", or ""
        self.lang = lang
        self.args = args
        self.input_file = input_file
        self.output_file = output_file
        self.dwarf_fission = dwarf_fission
        self.explicit_color = explicit_color
        self.explicit_no_caret = explicit_no_caret
        self.block_rewrite_includes = block_rewrite_includes

    def evolve(self, **changes: object) -> "CompileJob":
        """Return a copy with *changes* applied."""
        values = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        return CompileJob(**values)

    def __eq__(self, other: object) -> bool:
        """Field-wise equality."""
        if not isinstance(other, CompileJob):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        """All fields."""
        return "CompileJob(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"

    # --- views of the arguments -----------------------------------------------------

    def flags(self, kind: int) -> list[str]:
        """Return the arguments of one class, in command-line order."""
        return [arg for arg, k in self.args if k == kind]

    def non_local_flags(self) -> list[str]:
        """Remote and rest arguments in order: COMPILE_FILE's list (protocol >= 41)."""
        return [arg for arg, k in self.args if k != LOCAL]

    def all_flags(self) -> list[str]:
        """Every argument in order."""
        return [arg for arg, _ in self.args]

    @property
    def is_custom(self) -> bool:
        """Not a recognised compiler (or ``icerun``): always local."""
        return self.lang == LANG_CUSTOM

    @property
    def is_clang(self) -> bool:
        """1.4 ``compiler_is_clang``: the compiler name contains "clang" (custom never)."""
        return not self.is_custom and "clang" in self.compiler_name

    def arg_flags(self) -> int:
        """GET_CS ``arg_flags`` (1.4 ``CompileJob::argumentFlags``), over every argument.

        Only the remote path asks, and it has loaded the protocol already.
        """
        from iceserv.protocol import ArgFlag  # noqa: PLC0415 - see above

        result = ArgFlag.NONE
        for arg, _ in self.args:
            if len(arg) < 2 or arg[0] != "-":
                continue
            if arg[1] == "g":
                if arg[2:3] == "3":
                    result = (result & ~ArgFlag.G) | ArgFlag.G3
                else:
                    result = (result & ~ArgFlag.G3) | ArgFlag.G
            elif arg[1] == "O":
                result &= ~(ArgFlag.O | ArgFlag.O2 | ArgFlag.OL2)
                level = arg[2:3]
                if level in ("", "1"):
                    result |= ArgFlag.O
                elif level == "2":
                    result |= ArgFlag.O2
                elif level != "0":
                    result |= ArgFlag.OL2
        return int(result)

    def remote_compiler_name(self) -> str:
        """COMPILE_FILE ``compiler_name``: the fixed names inside environments."""
        if "clang" in self.compiler_name:
            return "clang"
        return "g++" if self.lang == LANG_CXX else "gcc"

    def dwo_file(self) -> str:
        """Return the split-DWARF file next to the output (``.o`` replaced by ``.dwo``)."""
        out = self.output_file
        dot = out.rfind(".")
        return (out if dot < 0 else out[:dot]) + ".dwo"

    def get_cs_filename(self, abs_input: str) -> str:
        """GET_CS ``filename`` before shortening: "/"-joined remote and rest args + input."""
        parts = self.flags(REMOTE) + self.flags(REST)
        return "".join("/" + part for part in parts) + abs_input

    def local_argv(self, compiler: str) -> list[str]:
        """1.4 ``build_local``: compiler, all args, input, ``-o`` output; no -fdirectives-only."""
        argv = [compiler, *self.all_flags()]
        if self.input_file:
            argv.append(self.input_file)
        if self.output_file:
            argv += ["-o", self.output_file]
        return [arg for arg in argv if arg != "-fdirectives-only"]

    def rewrite_includes(self, env: "ClientEnv") -> bool:
        """1.4 ``compiler_only_rewrite_includes``: preprocess only partly, finish remotely.

        Debian's 1.4 is built with gcc ``-fdirectives-only`` on and clang
        ``-frewrite-includes`` off (reference §8.5, verified).
        """
        if self.block_rewrite_includes:
            return False
        if env.remote_cpp is not None:
            return env.remote_cpp
        if not self.is_clang:
            return True
        return bool(env.clang_remote_cpp)

    def cpp_argv(
        self, compiler: str, env: "ClientEnv", readable: "Callable[[str], bool]"
    ) -> list[str]:
        """1.4 ``call_cpp``: the command whose stdout is the source sent to the server.

        ``.i``/``.ii`` inputs are sent as they are (``/bin/cat``).  PCH and
        module flags are dropped: the server compiles without them.
        """
        if _is_preprocessed(self.input_file):
            return ["/bin/cat", self.input_file]
        flags = _drop_pch_flags(self.flags(LOCAL) + self.flags(REST), readable)
        argv = [compiler, *flags, "-E", self.input_file]
        if self.rewrite_includes(env):
            argv.append("-frewrite-includes" if self.is_clang else "-fdirectives-only")
        return argv


def has_color_output(job: "CompileJob", env: "ClientEnv", *, color_terminal: bool) -> bool:
    """1.4 ``compiler_has_color_output``: the compiler colours its own diagnostics.

    *color_terminal* is 1.4's ``color_output_possible`` (stderr is a
    terminal and ``TERM`` is set and not "dumb").  Debian's 1.4 is built
    without ``HAVE_GCC_COLOR_DIAGNOSTICS`` (verified: under a terminal the
    real client gives clang ``-fcolor-diagnostics`` but gcc nothing), so gcc
    counts only with ``ICECC_COLOR_DIAGNOSTICS=1`` or a non-empty ``GCC_COLORS``.
    """
    if not color_terminal:
        return False
    if job.is_clang:
        return True
    if env.color_diagnostics is not None:
        return env.color_diagnostics[:1] == "1"
    return bool(env.gcc_colors)


def colorify_wanted(job: "CompileJob", env: "ClientEnv", *, color_terminal: bool) -> bool:
    """1.4 ``colorify_wanted``: the wrapper colours ``error:``/``warning:`` lines itself."""
    if job.is_custom or has_color_output(job, env, color_terminal=color_terminal):
        return False
    if job.explicit_color or env.color_diagnostics is not None or env.emacs:
        return False
    return color_terminal


def output_needs_workaround(job: "CompileJob", env: "ClientEnv") -> bool:
    """1.4 ``output_needs_workaround``: redo a gcc job locally if it printed anything.

    gcc's caret lines need the source file, which the server does not have;
    Debian's 1.4 enables the workaround by default (verified).
    """
    if job.is_clang or job.explicit_no_caret:
        return False
    if env.caret_workaround is not None:
        return env.caret_workaround[:1] == "1"
    return True


def colorify(text: str) -> str:
    """1.4 ``colorify_output``: bold red ``: error:`` lines, cyan ``: warning:`` lines."""
    lines = text.split("\n")
    out = []
    for line in lines[:-1]:
        if ": error:" in line:
            line = f"\x1b[1;31m{line}\x1b[0m"  # noqa: PLW2901 - recoloured in place
        elif ": warning:" in line:
            line = f"\x1b[36m{line}\x1b[0m"  # noqa: PLW2901
        out.append(line + "\n")
    out.append(lines[-1])
    return "".join(out)


def absolute(path: str, cwd: str) -> str:
    """1.4 ``get_absfilename``: prefix *cwd*, fold ``/../``, ``/./`` and ``//`` textually."""
    if not path:
        return path
    name = path if path.startswith("/") else cwd + "/" + path
    while (idx := name.find("/../")) >= 0:
        if idx == 0:
            name = "/" + name[4:]
        else:
            slash = name.rfind("/", 0, idx)
            name = name[:slash] + "/" + name[idx + 4 :]
    while "/./" in name:
        name = name.replace("/./", "/", 1)
    while "//" in name:
        name = name.replace("//", "/", 1)
    return name


def _is_preprocessed(name: str) -> bool:
    return len(name) >= 3 and name.endswith((".i", ".ii"))


def _drop_pch_flags(flags: "Iterable[str]", readable: "Callable[[str], bool]") -> list[str]:
    out: list[str] = []
    items = list(flags)
    i = 0
    while i < len(items):
        arg = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        if arg == "-include" and nxt is not None:
            # "-include x" is a PCH when only x.gch exists: useless for preprocessing.
            if not readable(nxt) and readable(nxt + ".gch"):
                i += 2
                continue
            out += [arg, nxt]
            i += 2
            continue
        if arg == "-include-pch" and nxt is not None and readable(nxt):
            i += 2
            continue
        if arg == "-fpch-preprocess" or arg in _MODULE_FLAGS:
            i += 1
            continue
        if arg.startswith("-fmodules-cache-path="):
            i += 1
            continue
        out.append(arg)
        i += 1
    return out
