"""iceserv's own programs as subprocesses, started the way a user starts them.

Owns ``OurScheduler`` (``python -m iceserv.app.scheduler``) and ``OurDaemon``
(``python -m iceserv.app.daemon``), both ``program.Program``s that are ready
when their JSON log says so.  Like the rest of the bed it does not import
iceserv: it runs the programs and reads their JSON logs, so the same checks
work on any build of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from testbed.hosts import free_scheduler_port
from testbed.procs import clean_env
from testbed.program import DaemonProgram, Program
from testbed.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from testbed.real import ListedHost, RealScheduler

_REPO = Path(__file__).resolve().parents[1]


@dataclass(eq=False, kw_only=True)
class _OurProgram(Program):
    """One of our programs: ``python -m MODULE`` from this checkout, with a JSON log.

    ``extra_env`` is added to its environment (e.g. ``DBUS_SYSTEM_BUS_ADDRESS``).
    """

    out_lines: ClassVar[int] = 20

    extra_env: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 20.0

    def _start_module(self, module: str, args: Sequence[str], env: Mapping[str, str]) -> Self:
        """Run ``python -m module args`` and wait for its ``*_ready`` log record."""
        env = {**env, **self.extra_env, "PYTHONPATH": str(_REPO)}
        self._launch([sys.executable, "-m", module, *args], env)
        ready = module.rsplit(".", 1)[1] + "_ready"
        with self._stopped_on_failure():
            self._wait_ready(lambda: self.events(ready), f"{self.title} to be ready")
        return self

    def alive(self) -> bool:
        """Return True while the program runs; raise with its log if it exited."""
        return self.check_alive()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log records with event *name*."""
        return _read_events(self.log_path, name) if self.workdir is not None else []

    def wait_events(self, name: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        """The records with event *name* once there are *count* (a daemon logs a job after it
        has answered the client; its JOB_DONE can reach the scheduler after the client that
        caused it has exited).
        """
        wait_for(lambda: len(self.events(name)) >= count, timeout, f"{count} {name} log records",
                 context=self.log_tail)  # fmt: skip
        return self.events(name)


def _read_events(path: Path, name: str) -> list[dict[str, Any]]:
    """The JSON log records in *path* whose event is *name* (torn or foreign lines skipped)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == name:
                records.append(record)
    return records


@dataclass(eq=False)
class OurScheduler(_OurProgram):
    """``python -m iceserv.app.scheduler`` as a subprocess (the user's way to start it).

    ``loopback_only`` adds ``-i lo`` and ``ICECC_TESTS=1``; ``extra_args`` are appended.
    """

    program: ClassVar[str] = "our scheduler"
    log_name: ClassVar[str] = "scheduler.log"
    out_name: ClassVar[str | None] = "scheduler.out"

    port: int | None = None
    netname: str = field(default_factory=lambda: f"IS{os.getpid()}")
    loopback_only: bool = True
    extra_args: Sequence[str] = ()

    @property
    def address(self) -> str:
        """``ip:port`` for a daemon's ``-s``."""
        return f"{self.host.ip}:{self.port}"

    def start(self) -> Self:
        """Start the program and wait until it says it is ready."""
        self._prepare("ours")
        if self.port is None:
            self.port = free_scheduler_port(self.host)
        args = ["-p", str(self.port), "-n", self.netname, "-vv", "-l", str(self.log_path)]
        args += ["-i", "lo"] if self.loopback_only else []
        args += list(self.extra_args)
        env = clean_env({"ICECC_TESTS": "1"} if self.loopback_only else {})
        return self._start_module("iceserv.app.scheduler", args, env)


@dataclass(eq=False)
class OurDaemon(_OurProgram, DaemonProgram):
    """``python -m iceserv.app.daemon`` as a subprocess, shaped like ``RealDaemon``.

    The options it shares with the real one are ``DaemonProgram``'s.  Jobs
    run as ``user`` (``-u``).  The Unix socket, the ``-b`` env directory and
    the JSON log live in the work directory (a fresh one unless ``workdir``
    is given, removed by ``stop`` unless ``keep_workdir``).  ``ICECC_TESTS=1``
    is set on loopback only, as for the real programs.
    """

    program: ClassVar[str] = "our iceccd"
    log_name: ClassVar[str] = "iceccd.log"
    out_name: ClassVar[str | None] = "iceccd.out"

    user: str = "icecc"
    extra_args: Sequence[str] = ()
    #: ``--native-compilers``: the environments built at start.  gcc only (the product
    #: default adds clang), so the many daemons of the suite do not all pack clang too.
    native_compilers: str = "gcc"
    #: Push-ahead (issue 17) is off here unless asked for (``extra_env``
    #: ``ICECCD_PUSH_AHEAD=yes``): the suite's daemons would otherwise send their prebuilt gcc
    #: environment to each other, and tests that watch a client's own transfer see none.
    PUSH_AHEAD_ENV: ClassVar[str] = "ICECCD_PUSH_AHEAD"

    def start(self) -> Self:
        """Start the program and wait until it says it is ready (listeners bound)."""
        self._prepare(f"ours-d-{self.name}")
        args = [*self._daemon_args(), "-u", self.user, "-vv", "-l", str(self.log_path)]
        args += ["--native-compilers", self.native_compilers]
        args += list(self.extra_args)
        env = clean_env({"ICECC_TEST_SOCKET": str(self.socket_path), self.PUSH_AHEAD_ENV: "no"})
        env.update({"ICECC_TESTS": "1"} if self.host.is_loopback else {})
        return self._start_module("iceserv.app.daemon", args, env)

    def wait_listed(
        self, scheduler: RealScheduler, *, loaded: bool = True, timeout: float = 30.0
    ) -> ListedHost:
        """Wait until a real scheduler's ``listcs`` shows us (with our STATS if *loaded*)."""

        def listed() -> ListedHost | None:
            self.check_alive()
            host = next((h for h in scheduler.listcs() if h.name == self.name), None)
            return host if host is not None and (not loaded or host.load < 1000) else None

        def context() -> str:
            return self.log_tail() + "\n" + scheduler.log_tail()

        with scheduler.awake():
            return wait_for(listed, timeout, f"{self.name} in the real listcs", interval=0.3,
                            context=context)  # fmt: skip
