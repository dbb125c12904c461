"""iceserv's own programs as subprocesses, started the way a user starts them.

Owns ``OurScheduler`` (``python -m iceserv.app.scheduler``) and ``OurDaemon``
(``python -m iceserv.app.daemon``).  Like the rest of the bed it does not
import iceserv: it runs the programs and reads their JSON logs, so the same
checks work on any build of them.
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

from testbed.errors import TestbedError
from testbed.hosts import LOOPBACK, Host, free_port, free_scheduler_port
from testbed.procs import clean_env, log_tail, make_workdir, stop_process
from testbed.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

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
        return _read_events(self.log_path, name)

    def wait_events(self, name: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        """The records with event *name* once there are *count* (a daemon's JOB_DONE can
        reach the scheduler after the client that caused it has exited)."""
        return _wait_events(self.events, name, count, timeout, self.log_tail)

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


def _wait_events(
    events: Callable[[str], list[dict[str, Any]]],
    name: str,
    count: int,
    timeout: float,
    context: Callable[[], str],
) -> list[dict[str, Any]]:
    wait_for(lambda: len(events(name)) >= count, timeout, f"{count} {name} log records",
             context=context)  # fmt: skip
    return events(name)


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
class OurDaemon:
    """``python -m iceserv.app.daemon`` as a subprocess, shaped like ``RealDaemon``.

    ``scheduler`` is the ``-s`` value or None for discovery (in a namespace:
    by broadcast across the bed's bridge).  ``port`` None picks a free port
    on loopback and 10245 in a namespace; ``no_remote`` replaces it with
    ``--no-remote``.  Jobs run as ``user`` (``-u``).  The Unix socket
    (``ICECC_TEST_SOCKET``), the ``-b`` env directory and the JSON log live
    in a fresh work directory that ``stop`` removes.  ``ICECC_TESTS=1`` is set
    on loopback only, as for the real programs.
    """

    name: str
    scheduler: str | None = None
    host: Host = LOOPBACK
    port: int | None = None
    no_remote: bool = False
    max_jobs: int = 2
    netname: str | None = None
    user: str = "icecc"
    extra_args: Sequence[str] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 20.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    workdir: Path | None = field(default=None, init=False)

    @property
    def _workdir(self) -> Path:
        if self.workdir is None:
            msg = f"our daemon {self.name} not started"
            raise TestbedError(msg)
        return self.workdir

    @property
    def socket_path(self) -> Path:
        """The daemon's local Unix socket (what ``ICECC_TEST_SOCKET`` points clients to)."""
        return self._workdir / "iceccd.socket"

    @property
    def basedir(self) -> Path:
        """The ``-b`` environment directory."""
        return self._workdir / "envs"

    @property
    def log_path(self) -> Path:
        """Our structured (JSON lines) log."""
        return self._workdir / "iceccd.log"

    @property
    def address(self) -> tuple[str, int]:
        """(ip, port) of the remote-compile TCP port."""
        if self.port is None:
            msg = "daemon not started or started with --no-remote"
            raise TestbedError(msg)
        return (self.host.ip, self.port)

    def start(self) -> OurDaemon:
        """Start the program and wait until it says it is ready (listeners bound)."""
        if self.proc is not None:
            msg = f"our daemon {self.name} already started"
            raise TestbedError(msg)
        self.workdir = make_workdir(f"ours-d-{self.name}")
        argv = [sys.executable, "-m", "iceserv.app.daemon", "-N", self.name,
                "-b", str(self.basedir), "-m", str(self.max_jobs), "-u", self.user, "-vv",
                "-l", str(self.log_path)]  # fmt: skip
        if self.no_remote:
            self.port = None
            argv.append("--no-remote")
        else:
            if self.port is None:
                self.port = free_port(self.host) if self.host.is_loopback else 10245
            argv += ["-p", str(self.port)]
        argv += ["-s", self.scheduler] if self.scheduler else []
        argv += ["-n", self.netname] if self.netname else []
        argv += list(self.extra_args)
        env = clean_env({"ICECC_TEST_SOCKET": str(self.socket_path), "PYTHONPATH": str(_REPO)})
        env.update({"ICECC_TESTS": "1"} if self.host.is_loopback else {})
        env.update(self.extra_env)
        with (self._workdir / "iceccd.out").open("wb") as out:
            self.proc = self.host.popen(
                argv,
                env=env,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(lambda: self.alive() and self.events("daemon_ready"), self.start_timeout,
                     f"our iceccd {self.name} to be ready", context=self.log_tail)  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def alive(self) -> bool:
        """Return True while the program runs; raise with its log if it exited."""
        if self.proc is not None and self.proc.poll() is not None:
            msg = f"our iceccd {self.name} exited with {self.proc.returncode}\n{self.log_tail()}"
            raise AssertionError(msg)
        return True

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log records with event *name*."""
        return _read_events(self.log_path, name) if self.workdir is not None else []

    def wait_events(self, name: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        """The records with event *name* once there are *count* (the daemon logs a job
        after it has answered the client)."""
        return _wait_events(self.events, name, count, timeout, self.log_tail)

    def client_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for an ``icecc`` client that should use this daemon."""
        return clean_env({"ICECC_TEST_SOCKET": str(self.socket_path), **(extra or {})})

    def log_tail(self, lines: int = 40) -> str:
        """Tail of the log and of stdout/stderr, for error messages."""
        if self.workdir is None:
            return f"(our iceccd {self.name} not started)"
        return log_tail(self.log_path, lines) + "\n" + log_tail(self.workdir / "iceccd.out", 20)

    def stop(self) -> int | None:
        """Stop the program and its helpers (SIGTERM, then SIGKILL), remove its work directory."""
        code = stop_process(self.proc) if self.proc is not None else None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code
