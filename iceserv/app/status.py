"""``iceserv status``: the cluster at one glance, from the local D-Bus or a scheduler's telnet port.

This module owns the sub-command: it reads the scheduler's hosts and jobs
through ``org.icecream.Scheduler1`` on the system bus when no scheduler is
named (``DBUS_SYSTEM_BUS_ADDRESS`` overrides the bus), falling back to the
telnet port on 127.0.0.1, or through the telnet port of ``--scheduler
HOST[:PORT]`` (PORT is the scheduler's port; telnet is PORT + 1), and prints
a table (colour on a TTY), ``--json``, or refreshes in place (``--watch``).

Exit status: 0 when a scheduler answered, 69 (``EX_UNAVAILABLE``) when none
did, with one line naming what was tried.  It changes nothing on the
scheduler.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final, TextIO

from iceserv.errors import IceservError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

__all__ = ["EX_UNAVAILABLE", "ClusterStatus", "StatusError", "register", "render_text"]

#: sysexits.h: a service is unavailable.
EX_UNAVAILABLE: Final = 69
_TIMEOUT: Final = 5.0
_DEFAULT_PORT: Final = 8765
_MAX_REPLY: Final = 4 << 20
_STATES: Final = {"queued": "PEND", "assigned": "WAIT", "compiling": "COMP"}
_HOST_LINE: Final = re.compile(
    r"^ (?P<name>\S+) \((?P<ip>.*):(?P<port>\d+)\) \[(?P<platform>[^\]]*)\] "
    r"speed=(?P<speed>[\d.]+) jobs=(?P<used>\d+)/(?P<slots>\d+) load=(?P<load>\d+)"
)
_JOB_LINE: Final = re.compile(
    r"^\s+(?P<id>\d+) (?P<state>PEND|WAIT|COMP) sub:(?P<sub>\S*) on:(?P<on>\S*) (?P<file>.*)$"
)


class StatusError(IceservError, ConnectionError):
    """No scheduler answered; the message says what was tried."""


@dataclass(frozen=True, slots=True)
class StatusJob:
    """A job as ``iceserv status`` shows it."""

    id: int
    state: str
    submitter: str
    server: str
    file: str
    started_at: float | None = None


@dataclass(frozen=True, slots=True)
class StatusHost:
    """A connected daemon as ``iceserv status`` shows it (``protocol`` 0: not known)."""

    name: str
    ip: str
    platform: str
    slots: int
    used: int
    load: int
    speed: float
    protocol: int = 0
    no_remote: bool = False
    blocked: bool = False
    draining: bool = False
    jobs: list[StatusJob] = field(default_factory=list)
    #: What it proved to the scheduler (issue 14): off, authenticated, unauthenticated;
    #: "" when not known (telnet's listcs, a scheduler without ``ListHostAuth``).
    auth: str = ""


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """What one look at the scheduler found, and where it looked (``source``)."""

    source: str
    netname: str
    hosts: list[StatusHost]
    queued: int
    running: int


# --- D-Bus ----------------------------------------------------------------------------


async def _dbus_status(address: str) -> ClusterStatus:
    from dbus_fast import Message, MessageType  # noqa: PLC0415 - only this path needs D-Bus
    from dbus_fast.aio import MessageBus  # noqa: PLC0415

    name = "org.icecream.Scheduler1"
    path = "/org/icecream/Scheduler1"
    async with asyncio.timeout(_TIMEOUT):
        bus = await MessageBus(bus_address=address).connect()
        try:

            async def call(member: str, interface: str = name, *body: str) -> list[Any]:
                message = Message(
                    destination=name,
                    path=path,
                    interface=interface,
                    member=member,
                    signature="s" * len(body),
                    body=list(body),
                )
                reply = await bus.call(message)
                if reply is None or reply.message_type is MessageType.ERROR:
                    detail = reply.error_name if reply is not None else "no reply"
                    msg = f"{member}: {detail}"
                    raise StatusError(msg)
                return list(reply.body)

            hosts = (await call("ListHosts"))[0]
            try:
                auth = dict((await call("ListHostAuth"))[0])
            except StatusError:  # an older scheduler: the states are not known
                auth = {}
            jobs = (await call("ListJobs"))[0]
            props = (await call("GetAll", "org.freedesktop.DBus.Properties", name))[0]
        finally:
            bus.disconnect()
    by_server: dict[str, list[StatusJob]] = {}
    for job_id, client, server, file, state, _queued, started in jobs:
        job = StatusJob(
            job_id,
            _STATES.get(state, state),
            client,
            server or "<unknown>",
            file,
            started / 1e6 if started else None,
        )
        by_server.setdefault(server, []).append(job)
    listed = [_dbus_host(h, by_server.get(h[0], []), auth.get(h[0], "")) for h in hosts]
    return ClusterStatus(
        source=f"D-Bus {address}",
        netname=str(props["NetName"].value),
        hosts=listed,
        queued=int(props["JobsQueued"].value),
        running=int(props["JobsRunning"].value),
    )


def _dbus_host(h: list[Any], jobs: list[StatusJob], auth: str) -> StatusHost:
    return StatusHost(
        auth=auth,
        name=h[0],
        ip=h[1],
        platform=h[3],
        protocol=h[4],
        slots=h[5],
        used=h[6],
        load=h[7],
        speed=h[8],
        no_remote=h[9],
        blocked=h[10],
        draining=h[11],
        jobs=jobs,
    )


# --- telnet ---------------------------------------------------------------------------


def _ask(sock: socket.socket, command: str) -> list[str]:
    """Send *command*; return the lines up to ``200 done``."""
    sock.sendall(command.encode() + b"\r\n")
    return _read_until(sock, "200 done")


def _read_until(sock: socket.socket, last: str) -> list[str]:
    data = b""
    while True:
        text = data.decode("utf-8", "replace")
        lines = text.split("\n")
        for index, line in enumerate(lines[:-1]):
            if line.rstrip("\r").startswith(last):
                return [item.rstrip("\r") for item in lines[:index]]
        chunk = sock.recv(65536)
        if not chunk:
            msg = "the telnet port closed the connection"
            raise ConnectionError(msg)
        data += chunk
        if len(data) > _MAX_REPLY:
            msg = "reply too long"
            raise ConnectionError(msg)


def _telnet_status(host: str, port: int) -> ClusterStatus:
    with socket.create_connection((host, port + 1), timeout=_TIMEOUT) as sock:
        greeting = _read_until(sock, "200 Use")
        hosts_lines = _ask(sock, "listcs")
        job_lines = _ask(sock, "listjobs")
        blocked = {line.strip() for line in _ask(sock, "listblocks")}
        sock.sendall(b"quit\r\n")
    if not any(line.startswith("200-ICECC") for line in greeting):
        msg = f"{host}:{port + 1} does not greet like an icecream scheduler"
        raise ConnectionError(msg)
    hosts: list[StatusHost] = []
    for line in hosts_lines:
        if (match := _HOST_LINE.match(line)) is not None:
            hosts.append(
                StatusHost(
                    name=match["name"],
                    ip=match["ip"].removeprefix("[").removesuffix("]"),  # [v6]:port
                    platform=match["platform"],
                    slots=int(match["slots"]),
                    used=int(match["used"]),
                    load=int(match["load"]),
                    speed=float(match["speed"]),
                    blocked=match["name"] in blocked,
                )
            )
        elif (job := _JOB_LINE.match(line)) is not None and hosts:
            hosts[-1].jobs.append(_telnet_job(job))
    jobs = [_telnet_job(match) for line in job_lines if (match := _JOB_LINE.match(line))]
    queued = sum(job.state == "PEND" for job in jobs)
    return ClusterStatus(
        source=f"telnet {host}:{port + 1}",
        netname="",
        hosts=hosts,
        queued=queued,
        running=len(jobs) - queued,
    )


def _telnet_job(match: re.Match[str]) -> StatusJob:
    return StatusJob(int(match["id"]), match["state"], match["sub"], match["on"], match["file"])


def _split(target: str) -> tuple[str, int]:
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        return host, int(rest.lstrip(":") or _DEFAULT_PORT)
    if target.count(":") == 1:
        host, _, port = target.partition(":")
        return host, int(port)
    return target, _DEFAULT_PORT


def collect(scheduler: str | None, environ: dict[str, str] | os._Environ[str]) -> ClusterStatus:
    """Ask the scheduler: D-Bus then local telnet, or *scheduler*'s telnet port.

    Raises :class:`StatusError` naming everything tried when none answered.
    """
    tried: list[str] = []
    if scheduler is None:
        address = environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"
        try:
            return asyncio.run(_dbus_status(address))
        except Exception as exc:  # noqa: BLE001 - every failure means "try the next way"
            tried.append(f"D-Bus {address} ({_reason(exc)})")
        scheduler = "127.0.0.1"
    try:
        host, port = _split(scheduler)
    except ValueError:
        msg = f"--scheduler {scheduler!r}: expected HOST or HOST:PORT"
        raise StatusError(msg) from None
    try:
        return _telnet_status(host, port)
    except (OSError, UnicodeError) as exc:
        tried.append(f"telnet {host}:{port + 1} ({_reason(exc)})")
    raise StatusError("no scheduler answered: tried " + "; ".join(tried))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --- rendering ------------------------------------------------------------------------


def _paint(*, colour: bool) -> Callable[[str, str], str]:
    def paint(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if colour else text

    return paint


def _bar(used: int, slots: int, width: int = 10) -> str:
    filled = round(width * used / slots) if slots else 0
    return "█" * min(width, filled) + "·" * max(0, width - filled)


def render_text(status: ClusterStatus, *, colour: bool = False, now: float | None = None) -> str:
    """Return the table ``iceserv status`` prints."""
    paint = _paint(colour=colour)
    now = time.time() if now is None else now
    slots = sum(host.slots for host in status.hosts)
    used = sum(host.used for host in status.hosts)
    title = f"scheduler {status.netname}" if status.netname else "scheduler"
    lines = [
        paint(title, "1") + paint(f"  via {status.source}", "2"),
        (
            f"{len(status.hosts)} hosts, {used}/{slots} slots busy, "
            f"{status.running} running, {status.queued} queued"
        ),
        "",
    ]
    if status.hosts:
        width = max(len(host.name) for host in status.hosts)
        lines.append(
            paint(f"{'HOST':<{width}}  {'SLOTS':<16}  {'LOAD':>5}  {'SPEED':>7}  ADDRESS", "2")
        )
    for host in status.hosts:
        flags = [
            name
            for name, on in (
                ("blocked", host.blocked),
                ("draining", host.draining),
                ("no-remote", host.no_remote),
                ("authenticated", host.auth == "authenticated"),
                ("unauthenticated", host.auth == "unauthenticated"),
            )
            if on
        ]
        load_colour = "32" if host.load < 500 else "33" if host.load < 900 else "31"
        bar = paint(_bar(host.used, host.slots), "36")
        lines.append(
            f"{paint(f'{host.name:<{width}}', '1')}  {bar} {host.used:>2}/{host.slots:<2}  "
            f"{paint(f'{host.load / 10:>4.0f}%', load_colour)}  {host.speed:>7.2f}  "
            f"{host.ip} {host.platform}" + (" " + paint(",".join(flags), "33") if flags else "")
        )
        for job in host.jobs:
            since = f"{now - job.started_at:5.1f}s" if job.started_at else "     "
            lines.append(
                paint(f"{'':<{width}}    {job.id:>6} {job.state} {since} ", "2")
                + f"{job.file} "
                + paint(f"from {job.submitter}", "2")
            )
    return "\n".join(lines) + "\n"


def to_json(status: ClusterStatus) -> str:
    """Return *status* as one JSON document."""
    return json.dumps(asdict(status), indent=2) + "\n"


# --- the sub-command ------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``status`` sub-command."""
    parser = subparsers.add_parser("status", help="show the cluster's hosts, slots and jobs")
    parser.add_argument(
        "--scheduler",
        metavar="HOST[:PORT]",
        help="ask this scheduler's telnet port (default: local D-Bus)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=float,
        metavar="SECONDS",
        help="refresh in place every SECONDS (default 2)",
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    return run(args.scheduler, json_out=args.json, watch=args.watch, out=sys.stdout)


def run(scheduler: str | None, *, json_out: bool, watch: float | None, out: TextIO) -> int:
    """Print the status once or every *watch* seconds; return the exit code."""
    try:
        return _run(scheduler, json_out=json_out, watch=watch, out=out)
    except KeyboardInterrupt:
        return 0


def _run(scheduler: str | None, *, json_out: bool, watch: float | None, out: TextIO) -> int:
    colour = out.isatty() and not os.environ.get("NO_COLOR")
    while True:
        try:
            status = collect(scheduler, os.environ)
        except StatusError as exc:
            sys.stderr.write(f"iceserv status: {exc}\n")
            if watch is None:
                return EX_UNAVAILABLE
            text = f"iceserv status: {exc}\n"
        else:
            text = to_json(status) if json_out else render_text(status, colour=colour)
        if watch is None:
            out.write(text)
            return 0
        out.write(("\x1b[H\x1b[2J" if out.isatty() else "") + text)
        out.flush()
        time.sleep(max(0.2, watch))
