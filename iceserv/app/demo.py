"""``iceserv demo``: a local iceserv cluster builds a small bundled C project.

The README's main job.  It starts iceserv's scheduler and two daemons on
loopback (the programs as a user runs them), connects to the scheduler as a
monitor to see where every job goes, builds the bundled project
(``demo_project/``: twelve translation units and a test program) with
``make -j`` through iceserv's ``icecc``, checks that every object file is
byte-identical to a plain local build and that the program runs, prints the
placement and the times, and stops everything it started.

Before the build it waits (bounded) until the client's daemon has packed
gcc's compiler environment, which every daemon does in the background right
after it starts (issue 17); the report then says, from the daemons' JSON
logs, how long that took, whether the build waited for it, how long the
server took to receive and unpack it, and why a tiny project builds faster
locally.

As root, the daemons run compile jobs chroot'ed in the shipped environment,
so jobs travel from the client's daemon to the other one; as an unprivileged
user (no chroot) they run on the client's own daemon, exactly as a 1.4
cluster without chroot rights would.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from iceserv.errors import IceservError
from iceserv.protocol import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    JobLocalDone,
    MonJobBegin,
    MonJobDone,
    MonLocalJobBegin,
    MonLogin,
    MonStats,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator, Sequence

__all__ = ["DemoError", "register", "run"]

PROJECT: Final = Path(__file__).with_name("demo_project")
_WAIT: Final = 30.0
_PREBUILD_WAIT: Final = 180.0  # icecc-create-env with zstd: seconds on an idle machine
_MB: Final = 1_000_000
_BUILD_TIMEOUT: Final = 600.0
# (node name, slots): the client's daemon offers no slots, so the scheduler sends every
# compile job to the server when it can (-m 0 still runs the client's own local jobs).
_NODES: Final = (("demo-client", 0), ("demo-server", 4))


class DemoError(IceservError, RuntimeError):
    """A step of the demo failed; the message says which."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo", help="start a local cluster and build a small C project through it"
    )
    parser.add_argument("--jobs", type=int, default=4, help="make -j value (default: 4)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        run(sys.stdout, jobs=args.jobs, keep=args.keep)
    except DemoError as exc:
        sys.stderr.write(f"demo FAILED: {exc}\n")
        return 1
    return 0


def _free_ports(count: int) -> list[int]:
    """Return *count* ports free for TCP on 127.0.0.1 (the scheduler's also for UDP and +1)."""
    ports: list[int] = []
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        try:
            for kind, p in ((socket.SOCK_STREAM, port + 1), (socket.SOCK_DGRAM, port)):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        if not {port, port + 1} & set(ports):
            ports.append(port)
        if len(ports) == count:
            return ports
    msg = "no free ports on 127.0.0.1"
    raise DemoError(msg)


def _wait(what: str, check: Callable[[], bool], timeout: float = _WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    msg = f"timed out waiting for {what}"
    raise DemoError(msg)


def _connects(address: str | tuple[str, int]) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family) as s:
        s.settimeout(1.0)
        s.connect(address)
        return True
    return False


@dataclass
class _Programs:
    """The processes the demo started, stopped in reverse order."""

    workdir: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start_and_wait(
        self,
        name: str,
        module_argv: Sequence[str],
        env: dict[str, str],
        ready: str | tuple[str, int],
    ) -> None:
        """Run ``python -m <module_argv>`` with a JSON log; wait until *ready* accepts."""
        log = self.workdir / f"{name}.log"
        argv = [sys.executable, "-m", *module_argv, "--log-format", "json", "-l", str(log)]
        with (self.workdir / f"{name}.out").open("wb") as output:
            proc = subprocess.Popen(  # noqa: S603 - our own programs, fixed argv
                argv,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append((name, proc))
        _wait(name, lambda: self.alive() and _connects(ready))

    def alive(self) -> bool:
        """Return True, or raise if a started program has exited."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                text = (self.workdir / f"{name}.out").read_text(errors="replace")
                text += (self.workdir / f"{name}.log").read_text(errors="replace")
                msg = f"{name} exited with status {proc.returncode}:\n{text[-2000:]}"
                raise DemoError(msg)
        return True

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name, proc in reversed(self.procs):
            proc.terminate()
            try:
                codes[name] = proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(5)
        return codes


class _Monitor:
    """A monitor connection (MON_LOGIN) that tallies where jobs ran."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=_WAIT)
        self.conn = Connection()
        self.names: dict[int, str] = {}
        self.remote: collections.Counter[str] = collections.Counter()
        self.local: collections.Counter[str] = collections.Counter()
        self.finished = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="demo-monitor", daemon=True)

    def start(self) -> None:
        self._handshake()
        self.conn.send(MonLogin())
        self._flush()
        self._thread.start()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _handshake(self) -> None:
        self._flush()
        while self.conn.next_event() is NEED_DATA:
            self._flush()
            self.conn.receive_data(self.sock.recv(65536))
        self._flush()

    def _loop(self) -> None:
        self.sock.settimeout(None)
        with contextlib.suppress(OSError):
            while True:
                event = self.conn.next_event()
                if event is NEED_DATA:
                    self.conn.receive_data(self.sock.recv(65536))
                    continue
                if isinstance(event, ConnectionClosed):
                    return
                self._count(event)

    def _count(self, event: object) -> None:
        with self._lock:
            if isinstance(event, MonStats):
                fields = dict(
                    line.split(":", 1) for line in event.statmsg.splitlines() if ":" in line
                )
                if "Name" in fields:
                    self.names[event.host_id] = fields["Name"]
            elif isinstance(event, MonJobBegin):
                self.remote[self.names.get(event.host_id, f"host {event.host_id}")] += 1
            elif isinstance(event, MonLocalJobBegin):
                self.local[self.names.get(event.host_id, f"host {event.host_id}")] += 1
            elif isinstance(event, MonJobDone | JobLocalDone):
                self.finished += 1

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


def _make(project: Path, cc: str, env: dict[str, str], jobs: int) -> float:
    start = time.monotonic()
    proc = subprocess.run(  # noqa: S603 - make with a fixed argv
        [shutil.which("make") or "make", f"-j{jobs}", f"CC={cc}", "demo"],
        cwd=project,
        env=env,
        capture_output=True,
        timeout=_BUILD_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace")[-3000:]
        msg = f"make failed in {project} ({proc.returncode}):\n{out}"
        raise DemoError(msg)
    return time.monotonic() - start


def _objects(project: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((project / "obj").glob("*.o"))}


@contextlib.contextmanager
def _cluster(workdir: Path, out: TextIO) -> Iterator[tuple[_Programs, int, Path]]:
    """Start the scheduler and the daemons; yield them, the scheduler port, the client socket."""
    sched_port, *daemon_ports = _free_ports(1 + len(_NODES))
    netname = f"DEMO{os.getpid()}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ICECC")}
    base["ICECC_TESTS"] = "1"  # discovery and announcements stay on loopback
    programs = _Programs(workdir)
    try:
        programs.start_and_wait(
            "scheduler",
            ["iceserv.app.scheduler", "-p", str(sched_port), "-n", netname, "-i", "lo"],
            base,
            ("127.0.0.1", sched_port + 1),
        )
        out.write(f"scheduler   127.0.0.1:{sched_port} (telnet {sched_port + 1}), net {netname}\n")
        for (node, slots), port in zip(_NODES, daemon_ports, strict=True):
            sock = workdir / f"{node}.socket"
            argv = [
                "iceserv.app.daemon",
                "-N",
                node,
                "-p",
                str(port),
                "-m",
                str(slots),
                "-s",
                f"127.0.0.1:{sched_port}",
                "-b",
                str(workdir / f"envs-{node}"),
                "-v",  # info: the report reads the environment's events from the log
                # Only the client's daemon needs an environment, and only gcc's.
                "--native-compilers",
                "gcc" if slots == 0 else "",
            ]
            programs.start_and_wait(node, argv, dict(base, ICECC_TEST_SOCKET=str(sock)), str(sock))
            out.write(f"daemon      {node}: 127.0.0.1:{port}, {slots} slots\n")
        yield programs, sched_port, workdir / f"{_NODES[0][0]}.socket"
    finally:
        codes = programs.stop()
        out.write("stopped     " + ", ".join(f"{n} ({c})" for n, c in codes.items()) + "\n")
        bad = {name: code for name, code in codes.items() if code not in (0, None)}
        if bad:
            out.write(f"warning: programs exited uncleanly: {bad}\n")


def run(out: TextIO, *, jobs: int = 4, keep: bool = False) -> dict[str, int]:
    """Run the demo; return the number of jobs each host compiled (remote and local)."""
    icecc = Path(sys.executable).with_name("icecc")
    if not icecc.exists() or shutil.which("make") is None or shutil.which("gcc") is None:
        msg = f"need {icecc}, make and gcc: run ./bin/setup"
        raise DemoError(msg)
    workdir = Path(tempfile.mkdtemp(prefix="iceserv-demo-"))
    workdir.chmod(0o755)  # the daemons' job user must reach its environment directory
    try:
        reference, project = workdir / "local", workdir / "cluster"
        shutil.copytree(PROJECT, reference)
        shutil.copytree(PROJECT, project)
        local_time = _make(reference, "gcc", dict(os.environ), jobs)
        with _cluster(workdir, out) as (programs, sched_port, client_socket):
            monitor = _Monitor(sched_port)
            monitor.start()
            try:
                _wait("both daemons to log in", lambda: len(monitor.names) >= len(_NODES))
                client_log = workdir / f"{_NODES[0][0]}.log"
                out.write(
                    f"waiting for {_NODES[0][0]} to pack gcc's compiler environment (every "
                    "daemon does it in the background right after it starts)\n"
                )
                with contextlib.suppress(DemoError):  # the report says so if it never came
                    _wait(
                        "the compiler environment",
                        lambda: programs.alive() and _prebuild_ended(client_log),
                        timeout=_PREBUILD_WAIT,
                    )
                env = {k: v for k, v in os.environ.items() if not k.startswith("ICECC")}
                env["ICECC_TEST_SOCKET"] = str(client_socket)
                if os.geteuid() == 0:
                    # Both daemons are 127.0.0.1 here; this makes icecc treat the other one as
                    # remote.  Without root the daemons cannot chroot, the scheduler gives
                    # the jobs back to the client's daemon, and they must stay local.
                    env["ICECC_TEST_REMOTEBUILD"] = "1"
                if keep:  # the client's own trace, next to the services' logs
                    env.update(ICECC_DEBUG="debug", ICECC_LOGFILE=str(workdir / "icecc.log"))
                cluster_time = _make(project, f"{icecc} gcc", env, jobs)
                programs.alive()
                _wait(
                    "the scheduler to report every job done",
                    lambda: monitor.finished >= sum((monitor.remote + monitor.local).values()),
                    timeout=10,
                )
            finally:
                monitor.close()
        if _objects(project) != _objects(reference):
            msg = "objects built through the cluster differ from the local build"
            raise DemoError(msg)
        ran = subprocess.run(  # noqa: S603 - the program the demo just built
            [str(project / "demo")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if ran.stdout.strip() != "demo OK":
            msg = f"the built program failed: {ran.stdout}{ran.stderr}"
            raise DemoError(msg)
        placed = _report(out, monitor, len(_objects(project)), cluster_time, local_time)
        out.writelines(_where_the_time_went(workdir, cluster_time, local_time))
    finally:
        if keep:
            out.write(f"work directory kept: {workdir}\n")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return placed


def _report(
    out: TextIO, monitor: _Monitor, objects: int, cluster_time: float, local_time: float
) -> dict[str, int]:
    placed = dict(monitor.remote + monitor.local)
    out.write(
        f"\nbuilt {objects} objects through the cluster in {cluster_time:.2f} s "
        f"(plain local make: {local_time:.2f} s); all identical to the local build; "
        "./demo says: demo OK\n"
    )
    out.write(f"{'host':<14}{'compile jobs':>14}{'local jobs (links)':>20}\n")
    out.writelines(
        f"{name:<14}{monitor.remote[name]:>14}{monitor.local[name]:>20}\n"
        for name in sorted(set(monitor.names.values()))
    )
    return placed


def _events(log: Path, name: str) -> list[dict[str, object]]:
    """Return the records of event *name* in a daemon's JSON log (torn lines skipped)."""
    records: list[dict[str, object]] = []
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == name:
                    records.append(record)
    return records


def _prebuild_ended(log: Path) -> bool:
    return bool(_events(log, "native_env_built") or _events(log, "native_env_build_failed"))


def _seconds_between(first: dict[str, object], last: dict[str, object]) -> float:
    def when(record: dict[str, object]) -> float:
        return dt.datetime.fromisoformat(str(record["timestamp"])).timestamp()

    return when(last) - when(first)


def _where_the_time_went(workdir: Path, cluster_time: float, local_time: float) -> list[str]:
    """Plain words on the compiler environment's cost and on local versus cluster."""
    (client, _), (server, _) = _NODES
    client_log, server_log = workdir / f"{client}.log", workdir / f"{server}.log"
    lines = ["\nwhere the time went:\n"]
    built = _events(client_log, "native_env_built")
    started = _events(client_log, "daemon_started")
    if built and started:
        after = _seconds_between(started[0], built[0])
        lines.append(
            f"  compiler environment: remote hosts need a copy of your compiler. {client} "
            f"packed gcc's ({built[0]['compression']}) in {built[0]['seconds']} s, "
            f"{after:.1f} s after it started, before anything asked for it; it keeps it "
            "across restarts and packs it again only when gcc changes.\n"
        )
    else:
        failed = _events(client_log, "native_env_build_failed")
        reason = f": {failed[0].get('error')}" if failed else " in time"
        lines.append(f"  compiler environment: {client} could not pack gcc's{reason}.\n")
    sent = _events(client_log, "native_env_sent")
    if sent:
        waited = float(str(sent[0]["waited_seconds"]))
        how = "it was ready" if waited == 0 else f"it waited {waited:.1f} s for it"
        lines.append(f"  the build asked for the environment and {how}.\n")
    transfers = _events(server_log, "env_transfer_started")
    installed = _events(server_log, "env_installed")
    pushed = _events(client_log, "native_env_pushed")
    if pushed and installed:
        size = int(str(installed[0].get("size", 0))) / _MB
        tarball = int(str(pushed[0].get("bytes", 0))) / _MB
        lines.append(
            f"  {server} had the environment before the first job: right after packing it, "
            f"{client} pushed it there ({tarball:.0f} MB, {size:.0f} MB unpacked) in "
            f"{pushed[0]['seconds']} s, so no job waited for a transfer.\n"
        )
    elif transfers and installed:
        size = int(str(installed[0].get("size", 0))) / _MB
        lines.append(
            f"  first job on {server}: it received and unpacked the environment "
            f"({size:.0f} MB unpacked) in {_seconds_between(transfers[0], installed[0]):.1f} s,"
            " once; every later job reuses it.\n"
        )
    if cluster_time > local_time:
        lines.append(
            f"  local versus cluster: this project is tiny (plain make takes {local_time:.2f} s "
            f"here), so sending its files out costs more ({cluster_time:.2f} s) than it saves. "
            "A cluster pays off when a build has many more, and bigger, files than this "
            "machine has cores.\n"
        )
    else:
        lines.append(
            f"  local versus cluster: the cluster build ({cluster_time:.2f} s) beat plain "
            f"make ({local_time:.2f} s).\n"
        )
    return lines
