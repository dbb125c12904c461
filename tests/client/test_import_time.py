"""The wrapper's import diet: a fresh interpreter runs the entry point, then lists sys.modules.

Every compiler call pays for what the wrapper imports (STYLE.md, import
rules; services.md §10.5).  The service stack (pydantic, pydantic_settings,
structlog, dbus_fast, asyncio) must never load, on any path.  Without a
daemon (``ICECC=disable`` or nobody listening) the wrapper must not even load
the protocol, ``socket``, ``subprocess``, ``typing`` or ``enum``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from testbed.client_fakes import FakeDaemon

if TYPE_CHECKING:
    from pathlib import Path

SERVICE_STACK = {"pydantic", "pydantic_settings", "structlog", "dbus_fast", "asyncio"}
# Not on the path without a daemon: each costs milliseconds per compiler call.
HEAVY = {"iceserv.protocol", "socket", "subprocess", "typing", "enum", "dataclasses", "re",
         "logging", "argparse", "pathlib", "selectors", "zstandard"}  # fmt: skip

PROBE = """
import sys
from iceserv.client.main import main
status = main(sys.argv[1:]) if len(sys.argv) > 1 else None
modules = sorted(sys.modules)
import json  # only now: it loads re and enum itself
sys.stdout.flush()
print("\\n@@" + json.dumps([status, modules]))
"""


def run_entry(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int | None, set[str]]:
    """Run the entry point in a fresh interpreter; return its status and loaded modules."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    status, modules = json.loads(done.stdout.rpartition("\n@@")[2])
    return status, set(modules)


def tops(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "hello.c").write_text("int main(void) { return 0; }\n")
    return tmp_path


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **extra}


class TestImports:
    def test_importing_the_entry_point(self, work):
        """Importing iceserv.client.main loads neither the service stack nor anything heavy."""
        _, modules = run_entry([], base_env(work), work)
        assert "iceserv.client.main" in modules  # the probe sees our modules
        assert tops(modules) & SERVICE_STACK == set()
        assert modules & HEAVY == set()

    def test_disabled_build(self, work):
        """ICECC=disable: a whole local compile runs on the standard library's light half."""
        status, modules = run_entry(["gcc", "-c", "hello.c"], base_env(work, ICECC="disable"), work)
        assert status == 0
        assert (work / "hello.o").exists()
        assert "iceserv.client.local" in modules
        assert tops(modules) & SERVICE_STACK == set()
        assert modules & HEAVY == set()

    def test_build_with_a_daemon(self, work):
        """With a daemon the protocol loads, the service stack still does not."""
        daemon = FakeDaemon(work / "d.sock").start()
        try:
            status, modules = run_entry(
                ["gcc", "-c", "hello.c"],
                base_env(work, ICECC_TEST_SOCKET=str(work / "d.sock")), work,
            )  # fmt: skip
        finally:
            daemon.close()
        assert status == 0
        assert "iceserv.protocol.connection" in modules
        assert tops(modules) & SERVICE_STACK == set()
        assert {"socket", "subprocess", "asyncio", "logging"} & modules == set()

    def test_version_and_help(self, work):
        """--version and --help stay light too."""
        for flag in ("--version", "--help"):
            status, modules = run_entry(["icecc", flag], base_env(work), work)
            assert status == 0
            assert tops(modules) & SERVICE_STACK == set()
            assert "iceserv.protocol" not in modules
