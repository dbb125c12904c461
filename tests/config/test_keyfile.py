"""Tests of iceserv.config.keyfile: the network key's file rules (issue 14)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from iceserv.config.keyfile import MIN_KEY_BYTES, read_key, read_keys, write_key
from iceserv.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _key(tmp_path, data=b"k" * 32, mode=0o640, name="network.key"):
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


class TestReadKey:
    def test_good_key(self, tmp_path):
        """A private file of at least 32 bytes is the key, byte for byte."""
        path = _key(tmp_path, bytes(range(40)))
        assert read_key(path) == bytes(range(40))

    def test_missing(self, tmp_path):
        """A missing file is 'path: reason'."""
        path = tmp_path / "none"
        with pytest.raises(ConfigError, match=rf"^{path}: cannot read the network key: No such"):
            read_key(path)

    def test_too_short(self, tmp_path):
        """Fewer than 32 bytes are refused, saying how many there were."""
        path = _key(tmp_path, b"x" * (MIN_KEY_BYTES - 1))
        with pytest.raises(ConfigError, match=rf"^{path}: the network key is too short \(31 bytes"):
            read_key(path)

    @pytest.mark.parametrize("mode", [0o644, 0o604, 0o602])
    def test_world_accessible(self, tmp_path, mode):
        """A key others can read or write is refused, with its mode."""
        path = _key(tmp_path, mode=mode)
        with pytest.raises(ConfigError, match=rf"^{path}: .*world-accessible \(mode {mode:04o}\)"):
            read_key(path)

    def test_unreadable(self, tmp_path):
        """A key we may not read is refused (as root: checked by a child run as nobody)."""
        if os.geteuid() != 0:
            path = _key(tmp_path, mode=0o000)
            with pytest.raises(ConfigError, match=rf"^{path}: cannot read the network key"):
                read_key(path)
            return
        with tempfile.TemporaryDirectory() as shared:
            os.chmod(shared, 0o755)  # noqa: PTH101, S103 - nobody must reach the file
            path = _key(Path(shared), mode=0o600)
            code = (
                "import sys, pathlib\n"
                "from iceserv.config.keyfile import read_key\n"
                "from iceserv.errors import ConfigError\n"
                "try:\n    read_key(pathlib.Path(sys.argv[1]))\n"
                "except ConfigError as e:\n    print(e)\n"
            )
            result = subprocess.run(
                [
                    "setpriv",
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                    sys.executable,
                    "-c",
                    code,
                    str(path),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
        assert result.stdout.startswith(f"{path}: cannot read the network key: Permission denied")

    def test_directory_and_symlink(self, tmp_path):
        """A directory or a symbolic link is not a key file."""
        (tmp_path / "d").mkdir(mode=0o750)
        with pytest.raises(ConfigError, match=r"not a regular file|cannot read"):
            read_key(tmp_path / "d")
        (tmp_path / "link").symlink_to(_key(tmp_path))
        with pytest.raises(ConfigError, match="symbolic link"):
            read_key(tmp_path / "link")

    def test_too_long(self, tmp_path):
        """A big file is not read whole and is refused."""
        path = _key(tmp_path, b"x" * 100_000)
        with pytest.raises(ConfigError, match="longer than 4096 bytes"):
            read_key(path)

    def test_read_keys(self, tmp_path):
        """Current then previous; a previous key alone is an error; none is none."""
        new, old = _key(tmp_path, b"n" * 32, name="new"), _key(tmp_path, b"o" * 32, name="old")
        assert read_keys(new, old) == (b"n" * 32, b"o" * 32)
        assert read_keys(new, None) == (b"n" * 32,)
        assert read_keys(None, None) == ()
        with pytest.raises(ConfigError, match=rf"^{old}: previous_key_file is set but key_file"):
            read_keys(None, old)


class TestWriteKey:
    def test_new_key(self, tmp_path):
        """A new key is 64 random bytes, mode 0640, and passes read_key."""
        path = tmp_path / "k"
        write_key(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert len(read_key(path)) == 64
        other = tmp_path / "k2"
        write_key(other)
        assert read_key(other) != read_key(path)

    def test_never_overwrites(self, tmp_path):
        """An existing file is left alone."""
        path = _key(tmp_path)
        with pytest.raises(FileExistsError):
            write_key(path)
        assert path.read_bytes() == b"k" * 32
