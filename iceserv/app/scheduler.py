"""``icecc-scheduler``: build the settings, wire the scheduler, run until SIGTERM/SIGINT.

This module owns the scheduler program's command line (1.4's flags, reference
§9.2), its logging set-up, and the wiring of :class:`SchedulerServer` (and,
once it exists, the telnet server on port + 1 with ``server.control``).  It
returns an exit code and never holds scheduling logic.

SEAM (configuration): ``iceserv.config`` does not provide ``SchedulerSettings``
yet, so :func:`parse_args` reads 1.4's flags with argparse and :func:`main`
reads the one environment variable 1.4's scheduler honours (``ICECC_TESTS``:
announce on 127.0.0.1 only).  Replace both with the configuration loader when
it lands; :func:`server_settings` is the single place that maps settings to
:class:`~iceserv.scheduler.ServerSettings`.

SEAM (telnet, logging, sd_notify): ``iceserv.telnet``, ``iceserv.service.logging``
and ``iceserv.service.notify`` do not exist yet; :func:`_start_telnet` and
:func:`configure_logging` are where they plug in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pwd
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, TextIO

import structlog

from iceserv._version import VERSION
from iceserv.protocol import SCHEDULER_PORT
from iceserv.protocol.discovery import DEFAULT_NETNAME
from iceserv.scheduler import SchedulerServer, ServerSettings
from iceserv.scheduler.netif import broadcast_addresses, interface_address

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["SchedulerArgs", "configure_logging", "main", "parse_args", "server_settings"]

log = structlog.get_logger()

_LOOPBACK: Final = "127.0.0.1"
_DEFAULT_USER: Final = "icecc"
_EXIT_USAGE: Final = 1  # 1.4 exits 1 after printing its usage
_EXIT_FAILURE: Final = 1


@dataclass(frozen=True, slots=True)
class SchedulerArgs:
    """The scheduler's command line (1.4's flags)."""

    netname: str = DEFAULT_NETNAME
    port: int = SCHEDULER_PORT
    interface: str = ""
    persistent_clients: bool = False
    daemonize: bool = False
    log_file: str = ""
    user: str = ""
    verbosity: int = 0


class _UsageError(Exception):
    """The command line is invalid; the message says why."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65535:  # port + 1 is the telnet port
        msg = f"port out of range: {text}"
        raise ValueError(msg)
    return port


def parse_args(argv: Sequence[str]) -> SchedulerArgs:
    """Parse 1.4's ``icecc-scheduler`` flags; raise ``SystemExit`` for ``-h`` or bad usage."""
    parser = _Parser(
        prog="icecc-scheduler",
        description=f"ICECREAM scheduler {VERSION} (iceserv)",
        add_help=True,
    )
    parser.add_argument("-n", "--netname", default=DEFAULT_NETNAME)
    parser.add_argument("-p", "--port", type=_port, default=SCHEDULER_PORT)
    parser.add_argument("-i", "--interface", default="")
    parser.add_argument("-r", "--persistent-client-connection", action="store_true")
    parser.add_argument("-d", "--daemonize", action="store_true")
    parser.add_argument("-l", "--log-file", default="")
    parser.add_argument("-u", "--user-uid", default="")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    try:
        ns = parser.parse_args(list(argv))
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"icecc-scheduler: {exc}\n")
        raise SystemExit(_EXIT_USAGE) from None
    return SchedulerArgs(
        netname=ns.netname or DEFAULT_NETNAME,
        port=ns.port,
        interface=ns.interface,
        persistent_clients=ns.persistent_client_connection,
        daemonize=ns.daemonize,
        log_file=ns.log_file,
        user=ns.user_uid,
        verbosity=ns.verbose,
    )


def server_settings(args: SchedulerArgs, environ: Mapping[str, str]) -> ServerSettings:
    """Map the command line (and ``ICECC_TESTS``) to the server's settings."""
    address = interface_address(args.interface) if args.interface else "0.0.0.0"  # noqa: S104
    if environ.get("ICECC_TESTS"):
        announce_to: tuple[str, ...] = (_LOOPBACK,)
    else:
        announce_to = tuple(broadcast_addresses())
    return ServerSettings(
        address=address,
        port=args.port,
        netname=args.netname,
        persistent_clients=args.persistent_clients,
        announce_to=announce_to,
    )


def configure_logging(verbosity: int, stream: TextIO) -> None:
    """Set up structlog: console lines on a TTY, JSON lines otherwise."""
    level = logging.WARNING - 10 * min(verbosity + 1, 2)  # default INFO, -v and more DEBUG
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if stream.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


class _WallClock:
    def now(self) -> float:
        return time.time()


class _Closable(Protocol):
    async def close(self) -> None: ...


async def _start_telnet(server: SchedulerServer) -> _Closable | None:
    """Start the telnet interface on ``server.port + 1`` with ``server.control``.

    SEAM: ``iceserv.telnet`` is being written alongside; until its server is
    part of the tree the scheduler runs without the text interface.
    """
    try:
        from iceserv.telnet import serve_telnet  # noqa: PLC0415 - optional until it lands
    except ImportError:
        log.warning("telnet_unavailable", port=server.port + 1)
        return None
    try:
        return await serve_telnet(server.control, server.settings.address, server.port + 1)
    except OSError as exc:
        log.error("telnet_listener_failed", port=server.port + 1, error=str(exc))  # noqa: TRY400
        return None


def _drop_privileges(user: str) -> None:
    """As 1.4: when started as root, continue as *user* (default icecc, else nobody)."""
    if os.geteuid() != 0:
        return
    for name in (user or _DEFAULT_USER, "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        log.info("privileges_dropped", user=name)
        return


async def _run(args: SchedulerArgs, settings: ServerSettings) -> int:
    server = SchedulerServer(settings, clock=_WallClock(), rng=random.Random())  # noqa: S311
    try:
        await server.start()
    except OSError as exc:
        log.error("listener_failed", port=settings.port, error=str(exc))  # noqa: TRY400
        return _EXIT_FAILURE
    telnet = await _start_telnet(server)
    _drop_privileges(args.user)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        loop.add_signal_handler(signum, stop.set)
    log.info("scheduler_ready", port=server.port, version=VERSION)
    await stop.wait()
    if telnet is not None:
        await telnet.close()
    await server.stop()
    return 0


def _daemonize() -> bool:
    """Detach like 1.4's ``-d``; return True in the process that must exit."""
    if os.fork():
        return True
    os.setsid()
    if os.fork():
        os._exit(0)
    with Path(os.devnull).open("r+b") as null:
        for fd in (0, 1, 2):
            os.dup2(null.fileno(), fd)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``icecc-scheduler`` with *argv* (default ``sys.argv[1:]``); return the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = server_settings(args, os.environ)
    except OSError as exc:
        sys.stderr.write(f"icecc-scheduler: interface {args.interface!r}: {exc.strerror}\n")
        return _EXIT_FAILURE
    if args.daemonize and _daemonize():
        return 0
    with contextlib.ExitStack() as stack:
        stream: TextIO = sys.stderr
        if args.log_file:
            stream = stack.enter_context(Path(args.log_file).open("a", buffering=1))
        configure_logging(args.verbosity, stream)
        return asyncio.run(_run(args, settings))


if __name__ == "__main__":
    sys.exit(main())
