"""Native environments: the paths a client names are vetted as the job user before any build."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import time
from pathlib import Path

import pytest

from iceserv.daemon.environments import EnvironmentCache
from iceserv.daemon.native import NativeEnvError, NativeEnvironments, PathVetter
from iceserv.daemon.sandbox import RunAs
from iceserv.testing import FakeClock

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch identities")
NOBODY = pwd.getpwnam("nobody")
AS_NOBODY = RunAs("nobody", NOBODY.pw_uid, NOBODY.pw_gid, switch=True)
AS_DAEMON = RunAs("daemon-user", os.geteuid(), os.getegid(), switch=False)
GCC = os.path.realpath(shutil.which("gcc") or "/usr/bin/gcc")


def _vet(vetter: PathVetter, compiler: str, extras: tuple[str, ...] = ()) -> dict[str, float]:
    async def run() -> dict[str, float]:
        try:
            return await vetter.mtimes(compiler, compiler, extras)
        finally:
            vetter.close()

    return asyncio.run(run())


def _script(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\ntouch /tmp/owned\n")
    path.chmod(0o755)
    return path


class TestPathVetter:
    def test_the_system_compiler_passes(self, tmp_path):
        """/usr/bin/gcc (root's, in root's directories) is accepted with its mtime."""
        times = _vet(PathVetter(AS_DAEMON, tmp_path), "/usr/bin/gcc")
        assert times["/usr/bin/gcc"] == Path(GCC).stat().st_mtime

    def test_a_compiler_inside_the_environment_cache_is_refused(self, tmp_path):
        """The issue's attack: an executable usr/bin/gcc unpacked into the cache."""
        gcc = _script(tmp_path / "target=x86_64" / "evil" / "usr" / "bin" / "gcc")
        with pytest.raises(NativeEnvError, match="inside the environment cache"):
            _vet(PathVetter(AS_DAEMON, tmp_path), str(gcc))

    def test_a_compiler_in_a_directory_others_can_change_is_refused(self, tmp_path):
        """A root-owned script under /tmp (writable by everyone) is refused."""
        gcc = _script(tmp_path / "bin" / "gcc")
        with pytest.raises(NativeEnvError, match="can be changed by users other than root"):
            _vet(PathVetter(AS_DAEMON, tmp_path / "cache"), str(gcc))

    @pytest.mark.parametrize(
        ("path", "reason"),
        [("/etc/passwd", "not executable"), ("/usr/bin", "not a regular file")],
    )
    def test_not_an_executable_file_is_refused(self, tmp_path, path, reason):
        """A compiler must be a regular, executable file."""
        with pytest.raises(NativeEnvError, match=reason):
            _vet(PathVetter(AS_DAEMON, tmp_path), path)

    def test_a_missing_compiler_is_refused(self, tmp_path):
        """A path that does not exist is reported as not found."""
        with pytest.raises(NativeEnvError, match="not found"):
            _vet(PathVetter(AS_DAEMON, tmp_path), "/usr/bin/no-such-compiler-here")

    def test_extra_files_are_checked_too(self, tmp_path):
        """An extra file in a directory others can change is refused; a system one passes."""
        bad = tmp_path / "plugin.so"
        bad.write_bytes(b"x")
        vetter = PathVetter(AS_DAEMON, tmp_path / "cache")
        assert "/etc/passwd" in _vet(vetter, "/usr/bin/gcc", ("/etc/passwd",))
        with pytest.raises(NativeEnvError, match="extra file"):
            _vet(PathVetter(AS_DAEMON, tmp_path / "cache"), "/usr/bin/gcc", (str(bad),))

    @ROOT_ONLY
    def test_paths_are_looked_at_as_the_job_user(self, tmp_path):
        """Under a root-only directory the job user sees nothing: nothing is stat'ed as root."""
        root_only = tmp_path / "private"
        gcc = _script(root_only / "gcc")
        root_only.chmod(0o700)
        with pytest.raises(NativeEnvError, match="Permission denied"):
            _vet(PathVetter(AS_NOBODY, tmp_path / "cache"), str(gcc))

    @ROOT_ONLY
    def test_the_daemon_thread_keeps_root(self, tmp_path):
        """Only the vetting thread changes identity: the daemon itself still reads as root."""
        _vet(PathVetter(AS_NOBODY, tmp_path), "/usr/bin/gcc")
        assert os.geteuid() == 0
        (tmp_path / "f").write_text("x")
        tmp_path.chmod(0o700)
        assert (tmp_path / "f").read_text() == "x"


_FAKE_BUILD = """#!/bin/sh
# A stand-in for icecc --build-native: counts the builds running beside it.
touch "$COUNT_DIR/running.$$"
ls "$COUNT_DIR" | grep -c '^running\\.' >> "$COUNT_DIR/seen"
sleep 0.3
rm -f "$COUNT_DIR/running.$$"
name="native-$$.tar.gz"
: > "$name"
echo "$name" >&5
"""


class TestNativeBuilds:
    def test_builds_run_one_at_a_time(self, tmp_path):
        """Four requests for four different environments: never two builds at once."""
        script = tmp_path / "fake-build"
        script.write_text(_FAKE_BUILD)
        script.chmod(0o755)
        count_dir = tmp_path / "count"
        count_dir.mkdir()
        cache = EnvironmentCache(tmp_path / "envs", 1 << 30, AS_DAEMON, FakeClock())
        cache.wipe()
        native = NativeEnvironments(cache, (str(script),), AS_DAEMON,
                                    {"COUNT_DIR": str(count_dir)}, max_builds=1)  # fmt: skip
        extras = ((), ("/etc/passwd",), ("/etc/group",), ("/etc/passwd", "/etc/group"))

        async def run() -> list[Path]:
            try:
                return await asyncio.gather(*(native.get("/usr/bin/gcc", e, "") for e in extras))
            finally:
                native.close()

        paths = asyncio.run(run())
        assert len(set(paths)) == 4
        seen = [int(n) for n in (count_dir / "seen").read_text().split()]
        assert len(seen) == 4
        assert max(seen) == 1


_COUNTING_BUILD = """#!/bin/sh
# A stand-in for icecc --build-native: counts its runs, writes a tarball, names it on fd 5.
echo "$ICECC_ENV_COMPRESSION" >> "$COUNT_DIR/built"
name="native-$$.tar.zst"
echo "not really a tarball" > "$name"
echo "$name" >&5
"""


class _Host:
    """One daemon's native environments over *basedir*; a new _Host is the daemon restarted."""

    def __init__(self, tmp_path: Path) -> None:
        script = tmp_path / "fake-build"
        if not script.exists():
            script.write_text(_COUNTING_BUILD)
            script.chmod(0o755)
            (tmp_path / "count").mkdir()
        self.count = tmp_path / "count" / "built"
        self.cache = EnvironmentCache(tmp_path / "envs", 1 << 30, AS_DAEMON, FakeClock())
        self.cache.wipe(keep_native=True)
        self.native = NativeEnvironments(
            self.cache, (str(script),), AS_DAEMON, {"COUNT_DIR": str(tmp_path / "count")}
        )
        self.kept = self.native.load()

    def run(self, work):
        async def main():
            try:
                return await work()
            finally:
                self.native.close()

        return asyncio.run(main())

    @property
    def builds(self) -> list[str]:
        return self.count.read_text().split() if self.count.exists() else []


class TestKeptAcrossRestarts:
    def test_a_built_environment_survives_a_restart(self, tmp_path):
        """Built once; after a restart the same compiler finds it (no second build)."""
        first = _Host(tmp_path)
        assert first.kept == 0

        async def build() -> tuple[str, Path]:
            key, kept = await first.native.resolve("/usr/bin/gcc", (), "")
            assert kept == ""
            return key, await first.native.build(key)

        key, tarball = first.run(build)
        assert first.builds == ["zstd"]  # the daemon's default when the client names none
        assert key.compression == "zstd"
        stray = first.cache.native_dir / "building.tmp"
        stray.write_text("left over by a killed build")

        second = _Host(tmp_path)
        assert second.kept == 1
        assert not stray.exists()
        found, skipped = second.run(lambda: second.native.discover(["gcc", "no-such-cc"]))
        assert [(f.key, f.path) for f in found] == [(key, str(tarball))]
        assert skipped == [("no-such-cc", "not installed")]
        assert second.builds == ["zstd"]
        assert tarball.is_file()

    def test_a_changed_compiler_is_built_again(self, tmp_path):
        """A compiler whose mtime differs from the one recorded: its old tarball goes, not found."""
        first = _Host(tmp_path)
        key, tarball = first.run(lambda: _resolve_and_build(first.native))
        manifest = json.loads(first.native.manifest.read_text())
        for item in manifest["natives"]:
            item["mtimes"] = dict.fromkeys(item["mtimes"], 1.0)  # "an older gcc"
        first.native.manifest.write_text(json.dumps(manifest))

        second = _Host(tmp_path)
        found, _ = second.run(lambda: second.native.discover(["gcc"]))
        assert [(f.key, f.path) for f in found] == [(key, "")]
        assert not tarball.exists()

    def test_a_damaged_list_starts_afresh(self, tmp_path):
        """An unreadable native.json keeps nothing and empties the native directory."""
        first = _Host(tmp_path)
        _, tarball = first.run(lambda: _resolve_and_build(first.native))
        first.native.manifest.write_text("{not json")
        second = _Host(tmp_path)
        assert second.kept == 0
        assert not tarball.exists()

    def test_the_requested_compression_is_its_own_environment(self, tmp_path):
        """A client asking for gzip gets a gzip build, not the zstd one."""
        host = _Host(tmp_path)

        async def both() -> tuple[str, str]:
            zstd, _ = await host.native.resolve("/usr/bin/gcc", (), "")
            gzip, _ = await host.native.resolve("/usr/bin/gcc", (), "gzip")
            await host.native.build(zstd)
            await host.native.build(gzip)
            return zstd.name, gzip.name

        zstd, gzip = host.run(both)
        assert zstd != gzip
        assert host.builds == ["zstd", "gzip"]

    @pytest.mark.skipif(not Path("/bin").is_symlink(), reason="needs a merged /usr")
    def test_one_compiler_named_two_ways_is_one_environment(self, tmp_path):
        """/bin/g++ and /usr/bin/gcc are the same compiler: the same key."""
        host = _Host(tmp_path)

        async def keys() -> tuple[object, object]:
            one, _ = await host.native.resolve("/bin/g++", (), "")
            two, _ = await host.native.resolve("/usr/bin/gcc", (), "")
            return one, two

        one, two = host.run(keys)
        assert one == two


async def _resolve_and_build(native: NativeEnvironments) -> tuple[object, Path]:
    key, _ = await native.resolve("/usr/bin/gcc", (), "")
    return key, await native.build(key)


_SLOW_BUILD = """#!/bin/sh
echo $$ > "$COUNT_DIR/pid"
exec sleep 60
"""


class TestCancelledBuild:
    def test_a_cancelled_build_kills_its_process(self, tmp_path):
        """A build cancelled (the daemon stops) takes its icecc-create-env with it."""
        script = tmp_path / "slow-build"
        script.write_text(_SLOW_BUILD)
        script.chmod(0o755)
        cache = EnvironmentCache(tmp_path / "envs", 1 << 30, AS_DAEMON, FakeClock())
        cache.wipe()
        native = NativeEnvironments(cache, (str(script),), AS_DAEMON, {"COUNT_DIR": str(tmp_path)})
        pid_file = tmp_path / "pid"

        async def run() -> int:
            key, _ = await native.resolve("/usr/bin/gcc", (), "")
            task = asyncio.create_task(native.build(key))
            async with asyncio.timeout(30):
                while not pid_file.exists() or not pid_file.read_text().strip():  # noqa: ASYNC110 - a file, no event to await
                    await asyncio.sleep(0.02)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            native.close()
            return int(pid_file.read_text())

        pid = asyncio.run(run())

        def gone() -> bool:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                return True
            return state == "Z"

        deadline = time.monotonic() + 10
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone()
