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
import iceserv.client.local as local
from iceserv.client.main import main

def report(status):
    modules = sorted(sys.modules)
    import json  # only now: it loads re and enum itself
    sys.stdout.flush()
    print("\\n@@" + json.dumps([status, modules]))

def become(argv, environ, real=local.become, **keep):  # it becomes the compiler: report first
    report(None)
    real(argv, environ, **keep)

local.become = become
status = main(sys.argv[1:]) if len(sys.argv) > 1 else None
report(status)
"""


def run_entry(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int | None, set[str]]:
    """Run the entry point in a fresh interpreter; return its status and loaded modules."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    status, modules = json.loads(done.stdout.partition("\n@@")[2].partition("\n")[0])
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
        assert status is None  # it became the compiler (execve): the report came first
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


# --- the launcher's import budget (issue 17, P2) ------------------------------------------

#: What the launcher may import beyond ``python -I -S -c pass`` on the light paths: not
#: even ``os`` (``_collections_abc``, ``stat``, ``posixpath``), the light modules use the
#: built-in ``posix``.
LIGHT = {"pwd", "iceserv", "iceserv.errors", "iceserv.client", "iceserv.client.main",
         "iceserv.client.env", "iceserv.client.log",
         "iceserv.client.args", "iceserv.client.rules", "iceserv.client.options",
         "iceserv.client.job", "iceserv.client.local"}  # fmt: skip
#: The local-slot path adds the daemon socket and the hand-written slot conversation.
SLOT = LIGHT | {"_socket", "iceserv.client.sockets", "iceserv.client.slot"}
#: Summed "self" import microseconds beyond the bare interpreter: ~2 ms on an idle
#: machine; the margin absorbs a loaded CI host.  Not a wall-clock assertion on the
#: compile: it only grows if someone adds imports to the light path.  Each module counts
#: with its least time over TRIES runs: a preempted import is not the code's cost.
BUDGET_US = 25_000
TRIES = 5


def import_times(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, int]:
    """``-X importtime``'s self microseconds per module for *argv* run by the launcher's python."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
                          check=True)  # fmt: skip
    times = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        times[name.strip()] = int(own)
    return times


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Our launcher and the interpreter its shebang names."""
    from testbed.client_fakes import write_launcher  # noqa: PLC0415

    path = write_launcher(tmp_path_factory.mktemp("launcher") / "icecc", sys.executable)
    python = path.read_text().partition("\n")[0].removeprefix("#!").split()[0]
    return str(path), python


class TestLauncherBudget:
    def run_budget(self, launcher: tuple[str, str], work: Path, args: list[str],
                   env: dict[str, str]) -> dict[str, int]:  # fmt: skip
        script, python = launcher
        floor = import_times([python, "-I", "-S", "-X", "importtime", "-c", "pass"], env, work)
        runs = []
        for _ in range(TRIES):
            ours = import_times([python, "-I", "-S", "-X", "importtime", script, *args], env,
                                work)  # fmt: skip
            runs.append({name: us for name, us in ours.items() if name not in floor})
        # Per module, its least time over the runs: a preempted import is not the code's cost.
        names = set().union(*runs)
        return {name: min(run.get(name, 0) for run in runs) for name in names}

    def test_disabled_build(self, launcher, work):
        """ICECC=disable: only the light modules load, within the summed import budget."""
        extra = self.run_budget(launcher, work, ["gcc", "-c", "hello.c"],
                                base_env(work, ICECC="disable"))  # fmt: skip
        assert (work / "hello.o").exists()
        assert set(extra) <= LIGHT, set(extra) - LIGHT
        assert sum(extra.values()) < BUDGET_US, extra

    def test_local_slot_from_a_daemon(self, launcher, work):
        """A local job with a daemon (-E): no protocol package, within the same budget."""
        daemon = FakeDaemon(work / "d.sock").start()
        try:
            extra = self.run_budget(
                launcher,
                work,
                ["gcc", "-E", "hello.c", "-o", "hello.i"],
                base_env(work, ICECC_TEST_SOCKET=str(work / "d.sock")),
            )
        finally:
            daemon.close()
        assert (work / "hello.i").exists()
        assert {type(m).__name__ for c in daemon.messages() for m in c} == {"JobLocalBegin"}
        assert set(extra) <= SLOT, set(extra) - SLOT
        assert sum(extra.values()) < BUDGET_US, extra
