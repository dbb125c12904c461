#!/usr/bin/env python3
"""Record a job trace for ``iceserv sim`` from a real build.

Run::

    python bench/traces/record.py run --out T.jsonl --submitter NAME [--env ENV] -- make -j2

The build runs with ``CC``/``CXX`` pointing at this script (``wrap`` mode),
which, for every compile-only invocation (``-c`` with one C/C++ source),
notes when make started it (the moment icecc would send GET_CS), measures
the preprocessed source size (``-E``, what icecc ships), runs the real
compile and takes its CPU time (user + sys of the compiler's process tree,
from ``wait4``) and the object size.  Links and other invocations run
unchanged and are not recorded.  Afterwards the lines are sorted by submit
time and the times made relative to the first job.

One trace line (JSON): ``submit`` (s), ``submitter``, ``source_size`` and
``object_size`` (bytes), ``cpu`` (compile CPU seconds on the recording
machine, which is the reference speed 1.0), ``lang`` (``c``/``c++``),
``env`` (compiler environment name), ``flags`` (the ``-g``/``-O`` flags
1.4's statistics look at), ``file`` (source path, relative to the build).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

_SOURCES = {".c": "c", ".cc": "c++", ".cpp": "c++", ".cxx": "c++", ".C": "c++"}
_STAT_FLAGS = ("-g", "-g3", "-O", "-O1", "-O2", "-O3", "-Os")


def _source(args: list[str]) -> str | None:
    if "-c" not in args or "-E" in args or "-M" in args or "-MM" in args:
        return None
    sources = [a for a in args if not a.startswith("-") and Path(a).suffix in _SOURCES]
    return sources[0] if len(sources) == 1 else None


def _without_output(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("-o", "-MF", "-MT", "-MQ"):
            skip = True
            continue
        if arg in ("-c", "-MD", "-MMD", "-MP") or arg.startswith(("-o", "-Wp,-M")):
            continue
        out.append(arg)
    return out


def _output(args: list[str], source: str) -> Path:
    if "-o" in args:
        return Path(args[args.index("-o") + 1])
    return Path(Path(source).with_suffix(".o").name)


def wrap(log: Path, compiler: list[str], args: list[str]) -> int:
    source = _source(args)
    if source is None or Path(source).stem == "conftest":  # configure's probes are no build
        return subprocess.call([*compiler, *args])
    submit = time.time()
    pre = subprocess.run([*compiler, *_without_output(args), "-E", "-o", "-"],
                         capture_output=True, check=False)  # fmt: skip
    proc = subprocess.Popen([*compiler, *args])
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0:
        return code
    obj = _output(args, source)
    record = {
        "submit": submit,
        "source_size": len(pre.stdout),
        "object_size": obj.stat().st_size if obj.exists() else 0,
        "cpu": round(usage.ru_utime + usage.ru_stime, 4),
        "lang": _SOURCES[Path(source).suffix],
        "flags": [a for a in args if a in _STAT_FLAGS],
        "file": os.path.relpath(Path(source).resolve(), os.environ["TRACE_ROOT"]),
    }
    with log.open("a") as out:
        fcntl.flock(out, fcntl.LOCK_EX)
        out.write(json.dumps(record) + "\n")
    return 0


def run(out: Path, submitter: str, env: str, command: list[str], root: Path) -> int:
    raw = out.with_suffix(".raw")
    raw.unlink(missing_ok=True)
    me = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))}"
    environ = dict(os.environ, TRACE_ROOT=str(root.resolve()))
    environ["CC"] = f"{me} wrap {shlex.quote(str(raw.resolve()))} gcc"
    environ["CXX"] = f"{me} wrap {shlex.quote(str(raw.resolve()))} g++"
    if Path(command[0]).name == "make":  # makefiles set CC themselves; the command line wins
        command = [*command, f"CC={environ['CC']}", f"CXX={environ['CXX']}"]
    start = time.time()
    code = subprocess.call(command, env=environ)
    wall = time.time() - start
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    records.sort(key=lambda r: r["submit"])
    first = records[0]["submit"] if records else 0.0
    with out.open("w") as sink:
        for r in records:
            line = {"submit": round(r["submit"] - first, 3), "submitter": submitter,
                    "source_size": r["source_size"], "object_size": r["object_size"],
                    "cpu": r["cpu"], "lang": r["lang"], "env": env, "flags": r["flags"],
                    "file": r["file"]}  # fmt: skip
            sink.write(json.dumps(line) + "\n")
    raw.unlink()
    cpu = sum(r["cpu"] for r in records)
    print(f"{len(records)} compile jobs, {cpu:.1f} CPU s, build wall {wall:.1f} s, exit {code}")
    return code


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "wrap":
        compiler = [sys.argv[3]]
        return wrap(Path(sys.argv[2]), compiler, sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    rec = sub.add_parser("run", help="run a build and record its compile jobs")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--submitter", default="dev1")
    rec.add_argument("--env", default="gcc-12.2.0-x86_64")
    rec.add_argument("--root", type=Path, default=Path.cwd(), help="paths are relative to this")
    rec.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return run(args.out, args.submitter, args.env, command, args.root)


if __name__ == "__main__":
    sys.exit(main())
