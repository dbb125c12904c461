"""The rules of 1.4's ``analyse_argv`` for arguments starting with "-", in its order.

Owns :data:`RULES`, 1.4's long if-chain (``client/arg.cpp``) as a table of
(matcher, handler) pairs walked in order, first match wins: a frozenset
matches exactly, a tuple of strings by prefix.  Each handler classifies the
argument (local, remote, rest), consumes a separate value where 1.4 does and
records what it noticed on the :class:`~iceserv.client.args.Scan`.  Pure.
"""

from iceserv.client.job import LOCAL, REMOTE, REST, absolute
from iceserv.client.options import (
    COVERAGE,
    FILE_PREFIXES,
    NATIVE,
    PATH_OPTIONS,
    SAVE_TEMPS_QUIRK,
    X_LANGS,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final

    from iceserv.client.args import Scan

__all__ = ["RULES"]


def r_local(scan: "Scan", a: str) -> None:
    scan.local(f"argument {a}")
    scan.add(a, LOCAL)


def r_md(scan: "Scan", a: str) -> None:
    scan.seen_md = True
    scan.add(a, LOCAL)


def r_keep_local(scan: "Scan", a: str) -> None:
    scan.add(a, LOCAL)


def r_mf(scan: "Scan", a: str) -> None:
    scan.seen_mf = True
    scan.add(a, LOCAL)
    scan.take(LOCAL)  # also after "-Wp,-MF,file" (1.4 quirk: eats the next argument)


def r_mt(scan: "Scan", a: str) -> None:
    scan.add(a, LOCAL)
    scan.take(LOCAL)  # likewise after "-Wp,-MT,x" / "-Wp,-MQ,x"


def r_param(scan: "Scan", a: str) -> None:
    scan.add(a, REMOTE)
    scan.take(REMOTE)


def r_b(scan: "Scan", a: str) -> None:
    r_local(scan, a)
    if a == "-B":
        scan.take(LOCAL)


def r_wa(scan: "Scan", a: str) -> None:
    parts, local = [], False
    for part in a[4:].split(","):
        keep, go_local = _assembler_arg(scan, part)
        parts.append(keep)
        local = go_local  # 1.4 keeps only the verdict on the last piece
    if local:
        r_local(scan, a)
    else:
        scan.add("-Wa," + ",".join(parts), REMOTE)


def _assembler_arg(scan: "Scan", part: str) -> tuple[str, bool]:
    """1.4 ``analyze_assembler_arg``: (the piece as sent, whether it forces local)."""
    if scan.as_skip_next:  # the value of --defsym / --debug-prefix-map
        scan.as_skip_next = False
        verdict = False
    elif part.startswith("-a"):  # -a[a-z]*=listing writes a local file
        verdict = part[2:].lstrip("abcdefghijklmnopqrstuvwxyz")[:1] == "="
    elif part in ("--debug-prefix-map", "--defsym"):
        scan.as_skip_next = True
        verdict = False
    elif part.startswith(("@", "-")):
        verdict = part.startswith("@")  # an @file would need parsing: local
    elif scan.readable(part):  # an extra assembler input file: ship it
        part = absolute(part, scan.cwd)
        scan.extrafiles.append(part)
        verdict = False
    else:
        verdict = True
    return part, verdict


def r_s(scan: "Scan", _a: str) -> None:
    scan.seen_s = True


def r_c(scan: "Scan", _a: str) -> None:
    scan.seen_c = True


def r_split_dwarf(scan: "Scan", a: str) -> None:
    scan.seen_split_dwarf = True
    scan.add(a, REST)


def r_x(scan: "Scan", a: str) -> None:
    scan.add(a, REST)
    value = scan.take(REST)
    if value in X_LANGS:
        scan.job = scan.job.evolve(lang=X_LANGS[value])
    else:
        scan.local(f"unsupported -x {value or '??'}")


def r_native(scan: "Scan", a: str) -> None:
    scan.native.append(a)
    scan.add(a, REST)


def r_output(scan: "Scan", a: str) -> None:
    if a == "-o":
        if scan.i + 1 < len(scan.argv):
            scan.i += 1
            scan.ofile = scan.argv[scan.i]
    else:
        scan.ofile = a[2:]
    if scan.ofile == "-":
        scan.local("output to stdout")


def r_define(scan: "Scan", a: str) -> None:
    scan.add(a, scan.cpp_kind)
    scan.take(scan.cpp_kind)


def r_path(scan: "Scan", a: str) -> None:
    scan.add(a, LOCAL)
    value = scan.take(LOCAL)
    if value is not None and value.startswith("-O"):
        scan.local(f"argument {a} {value}")


def r_cpp(scan: "Scan", a: str) -> None:
    scan.add(a, scan.cpp_kind)


def r_color(scan: "Scan", a: str) -> None:
    scan.explicit_color = True
    scan.add(a, REST)


def r_color_auto(scan: "Scan", _a: str) -> None:
    scan.explicit_color = False  # dropped: the wrapper decides about colours itself


def r_caret(scan: "Scan", a: str) -> None:
    scan.explicit_no_caret = a == "-fno-diagnostics-show-caret"
    scan.add(a, REST)


def r_file_option(scan: "Scan", a: str) -> None:
    prefix = next(p for p in FILE_PREFIXES if a.startswith(p))
    path = a[len(prefix) :]
    if scan.readable(path):
        path = absolute(path, scan.cwd)
        scan.extrafiles.append(path)
    else:
        scan.local(f"file for argument {a} missing")
    scan.add(prefix + path, REST)


def r_xclang(scan: "Scan", a: str) -> None:
    if scan.i + 1 >= len(scan.argv):
        return  # a trailing -Xclang is dropped
    scan.i += 1
    p = scan.argv[scan.i]
    if p == "-load":
        rest = scan.argv[scan.i + 1 : scan.i + 3]
        if len(rest) == 2 and rest[0] == "-Xclang":
            path = rest[1]
            if scan.readable(path):
                path = absolute(path, scan.cwd)
                scan.extrafiles.append(path)
            else:
                scan.local(f"plugin {path} missing")
            for arg in (a, p, rest[0], path):
                scan.add(arg, REST)
            scan.i += 2
        return  # 1.4 drops a "-Xclang -load" that lacks its "-Xclang FILE"
    if p == "-building-pch-with-obj":
        scan.local(f"argument {a} {p}")
    scan.add(a, REST)
    scan.add(p, REST)


def r_target(scan: "Scan", a: str) -> None:
    scan.seen_target = True
    scan.add(a, REST)
    if a == "-target":
        scan.take(REST)


def r_unused_macros(scan: "Scan", a: str) -> None:
    scan.wunused_macros = a != "-Wno-unused-macros"
    scan.add(a, REST)


def r_pedantic(scan: "Scan", a: str) -> None:
    scan.seen_pedantic = True
    scan.add(a, REST)


def r_arch(scan: "Scan", a: str) -> None:
    # 1.4 means to refuse several -arch but never records the first one.
    scan.add(a, REST)
    scan.take(REST)


def _is(*names: str) -> frozenset[str]:
    return frozenset(names)


# 1.4's if-chain for arguments starting with "-", in its order: the first match wins.
RULES: "Final[tuple[tuple[frozenset[str] | tuple[str, ...], Callable[[Scan, str], None]], ...]]" = (
    (_is("-E"), r_local),
    (_is("-combine", "-fsyntax-only", "-ftime-trace"), r_local),
    (("-fdump", "-ftime-report"), r_local),
    (_is("-MD", "-MMD"), r_md),
    (("-Wp,-MD", "-Wp,-MMD"), r_md),
    (_is("-MG", "-MP"), r_keep_local),
    (_is("-MF"), r_mf),
    (("-Wp,-MF",), r_mf),
    (_is("-MT", "-MQ"), r_mt),
    (("-Wp,-MT", "-Wp,-MQ"), r_mt),
    (("-M",), r_local),
    (_is("--param"), r_param),
    (("-B",), r_b),
    (("-Wa,",), r_wa),
    (_is("-S"), r_s),
    (COVERAGE | SAVE_TEMPS_QUIRK, r_local),
    (_is("-gsplit-dwarf"), r_split_dwarf),
    (_is("-x"), r_x),
    (frozenset(NATIVE), r_native),
    (_is("-fexec-charset", "-fwide-exec-charset", "-finput-charset"), r_local),
    (_is("-c"), r_c),
    (("-o",), r_output),
    (_is("-D", "-U"), r_define),
    (PATH_OPTIONS, r_path),
    (_is("-fmodules", "-fcxx-modules", "-fmodules-ts"), r_keep_local),
    (("-fmodules-cache-path=",), r_keep_local),
    (("-Wp,", "-D", "-U"), r_cpp),
    (("-I", "-l", "-L"), r_keep_local),
    (_is("-undef"), r_cpp),
    (
        _is("-nostdinc", "-nostdinc++", "-Wmissing-include-dirs", "-Werror=missing-include-dirs"),
        r_keep_local,
    ),
    (
        _is(
            "-fno-color-diagnostics",
            "-fcolor-diagnostics",
            "-fno-diagnostics-color",
            "-fdiagnostics-color=never",
            "-fdiagnostics-color",
            "-fdiagnostics-color=always",
        ),
        r_color,
    ),
    (_is("-fdiagnostics-color=auto"), r_color_auto),
    (_is("-fno-diagnostics-show-caret", "-fdiagnostics-show-caret"), r_caret),
    (FILE_PREFIXES, r_file_option),
    (_is("-Xclang"), r_xclang),
    (_is("-target"), r_target),
    (("--target=",), r_target),
    (_is("-Wunused-macros", "-Werror=unused-macros", "-Wno-unused-macros"), r_unused_macros),
    (_is("-pedantic", "-Wpedantic", "-pedantic-errors"), r_pedantic),
    (_is("-arch"), r_arch),
)
