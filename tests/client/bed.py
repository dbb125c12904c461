"""The wrapper test bed: run a wrapper against fakes and keep a normalised transcript.

``WrapperBed.run(argv)`` runs a wrapper (ours or the real 1.4
``/usr/bin/icecc``) in a fresh work directory against a fresh ``FakeDaemon``
(and ``FakeServer`` when the daemon hands out a remote server), with the
fake compilers first on ``PATH``, and returns a ``Transcript`` of everything
observable: exit status, every message on every daemon connection, what the
compile server got, every compiler call and the files left behind, with
times and the work directory's path normalised.  Running the same row
through both programs and comparing transcripts is how the decision table
is checked against the real client.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from testbed.client_fakes import FakeCompiler, FakeDaemon, FakeServer, fake_tarball

from iceserv.protocol import CompileFile, FileChunk, GetCS, JobDone, JobLocalBegin, records

_RANDOM_SEED = re.compile(r"-frandom-seed=\d+")
_TEMPORARY = re.compile(r"/tmp/icecc\w+")

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

REAL_ICECC = "/usr/bin/icecc"
REAL_ICERUN = "/usr/bin/icerun"
RUN_TIMEOUT = 60.0

SOURCES = {
    "hello.c": "int main(void) { return 0; }\n",
    "hello.cpp": "int main() { return 0; }\n",
    "hello.m": "int main(void) { return 0; }\n",
    "hello.mm": "int main() { return 0; }\n",
    "hello.i": "int main(void) { return 0; }\n",
    "hello.ii": "int main() { return 0; }\n",
    "hello": "int main(void) { return 0; }\n",
    "other.c": "int other(void) { return 1; }\n",
    "asm.s": ".text\n",
    "asm.S": ".text\n",
    "prog.f": "      END\n",
    "weird.xyz": "int x;\n",
    "conftest.c": "int main(void) { return 0; }\n",
    "CheckTypeSize.c": "int main(void) { return 0; }\n",
    "extra.s": ".text\n",
    "plugin.so": "not really a plugin\n",
    "hdr.h": "#define HDR 1\n",
    "args.rsp": "-O2 -c 'hello.c' -o \"hello.o\"\n",
}


@dataclass
class Transcript:
    """Everything a wrapper run showed, with times and paths normalised."""

    status: int
    daemon: list[list[object]]
    server: list[dict[str, object]]
    calls: list[tuple[str, str, tuple[str, ...]]]
    files: dict[str, bytes]
    stdout: bytes = b""
    stderr: bytes = field(default=b"", compare=False)

    @property
    def remote(self) -> bool:
        """The wrapper asked for a compile server (GET_CS on the first connection)."""
        return any(isinstance(m, GetCS) for m in (self.daemon[0] if self.daemon else []))

    @property
    def local_slot(self) -> bool:
        """The wrapper asked the daemon for a local slot (JOB_LOCAL_BEGIN) somewhere."""
        return any(isinstance(m, JobLocalBegin) for c in self.daemon for m in c)


def _job_order(job: dict[str, object]) -> int:
    compile_file = job.get("compile_file")
    return compile_file.job_id if isinstance(compile_file, CompileFile) else -1


def _normalise(value: object, workdir: str) -> object:  # noqa: PLR0911 - one case per type
    if isinstance(value, JobLocalBegin):
        return records.replace(value, stime=0, outfile=value.outfile.replace(workdir, "<W>"))
    if isinstance(value, JobDone):
        return records.replace(value, real_msec=0, user_msec=0, sys_msec=0, pfaults=0)
    if isinstance(value, FileChunk):
        return value.data
    if records.is_record(value):
        changes = {n: _normalise(getattr(value, n), workdir) for n in records.fields(value)}
        return records.replace(value, **changes)
    if isinstance(value, str):
        value = _RANDOM_SEED.sub("-frandom-seed=<N>", value.replace(workdir, "<W>"))
        return _TEMPORARY.sub("<TMP>", value)
    if isinstance(value, tuple):
        return tuple(_normalise(v, workdir) for v in value)
    if isinstance(value, bytes):
        return value.replace(workdir.encode(), b"<W>")
    return value


@dataclass
class WrapperBed:
    """A work directory, fake compilers and the fake daemon/server set-up for one row."""

    root: Path
    wrappers: Path
    compiler: FakeCompiler = field(init=False)
    tarball: Path = field(init=False)

    def __post_init__(self) -> None:
        self.compiler = FakeCompiler(self.root)
        (self.root / "env").mkdir(exist_ok=True)
        self.tarball = fake_tarball(self.root / "env" / "fakeenv.tar.gz")

    @property
    def workdir(self) -> Path:
        return self.root / "w"

    def base_env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.compiler.bin}:/usr/bin:/bin",
            "HOME": str(self.root),
            "LANG": "C",
            "FAKE_CC_LOG": str(self.compiler.log),
            "ICECC_VERSION": str(self.tarball),
        }

    def program(self, which: str, mode: str) -> str:
        """The executable to start: ``which`` is "real" or "ours"; mode icecc/icerun."""
        if which == "real":
            return REAL_ICERUN if mode == "icerun" else REAL_ICECC
        return str(self.wrappers / ("icerun" if mode == "icerun" else "icecc"))

    def prepare(
        self,
        files: Mapping[str, str] = {},
        dirs: tuple[str, ...] = (),
        links: Mapping[str, str] = {},
    ) -> None:
        """Lay out a fresh work directory: the sources, *files*, *dirs* and symlinks."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir()
        for name, text in {**SOURCES, **files}.items():
            (self.workdir / name).write_text(text)
        for name in dirs:
            (self.workdir / name).mkdir()
        for name, target in links.items():
            (self.workdir / name).symlink_to(target)
        self.compiler.reset()

    def run(  # noqa: PLR0913 - the knobs of one run
        self,
        argv: list[str],
        *,
        env: Mapping[str, str | None] = {},
        files: Mapping[str, str] = {},
        dirs: tuple[str, ...] = (),
        links: Mapping[str, str] = {},
        daemon: FakeDaemon | None = None,
        server: FakeServer | None = None,
    ) -> Transcript:
        """Run *argv* in a fresh work directory; *daemon*/*server* are started and closed."""
        self.prepare(files, dirs, links)
        environ = self.base_env()
        sock = self.root / "daemon.sock"
        sock.unlink(missing_ok=True)
        if daemon is not None:
            daemon.path = sock
            daemon.start()
        if server is not None:
            server.start()
            if daemon is not None and daemon.use_cs is not None and daemon.use_cs.port == -1:
                daemon.use_cs = records.replace(daemon.use_cs, port=server.port)
        environ["ICECC_TEST_SOCKET"] = str(sock)
        for key, value in env.items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value.replace("<W>", str(self.workdir))
        before = {p.name for p in self.workdir.iterdir()}
        try:
            done = subprocess.run(argv, cwd=self.workdir, env=environ, capture_output=True,
                                  timeout=RUN_TIMEOUT, check=False)  # fmt: skip
        finally:
            if daemon is not None:
                daemon.close()
            if server is not None:
                server.close()
        workdir = str(self.workdir)
        made = {p.name: p.read_bytes() for p in self.workdir.iterdir()
                if p.name not in before and p.is_file()}  # fmt: skip
        return Transcript(
            status=done.returncode,
            daemon=[[_normalise(m, workdir) for m in c]
                    for c in (daemon.messages() if daemon else [])],
            # Sorted by job: 1.4 sends ICECC_REPEAT_RATE's copies in parallel.
            server=sorted(([{k: _normalise(v, workdir) for k, v in job.items()}
                            for job in (server.jobs if server else [])]), key=_job_order),
            calls=[(n, g, tuple(str(_normalise(a, workdir)) for a in args))
                   for n, g, args in self.compiler.calls()],
            files={k: v.replace(workdir.encode(), b"<W>") for k, v in made.items()},
            stdout=done.stdout, stderr=done.stderr,
        )  # fmt: skip
