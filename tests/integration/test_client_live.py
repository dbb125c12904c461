"""Our ``icecc`` in a cluster of real icecream 1.4 programs, and when that cluster fails.

The cluster (built once for the module): a real ``icecc-scheduler``, a real
``iceccd`` as the client's local daemon (``--no-remote``) and a real
``iceccd`` as the compile server, all on loopback; the client reaches its
daemon through ``ICECC_TEST_SOCKET`` and, with ``ICECC_TEST_REMOTEBUILD=1``
and ``ICECC_PREFERRED_HOST``, treats the server on 127.0.0.1 as remote
(reference §12).  Objects built remotely must be byte-identical to local
``gcc``/``g++`` output; every failure (no daemon, a daemon that hangs up, a
server that sends garbage, an environment the server refuses, a server that
cannot compile) must end in a successful local build.  Also: ccache with
``CCACHE_PREFIX=icecc``, and a make project built through the symlink
directory first on ``PATH`` (as portage's ``PREROOTPATH`` does).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from testbed import RealDaemon, RealScheduler, wait_for
from testbed.client_fakes import FakeDaemon, FakeServer, write_launcher

from iceserv.app.symlinks import DEFAULT_NAMES, install
from iceserv.client.createenv import create_env
from iceserv.client.envfiles import EnvFiles, write_tarball

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.live

C_SOURCE = (
    "#include <stdio.h>\n#include <string.h>\n"
    + "".join(f'int f{i}(int x) {{ return x * {i} + (int)strlen("{i}"); }}\n' for i in range(200))
    + 'int main(void) { printf("%d\\n", f7(6)); return 0; }\n'
)
CXX_SOURCE = (
    "#include <iostream>\n#include <vector>\n#include <string>\n"
    "template <typename T> T total(const std::vector<T>& v) { T s{}; for (auto x : v) s += x;"
    " return s; }\n"
    'int main() { std::vector<std::string> v{"ice", "cream"}; std::cout << total(v) << "\\n"; }\n'
)
TIMEOUT = 180.0


@dataclass
class Cluster:
    scheduler: RealScheduler
    local: RealDaemon
    server: RealDaemon
    icecc: Path
    env_tarball: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Scheduler, the client's daemon and a compile server, all real 1.4, logged in."""
    tmp = tmp_path_factory.mktemp("client-live")
    icecc = write_launcher(tmp / "icecc", sys.executable)
    tarball = tmp / create_env("/usr/bin/gcc", out_dir=str(tmp), echo=False)
    with contextlib.ExitStack() as stack:
        scheduler = stack.enter_context(RealScheduler())
        local = RealDaemon("client-host", scheduler=scheduler.address, no_remote=True)
        stack.callback(local.stop)
        server = RealDaemon("compile-host", scheduler=scheduler.address, max_jobs=4)
        stack.callback(server.stop)
        local.start()
        server.start()
        local.wait_logged_in(scheduler)
        server.wait_logged_in(scheduler)
        # The scheduler gives a server no job before its first STATS (load 1000 until
        # then).  The daemons see a frozen /proc/stat (DaemonProgram.idle_cpu), so a busy
        # machine does not make the server report itself full.
        wait_for(lambda: any(h.name == server.name and h.load < 1000 for h in scheduler.listcs()),
                 90, "the compile server to report a load below 1000", interval=0.5,
                 between=server.poke)  # fmt: skip
        yield Cluster(scheduler, local, server, icecc, tarball)


def client_env(cluster: Cluster, tmp: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp), "LANG": "C",
        "ICECC_TEST_SOCKET": str(cluster.local.socket_path), "ICECC_TEST_REMOTEBUILD": "1",
        "ICECC_PREFERRED_HOST": cluster.server.name, "ICECC_DEBUG": "debug",
        "ICECC_LOGFILE": str(tmp / "icecc.log"), **extra,
    }  # fmt: skip


def compile_with(argv: list[str], env: dict[str, str], cwd: Path,
                 scheduler: RealScheduler | None = None) -> None:  # fmt: skip
    """Run a build; with *scheduler*, keep its main loop awake meanwhile (reference §7.9)."""
    with scheduler.awake() if scheduler else contextlib.nullcontext():
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)  # fmt: skip
    log = (cwd / "icecc.log").read_text() if (cwd / "icecc.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log


def local_object(compiler: str, source: Path, flags: list[str]) -> bytes:
    out = source.with_suffix(".local.o")
    subprocess.run([compiler, *flags, "-c", source.name, "-o", out.name], cwd=source.parent,
                   check=True, timeout=TIMEOUT)  # fmt: skip
    return out.read_bytes()


def went_remote(tmp: Path) -> bool:
    return "Have to use host 127.0.0.1" in (tmp / "icecc.log").read_text()


class TestRemoteBuilds:
    @pytest.mark.parametrize(("compiler", "name", "source"), [
        ("gcc", "hello.c", C_SOURCE), ("g++", "hello.cpp", CXX_SOURCE),
    ])  # fmt: skip
    def test_object_identical_to_local_compile(self, cluster, tmp_path, compiler, name, source):
        """C and C++ compiled on the real server equal the local compiler's objects."""
        path = tmp_path / name
        path.write_text(source)
        env = client_env(cluster, tmp_path, ICECC_VERSION=str(cluster.env_tarball))
        compile_with([str(cluster.icecc), compiler, "-O2", "-c", name, "-o", "remote.o"],
                     env, tmp_path, cluster.scheduler)  # fmt: skip
        assert went_remote(tmp_path), (tmp_path / "icecc.log").read_text()
        assert (tmp_path / "remote.o").read_bytes() == local_object(compiler, path, ["-O2"])

    def test_debug_object_identical_to_real_icecc(self, cluster, tmp_path):
        """With -g the server's paths end up in the object: the same as with the real icecc."""
        (tmp_path / "hello.c").write_text(C_SOURCE)
        env = client_env(cluster, tmp_path, ICECC_VERSION=str(cluster.env_tarball))
        for program, out in ((str(cluster.icecc), "ours.o"), ("/usr/bin/icecc", "real.o")):
            compile_with([program, "gcc", "-g", "-O2", "-c", "hello.c", "-o", out], env, tmp_path,
                         cluster.scheduler)  # fmt: skip
        assert went_remote(tmp_path)
        assert (tmp_path / "ours.o").read_bytes() == (tmp_path / "real.o").read_bytes()

    def test_native_environment_from_the_real_daemon(self, cluster, tmp_path):
        """Without ICECC_VERSION the real daemon builds the native environment for us."""
        (tmp_path / "hello.c").write_text(C_SOURCE)
        compile_with([str(cluster.icecc), "gcc", "-c", "hello.c"], client_env(cluster, tmp_path),
                     tmp_path, cluster.scheduler)  # fmt: skip
        assert went_remote(tmp_path)
        assert (tmp_path / "hello.o").read_bytes() == local_object("gcc", tmp_path / "hello.c", [])


def small_env(tmp: Path, name: str, *, verifies: bool) -> Path:
    """A tarball without a compiler: its bin/true runs (verifies) or lacks its libraries."""
    files = EnvFiles(str(tmp / f"{name}-root"), echo=False)
    files.add("/bin/true", skip_ldd=not verifies)
    files.copy_all()
    path = tmp / f"{name}.tar.gz"
    write_tarball(files, str(path), "gzip")
    return path


class TestFailuresBuildLocally:
    def test_no_daemon(self, cluster, tmp_path):
        """Nobody listening anywhere: a plain local build."""
        (tmp_path / "hello.c").write_text(C_SOURCE)
        env = client_env(cluster, tmp_path)
        del env["ICECC_TEST_SOCKET"]
        compile_with([str(cluster.icecc), "gcc", "-c", "hello.c"], env, tmp_path)
        assert (tmp_path / "hello.o").read_bytes() == local_object("gcc", tmp_path / "hello.c", [])

    @pytest.mark.parametrize("kind", ["daemon-hangs-up", "server-garbage"])
    def test_broken_peers(self, cluster, tmp_path, kind):
        """A daemon that closes every connection, a server that sends garbage: local build."""
        (tmp_path / "hello.c").write_text(C_SOURCE)
        server = FakeServer(mode="garbage").start()
        daemon = FakeDaemon(tmp_path / "d.sock", use_cs=server.use_cs(),
                            reject_all=kind == "daemon-hangs-up").start()  # fmt: skip
        try:
            env = client_env(cluster, tmp_path, ICECC_TEST_SOCKET=str(tmp_path / "d.sock"),
                             ICECC_VERSION=str(cluster.env_tarball))  # fmt: skip
            compile_with([str(cluster.icecc), "gcc", "-c", "hello.c"], env, tmp_path)
        finally:
            daemon.close()
            server.close()
        assert (tmp_path / "hello.o").read_bytes() == local_object("gcc", tmp_path / "hello.c", [])
        if kind == "server-garbage":
            assert len(server.jobs) == 1  # it really got the job first

    @pytest.mark.parametrize(("kind", "reasons"), [
        ("refused-environment", ("did not successfully verify",)),
        ("server-cannot-compile", ("Error 23", "Error 15")),
    ])  # fmt: skip
    def test_real_server_failures(self, cluster, tmp_path, kind, reasons):
        """An environment the real server refuses, or one it cannot compile with: local build."""
        (tmp_path / "hello.c").write_text(C_SOURCE)
        tarball = small_env(tmp_path, kind, verifies=kind != "refused-environment")
        env = client_env(cluster, tmp_path, ICECC_VERSION=str(tarball))
        compile_with([str(cluster.icecc), "gcc", "-c", "hello.c"], env, tmp_path,
                     cluster.scheduler)  # fmt: skip
        assert (tmp_path / "hello.o").read_bytes() == local_object("gcc", tmp_path / "hello.c", [])
        log = (tmp_path / "icecc.log").read_text()
        assert went_remote(tmp_path)
        # The server may hang up while we still send the source (then 1.4 and we
        # report the write error, 15) or after reading it (its STATUS_TEXT, 23).
        assert any(text in log for text in reasons), log


class TestBuildSystems:
    def test_ccache_prefix(self, cluster, tmp_path):
        """ccache with CCACHE_PREFIX=icecc compiles through us, then serves from its cache."""
        (tmp_path / "hello.c").write_text(C_SOURCE)
        env = client_env(cluster, tmp_path, CCACHE_PREFIX=str(cluster.icecc),
                         CCACHE_DIR=str(tmp_path / "ccache"),
                         ICECC_VERSION=str(cluster.env_tarball))  # fmt: skip
        for _ in range(2):
            compile_with(["ccache", "gcc", "-c", "hello.c", "-o", "hello.o"], env, tmp_path,
                         cluster.scheduler)  # fmt: skip
        assert went_remote(tmp_path)
        assert (tmp_path / "hello.o").read_bytes() == local_object("gcc", tmp_path / "hello.c", [])
        stats = subprocess.run(["ccache", "--print-stats"], env=env, capture_output=True,
                               text=True, timeout=60, check=True).stdout  # fmt: skip
        counters = dict(line.split("\t", 1) for line in stats.splitlines() if "\t" in line)
        assert int(counters.get("direct_cache_hit", "0")) + int(
            counters.get("preprocessed_cache_hit", "0")) >= 1  # fmt: skip

    def test_make_project_through_the_symlink_directory(self, cluster, tmp_path):
        """make with the symlink dir first on PATH: same objects and program as a local build."""
        project = tmp_path / "proj"
        project.mkdir()
        units = [f"unit{i}" for i in range(6)]
        for i, unit in enumerate(units):
            (project / f"{unit}.c").write_text(f"int {unit}(int x) {{ return x + {i}; }}\n")
        calls = " + ".join(f"{u}(1)" for u in units)
        decls = "".join(f"int {u}(int);\n" for u in units)
        (project / "main.c").write_text(f"{decls}int main(void) {{ return ({calls}) != 21; }}\n")
        objects = " ".join(f"{u}.o" for u in [*units, "main"])
        (project / "Makefile").write_text(f"CFLAGS = -O2\nprog: {objects}\n\t$(CC) -o $@ $^\n")
        reference = tmp_path / "reference"
        shutil.copytree(project, reference)
        subprocess.run(["make", "-s"], cwd=reference, env={"PATH": "/usr/bin:/bin"},
                       check=True, timeout=TIMEOUT)  # fmt: skip
        links = tmp_path / "libexec-icecc-bin"
        install(links, DEFAULT_NAMES, cluster.icecc)
        env = client_env(cluster, tmp_path, PATH=f"{links}:/usr/bin:/bin",
                         ICECC_VERSION=str(cluster.env_tarball))  # fmt: skip
        compile_with(["make", "-s", "-j4"], env, project, cluster.scheduler)
        for name in [f"{u}.o" for u in [*units, "main"]] + ["prog"]:
            assert (project / name).read_bytes() == (reference / name).read_bytes(), name
        assert subprocess.run([str(project / "prog")], timeout=30, check=False).returncode == 0
        assert went_remote(tmp_path)
        assert os.access(project / "prog", os.X_OK)
