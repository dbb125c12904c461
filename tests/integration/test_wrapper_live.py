"""Issue 17 through real namespace clusters: -g objects identical to local ones, fallback, verify.

Two clusters for the whole module, each on a two-host ``NetnsBed``:

* all iceserv (our scheduler, our daemons on h1 with one slot and h2 with
  two, our client on h1): ``make -j4`` with ``-g`` of a real C project
  (zstd's library, 33 units) and a real C++ project (Google's
  double-conversion as bundled in the ``ujson`` sdist, 9 units) gives objects
  byte-identical to a local build of the same tree, with jobs on h2; with
  ``ICECC_VERIFY=1`` every remote job is checked and none differs;
* mixed, with real 1.4 peers (the real scheduler, our daemon on h1, a real
  ``iceccd`` on h2): ``ICECC_FALLBACK=fail`` turns the environment h2
  refuses into a failed compile with one line saying so, where the default
  builds locally; a real compile error stays gcc's own; and ``ICECC_VERIFY``
  catches what a 1.4 server changes in ``-g`` objects (its producer string),
  naming h2 and keeping the local object.

The reference build runs in the same tree as the cluster build (``-g``
records the working directory), with plain gcc/g++ in the root namespace.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Final

import pytest
from testbed import (
    ClientPlan,
    Cluster,
    DaemonPlan,
    NetnsBed,
    Project,
    build_real_env,
    unpack_project,
)
from testbed.faults import truncated_copy
from testbed.netns import netns_pids
from testbed.project import CFLAGS, ZSTD_SDIST, Sdist, build_env, fetch_sdist

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from testbed import BuildResult

# A -g build of 33 units through a cold cluster (the native environment is built and sent
# first) takes minutes on a loaded two-core machine: more than the suite's 300 s default.
pytestmark = [pytest.mark.live, pytest.mark.timeout(900)]
log = logging.getLogger(__name__)

#: Google's double-conversion, the C++ library ujson bundles (9 units, no dependencies).
UJSON_SDIST: Final = Sdist(
    name="ujson", version="5.10.0",
    sha256="b3cd8f3c5d8c7738257f1018880444f7b7d9b66232c64649f562d7ba86ad4bc1",
    library="ujson-5.10.0/deps/double-conversion/double-conversion",
)  # fmt: skip
C_FLAGS: Final = "-g " + CFLAGS
CXX_FLAGS: Final = "-g -O2 -std=c++11"
OURS: Final = ClientPlan("ours")


@dataclass(frozen=True)
class FlaggedProject(Project):
    """A project built with extra ``CFLAGS`` and, for C++, g++ instead of gcc."""

    flags: str = ""
    cxx: bool = False

    def make_argv(self, cc: str, jobs: int) -> list[str]:
        """``make -jN CC=... CFLAGS=...``, ``gcc`` swapped for ``g++`` in C++ projects."""
        if self.cxx:
            cc = cc.removesuffix("gcc") + "g++"
        return [*super().make_argv(cc, jobs), f"CFLAGS={self.flags}"]

    def reference(self) -> dict[str, bytes]:
        """Build here with plain gcc/g++ (same tree, so the same -g paths); return the objects."""
        self.clean()
        done = subprocess.run(self.make_argv("gcc", 2), cwd=self.root, env=build_env(),
                              capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        objects = self.read_objects()
        assert done.returncode == 0, done.stderr[-3000:]
        assert len(objects) == len(self.sources)
        self.clean()
        return objects


def unpack_cxx(tarball: Path, dest: Path) -> FlaggedProject:
    """The double-conversion sources as ``lib/*.cc`` with a Makefile compiling each one."""
    prefix = PurePosixPath(UJSON_SDIST.library)
    dest.mkdir(parents=True)
    sources = []
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            path = PurePosixPath(member.name)
            if member.isfile() and path.parent == prefix and path.suffix in {".cc", ".h"}:
                # The sources include "double-conversion/x.h": keep that directory name.
                member.name = str(PurePosixPath("lib/double-conversion") / path.name)
                archive.extract(member, dest, filter="data")
                if path.suffix == ".cc":
                    sources.append(member.name)
    sources.sort()
    objects = " ".join("obj/" + PurePosixPath(s).relative_to("lib").with_suffix(".o").as_posix()
                       for s in sources)  # fmt: skip
    (dest / "Makefile").write_text(
        f"CC = g++\nCFLAGS = -O2\nOBJECTS = {objects}\n\nall: $(OBJECTS)\n\n"
        "obj/%.o: lib/%.cc\n\t@mkdir -p $(@D)\n\t$(CC) -Ilib $(CFLAGS) -c $< -o $@\n\n"
        ".PHONY: all\n"
    )  # fmt: skip
    return FlaggedProject(dest, tuple(sources), flags=CXX_FLAGS, cxx=True)


def c_project(dest: Path) -> FlaggedProject:
    """zstd's library (testbed.project) built with -g."""
    plain = unpack_project(fetch_sdist(ZSTD_SDIST), dest)
    return FlaggedProject(plain.root, plain.sources, flags=C_FLAGS)


@contextlib.contextmanager
def started(scheduler: str, *plans: DaemonPlan) -> Iterator[Cluster]:
    """A cluster on a fresh two-host bed; afterwards nothing may be left in the bed."""
    with NetnsBed(len(plans)) as bed:
        cluster = Cluster(bed, scheduler, plans).start()  # type: ignore[arg-type]
        try:
            yield cluster
        finally:
            tails = cluster.log_tails()
            codes = cluster.stop()
            left = {name: pids for name in bed.netns_names if (pids := netns_pids(name))}
            assert not left, f"processes left in the bed: {left}\n{tails}"
            ours = {n: c for n, c in codes.items() if n.endswith("-ours")}
            assert all(code == 0 for code in ours.values()), f"exit codes {ours}\n{tails}"


def build(cluster: Cluster, project: FlaggedProject, reference: Mapping[str, bytes],
          client: ClientPlan = OURS) -> BuildResult:  # fmt: skip
    result = cluster.build(project, reference, client, on=0, jobs=4, timeout=600)
    log.info("%s", result.summary())
    return result


@pytest.fixture(scope="module")
def ours_cluster() -> Iterator[Cluster]:
    """All iceserv: h1 with one slot, h2 with two."""
    with started("ours", DaemonPlan("ours", max_jobs=1), DaemonPlan("ours")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def mixed_cluster() -> Iterator[Cluster]:
    """The real scheduler, our daemon on h1 (one slot), a real iceccd on h2."""
    with started("real", DaemonPlan("ours", max_jobs=1), DaemonPlan("real")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def c_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[FlaggedProject, dict[str, bytes]]:
    project = c_project(tmp_path_factory.mktemp("c") / "zstd")
    return project, project.reference()


@pytest.fixture(scope="module")
def cxx_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[FlaggedProject, dict[str, bytes]]:
    project = unpack_cxx(fetch_sdist(UJSON_SDIST), tmp_path_factory.mktemp("cxx") / "dconv")
    return project, project.reference()


@pytest.mark.netns
class TestAllIceserv:
    def test_c_project_with_g(self, ours_cluster, c_tree):
        """zstd -g through an all-iceserv cluster: every object equals the local build's."""
        project, reference = c_tree
        result = build(ours_cluster, project, reference)
        problems = result.problems(on=["h1-ours", "h2-ours"])
        assert not problems, "\n".join([result.summary(), *problems, ours_cluster.log_tails()])

    def test_cxx_project_with_g_verified(self, ours_cluster, cxx_tree):
        """double-conversion -g, every remote job verified: identical, and nothing reported."""
        project, reference = cxx_tree
        client = ClientPlan("ours", extra_env={"ICECC_VERIFY": "1", "ICECC_FALLBACK": "fail"})
        result = build(ours_cluster, project, reference, client)
        problems = result.problems(on=["h2-ours"])
        assert not problems, "\n".join([result.summary(), *problems, ours_cluster.log_tails()])
        assert "ICECC_VERIFY" not in result.output
        assert "cluster failure" not in result.output


@pytest.mark.netns
class TestWithRealPeers:
    def test_verify_catches_what_a_14_server_changes(self, mixed_cluster, cxx_tree):
        """A real 1.4 iceccd records its own options in -g objects: reported, local kept."""
        project, reference = cxx_tree
        client = ClientPlan("ours", extra_env={"ICECC_VERIFY": "1",
                                               "ICECC_PREFERRED_HOST": "h2-real"})  # fmt: skip
        result = build(mixed_cluster, project, reference, client)
        assert result.returncode == 0, result.output
        assert not result.different  # the local objects won
        assert not result.missing
        reported = [line for line in result.output.splitlines()
                    if line.startswith("icecc: ICECC_VERIFY: ")]  # fmt: skip
        assert reported, result.output
        h2 = mixed_cluster.bed[1].ip
        assert all(f"remote object from {h2}" in line for line in reported), reported

    def test_fail_mode_on_a_refused_environment(self, mixed_cluster, tmp_path):
        """h2 (real 1.4) refuses a broken environment: fail mode fails the job in one line."""
        (tmp_path / "hello.c").write_text("int main(void) { return 0; }\n")
        broken = truncated_copy(build_real_env(dest_dir=tmp_path).path,
                                tmp_path / "broken.tar.gz", 64 * 1024)  # fmt: skip
        plain = {"ICECC_VERSION": str(broken), "ICECC_PREFERRED_HOST": "h2-real"}
        failing = compile_on_h1(mixed_cluster, tmp_path, {**plain, "ICECC_FALLBACK": "fail"})
        assert failing.returncode == 1, failing.stderr
        assert failing.stderr.startswith("icecc: cluster failure (")
        assert failing.stderr.count("\n") == 1, failing.stderr
        assert "(environment refused)" in failing.stderr or "(remote failure)" in failing.stderr
        assert not (tmp_path / "hello.o").exists()
        fallback = compile_on_h1(mixed_cluster, tmp_path, plain)
        assert fallback.returncode == 0, fallback.stderr
        assert fallback.stderr == ""
        assert (tmp_path / "hello.o").read_bytes()[:4] == b"\x7fELF"

    def test_a_compile_error_stays_the_compilers(self, mixed_cluster, tmp_path):
        """In fail mode a real compile error through the cluster is gcc's own message."""
        (tmp_path / "bad.c").write_text("int f(void) { return undeclared; }\n")
        done = compile_on_h1(mixed_cluster, tmp_path, {"ICECC_FALLBACK": "fail",
                                                       "ICECC_PREFERRED_HOST": "h2-real"},
                             source="bad.c")  # fmt: skip
        assert done.returncode == 1
        assert "'undeclared' undeclared" in done.stderr
        assert "cluster failure" not in done.stderr


def compile_on_h1(cluster: Cluster, work: Path, env: Mapping[str, str],
                  source: str = "hello.c") -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``icecc gcc -c SOURCE`` with our client on h1 (its daemon), *env* added."""
    cc, environ = cluster.client_command(ClientPlan("ours", extra_env=env), 0)
    environ.pop("ICECC_LOGFILE", None)  # the one line must reach stderr, not the log
    environ.pop("ICECC_DEBUG", None)
    output = source.rsplit(".", 1)[0] + ".o"
    return cluster.bed[0].run([*cc.split(), "-c", source, "-o", output], cwd=work, env=environ,
                              capture_output=True, text=True, timeout=240,
                              check=False)  # fmt: skip
