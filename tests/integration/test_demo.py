"""``iceserv demo``, the README's main job, run as its users run it: as root and as a user."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ICESERV = Path(sys.executable).with_name("iceserv")
REPO = Path(__file__).resolve().parents[2]
DEMO_USER = "iceservdemo"


def _placement(out: str) -> dict[str, tuple[int, int]]:
    rows = re.findall(r"^(demo-\w+)\s+(\d+)\s+(\d+)$", out, re.MULTILINE)
    return {name: (int(jobs), int(local)) for name, jobs, local in rows}


def _check_common(out: str) -> None:
    assert "built 12 objects through the cluster" in out
    assert "all identical to the local build; ./demo says: demo OK" in out
    assert re.search(r"stopped\s+demo-server \(0\), demo-client \(0\), scheduler \(0\)", out)


class TestDemo:
    def test_as_root_jobs_travel_to_the_server_daemon(self):
        """As root the daemons chroot, so every compile job runs on demo-server.

        The environment was packed before the build asked (issue 17), and the report says so.
        """
        assert os.geteuid() == 0, "the suite runs as root (see README)"
        proc = subprocess.run([str(ICESERV), "demo"], capture_output=True, text=True,
                              timeout=600, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _check_common(proc.stdout)
        assert _placement(proc.stdout) == {"demo-client": (0, 1), "demo-server": (12, 0)}
        # The demo waits for the client daemon's prebuild, then says where the time went.
        assert re.search(r"demo-client packed gcc's \(zstd\) in [\d.]+ s", proc.stdout)
        assert "the build asked for the environment and it was ready" in proc.stdout
        # ... and pushed it to demo-server before the build (push-ahead), so no job sent it.
        assert re.search(r"demo-server had the environment before the first job: right after "
                         r"packing it, demo-client pushed it there", proc.stdout)  # fmt: skip
        assert "local versus cluster:" in proc.stdout

    @pytest.mark.timeout(900)
    def test_as_an_unprivileged_user_jobs_stay_on_the_local_daemon(self):
        """Without chroot rights the cluster still builds; the client's daemon takes the jobs."""
        if shutil.which("useradd") is None or not Path("/usr/bin/python3").exists():
            pytest.fail("needs useradd and Debian's python3: run ./bin/setup")
        try:
            pwd.getpwnam(DEMO_USER)
        except KeyError:
            subprocess.run(["useradd", "-m", DEMO_USER], check=True, timeout=60)
        home = Path(pwd.getpwnam(DEMO_USER).pw_dir)
        # The suite's venv lives under root's home; the user installs iceserv for itself,
        # as a user on a fresh machine would.
        script = (
            "set -e; cd ~; rm -rf venv; /usr/bin/python3 -m venv venv; "
            f"venv/bin/pip install -q --disable-pip-version-check {REPO}; venv/bin/iceserv demo"
        )
        proc = subprocess.run(["su", DEMO_USER, "-s", "/bin/sh", "-c", script],
                              capture_output=True, text=True, timeout=840, check=False)  # fmt: skip
        shutil.rmtree(home / "venv", ignore_errors=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _check_common(proc.stdout)
        assert _placement(proc.stdout) == {"demo-client": (12, 1), "demo-server": (0, 0)}
