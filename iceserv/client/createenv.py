"""``icecc-create-env`` (and ``icecc --build-native``): pack a compiler as an environment.

Owns the environment tarballs of reference §5.4, built as 1.4's
``icecc-create-env`` script builds them so that real 1.4 daemons accept them:
the same files at the same paths (``usr/bin/gcc``, ``g++``, ``cc1``,
``cc1plus``, ``as``, ``objcopy``, ``liblto_plugin.so``, the shared
libraries ``ldd`` lists, ``bin/true``, ``etc/ld.so.conf`` and an
``ld.so.cache`` from ``ldconfig -r``; for clang ``usr/bin/clang``, the
``compilerwrapper`` as ``usr/bin/gcc``/``g++`` and an empty
``proc/cpuinfo``), executables stripped with ``objcopy``, and the name
``md5(sorted "md5 /path" lines)``, so identical toolchains get identical
names.  Unlike the script, the archive itself is deterministic too: sorted
entries, numeric owner 0, fixed times for generated files, compressors
without timestamps; the same toolchain gives the same bytes.

The command line is 1.4's: ``icecc-create-env COMPILER [--addfile FILE]...
[--compression none|gzip|bzip2|zstd|xz]``; it prints ``adding file ...``
and ``creating NAME`` and writes NAME to file descriptor 5 if open.  This
module is not on the compile path (``main`` imports it only for
``--build-native``), so it may use ``subprocess`` and the compressors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.client.envfiles import EnvFiles, elf_machine
from iceserv.errors import IceservError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from iceserv.client.env import ClientEnv
    from iceserv.client.log import ClientLog

__all__ = ["CreateEnvError", "build_native", "create_env", "main"]

COMPILERWRAPPER: Final = "/usr/lib/icecc/compilerwrapper"
COMPRESSIONS: Final = {
    "none": "",
    "gzip": ".gz",
    "gz": ".gz",
    "bzip2": ".bz2",
    "bz2": ".bz2",
    "zstd": ".zst",
    "xz": ".xz",
}
_PROBE: Final = b"clang __clang__ gcc __GNUC__\n"
_RUN_TIMEOUT: Final = 120.0


class CreateEnvError(IceservError, RuntimeError):
    """The environment cannot be built; the message says why (exit status 1)."""


def _run(argv: Sequence[str], *, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - argv is built from the compiler we were given
        list(argv),
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=_RUN_TIMEOUT,
        check=False,
    )


def _is_binary(path: str) -> bool:
    return elf_machine(path) is not None


def detect(compiler: str) -> tuple[str, str, str]:
    """Return ("gcc", gcc, g++) or ("clang", clang, "") for the compiler binary given."""
    probe = _run([compiler, "-E", "-"], stdin=_PROBE)
    if probe.returncode != 0:
        msg = f"{compiler} is not a compiler."
        raise CreateEnvError(msg)
    lines = probe.stdout.splitlines()
    if any(line.startswith("clang 1 gcc") for line in lines):
        # -print-prog-name gives the real clang behind any wrapper (basename only).
        name = compiler.rpartition("/")[2]
        return "clang", _run([compiler, f"-print-prog-name={name}"]).stdout.strip(), ""
    if any(line.startswith("clang __clang__ gcc") for line in lines):
        # gcc's own argv[0] appears as COLLECT_GCC in "gcc -v".
        verbose = _run([compiler, "-v"]).stderr
        gcc = next(
            (
                line.partition("=")[2]
                for line in verbose.splitlines()
                if line.startswith("COLLECT_GCC=")
            ),
            "",
        )
        if not gcc:
            msg = "Failed to find gcc location."
            raise CreateEnvError(msg)
        if not os.access(gcc, os.X_OK):
            gcc = shutil.which(gcc) or gcc
        head, found, tail = gcc.rpartition("gcc")
        return "gcc", gcc, (head + "g++" + tail) if found else gcc
    msg = f"{compiler} is not a known compiler."
    raise CreateEnvError(msg)


def _search_addfile(files: EnvFiles, compiler: str, name: str, installdir: str = "") -> bool:
    """1.4 ``search_addfile``: where *compiler* finds *name*; added under *installdir*."""
    found = _run([compiler, f"-print-prog-name={name}"]).stdout.strip()
    if not found or found == name or not Path(found).exists():
        found = _run([compiler, f"-print-file-name={name}"]).stdout.strip()
    if found == name:
        found = shutil.which(name) or name
    if not Path(found).exists():
        return False
    directory = installdir or str(Path(found).parent.resolve())
    files.add(found, directory + "/" + name)
    return True


def _collect(  # noqa: PLR0913, PLR0917 - what the script keeps in shell variables
    kind: str,
    first: str,
    second: str,
    extrafiles: Sequence[str],
    files: EnvFiles,
    scratch: str,
) -> None:
    """Add every file of the environment, in the script's order."""
    if os.access("/bin/true", os.X_OK):
        files.add("/bin/true")
    elif os.access("/usr/bin/true", os.X_OK):
        files.add("/usr/bin/true", "/bin/true")
    if kind == "gcc":
        gcc, gxx = str(Path(first).resolve()), str(Path(second).resolve())
        files.strip_prefix = str(Path(gcc).parent.parent)  # compilers outside /usr
        files.add(gcc, "/usr/bin/gcc")
        files.add(gxx, "/usr/bin/g++")
        _search_addfile(files, gcc, "cc1", "/usr/bin")
        _search_addfile(files, gxx, "cc1plus", "/usr/bin")
        _search_addfile(files, gcc, "as", "/usr/bin")
        _search_addfile(files, gcc, "specs")
        _search_addfile(files, gcc, "liblto_plugin.so")
        _search_addfile(files, gcc, "objcopy", "/usr/bin")
    else:
        clang = str(Path(first).resolve())
        files.strip_prefix = str(Path(clang).parent.parent)
        files.add(clang, "/usr/bin/clang")
        if os.access(COMPILERWRAPPER, os.X_OK):  # only protocol < 30 servers need it
            files.add(COMPILERWRAPPER, "/usr/bin/gcc")
            files.add(COMPILERWRAPPER, "/usr/bin/g++")
        _search_addfile(files, first, "as", "/usr/bin")
        _search_addfile(files, first, "objcopy", "/usr/bin")
        cpuinfo = Path(scratch, "cpuinfo")  # clang reads it; any content will do
        cpuinfo.touch()
        files.add(str(cpuinfo), "/proc/cpuinfo", generated=True)
    saved, files.strip_prefix = files.strip_prefix, ""  # extra files keep their paths
    for extra in extrafiles:
        files.add(extra)
    files.strip_prefix = saved
    system_conf = Path("/etc/ld.so.conf")
    if system_conf.is_file():
        # ldconfig -r needs absolute include directives.
        lines = []
        for line in system_conf.read_text(errors="surrogateescape").splitlines():
            words = line.split(None, 1)  # as the shell's "read directive path"
            directive = words[0] if words else ""
            path = words[1].strip() if len(words) > 1 else ""
            if directive == "include" and not path.startswith("/"):
                path = "/etc/" + path
            lines.append(f"{directive} {path}\n")
        conf = Path(scratch, "ld.so.conf")
        conf.write_text("".join(lines), errors="surrogateescape")
        files.add(str(conf), "/etc/ld.so.conf", generated=True)


def create_env(  # noqa: PLR0913 - the tool's options
    compiler: str,
    extrafiles: Sequence[str] = (),
    compression: str = "gzip",
    *,
    second: str = "",
    out_dir: str = ".",
    echo: bool = True,
) -> str:
    """Build the environment of *compiler* in *out_dir*; return the tarball's file name."""
    from iceserv.client.envfiles import write_tarball  # noqa: PLC0415

    if compression not in COMPRESSIONS:
        msg = f"Unknown compression type '{compression}'."
        raise CreateEnvError(msg)
    kind, first, detected_second = detect(compiler)
    second = second or detected_second
    for path in (first, second) if kind == "gcc" else (first,):
        if not os.access(path, os.X_OK):
            msg = f"'{path}' is no executable."
            raise CreateEnvError(msg)
        if not _is_binary(path):
            msg = f"{path} is not a binary file."
            raise CreateEnvError(msg)
    scratch = tempfile.mkdtemp(prefix="iceccenv")
    try:
        files = EnvFiles(scratch + "/root", echo=echo)
        _collect(kind, first, second, extrafiles, files, scratch)
        files.copy_all()
        files.run_ldconfig()
        name = files.md5() + ".tar" + COMPRESSIONS[compression]
        if echo:
            sys.stdout.write(f"creating {name}\n")
            sys.stdout.flush()
        write_tarball(files, str(Path(out_dir, name)), compression)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return name


def _parse(argv: Sequence[str]) -> tuple[str, str, list[str], str]:
    """1.4's command line: (compiler, g++ or "", extra files, compression)."""
    args = [a for a in argv if a != "--respect-path"]
    if args[:1] in (["--gcc"], ["--clang"]):
        # Backwards-compatible forms: --gcc GCC G++ / --clang CLANG [WRAPPER].
        padded = [*args, "", ""]
        compiler, second = padded[1], (padded[2] if args[0] == "--gcc" else "")
        args = args[3 if args[0] == "--gcc" else 2 :]
        if args and not args[0].startswith("--") and Path(args[0]).exists():
            args = args[1:]  # a compilerwrapper path: we always use the installed one
    elif not args or args[0].startswith("--"):
        msg = (
            "Usage: icecc-create-env <compiler_binary> [--addfile <file>]... "
            "[--compression none|gzip|bzip2|zstd|xz]"
        )
        raise CreateEnvError(msg)
    else:
        compiler, args = args[0], args[1:]
        second = ""
        if args and not args[0].startswith("--"):
            second, args = args[0], args[1:]  # old form: the C++ compiler second
    extras: list[str] = []
    compression = "gzip"
    while args:
        option, value, args = args[0], (args[1] if len(args) > 1 else ""), args[2:]
        if option == "--addfile":
            extras.append(value)
        elif option == "--compression":
            compression = value
        else:
            msg = f"Unknown argument '{option}'"
            raise CreateEnvError(msg)
    return compiler, second, extras, compression


def main(argv: Sequence[str] | None = None) -> int:
    """``icecc-create-env``: 0 on success, 1 with a message otherwise."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        compiler, second, extras, compression = _parse(args)
        name = create_env(compiler, extras, compression, second=second)
    except (CreateEnvError, OSError, subprocess.SubprocessError) as exc:
        sys.stdout.write(f"{exc}\n")
        return 1
    with contextlib.suppress(OSError):
        os.write(5, (name + "\n").encode())  # for iceccd, which waits on descriptor 5
    return 0


def build_native(args: Sequence[str], env: ClientEnv, diag: ClientLog) -> int:
    """``icecc --build-native [compiler] [extra files...]`` (1.4 ``create_native``)."""
    from iceserv.client.local import path_lookup  # noqa: PLC0415

    compiler, extras = "gcc", list(args)
    if extras:
        first = extras[0]
        if first in ("gcc", "clang"):
            compiler, extras = first, extras[1:]
        elif not (os.access(first, os.R_OK) and not os.access(first, os.X_OK)):
            compiler = path_lookup(_c_compiler(first), env, _c_compiler(first))
            if not compiler:
                diag.error("compiler not found")
                return 1
            extras = extras[1:]
        # else: the first argument is already an extra file (backwards compatibility)
    options = [compiler]
    for extra in extras:
        options += ["--addfile", extra]
    if env.env_compression is not None:
        options += ["--compression", env.env_compression]
    return main(options)


def _c_compiler(compiler: str) -> str:
    """1.4 ``get_c_compiler``: the C compiler next to a C++ one (``clang++-14`` -> ``clang-14``)."""
    head, slash, base = compiler.rpartition("/")
    for cxx, c in (("clang++", "clang"), ("g++", "gcc")):
        at = base.rfind(cxx)
        if at >= 0:
            return head + slash + base[:at] + c + base[at + len(cxx) :]
    return head + slash + ("cc" if base == "c++" else base)
