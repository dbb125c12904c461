"""A wheel installed alone (no source tree) works: programs, LZO, system files, sandbox check.

The wheel is built from this tree with pip (hatchling) and installed with
its ``lzo`` extra into a fresh virtualenv under pytest's temporary directory,
which is exactly the kind of place the units' ``PrivateTmp=yes`` hides: so
``install-system-files`` without ``--bindir`` must refuse, and with one must
write units that name it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(900)


def _run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False,
                          **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A venv with the built wheel installed as `iceserv[lzo]`; returns its bin directory."""
    base = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                  str(base / "dist"), str(ROOT)])  # fmt: skip
    assert built.returncode == 0, built.stderr[-4000:]
    (wheel,) = (base / "dist").glob("iceserv-*.whl")
    venv.create(base / "venv", with_pip=True)
    bindir = base / "venv" / "bin"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    installed = _run([str(bindir / "python"), "-m", "pip", "install", "-q",
                      f"{wheel}[lzo]"], env=env, cwd=base)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-4000:]
    return bindir


def _clean_env():
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent"}


class TestWheel:
    def test_programs_run_outside_the_tree(self, wheel_venv):
        """icecc --version and iceccd --check-config work, importing the installed copy."""
        version = _run([str(wheel_venv / "icecc"), "--version"], env=_clean_env(), cwd="/")
        assert version.returncode == 0, version.stderr
        assert version.stdout.startswith("ICECC ")
        where = _run([str(wheel_venv / "python"), "-c", "import iceserv; print(iceserv.__file__)"],
                     env=_clean_env(), cwd="/")  # fmt: skip
        assert "/site-packages/iceserv/" in where.stdout
        check = _run([str(wheel_venv / "iceccd"), "--check-config", "--confd", "/dev/null"],
                     env=_clean_env(), cwd="/")  # fmt: skip
        assert check.returncode == 0, check.stderr
        assert "max_processes" in check.stdout

    def test_lzo_included(self, wheel_venv):
        """The lzo extra gives a working LZO1X for peers older than protocol 40."""
        code = ("from iceserv.protocol.compression import read_blob, write_blob\n"
                "from iceserv.protocol.wire import Reader, Writer\n"
                "w = Writer(); write_blob(w, b'x' * 5000, 39)\n"
                "print(read_blob(Reader(w.getvalue()), 39)[0] == b'x' * 5000)\n")  # fmt: skip
        proc = _run([str(wheel_venv / "python"), "-c", code], env=_clean_env(), cwd="/")
        assert proc.stdout.strip() == "True", proc.stderr

    def test_system_files_refuse_a_hidden_venv(self, wheel_venv, tmp_path):
        """The venv lives under /tmp: without --bindir, install-system-files refuses."""
        proc = _run([str(wheel_venv / "iceserv"), "install-system-files", "--root",
                     str(tmp_path), "--init", "systemd"], env=_clean_env())  # fmt: skip
        assert proc.returncode == os.EX_USAGE, proc.stdout + proc.stderr
        assert "PrivateTmp=yes hides /tmp" in proc.stderr
        assert not (tmp_path / "usr").exists()

    def test_system_files_from_the_wheel(self, wheel_venv, tmp_path):
        """With --bindir, the units, conf.d samples and man pages come from the wheel's data."""
        proc = _run([str(wheel_venv / "iceserv"), "install-system-files", "--root",
                     str(tmp_path), "--prefix", "/usr", "--init", "both", "--bindir",
                     "/opt/iceserv/bin"], env=_clean_env(), cwd="/")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        unit = (tmp_path / "usr/lib/systemd/system/iceccd.service").read_text()
        assert "ExecStart=/opt/iceserv/bin/iceccd --foreground" in unit
        assert (tmp_path / "etc/conf.d/iceccd").is_file()
        assert (tmp_path / "etc/init.d/icecc-scheduler").is_file()
        assert (tmp_path / "usr/share/man/man8/iceccd.8").is_file()
        assert "/site-packages/iceserv/_data/" in proc.stdout
