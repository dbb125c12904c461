"""``iceccd``: load the settings, wire the daemon, run until SIGTERM/SIGINT.

This module owns the daemon program: 1.4's command line through the
configuration layer (flags > environment > conf.d > TOML; exit 78 on a
configuration error), the decisions 1.4's ``main`` makes at start (who
compile jobs run as, whether chroot is possible -- without it no remote
jobs --, where the Unix socket lives, which addresses the TCP port binds),
and the translation of :class:`~iceserv.config.DaemonSettings` plus the
test variables ``ICECC_TEST_SOCKET``, ``ICECC_TESTS`` and (with it)
``ICECC_TEST_SCHEDULER_IDLE`` into
:class:`~iceserv.daemon.ServerSettings`.  It holds no daemon logic.

Service integration as for the scheduler: ``sd_notify`` through
:mod:`iceserv.service.notify` (whose constructor also removes
``NOTIFY_SOCKET``, ``WATCHDOG_*`` and ``LISTEN_*`` from the environment
before any compiler is started), logging through
:mod:`iceserv.service.logging`, SIGHUP/SIGTERM through
:class:`~iceserv.service.Lifecycle`, to which :class:`DaemonService` adapts
the running daemon (running compiles get ``stop_grace`` seconds).
``org.icecream.Daemon1`` on the system bus (``DBUS_SYSTEM_BUS_ADDRESS``
overrides its address) through :mod:`iceserv.service.dbus`, to which
:class:`~iceserv.app.daemon_bus.DaemonBusControl` adapts the daemon; its setters take the reload
path (:meth:`DaemonService.apply_settings`).  With ``http`` set, the daemon's
``/metrics`` (:mod:`iceserv.web`) is served on that address.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from iceserv._version import VERSION
from iceserv.app.daemon_bus import DaemonBusControl
from iceserv.app.program import (
    WallClock,
    load_keys_or_exit,
    load_or_exit,
    open_log,
    reload_changes,
)
from iceserv.config import Service, load_daemon_settings, read_keys, render_text
from iceserv.daemon import (
    Daemon,
    DaemonControl,
    JobStarter,
    RunAs,
    ServerSettings,
    can_chroot,
    child_environment,
    resolve_user,
)
from iceserv.errors import ConfigError
from iceserv.hostfacts import (
    broadcast_addresses,
    host_platform,
    interface_addresses,
    multicast_sources,
    routable_addresses,
)
from iceserv.netio import (
    DESCRIPTOR_RESERVE,
    WILDCARD,
    Family,
    NofileLimit,
    fit_budget,
    raise_nofile_limit,
)
from iceserv.service import Lifecycle, LogFormat, ServiceNotifier
from iceserv.service.dbus import (
    DAEMON_INTERFACE,
    DAEMON_PATH,
    DEFAULT_SYSTEM_BUS,
    DaemonInterface,
    export_on_bus,
)
from iceserv.service.lifecycle import daemonize

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, MutableMapping, Sequence

    from iceserv.config import DaemonSettings, HostPort, Loaded
    from iceserv.service import LogSetup, Notifier
    from iceserv.web import HttpEndpoint

__all__ = ["DaemonService", "fit_budgets", "main", "server_settings", "socket_path"]

log = structlog.get_logger("iceserv.app.daemon")

_PROG: Final = "iceccd"
_EXIT_FAILURE: Final = 1
_ROOT_SOCKET: Final = Path("/var/run/icecc/iceccd.socket")
_LOOPBACK: Final = "127.0.0.1"
_LOOPBACK6: Final = "::1"
_REAL_ICECC: Final = "/usr/bin/icecc"
#: What a reload cannot change while the daemon runs (it says so and keeps the old value).
_SCHEDULER_IDLE: Final = 300.0
_MB: Final = 1024 * 1024
#: Descriptors one running compile or install holds (its pipes, the helper's socket pair).
_FDS_PER_JOB: Final = 8
#: Descriptors the opt-in /metrics endpoint may hold (its connection cap and listeners).
_HTTP_FDS: Final = 260
_RESTART_ONLY: Final = frozenset(("user", "env_basedir", "daemonize", "http"))


def socket_path(environ: Mapping[str, str], *, privileged: bool) -> Path:
    """Where the Unix socket goes (reference §1.2): test socket, /var/run/icecc, or $HOME."""
    if environ.get("ICECC_TEST_SOCKET"):
        return Path(environ["ICECC_TEST_SOCKET"])
    if privileged:
        return _ROOT_SOCKET
    return Path(environ.get("HOME") or "/") / ".iceccd.socket"


def _listen_addresses(settings: DaemonSettings) -> tuple[str, ...]:
    if not settings.interface:
        return (WILDCARD,)  # 1.4 listens on every interface unless -i is given
    family = Family(settings.family)
    ipv4, ipv6 = family is not Family.IPV6, family is not Family.IPV4
    addresses = interface_addresses(settings.interface, ipv4=ipv4, ipv6=ipv6)
    # 1.4 also binds 127.0.0.1 (and fails for -i lo by binding it twice; we do not).
    loopbacks = [a for a, wanted in ((_LOOPBACK, ipv4), (_LOOPBACK6, ipv6)) if wanted]
    return tuple(dict.fromkeys((*addresses, *loopbacks)))


def _broadcasts(settings: DaemonSettings, *, tests: bool) -> Callable[[], Sequence[str]]:
    if tests:
        return lambda: (_LOOPBACK,)  # ICECC_TESTS: 1.4 broadcasts on loopback only
    if settings.family == "ipv6":
        return lambda: ()  # --family ipv6: discovery by the IPv6 group alone
    return broadcast_addresses


def _no_multicast() -> list[tuple[str, str]]:
    return []  # ICECC_TESTS (loopback only, as 1.4's broadcasts) or --family ipv4


def _native_command() -> tuple[str, str]:
    program = _REAL_ICECC if os.access(_REAL_ICECC, os.X_OK) else shutil.which("icecc")
    return (program or _REAL_ICECC, "--build-native")


def server_settings(
    settings: DaemonSettings,
    environ: Mapping[str, str],
    *,
    chroot_possible: bool,
    keys: tuple[bytes, ...] = (),
) -> ServerSettings:
    """Map the settings (and ``ICECC_TEST_SOCKET``/``ICECC_TESTS``) to the daemon shell's.

    Raises ``OSError`` if ``-i`` names an interface without an address of the
    families ``family`` allows.
    """
    remote = settings.allow_remote and chroot_possible
    tests = bool(environ.get("ICECC_TESTS"))
    idle = environ.get("ICECC_TEST_SCHEDULER_IDLE", "")  # seconds; shortens a 5-minute test
    scheduler = settings.scheduler_host
    max_kids = settings.max_processes
    return ServerSettings(
        unix_socket=socket_path(environ, privileged=chroot_possible),
        env_basedir=settings.env_basedir,
        listen_addresses=_listen_addresses(settings) if remote else (),
        family=settings.family,
        port=settings.port if remote else 0,
        nodename=settings.host_name,
        netname=settings.net_name,
        scheduler=(scheduler.host, scheduler.port) if scheduler is not None else None,
        broadcasts=_broadcasts(settings, tests=tests),
        multicast=_no_multicast if tests or settings.family == "ipv4" else multicast_sources,
        host_addresses=routable_addresses,
        fast_reconnect=tests,
        max_kids=max_kids if max_kids is not None else os.cpu_count() or 1,
        nice=settings.nice_level,
        cache_limit=settings.cache_limit * 1024 * 1024,
        platform=host_platform(),
        chroot_possible=chroot_possible,
        child_environ=child_environment(environ),
        native_command=_native_command(),
        scheduler_idle=float(idle) if tests and _is_number(idle) else _SCHEDULER_IDLE,
        handshake_timeout=settings.handshake_timeout,
        message_timeout=settings.message_timeout,
        max_clients=settings.max_clients,
        max_clients_per_host=min(settings.max_clients_per_host, settings.max_clients),
        max_local_clients=settings.max_local_clients,
        source_buffer_limit=settings.source_buffer_limit * _MB,
        source_budget=settings.source_budget * _MB,
        max_env_transfers=settings.max_env_transfers,
        env_transfer_queue=settings.env_transfer_queue,
        max_native_builds=settings.max_native_builds,
        native_compilers=tuple(settings.native_compilers.split()),
        push_ahead=settings.push_ahead,
        auth=settings.auth,
        keys=keys,
        encrypt=settings.encrypt,
        native_compression="zstd" if shutil.which("zstd", path="/usr/bin:/bin") else "gzip",
    )


def fit_budgets(
    server: ServerSettings, limit: NofileLimit, *, http: bool = False
) -> ServerSettings:
    """Lower the connection budgets so that, when full, they leave descriptors to spare.

    The Unix socket gets at most a quarter of the descriptor limit, running
    jobs and installs :data:`_FDS_PER_JOB` each, the process's own files a
    reserve (grown by the HTTP endpoint's connection cap when *http* is on),
    and the TCP port the rest: a full budget then refuses connections, and
    ``accept()`` never meets ``EMFILE`` on their account.
    """
    reserve = min(DESCRIPTOR_RESERVE + (_HTTP_FDS if http else 0), limit.soft // 4)
    jobs = _FDS_PER_JOB * (server.max_kids + server.max_env_transfers + server.max_native_builds)
    local = fit_budget(server.max_local_clients, limit.soft // 4, 0)
    tcp = fit_budget(server.max_clients, limit.soft - local - jobs, reserve)
    if (tcp, local) != (server.max_clients, server.max_local_clients):
        log.warning(
            "connection_budget_lowered", nofile=limit.soft, max_clients=tcp, max_local_clients=local
        )
    return dataclasses.replace(
        server,
        max_clients=tcp,
        max_clients_per_host=min(server.max_clients_per_host, tcp),
        max_local_clients=local,
    )


def _raise_nofile_limit() -> NofileLimit:
    """Raise the soft descriptor limit to the hard one and log the outcome."""
    limit = raise_nofile_limit()
    if limit.error:
        log.warning("nofile_limit_kept", soft=limit.soft, hard=limit.hard, error=limit.error)
    else:
        log.info("nofile_limit_set", soft=limit.soft, hard=limit.hard, before=limit.before)
    return limit


def _is_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


class DaemonService:
    """The running daemon as :class:`~iceserv.service.ManagedService` sees it."""

    def __init__(
        self,
        daemon: Daemon,
        *,
        settings: DaemonSettings,
        logs: LogSetup,
        argv: Sequence[str],
        environ: Mapping[str, str],
    ) -> None:
        self.daemon = daemon
        self.settings = settings
        self._logs = logs
        self._argv = list(argv)
        self._environ = environ
        #: The network keys in use (current, previous); a reload reads them again.
        self.keys: tuple[bytes, ...] = ()
        #: Set by ``_run`` so a reload can change the stop grace period.
        self.lifecycle: Lifecycle | None = None

    def status(self) -> str:
        """Return e.g. ``1/4 jobs, scheduler 10.0.0.2:8765``."""
        return DaemonControl(self.daemon).status().summary()

    async def reload(self) -> list[str]:
        """Re-read the configuration and apply it to the running daemon; return what changed.

        Limits, identity, listeners and logging change live
        (:meth:`~iceserv.daemon.Daemon.reconfigure`); the job user, the
        environment directory and ``-d`` need a restart and are reported.
        """
        loaded = load_daemon_settings(self._argv, self._environ)
        new, live, fixed = reload_changes(loaded.settings, self.settings, _RESTART_ONLY)
        if fixed:
            log.warning("reload_needs_restart", settings=fixed)
        try:
            self.keys = read_keys(new.key_file, new.previous_key_file)
        except ConfigError as exc:  # keep the keys in use: a typo must not open the daemon
            log.error("network_key_unusable", error=str(exc))  # noqa: TRY400 - no traceback
            new = new.model_copy(
                update={
                    "key_file": self.settings.key_file,
                    "previous_key_file": self.settings.previous_key_file,
                }
            )
        await self.apply_settings(new)
        self._logs.reconfigure(
            verbosity=new.verbosity, fmt=LogFormat(new.log_format), log_file=new.log_file
        )
        for warning in loaded.warnings:
            log.warning("config_warning", where=warning.where, message=warning.message)
        if self.lifecycle is not None:
            self.lifecycle.grace = new.stop_grace
        self.settings = new
        return live

    async def apply_settings(self, new: DaemonSettings) -> None:
        """Apply *new* to the running daemon as a reload does (also D-Bus's setters).

        Raises ``OSError`` (and keeps the old settings) if a listener cannot be bound.
        """
        chroot = self.daemon.settings.chroot_possible
        server = server_settings(new, self._environ, chroot_possible=chroot, keys=self.keys)
        limit = raise_nofile_limit()
        await self.daemon.reconfigure(fit_budgets(server, limit, http=new.http is not None))
        self.settings = new

    async def stop_accepting(self) -> None:
        """Close the listeners, leave the scheduler, end clients not being compiled for."""
        await self.daemon.stop_accepting()

    def in_flight(self) -> int:
        """Return the number of remote compiles and installs still running."""
        return self.daemon.in_flight

    async def wait_idle(self) -> None:
        """Return once they are done."""
        await self.daemon.wait_idle()

    async def close(self) -> None:
        """Kill what is left and close everything."""
        await self.daemon.close()


def _prepare_socket_dir(path: Path, run_as: RunAs) -> None:
    """Create ``/var/run/icecc`` (0755, owned by the job user) as 1.4 does as root."""
    if path != _ROOT_SOCKET:
        return
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    with contextlib.suppress(OSError):
        os.chown(path.parent, run_as.uid, run_as.gid)


async def _start_http(daemon: Daemon, address: HostPort | None) -> HttpEndpoint | None:
    """Start the opt-in ``/metrics`` endpoint when ``http`` is set (a failure is logged)."""
    if address is None:
        return None
    # Imported only when asked for: aiohttp and prometheus_client cost a daemon without
    # --http about a second of start-up and 11 MiB (measured on the shared machine).
    from iceserv.web import HttpEndpoint, make_daemon_registry  # noqa: PLC0415

    registry = make_daemon_registry(DaemonControl(daemon), version=VERSION)
    endpoint = HttpEndpoint.metrics_only(registry)
    try:
        await endpoint.start(address.host, address.port)
    except OSError as exc:
        log.error("http_listener_failed", address=str(address), error=str(exc))  # noqa: TRY400
        await endpoint.close()
        return None
    return endpoint


async def _run(  # noqa: PLR0913 - the parts main prepared
    server: ServerSettings,
    run_as: RunAs,
    notifier: Notifier,
    make_service: DaemonServiceFactory,
    grace: float,
    *,
    bus_address: str,
) -> int:
    starter = JobStarter()  # the fork server of compile jobs; stopped when we stop
    try:
        return await _serve(
            server,
            run_as,
            notifier,
            make_service,
            grace=grace,
            starter=starter,
            bus_address=bus_address,
        )
    finally:
        starter.stop()


async def _serve(  # noqa: PLR0913 - the parts main prepared
    server: ServerSettings,
    run_as: RunAs,
    notifier: Notifier,
    make_service: DaemonServiceFactory,
    *,
    grace: float,
    starter: JobStarter,
    bus_address: str,
) -> int:
    daemon = Daemon(server, run_as=run_as, clock=WallClock(), starter=starter, rng=random.Random())  # noqa: S311
    try:
        await daemon.start()
    except OSError as exc:
        log.error(  # noqa: TRY400 - the cause is in the message; no traceback wanted
            "listener_failed", port=server.port, socket=str(server.unix_socket), error=str(exc)
        )
        await daemon.close()
        return _EXIT_FAILURE
    service = make_service(daemon)
    http = await _start_http(daemon, service.settings.http)
    dbus = DaemonInterface(DaemonBusControl(service), version=VERSION)
    exported = await export_on_bus(bus_address, DAEMON_INTERFACE, DAEMON_PATH, dbus)
    if exported is not None:
        dbus.attach()
    lifecycle = Lifecycle(service, notifier, grace=grace)
    service.lifecycle = lifecycle
    loop = asyncio.get_running_loop()
    lifecycle.install_signal_handlers(loop)
    log.info("daemon_ready", version=VERSION, status=DaemonControl(daemon).status().summary())
    try:
        return await lifecycle.run()
    finally:
        lifecycle.remove_signal_handlers(loop)
        await dbus.detach()
        if exported is not None:
            await exported.close()
        if http is not None:
            await http.close()


class DaemonServiceFactory:
    """Builds the :class:`DaemonService` once the daemon runs."""

    def __init__(
        self,
        loaded: Loaded[DaemonSettings],
        logs: LogSetup,
        argv: Sequence[str],
        environ: Mapping[str, str],
    ) -> None:
        self._args = (loaded.settings, logs, list(argv), environ)
        #: The network keys main read (current, previous).
        self.keys: tuple[bytes, ...] = ()

    def __call__(self, daemon: Daemon) -> DaemonService:
        """Return the adapter for *daemon*."""
        settings, logs, argv, environ = self._args
        service = DaemonService(daemon, settings=settings, logs=logs, argv=argv, environ=environ)
        service.keys = self.keys
        return service


def main(  # noqa: PLR0911 - one exit code per start-up step
    argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None
) -> int:
    """Run ``iceccd`` with *argv* (default ``sys.argv[1:]``); return the exit code.

    *environ* defaults to ``os.environ``; the service manager's variables
    are read from it and then removed, so no compiler inherits them.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    loaded = load_or_exit(Service.DAEMON, load_daemon_settings, args, environ, prog=_PROG)
    if isinstance(loaded, int):
        return loaded
    settings = loaded.settings
    keys = load_keys_or_exit(settings, prog=_PROG)
    if isinstance(keys, int) or loaded.command_line.check_config:
        if isinstance(keys, int):
            return keys  # a bad key file fails --check-config too
        sys.stdout.write(render_text({Service.DAEMON: loaded}))
        return 0
    managed = bool(environ.get("NOTIFY_SOCKET"))
    journal_stream = environ.get("JOURNAL_STREAM")
    notifier = ServiceNotifier.from_environ(environ)
    chroot = can_chroot()
    try:
        server = server_settings(settings, environ, chroot_possible=chroot, keys=keys)
    except OSError as exc:
        sys.stderr.write(f"{_PROG}: interface {settings.interface!r}: {exc.strerror}\n")
        return _EXIT_FAILURE
    if settings.daemonize and not managed and daemonize():
        return 0
    logs = open_log(settings, journal_stream, prog=_PROG)
    if isinstance(logs, int):
        return logs
    with contextlib.closing(logs):
        for warning in loaded.warnings:
            log.warning("config_warning", where=warning.where, message=warning.message)
        server = fit_budgets(server, _raise_nofile_limit(), http=settings.http is not None)
        run_as, user_warning = resolve_user(settings.user)
        if user_warning:
            log.warning("job_user_fallback", message=user_warning)
        if not chroot:
            log.warning("chroot_impossible", message="Cannot use chroot, no remote jobs accepted.")
        os.umask(0o022)
        _prepare_socket_dir(server.unix_socket, run_as)
        factory = DaemonServiceFactory(loaded, logs, args, environ)
        factory.keys = keys
        bus_address = environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS
        return asyncio.run(
            _run(server, run_as, notifier, factory, settings.stop_grace, bus_address=bus_address)
        )


if __name__ == "__main__":
    sys.exit(main())
