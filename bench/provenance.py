"""Which code a benchmark measured: the commit and any uncommitted change under ``iceserv/``.

Benchmarks import ``provenance()`` and put it in their JSON, so a figure can be
traced to the code that produced it even when the working tree was dirty.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else ""


def provenance() -> dict[str, object]:
    """HEAD, the files under iceserv/ that differ from it, and the 1-minute load average."""
    dirty = [line[3:] for line in _git("status", "--porcelain", "--", "iceserv").splitlines()]
    return {"commit": _git("rev-parse", "--short=12", "HEAD"), "iceserv_uncommitted": dirty,
            "loadavg_at_start": os.getloadavg()[0]}  # fmt: skip
