"""The argument analysis of icecream 1.4's ``icecc``: local or remote, and what goes where.

Owns :func:`analyse`, a faithful re-implementation of ``analyse_argv`` in
1.4's ``client/arg.cpp`` (reference §8.4), including its quirks (listed in
``tests/client/test_args.py`` next to the real client's observed decisions);
the option tables are in :mod:`iceserv.client.options`.  Everything here
is pure: the file system is reached only through the *readable*,
*irregular* and *read* callables the caller passes.  Steps that must run
the compiler (clang's ``-dumpmachine``, ``-march=native`` expansion) are
reported in :class:`Analysis` and done by the caller (:mod:`main`) only when
the job really goes remote.
"""

from iceserv.client.job import (
    LANG_CUSTOM,
    LOCAL,
    REMOTE,
    REST,
    CompileJob,
    has_color_output,
)
from iceserv.client.options import (
    CONFIGURE_PREFIXES,
    EXT_LANGS,
    LOCAL_EXTS,
    language_of,
    needs_space,
)
from iceserv.client.rules import RULES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from iceserv.client.env import ClientEnv

__all__ = ["Analysis", "analyse"]


class Analysis:
    """What :func:`analyse` found.

    ``local_reason`` is None when the job may be distributed, else why not.
    ``extrafiles`` are absolute paths for the environment (plugins, ``-Wa``
    files).  ``clang_target`` says the caller must append ``-target
    <clang -dumpmachine>`` before sending; ``native`` lists the
    ``-march/-mcpu/-mtune=native`` flags whose expansion the caller owes.
    """

    __slots__ = ("clang_target", "extrafiles", "job", "local_reason", "native")

    def __init__(
        self,
        job: CompileJob,
        local_reason: str | None,
        extrafiles: tuple[str, ...],
        *,
        clang_target: bool,
        native: tuple[str, ...],
    ) -> None:
        self.job = job
        self.local_reason = local_reason
        self.extrafiles = extrafiles
        self.clang_target = clang_target
        self.native = native

    def __repr__(self) -> str:
        """All fields."""
        return (
            f"Analysis({self.job!r}, local_reason={self.local_reason!r}, "
            f"extrafiles={self.extrafiles!r}, clang_target={self.clang_target}, "
            f"native={self.native!r})"
        )


def analyse(  # noqa: PLR0913 - the inputs of 1.4's analyse_argv, all explicit
    args: "Sequence[str]",
    *,
    compiler_name: str,
    compiler_path: str = "",
    icerun: bool,
    env: "ClientEnv",
    cwd: str,
    readable: "Callable[[str], bool]",
    irregular: "Callable[[str], bool]",
    color_terminal: bool = False,
) -> "Analysis":
    """Analyse the compiler arguments *args* (without the compiler itself).

    *compiler_name* is the basename the job is known by; *readable(path)*
    is ``access(R_OK)``; *irregular(path)* says a path exists and is not a
    regular file; *color_terminal* is 1.4's ``color_output_possible``.
    """
    scan = Scan(
        args,
        compiler_name,
        compiler_path,
        icerun=icerun,
        env=env,
        cwd=cwd,
        readable=readable,
        irregular=irregular,
        color_terminal=color_terminal,
    )
    return scan.run()


class Scan:
    """One run of ``analyse_argv``: the state its long if-chain keeps."""

    def __init__(  # noqa: PLR0913 - the inputs of analyse(), passed on
        self,
        args: "Sequence[str]",
        compiler_name: str,
        compiler_path: str,
        *,
        icerun: bool,
        env: "ClientEnv",
        cwd: str,
        readable: "Callable[[str], bool]",
        irregular: "Callable[[str], bool]",
        color_terminal: bool,
    ) -> None:
        self.argv = list(args)
        self.i = 0
        self.env, self.cwd = env, cwd
        self.readable, self.irregular = readable, irregular
        self.color_terminal = color_terminal
        lang = LANG_CUSTOM if icerun else language_of(compiler_name)
        self.icerun = icerun or lang == LANG_CUSTOM
        self.job = CompileJob(compiler_name=compiler_name, compiler_path=compiler_path, lang=lang)
        self.out: list[tuple[str, int]] = []
        self.reason: str | None = "custom command" if self.icerun else None
        self.extrafiles: list[str] = []
        self.ofile = ""
        self.seen_c = self.seen_s = self.seen_md = self.seen_mf = False
        self.seen_split_dwarf = self.seen_target = self.seen_pedantic = False
        self.wunused_macros = self.explicit_color = self.explicit_no_caret = False
        self.native: list[str] = []
        self.as_skip_next = False  # the static second_option of analyze_assembler_arg
        # Decided once, before -pedantic or -Wunused-macros are seen (as 1.4 does).
        self.cpp_kind = REST if self.job.rewrite_includes(env) else LOCAL

    # --- helpers ---------------------------------------------------------------------

    def local(self, why: str) -> None:
        if self.reason is None:
            self.reason = why

    def add(self, arg: str, kind: int) -> None:
        self.out.append((arg, kind))

    def take(self, kind: int) -> str | None:
        """Consume the next argument as the value of the current one (if there is one)."""
        if self.i + 1 >= len(self.argv):
            return None
        self.i += 1
        value = self.argv[self.i]
        self.add(value, kind)
        return value

    # --- the scan --------------------------------------------------------------------

    def run(self) -> "Analysis":
        while self.i < len(self.argv):
            arg = self.argv[self.i]
            if self.icerun:
                self.add(arg, LOCAL)
            elif arg.startswith("-"):
                self.option(arg)
            else:
                self.add(arg, LOCAL if arg.startswith("@") else REST)
            self.i += 1
        return self.finish()

    def option(self, a: str) -> None:
        for matcher, handler in RULES:
            if a in matcher if isinstance(matcher, frozenset) else a.startswith(matcher):
                handler(self, a)
                return
        self.add(a, REST)
        if needs_space(a):
            self.take(REST)

    def finish(self) -> "Analysis":
        if not self.seen_c and not self.seen_s:
            self.local("neither -c nor -S")
        elif self.seen_s:
            self.add("-S", REMOTE)
        else:
            self.add("-c", REMOTE)
        dwarf = self.seen_c and not self.seen_s and self.seen_split_dwarf
        lang = self.job.lang
        ifile = ""
        if self.reason is None:
            ifile, lang = self.find_input(lang)
        if self.reason is None and (not self.ofile or self.irregular(self.ofile)):
            self.local("output file empty or not a regular file")
        job = self.job.evolve(lang=lang)
        if (
            not self.icerun
            and not self.explicit_color
            and has_color_output(job, self.env, color_terminal=self.color_terminal)
        ):
            self.add("-fcolor-diagnostics" if job.is_clang else "-fdiagnostics-color", REST)
        block = self.wunused_macros or (self.seen_pedantic and not job.is_clang)
        job = job.evolve(
            block_rewrite_includes=block,
            explicit_color=self.explicit_color,
            explicit_no_caret=self.explicit_no_caret,
            dwarf_fission=dwarf,
        )
        if self.reason is None and job.rewrite_includes(self.env) and not job.is_clang:
            self.add("-fdirectives-only", REMOTE)
        job = job.evolve(args=tuple(self.out), input_file=ifile, output_file=self.ofile)
        clang_target = self.reason is None and not self.seen_target and job.is_clang
        native = tuple(self.native) if self.reason is None else ()
        return Analysis(
            job, self.reason, tuple(self.extrafiles), clang_target=clang_target, native=native
        )

    def find_input(self, lang: int) -> tuple[str, int]:
        """Take the one non-option argument out as the input; refine the language.

        Returns the job's input file ("" after two inputs) and language.
        """
        ifile, at, i, job_input = "", -1, 0, True
        while i < len(self.out):
            arg, kind = self.out[i]
            if arg == "-":
                self.local("stdin/stdout argument")
                break
            if arg in ("-Xclang", "-x") or needs_space(arg):
                i += 2
            elif kind != REST or arg[:1] in ("-", "@"):
                i += 1
            elif not ifile:
                ifile, at = arg, i
                if arg.rpartition("/")[2].startswith(CONFIGURE_PREFIXES):
                    self.local("configure test")
                i += 1
            else:
                self.local("two input files")
                job_input = False
                break
        if at >= 0 and job_input:
            del self.out[at]
        lang = self.by_extension(ifile, lang)
        return (ifile if job_input else ""), lang

    def by_extension(self, ifile: str, lang: int) -> int:
        """Language from the input's extension; output and ``-MD`` dependency names."""
        dot = ifile.rfind(".")
        if dot < 0:
            return lang
        ext = ifile[dot + 1 :]
        if ext in EXT_LANGS:
            lang = EXT_LANGS[ext]
        elif ext in LOCAL_EXTS:
            self.local(f"source file {ifile}")
        elif ext not in ("c", "i"):
            self.local(f"unknown extension {ext}")
        if self.reason is None and not self.ofile:
            self.ofile = (ifile[:dot] + (".s" if self.seen_s else ".o")).rpartition("/")[2]
        if self.reason is None and self.seen_md and not self.seen_mf:
            cut = self.ofile.rfind(".")
            self.add("-MF", LOCAL)
            self.add((self.ofile if cut < 0 else self.ofile[:cut]) + ".d", LOCAL)
        return lang
