"""``icecc-scheduler``: load the settings, wire the scheduler, run until SIGTERM/SIGINT.

This module owns the scheduler program: it loads :class:`~iceserv.config.SchedulerSettings`
(1.4's flags, conf.d, TOML, environment), sets up logging, starts
:class:`~iceserv.scheduler.SchedulerServer` and the telnet interface on
port + 1 with ``server.control``, and returns an exit code.  It holds no
scheduling logic.

SEAMS: ``ICECC_TESTS`` (1.4's scheduler then announces itself on 127.0.0.1
only) is not a setting yet, so :func:`server_settings` reads it from the
environment mapping that ``main`` also hands to the loader; structlog is set
up here until ``iceserv.service.logging`` exists; no ``sd_notify`` yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import random
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

import structlog

from iceserv._version import VERSION
from iceserv.config import Service, load_scheduler_settings, parse_command_line, usage
from iceserv.errors import ConfigError
from iceserv.protocol.discovery import DEFAULT_NETNAME
from iceserv.scheduler import SchedulerServer, ServerSettings
from iceserv.scheduler.netif import broadcast_addresses, interface_address
from iceserv.telnet import TelnetServer, serve_telnet

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from iceserv.config import SchedulerSettings

__all__ = ["configure_logging", "main", "server_settings"]

log = structlog.get_logger()

_PROG: Final = "icecc-scheduler"
_LOOPBACK: Final = "127.0.0.1"
_EXIT_USAGE: Final = 1  # 1.4 exits 1 after printing its usage
_EXIT_FAILURE: Final = 1


def server_settings(settings: SchedulerSettings, environ: Mapping[str, str]) -> ServerSettings:
    """Map the scheduler's settings (and ``ICECC_TESTS``) to the server's.

    Raises ``OSError`` if the interface does not exist or has no IPv4 address.
    """
    address = interface_address(settings.interface) if settings.interface else "0.0.0.0"  # noqa: S104
    if environ.get("ICECC_TESTS"):
        announce_to: tuple[str, ...] = (_LOOPBACK,)
    else:
        announce_to = tuple(broadcast_addresses())
    return ServerSettings(
        address=address,
        port=settings.port,
        netname=settings.net_name or DEFAULT_NETNAME,
        persistent_clients=settings.persistent_client_connection,
        announce_to=announce_to,
    )


def configure_logging(verbosity: int, stream: TextIO) -> None:
    """Set up structlog: console lines on a TTY, JSON lines otherwise."""
    level = logging.INFO if verbosity < 2 else logging.DEBUG
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


async def _start_telnet(server: SchedulerServer) -> TelnetServer | None:
    """Start the telnet interface on ``server.port + 1`` with ``server.control``."""
    try:
        return await serve_telnet(server.control, server.settings.address, server.port + 1)
    except OSError as exc:
        log.error("telnet_listener_failed", port=server.port + 1, error=str(exc))  # noqa: TRY400
        return None


def _drop_privileges(user: str) -> None:
    """Continue as *user* when started as root (an empty name keeps the current user)."""
    if not user or os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        log.warning("user_unknown", user=user)
        return
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("privileges_dropped", user=user)


async def _run(settings: SchedulerSettings, server_conf: ServerSettings) -> int:
    rng = random.Random()  # noqa: S311 - placement randomness, not security
    server = SchedulerServer(server_conf, clock=_WallClock(), rng=rng)
    try:
        await server.start()
    except OSError as exc:
        log.error("listener_failed", port=server_conf.port, error=str(exc))  # noqa: TRY400
        return _EXIT_FAILURE
    telnet = await _start_telnet(server)
    _drop_privileges(settings.user)
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


def _config_error(exc: ConfigError) -> int:
    for line in exc.details:
        sys.stderr.write(f"{_PROG}: {line}\n")
    return os.EX_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``icecc-scheduler`` with *argv* (default ``sys.argv[1:]``); return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ
    try:
        if parse_command_line(Service.SCHEDULER, args).help:
            sys.stdout.write(f"ICECREAM scheduler {VERSION} (iceserv)\n")
            sys.stdout.write(usage(Service.SCHEDULER))
            return _EXIT_USAGE
        loaded = load_scheduler_settings(args, environ)
    except ConfigError as exc:
        return _config_error(exc)
    settings = loaded.settings
    if loaded.command_line.check_config:
        return 0
    try:
        server_conf = server_settings(settings, environ)
    except OSError as exc:
        sys.stderr.write(f"{_PROG}: interface {settings.interface!r}: {exc.strerror}\n")
        return _EXIT_FAILURE
    if settings.daemonize and _daemonize():
        return 0
    with contextlib.ExitStack() as stack:
        stream: TextIO = sys.stderr
        if settings.log_file is not None:
            stream = stack.enter_context(Path(settings.log_file).open("a", buffering=1))
        configure_logging(settings.verbosity, stream)
        for warning in loaded.warnings:
            log.warning("config_warning", where=warning.where, message=warning.message)
        return asyncio.run(_run(settings, server_conf))


if __name__ == "__main__":
    sys.exit(main())
