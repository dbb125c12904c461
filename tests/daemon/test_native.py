"""Native environments: the paths a client names are vetted as the job user before any build."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
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
