"""Static checks the project promises: ruff, mypy --strict and the import contracts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip


class TestQuality:
    def test_ruff_is_clean(self):
        """ruff (every rule, ignores commented in pyproject.toml) finds nothing."""
        proc = _run("ruff", "check", "--no-cache", "iceserv", "tests", "testbed", "bench", "fuzz")
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_mypy_strict_is_clean(self):
        """mypy --strict accepts the whole package."""
        proc = _run("mypy")
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_import_contracts_hold(self):
        """import-linter's contracts (protocol is stdlib-only, layers independent) are kept."""
        proc = _run("lint-imports")
        assert proc.returncode == 0, proc.stdout + proc.stderr
