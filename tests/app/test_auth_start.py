"""Both services refuse to start with an unusable network key file: ``path: reason``, exit 78."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = {"iceccd": "iceserv.app.daemon", "icecc-scheduler": "iceserv.app.scheduler"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(prog: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "ICECC_TESTS": "1",
           "ICECC_TEST_SOCKET": str(tmp_path / "sock")}  # fmt: skip
    argv = [sys.executable, "-m", PROGRAMS[prog], "-p", str(_free_port()), "-i", "lo", *args]
    if prog == "iceccd":
        argv += ["-b", str(tmp_path / "envs"), "--confd", os.devnull]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path, check=False
    )


def _key(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
class TestBadKeyFile:
    def test_too_short(self, prog, tmp_path):
        """A 31-byte key stops the start with exit 78 and 'prog: path: reason'."""
        key = _key(tmp_path / "k", b"x" * 31, 0o600)
        result = _run(prog, "--key-file", str(key), "--auth", "require", tmp_path=tmp_path)
        assert result.returncode == 78, result.stderr
        assert f"{prog}: {key}: the network key is too short (31 bytes" in result.stderr

    def test_world_readable(self, prog, tmp_path):
        """A world-readable key stops the start, also with --check-config."""
        key = _key(tmp_path / "k", b"x" * 32, 0o644)
        for extra in ((), ("--check-config",)):
            result = _run(prog, "--key-file", str(key), "--auth", "prefer", *extra,
                          tmp_path=tmp_path)  # fmt: skip
            assert result.returncode == 78, result.stderr
            assert f"{key}: the network key is world-accessible (mode 0644)" in result.stderr

    def test_missing_and_missing_key_setting(self, prog, tmp_path):
        """A missing file, or auth=require without any key file, is exit 78."""
        result = _run(prog, "--key-file", str(tmp_path / "none"), tmp_path=tmp_path)
        assert result.returncode == 78
        assert f"{tmp_path / 'none'}: cannot read the network key" in result.stderr
        result = _run(prog, "--auth", "require", tmp_path=tmp_path)
        assert result.returncode == 78
        assert "auth = require needs key_file" in result.stderr

    def test_good_key_passes_check_config(self, prog, tmp_path):
        """A good key passes --check-config (exit 0)."""
        key = _key(tmp_path / "k", os.urandom(32), 0o640)
        result = _run(prog, "--key-file", str(key), "--auth", "require", "--check-config",
                      tmp_path=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr
