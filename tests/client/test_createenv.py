"""``icecc-create-env``: 1.4's environment tarballs, reproducible, accepted by a real iceccd."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from typing import TYPE_CHECKING

import pytest
import zstandard
from testbed import RealScheduler, build_real_env

from iceserv.client import createenv
from iceserv.client.envfiles import GENERATED_MTIME, EnvFiles, write_tarball
from iceserv.protocol import (
    CompileFile,
    CompileResult,
    EnvEntry,
    EnvTransfer,
    GetCS,
    Lang,
    Login,
    Stats,
    UseCS,
    VerifyEnv,
    VerifyEnvResult,
)
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from pathlib import Path

GCC_FILES = {
    "bin/true", "etc/ld.so.cache", "etc/ld.so.conf", "usr/bin/gcc", "usr/bin/g++", "usr/bin/cc1",
    "usr/bin/cc1plus", "usr/bin/as", "usr/bin/objcopy", "lib64/ld-linux-x86-64.so.2",
    "lib/x86_64-linux-gnu/libc.so.6",
}  # fmt: skip
CLANG_FILES = {"usr/bin/clang", "usr/bin/gcc", "usr/bin/g++", "usr/bin/as", "usr/bin/objcopy",
               "proc/cpuinfo", "bin/true", "etc/ld.so.cache"}  # fmt: skip


def build(tmp: Path, compiler: str = "/usr/bin/gcc", compression: str = "gzip") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    name = createenv.create_env(compiler, compression=compression, out_dir=str(tmp), echo=False)
    return tmp / name


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.fixture(scope="module")
def gcc_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our environment of /usr/bin/gcc (gzip), built once for the module."""
    return build(tmp_path_factory.mktemp("ours-gcc"))


class TestGccEnvironment:
    def test_same_toolchain_same_bytes(self, gcc_env, tmp_path):
        """A second build of the same gcc gives the same name and the same bytes."""
        again = build(tmp_path)
        assert again.name == gcc_env.name
        assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(
            gcc_env.read_bytes()).digest()  # fmt: skip

    def test_contents(self, gcc_env):
        """The files 1.4 ships for gcc, owned by 0, generated ones with a fixed time."""
        found = members(gcc_env)
        assert set(found) >= GCC_FILES
        assert any(n.endswith("/liblto_plugin.so") for n in found)
        assert all(m.isfile() and m.uid == m.gid == 0 for m in found.values())
        assert found["etc/ld.so.cache"].mtime == GENERATED_MTIME
        assert found["usr/bin/gcc"].mode & 0o111
        assert list(found) == sorted(found)

    def test_name_is_the_md5_of_the_file_list(self, gcc_env):
        """The name is md5 over the sorted "md5 /path" lines of the packed files."""
        lines = []
        with tarfile.open(gcc_env) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                digest = hashlib.md5(tar.extractfile(member).read(), usedforsecurity=False)  # type: ignore[union-attr]
                lines.append(f"{digest.hexdigest()} /{member.name}\n")
        expected = hashlib.md5("".join(lines).encode(), usedforsecurity=False).hexdigest()
        assert gcc_env.name == f"{expected}.tar.gz"

    def test_same_name_and_files_as_real_create_env(self, gcc_env, real_gcc_env):
        """The real 1.4 icecc-create-env names the same toolchain alike, with the same files."""
        assert gcc_env.name == real_gcc_env.path.name
        ours, real = members(gcc_env), members(real_gcc_env.path)
        assert set(ours) == set(real)
        assert {n: m.size for n, m in ours.items()} == {n: m.size for n, m in real.items()}


class TestClangEnvironment:
    def test_clang_contents_and_name_match_real(self, tmp_path):
        """For clang: compilerwrapper as gcc/g++, an empty proc/cpuinfo; 1.4's name (zstd)."""
        ours = build(tmp_path / "ours", "/usr/bin/clang", "zstd")
        found = members(ours)
        assert set(found) >= CLANG_FILES
        assert found["proc/cpuinfo"].size == 0
        real = build_real_env("/usr/bin/clang", "zstd", dest_dir=tmp_path / "real")
        assert ours.name == real.path.name


class TestCommandLine:
    def test_build_native_with_extra_file_reports_on_fd5(self, tmp_path):
        """icecc --build-native gcc FILE: --addfile FILE, the name on fd 5, uncompressed."""
        extra = tmp_path / "extra.txt"
        extra.write_text("an extra file\n")
        env = {"PATH": "/usr/bin:/bin", "ICECC_ENV_COMPRESSION": "none", "HOME": str(tmp_path)}
        script = "import sys; from iceserv.client.main import main; sys.exit(main(sys.argv[1:]))"
        # The shell opens fd 5 on a file, as iceccd opens it on a pipe.
        done = subprocess.run(
            ["sh", "-c", 'exec 5>fd5.txt; exec "$0" "$@"', sys.executable, "-c", script, "icecc",
             "--build-native", "gcc", str(extra)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        reported = (tmp_path / "fd5.txt").read_text()
        assert done.returncode == 0, done.stdout + done.stderr
        name = reported.strip()
        assert name.endswith(".tar")
        assert f"creating {name}\n" in done.stdout
        found = members(tmp_path / name)
        assert found[str(extra)[1:]].size == len("an extra file\n")

    @pytest.mark.parametrize(("argv", "message"), [
        (["/bin/true"], "is not a known compiler"),
        (["/usr/bin/gcc", "--compression", "lzma"], "Unknown compression type"),
        (["/usr/bin/gcc", "--bogus"], "Unknown argument"),
        ([], "Usage"),
    ])  # fmt: skip
    def test_errors_exit_1_with_a_message(self, argv, message, capsys, tmp_path, monkeypatch):
        """Bad compilers and options end with status 1 and 1.4's message."""
        monkeypatch.chdir(tmp_path)
        assert createenv.main(argv) == 1
        assert message in capsys.readouterr().out
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize(("given", "c_compiler"), [
        ("clang++-14", "clang-14"), ("/usr/bin/g++", "/usr/bin/gcc"),
        ("/usr/bin/c++", "/usr/bin/cc"), ("x86_64-linux-gnu-g++-12", "x86_64-linux-gnu-gcc-12"),
        ("gcc", "gcc"),
    ])  # fmt: skip
    def test_c_compiler_of_a_cxx_compiler(self, given, c_compiler):
        """--build-native packs the C compiler next to a C++ one (1.4 get_c_compiler)."""
        assert createenv._c_compiler(given) == c_compiler


@pytest.mark.parametrize("compression", ["none", "gzip", "bzip2", "xz", "zstd"])
class TestTarballWriter:
    def test_every_compression_is_reproducible_and_readable(self, tmp_path, compression):
        """Each compression gives identical bytes twice and a tar with the files in order."""
        source = tmp_path / "src"
        source.mkdir()
        (source / "b.txt").write_text("bee\n")
        (source / "a.txt").write_text("ay\n")
        outputs = []
        for run in ("one", "two"):
            files = EnvFiles(str(tmp_path / run / "root"), echo=False)
            files.add(str(source / "b.txt"))
            files.add(str(source / "a.txt"))
            files.copy_all()
            out = tmp_path / run / ("env.tar" + createenv.COMPRESSIONS[compression])
            write_tarball(files, str(out), compression)
            outputs.append(out)
        assert outputs[0].read_bytes() == outputs[1].read_bytes()
        inside = str(source)[1:]
        assert list(members(outputs[0])) == [f"{inside}/a.txt", f"{inside}/b.txt"]


class TestRealDaemonAcceptsIt:
    def test_real_iceccd_installs_verifies_and_compiles(
        self, gcc_env, real_scheduler: RealScheduler, real_daemon_factory, tmp_path
    ):
        """A real 1.4 iceccd installs our tarball, verifies it and compiles like local gcc."""
        daemon = real_daemon_factory("envtest", real_scheduler)
        daemon.wait_logged_in(real_scheduler)
        name = gcc_env.name.partition(".tar")[0]
        (tmp_path / "hello.c").write_text("int f(int x) { return x * 7; }\n")
        source = subprocess.run(["gcc", "-E", "-fdirectives-only", "hello.c"], cwd=tmp_path,
                                capture_output=True, check=True, timeout=60).stdout  # fmt: skip
        with real_scheduler.awake():
            submitter = BlockingChannel.connect("127.0.0.1", real_scheduler.port or 0)
        try:
            submitter.send(
                Login(port=0, max_kids=0, nodename="submitter", host_platform="x86_64",
                      noremote=True, supported_features=3),
                Stats(load=100, free_mem=4096),
            )  # fmt: skip
            submitter.receive()  # CS_CONF
            submitter.send(GetCS(versions=(EnvEntry("x86_64", name),), filename="hello.c",
                                 lang=Lang.C, target="x86_64", client_id=1,
                                 preferred_host="envtest", minimal_host_version=21,
                                 client_count=1))  # fmt: skip
            use = submitter.receive()
            assert isinstance(use, UseCS), use
            server = BlockingChannel.connect(use.hostname, use.port, timeout=120)
            server.send(EnvTransfer(name, "x86_64"))
            server.send_file(gcc_env.read_bytes())
            server.send(VerifyEnv(name, "x86_64"))
            assert server.receive() == VerifyEnvResult(ok=True)
            server.send(CompileFile(lang=Lang.C, job_id=use.job_id,
                                    args=("-O2", "-c", "-fdirectives-only"), environment=name,
                                    target="x86_64", compiler_name="gcc", input_file="hello.c",
                                    working_dir=str(tmp_path), output_file="hello.o"))  # fmt: skip
            server.send_file(source)
            result = server.receive()
            assert isinstance(result, CompileResult), result
            assert result.status == 0, result.err
            obj, _ = server.receive_file()
            server.close()
        finally:
            submitter.close()
        subprocess.run(["gcc", "-O2", "-c", "hello.c", "-o", "local.o"], cwd=tmp_path,
                       check=True, timeout=60)  # fmt: skip
        assert obj == (tmp_path / "local.o").read_bytes()
