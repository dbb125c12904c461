"""``iceserv selftest`` against the real icecc-scheduler, run as users run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ICESERV = Path(sys.executable).with_name("iceserv")


@pytest.mark.live
class TestSelftest:
    def test_passes_and_shows_our_host_in_the_real_listcs(self):
        """The command exits 0 and prints the real scheduler's listcs line for our login."""
        proc = subprocess.run(
            [str(ICESERV), "selftest"], capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert "handshake: scheduler announced 43, negotiated 43" in out
        assert "ConfCS(max_scheduler_pong=3, max_scheduler_ping=36" in out
        assert "telnet: 200-ICECC 1.4.0: " in out
        assert "telnet:  iceserv-selftest (127.0.0.1:0) [" in out
        assert out.rstrip().endswith("selftest passed")

    def test_fails_cleanly_without_the_scheduler_binary(self, tmp_path):
        """A missing scheduler binary is a one-line failure and exit status 1, not a traceback."""
        proc = subprocess.run(
            [str(ICESERV), "selftest", "--scheduler-binary", str(tmp_path / "nope")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 1
        assert "selftest FAILED:" in proc.stderr
        assert "Traceback" not in proc.stderr
