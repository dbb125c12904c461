"""iceserv's own programs as subprocesses, started the way a user starts them.

Owns ``OurScheduler`` (``python -m iceserv.app.scheduler``).  Like the rest of
the bed it does not import iceserv: it runs the program and reads its JSON
log, so the same checks work on any build of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testbed.hosts import LOOPBACK, Host, free_scheduler_port
from testbed.procs import clean_env, log_tail, make_workdir, stop_process
from testbed.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Mapping

_REPO = Path(__file__).resolve().parents[2]


@dataclass(eq=False)
class OurScheduler:
    """``python -m iceserv.app.scheduler`` as a subprocess (the user's way to start it).

    ``extra_env`` is added to its environment (e.g. ``DBUS_SYSTEM_BUS_ADDRESS``).
    """

    host: Host = LOOPBACK
    port: int | None = None
    netname: str = field(default_factory=lambda: f"IS{os.getpid()}")
    loopback_only: bool = True
    extra_env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None

    @property
    def log_path(self) -> Path:
        """Our structured (JSON lines) log."""
        assert self.workdir is not None
        return self.workdir / "scheduler.log"

    @property
    def address(self) -> str:
        """``ip:port`` for a daemon's ``-s``."""
        return f"{self.host.ip}:{self.port}"

    def start(self) -> OurScheduler:
        """Start the program and wait until it says it is ready."""
        self.workdir = make_workdir("ours")
        if self.port is None:
            self.port = free_scheduler_port(self.host)
        argv = [sys.executable, "-m", "iceserv.app.scheduler", "-p", str(self.port),
                "-n", self.netname, "-vv", "-l", str(self.log_path)]  # fmt: skip
        argv += ["-i", "lo"] if self.loopback_only else []
        env = clean_env({"ICECC_TESTS": "1"} if self.loopback_only else {})
        env.update(self.extra_env)
        env["PYTHONPATH"] = str(_REPO)
        with (self.workdir / "scheduler.out").open("wb") as out:
            self.proc = self.host.popen(argv, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
        wait_for(lambda: self.alive() and self.events("scheduler_ready"), 20,
                 "our scheduler to be ready", context=self.log_tail)  # fmt: skip
        return self

    def alive(self) -> bool:
        """Raise if the program died."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            msg = f"our scheduler exited with {self.proc.returncode}\n{self.log_tail()}"
            raise AssertionError(msg)
        return True

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log records with event *name*."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == name:
                    records.append(record)
        return records

    def log_tail(self) -> str:
        """Log tails for failure messages."""
        assert self.workdir is not None
        return log_tail(self.log_path) + "\n" + log_tail(self.workdir / "scheduler.out", 20)

    def stop(self) -> int | None:
        """Stop the program (SIGTERM, then SIGKILL) and remove its work directory."""
        code = stop_process(self.proc) if self.proc is not None else None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code
