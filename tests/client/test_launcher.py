"""The launcher: a ``#!python -IS`` script running the wrapper; the console script's upgrade."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from iceserv.client.launcher import (
    MARKER,
    LauncherError,
    default_paths,
    is_launcher,
    render,
    write_launchers,
)

if TYPE_CHECKING:
    from pathlib import Path

PYTHON = os.path.realpath(sys.executable)


class TestRender:
    def test_shape(self):
        """Shebang -IS, the marker, our package first, site dirs after the stdlib, the entry."""
        text = render("/usr/bin/python3", ["/opt/iceserv", "/opt/site"])
        lines = text.splitlines()
        assert lines[0] == "#!/usr/bin/python3 -IS"
        assert lines[1].startswith(MARKER)
        assert "sys.path[:0] = ['/opt/iceserv']" in lines  # found before the stdlib is listed
        assert "sys.path += ['/opt/site']" in lines
        assert lines[-2:] == ["from iceserv.client.main import main", "sys.exit(main())"]

    @pytest.mark.parametrize("python", ["python3", "/opt/my python/bin/python3",
                                        "/" + "x" * 300])  # fmt: skip
    def test_unusable_interpreter_paths(self, python):
        """Relative, blank-containing or overlong interpreter paths are refused clearly."""
        with pytest.raises(LauncherError, match="#! line"):
            render(python, [])

    def test_default_paths_start_with_the_package(self):
        """The first path holds the iceserv package itself (an editable tree or site-packages)."""
        first = default_paths()[0]
        assert os.path.isfile(os.path.join(first, "iceserv", "client", "main.py"))  # noqa: PTH118, PTH113


class TestWrite:
    def test_writes_both_and_recognises_them(self, tmp_path: Path):
        """icecc and icerun are written executable and recognised; other files are not."""
        written = write_launchers(str(tmp_path))
        assert written == [str(tmp_path / "icecc"), str(tmp_path / "icerun")]
        for path in written:
            assert os.access(path, os.X_OK)
            assert is_launcher(path)
        (tmp_path / "other").write_text("#!/bin/sh\n")
        assert not is_launcher(str(tmp_path / "other"))
        assert not is_launcher(str(tmp_path / "missing"))
        assert list(tmp_path.iterdir()) != []
        assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())

    def test_runs_isolated(self, tmp_path: Path):
        """The launcher ignores PYTHONPATH and loads no site: a poisoned path changes nothing."""
        write_launchers(str(tmp_path))
        poison = tmp_path / "poison"
        poison.mkdir()
        (poison / "iceserv.py").write_text("raise SystemExit('poisoned')\n")
        (poison / "sitecustomize.py").write_text("raise SystemExit('poisoned')\n")
        done = subprocess.run([str(tmp_path / "icecc"), "--version"], capture_output=True,
                              text=True, timeout=60, check=False,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(poison)})  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("ICECC 1.4.0 (iceserv ")

    def test_icerun_mode_comes_from_the_name(self, tmp_path: Path):
        """The same launcher named icerun answers as icerun."""
        write_launchers(str(tmp_path))
        done = subprocess.run([str(tmp_path / "icerun"), "--version"], capture_output=True,
                              text=True, timeout=60, check=True)  # fmt: skip
        assert done.stdout.startswith("ICERUN 1.4.0")


class TestConsoleScript:
    def test_first_run_installs_launchers(self, tmp_path: Path):
        """pip's console script runs the wrapper and leaves launchers in its place."""
        script = tmp_path / "icecc"
        body = "import sys\nfrom iceserv.client.launcher import console\nsys.exit(console())\n"
        script.write_text(f"#!{sys.executable}\n{body}")
        script.chmod(0o755)
        done = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                              timeout=60, check=True)  # fmt: skip
        assert done.stdout.startswith("ICECC 1.4.0")
        assert is_launcher(str(script))
        assert is_launcher(str(tmp_path / "icerun"))
        again = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                               timeout=60, check=True)  # fmt: skip
        assert again.stdout == done.stdout
