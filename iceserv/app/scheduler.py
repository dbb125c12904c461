"""``icecc-scheduler``: load the settings, wire the scheduler, run until SIGTERM/SIGINT.

This module owns the scheduler program: it loads :class:`~iceserv.config.SchedulerSettings`
(1.4's flags, conf.d, TOML, environment), sets up logging, starts
:class:`~iceserv.scheduler.SchedulerServer` and the telnet interface on
port + 1 with ``server.control``, the opt-in HTTP endpoint (:mod:`iceserv.web`)
when ``http`` is set, and returns an exit code.  It holds no
scheduling logic.

Service integration: ``sd_notify`` through :mod:`iceserv.service.notify`
(``READY=1`` once TCP, UDP and telnet are bound and the D-Bus name is owned
or found unavailable), ``org.icecream.Scheduler1`` on the system bus
(``DBUS_SYSTEM_BUS_ADDRESS`` overrides its address) through
:mod:`iceserv.service.dbus`, logging through
:mod:`iceserv.service.logging`, and SIGHUP/SIGTERM through
:class:`~iceserv.service.Lifecycle`, to which :class:`SchedulerService`
adapts the running scheduler.  ``ICECC_TESTS`` (1.4's scheduler then
announces itself on 127.0.0.1 only) is read by :func:`server_settings`
from the environment mapping that ``main`` also hands to the loader.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import os
import pwd
import random
import sys
from typing import TYPE_CHECKING, Final

import structlog

from iceserv._version import VERSION
from iceserv.app.program import (
    WallClock,
    load_keys_or_exit,
    load_or_exit,
    open_log,
    reload_changes,
)
from iceserv.config import Service, load_scheduler_settings, read_keys
from iceserv.errors import ConfigError
from iceserv.hostfacts import broadcast_addresses, interface_addresses, multicast_sources
from iceserv.netio import (
    DESCRIPTOR_RESERVE,
    WILDCARD,
    Family,
    NofileLimit,
    fit_budget,
    is_link_local,
    raise_nofile_limit,
)
from iceserv.protocol.auth import AuthMode
from iceserv.protocol.discovery import DEFAULT_NETNAME
from iceserv.scheduler import SchedulerServer, SchedulerServerSettings
from iceserv.scheduler.standby import Role, StandbySettings
from iceserv.service import Lifecycle, LogFormat, ServiceNotifier
from iceserv.service.lifecycle import daemonize
from iceserv.telnet import TelnetControl, TelnetServer, serve_telnet

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, MutableMapping, Sequence

    from iceserv.config import SchedulerSettings
    from iceserv.service import LogSetup, Notifier
    from iceserv.web import HttpEndpoint

__all__ = ["SchedulerService", "fit_budgets", "main", "server_settings", "status_text"]

log = structlog.get_logger()

#: The system bus socket when ``DBUS_SYSTEM_BUS_ADDRESS`` is unset (freedesktop default).
_SYSTEM_BUS: Final = "unix:path=/run/dbus/system_bus_socket"
#: Our name on the system bus (``iceserv.service.dbus.SCHEDULER_INTERFACE``).
_BUS_NAME: Final = "org.icecream.Scheduler1"


def _missing_bus(address: str) -> str:
    """Return why no bus can be at *address* (only ``unix:path=`` sockets that are absent), or "".

    ``iceserv.service.dbus`` and ``dbus_fast`` are imported only when a bus
    may be there: on a farm scheduler without one they are megabytes of
    memory and tens of milliseconds of start-up for nothing.
    """
    parts = [part for part in address.split(";") if part]
    paths = [
        part.removeprefix("unix:path=").split(",")[0]
        for part in parts
        if part.startswith("unix:path=")
    ]
    if not parts or len(paths) != len(parts) or any(os.path.exists(p) for p in paths):  # noqa: PTH110 - pathlib is not imported here
        return ""
    return f"no socket at {', '.join(paths)}"


_PROG: Final = "icecc-scheduler"
_LOOPBACK: Final = "127.0.0.1"
_EXIT_FAILURE: Final = 1
#: Allocations between two collections of the youngest generation (CPython's default: 700).
_GC_YOUNG: Final = 10_000
#: How long past the standby role machine's listening second READY=1 may wait for the role.
_ROLE_GRACE: Final = 2.0
#: Settings a reload cannot change while the sockets stay open.
_RESTART_ONLY: Final = (
    "port",
    "interface",
    "family",
    "user",
    "daemonize",
    "http",
    "auth",
    "encrypt",
)


def server_settings(
    settings: SchedulerSettings, environ: Mapping[str, str]
) -> SchedulerServerSettings:
    """Map the scheduler's settings (and ``ICECC_TESTS``) to the server's.

    Raises ``OSError`` if the interface does not exist or has no address of
    the families ``family`` allows.
    """
    family = Family(settings.family)
    addresses: tuple[str, ...] = (WILDCARD,)
    if settings.interface:
        addresses = tuple(
            interface_addresses(
                settings.interface,
                ipv4=family is not Family.IPV6,
                ipv6=family is not Family.IPV4,
            )
        )
    if environ.get("ICECC_TESTS"):  # loopback only, as 1.4 under ICECC_TESTS
        announce_to: tuple[str, ...] = (_LOOPBACK,)
        multicast: tuple[str, ...] = ()
        routable = False
    else:
        announce_to = tuple(broadcast_addresses())
        sources = [
            (name, source)
            for name, source in multicast_sources()
            if not settings.interface or name == settings.interface
        ]
        multicast = tuple(name for name, _ in sources)
        routable = any(not is_link_local(source) for _, source in sources)
    if family is Family.IPV4:
        multicast, routable = (), False
    return SchedulerServerSettings(
        address=addresses[0],
        addresses=addresses,
        family=family,
        port=settings.port,
        netname=settings.net_name or DEFAULT_NETNAME,
        persistent_clients=settings.persistent_client_connection,
        announce_to=announce_to,
        multicast_interfaces=multicast,
        routable_ipv6=routable,
        handshake_timeout=settings.handshake_timeout,
        message_timeout=settings.message_timeout,
        max_connections=settings.max_connections,
        max_connections_per_host=settings.max_connections_per_host,
        max_monitors=settings.max_monitors,
        max_monitors_per_host=settings.max_monitors_per_host,
        standby=StandbySettings(),
        auth=settings.auth,
        encrypt=settings.encrypt,
        monitors=settings.monitors,
    )


def fit_budgets(
    server: SchedulerServerSettings, telnet_sessions: int, limit: NofileLimit
) -> tuple[SchedulerServerSettings, int]:
    """Lower the connection budgets so that, when full, they leave descriptors to spare.

    Telnet sessions get at most a quarter of the limit, the process's own
    files a reserve of :data:`DESCRIPTOR_RESERVE` (at most a quarter), and
    the scheduler port the rest.  A full budget then refuses connections,
    and ``accept()`` never meets ``EMFILE`` on the port's account.
    """
    reserve = min(DESCRIPTOR_RESERVE, limit.soft // 4)
    telnet = fit_budget(telnet_sessions, limit.soft // 4, 0)
    total = fit_budget(server.max_connections, limit.soft - telnet, reserve)
    if (total, telnet) != (server.max_connections, telnet_sessions):
        log.warning(
            "connection_budget_lowered",
            nofile=limit.soft,
            max_connections=total,
            max_telnet_sessions=telnet,
        )
    return dataclasses.replace(
        server,
        max_connections=total,
        max_connections_per_host=min(server.max_connections_per_host, total),
        max_monitors=min(server.max_monitors, total),
    ), telnet


def status_text(server: SchedulerServer) -> str:
    """Return the ``STATUS=`` line: ``3 hosts, 5/12 jobs running`` (or who a standby watches)."""
    standby = server.standby
    if standby is not None and standby.role is not Role.ACTIVE:
        if standby.active is None:
            return "looking for an active scheduler"
        return f"standby for {standby.active[0]}:{standby.active[1]}"
    hosts = server.control.host_count()
    running, slots = server.control.slot_use()
    noun = "host" if hosts == 1 else "hosts"
    return f"{hosts} {noun}, {running}/{slots} jobs running"


def telnet_policy(setting: str, auth: AuthMode) -> TelnetControl:
    """Resolve ``telnet_control``: ``auto`` is ``local`` under require, ``any`` otherwise."""
    if setting == "auto":
        return TelnetControl.LOCAL if auth is AuthMode.REQUIRE else TelnetControl.ANY
    return TelnetControl(setting)


async def _start_telnet(
    server: SchedulerServer, sessions: int, sessions_per_host: int, control: str = "auto"
) -> TelnetServer | None:
    """Start the telnet interface on ``server.port + 1`` with ``server.control``."""
    policy = telnet_policy(control, server.auth_mode)
    if policy is not TelnetControl.ANY:
        log.info("telnet_control_restricted", policy=policy.value)
    try:
        return await serve_telnet(
            server.control,
            server.listen_addresses,
            server.port + 1,
            family=server.settings.family,
            max_sessions=sessions,
            max_sessions_per_host=sessions_per_host,
            control_policy=policy,
        )
    except OSError as exc:
        log.error("telnet_listener_failed", port=server.port + 1, error=str(exc))  # noqa: TRY400
        return None


async def _start_http(server: SchedulerServer, settings: SchedulerSettings) -> HttpEndpoint | None:
    """Start the opt-in HTTP endpoint (``/metrics``, the web view) when ``http`` is set."""
    if settings.http is None:
        return None
    # Imported only when asked for: aiohttp and prometheus_client are megabytes of memory.
    from iceserv.web import HttpEndpoint  # noqa: PLC0415

    endpoint = HttpEndpoint(server.control, version=VERSION, clock=server.now)
    try:
        await endpoint.start(settings.http.host, settings.http.port)
    except OSError as exc:
        log.error("http_listener_failed", address=str(settings.http), error=str(exc))  # noqa: TRY400
        await endpoint.close()
        return None
    return endpoint


def _raise_nofile_limit() -> NofileLimit:
    """Raise the soft descriptor limit to the hard one and log the outcome."""
    limit = raise_nofile_limit()
    if limit.error:
        log.warning("nofile_limit_kept", soft=limit.soft, hard=limit.hard, error=limit.error)
    else:
        log.info("nofile_limit_set", soft=limit.soft, hard=limit.hard, before=limit.before)
    return limit


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


class SchedulerService:
    """The running scheduler as :class:`~iceserv.service.ManagedService` sees it.

    A reload re-reads *argv*'s configuration sources with *environ* and
    applies verbosity, log format and file, net name and ``-r`` at once;
    port, interface, user and ``-d`` need a restart and are reported.  The
    scheduler runs no jobs itself, so a stop just closes everything.
    """

    def __init__(  # noqa: PLR0913 - the parts app wired together
        self,
        server: SchedulerServer,
        telnet: TelnetServer | None,
        *,
        settings: SchedulerSettings,
        logs: LogSetup,
        argv: Sequence[str],
        environ: Mapping[str, str],
    ) -> None:
        self.server = server
        self.telnet = telnet
        self.settings = settings
        self._logs = logs
        self._argv = list(argv)
        self._environ = environ

    def status(self) -> str:
        """Return :func:`status_text` of the server."""
        return status_text(self.server)

    async def reload(self) -> list[str]:
        """Re-read the configuration and apply what can change live; return what changed."""
        loaded = load_scheduler_settings(self._argv, self._environ)
        new, live, fixed = reload_changes(loaded.settings, self.settings, _RESTART_ONLY)
        if fixed:
            log.warning("reload_needs_restart", settings=fixed)
        self._logs.reconfigure(
            verbosity=new.verbosity, fmt=LogFormat(new.log_format), log_file=new.log_file
        )
        for warning in loaded.warnings:
            log.warning("config_warning", where=warning.where, message=warning.message)
        self.server.reconfigure(
            netname=new.net_name or DEFAULT_NETNAME,
            persistent_clients=new.persistent_client_connection,
        )
        try:
            self.server.reconfigure_keys(read_keys(new.key_file, new.previous_key_file))
        except ConfigError as exc:  # keep the keys in use: a typo must not open the cluster
            log.error("network_key_unusable", error=str(exc))  # noqa: TRY400 - no traceback
            new = new.model_copy(
                update={
                    "key_file": self.settings.key_file,
                    "previous_key_file": self.settings.previous_key_file,
                }
            )
        else:
            if new.key_file is not None:
                log.info("network_key_loaded", key_file=str(new.key_file))
        self.settings = new
        return live

    async def stop_accepting(self) -> None:
        """Close the telnet listener and its sessions; daemons stay until :meth:`close`."""
        if self.telnet is not None:
            await self.telnet.close()
            self.telnet = None

    def in_flight(self) -> int:
        """Return 0: compile jobs run on the daemons, not here."""
        return 0

    async def wait_idle(self) -> None:
        """Return at once (nothing runs here)."""

    async def close(self) -> None:
        """Close the listeners and every daemon and monitor connection."""
        await self.stop_accepting()
        await self.server.stop()


async def _run(
    server_conf: SchedulerServerSettings,
    notifier: Notifier,
    make_service: Callable[[SchedulerServer, TelnetServer | None], SchedulerService],
    bus_address: str,
    telnet_budget: tuple[int, int, str],
) -> int:
    rng = random.Random()  # noqa: S311 - placement randomness, not security
    server = SchedulerServer(server_conf, clock=WallClock(), rng=rng)
    try:
        await server.start()
    except OSError as exc:
        log.error("listener_failed", port=server_conf.port, error=str(exc))  # noqa: TRY400
        return _EXIT_FAILURE
    telnet = await _start_telnet(server, *telnet_budget)
    service = make_service(server, telnet)
    http = await _start_http(server, service.settings)
    _drop_privileges(service.settings.user)
    missing = _missing_bus(bus_address)
    if missing:
        log.warning(
            "dbus_unavailable",
            name=_BUS_NAME,
            address=bus_address,
            reason=missing,
            consequence="running without D-Bus",
        )
        dbus = exported = None
    else:
        from iceserv.service.dbus import (  # noqa: PLC0415 - only with a bus (see _missing_bus)
            SCHEDULER_INTERFACE,
            SCHEDULER_PATH,
            SchedulerInterface,
            export_on_bus,
        )

        dbus = SchedulerInterface(server.control, version=VERSION)
        exported = await export_on_bus(bus_address, SCHEDULER_INTERFACE, SCHEDULER_PATH, dbus)
        if exported is not None:
            dbus.attach()
    lifecycle = Lifecycle(service, notifier)
    loop = asyncio.get_running_loop()
    lifecycle.install_signal_handlers(loop)
    # READY=1 once the role is known (serving, or standby for whom), so that its
    # STATUS= says which; bounded, in case the role machine's timer is late.
    listen = server.standby.settings.listen if server.standby is not None else 0.0
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.role_known.wait(), listen + _ROLE_GRACE)
    log.info("scheduler_ready", port=server.port, version=VERSION)
    # What exists now (modules, classes, settings: 60,000+ objects) lives as long as the
    # process: keep it out of the collector's full passes, which a long queue makes
    # frequent (issue 19 item 4: 40-100 ms each at 20,000 queued jobs, all answers waiting);
    # and collect the young generation every 10,000 allocations instead of 700, so that a
    # burst of 20,000 GET_CS triggers a few full passes instead of a dozen.
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])
    try:
        return await lifecycle.run()
    finally:
        lifecycle.remove_signal_handlers(loop)
        if http is not None:
            await http.close()
        if dbus is not None:
            dbus.detach()
        if exported is not None:
            await exported.close()


def main(argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None) -> int:
    """Run ``icecc-scheduler`` with *argv* (default ``sys.argv[1:]``); return the exit code.

    *environ* defaults to ``os.environ``; the service manager's variables
    are read from it and then removed (:mod:`iceserv.service.notify`).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    loaded = load_or_exit(Service.SCHEDULER, load_scheduler_settings, args, environ, prog=_PROG)
    if isinstance(loaded, int):
        return loaded
    settings = loaded.settings
    keys = load_keys_or_exit(settings, prog=_PROG)
    if isinstance(keys, int) or loaded.command_line.check_config:
        return keys if isinstance(keys, int) else 0  # a bad key file fails --check-config too
    try:
        server_conf = dataclasses.replace(server_settings(settings, environ), keys=keys)
    except OSError as exc:
        sys.stderr.write(f"{_PROG}: interface {settings.interface!r}: {exc.strerror}\n")
        return _EXIT_FAILURE
    managed = bool(environ.get("NOTIFY_SOCKET"))
    journal_stream = environ.get("JOURNAL_STREAM")
    notifier = ServiceNotifier.from_environ(environ)
    if settings.daemonize and not managed and daemonize():
        return 0
    logs = open_log(settings, journal_stream, prog=_PROG)
    if isinstance(logs, int):
        return logs
    with contextlib.closing(logs):
        for warning in loaded.warnings:
            log.warning("config_warning", where=warning.where, message=warning.message)
        make_service = functools.partial(
            SchedulerService, settings=settings, logs=logs, argv=args, environ=environ
        )
        bus_address = environ.get("DBUS_SYSTEM_BUS_ADDRESS") or _SYSTEM_BUS
        limit = _raise_nofile_limit()
        server_conf, telnet_sessions = fit_budgets(server_conf, settings.max_telnet_sessions, limit)
        telnet_budget = (
            telnet_sessions,
            settings.max_telnet_sessions_per_host,
            settings.telnet_control,
        )
        return asyncio.run(_run(server_conf, notifier, make_service, bus_address, telnet_budget))


if __name__ == "__main__":
    sys.exit(main())
