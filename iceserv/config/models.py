"""Typed, validated, immutable settings of the daemon and the scheduler.

Owns the fields of :class:`DaemonSettings` (iceccd) and
:class:`SchedulerSettings` (icecc-scheduler), one per row of the reference's
cross-walk, with their types, defaults and validation (including the
``v``/``vv``/``vvv`` verbosity letters and ``HOST[:PORT]`` addresses).

The models never read files, the environment or argv on their own: their
only pydantic-settings source is the keyword arguments, which
:mod:`iceserv.config.sources` builds from flags, environment, conf.d and
TOML, so that loading stays explicit and testable.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal, Self

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "DEFAULT_DAEMON_PORT",
    "DEFAULT_SCHEDULER_PORT",
    "DaemonSettings",
    "HostPort",
    "SchedulerSettings",
]

DEFAULT_DAEMON_PORT: Final = 10245
DEFAULT_SCHEDULER_PORT: Final = 8765
#: Port of the scheduler's opt-in HTTP endpoint (``/metrics`` and the web view).
DEFAULT_HTTP_PORT: Final = 8767
#: Port of the daemon's opt-in HTTP endpoint (its ``/metrics``).
DEFAULT_DAEMON_HTTP_PORT: Final = 8768
# Linux IFNAMSIZ is 16 including the terminating NUL.
_MAX_INTERFACE_NAME: Final = 15
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_HOST_PORT: Final = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>[0-9]+))?")


@dataclass(frozen=True, slots=True)
class HostPort:
    """A scheduler address as given to ``iceccd -s HOST[:PORT]``."""

    host: str
    port: int = DEFAULT_SCHEDULER_PORT

    def __str__(self) -> str:
        """Return ``host:port`` (``[v6]:port`` for IPv6 literals)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _parse_http_address(value: object, default_port: int = DEFAULT_HTTP_PORT) -> object:
    """Turn ``host``, ``host:port`` or ``[v6]:port`` into the HTTP listen address (8767)."""
    parsed = _parse_host_port(value)
    if isinstance(parsed, HostPort) and isinstance(value, str):
        text = value.strip()
        if not text.endswith(f":{parsed.port}") or (text.count(":") > 1 and "]" not in text):
            parsed = HostPort(parsed.host, default_port)
    return parsed


def _parse_daemon_http_address(value: object) -> object:
    """As :func:`_parse_http_address`, with the daemon's default port (8768)."""
    return _parse_http_address(value, DEFAULT_DAEMON_HTTP_PORT)


def _parse_host_port(value: object) -> object:
    """Turn ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 literal into a HostPort."""
    if value is None or isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        msg = "expected a string HOST or HOST:PORT"
        raise ValueError(msg)  # noqa: TRY004 - pydantic reports only ValueError as invalid input
    text = value.strip()
    try:
        return HostPort(str(ipaddress.IPv6Address(text)))
    except ValueError:
        pass
    match = _HOST_PORT.fullmatch(text)
    if match is None:
        msg = "expected HOST or HOST:PORT"
        raise ValueError(msg)
    port = DEFAULT_SCHEDULER_PORT
    if match["port"] is not None:
        port = int(match["port"])
        if not 1 <= port <= 65535:
            msg = f"port {port} is not between 1 and 65535"
            raise ValueError(msg)
    if match["v6"] is not None:
        try:
            return HostPort(str(ipaddress.IPv6Address(match["v6"])), port)
        except ValueError:
            msg = f"{match['v6']!r} is not an IPv6 address"
            raise ValueError(msg) from None
    if _HOST_NAME.fullmatch(match["host"]) is None:
        msg = f"{match['host']!r} is not a host name or IPv4 address"
        raise ValueError(msg)
    return HostPort(match["host"], port)


def _host_port_text(value: HostPort | None) -> str | None:
    return None if value is None else str(value)


def _verbosity(value: object) -> object:
    """Accept the conf.d letters (``v``, ``vv``, ``vvv``, ``-vv``) or a number."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    letters = text.removeprefix("-")
    if letters and set(letters) == {"v"}:
        return len(letters)
    if text.isascii() and text.isdigit():
        return int(text)
    msg = "expected 'v', 'vv' or 'vvv' (or a number from 0 to 3)"
    raise ValueError(msg)


def _empty_is_none(value: object) -> object:
    """Treat an empty string as "not set" (the default), as the init scripts do."""
    return None if value == "" else value


def _no_blanks(value: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in value):
        msg = "must not contain blanks or control characters"
        raise ValueError(msg)
    return value


def _interface(value: str) -> str:
    if len(value) > _MAX_INTERFACE_NAME or "/" in value or ":" in value:
        msg = f"not a network interface name (at most {_MAX_INTERFACE_NAME} characters, no / or :)"
        raise ValueError(msg)
    return _no_blanks(value)


def _absolute(value: Path) -> Path:
    if not value.is_absolute():
        msg = "must be an absolute path"
        raise ValueError(msg)
    return value


def _compiler_list(value: str) -> str:
    """Blank- or comma-separated compiler names or absolute paths, normalised to one blank."""
    words = value.replace(",", " ").split()
    for word in words:
        if not word.isprintable() or (("/" in word) and not word.startswith("/")):
            msg = f"{word!r} is neither a compiler name nor an absolute path"
            raise ValueError(msg)
    return " ".join(words)


def _split_networks(value: object) -> object:
    """Split a conf.d/flag string of networks: blank- or comma-separated; a TOML array as is."""
    if isinstance(value, str):
        return tuple(value.replace(",", " ").split())
    return value


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    """Each entry an IPv4/IPv6 address or CIDR network, normalised (host bits cleared)."""
    found: list[str] = []
    for entry in value:
        try:
            network = ipaddress.ip_network(entry.split("%", 1)[0], strict=False)
        except ValueError:
            msg = f"{entry!r} is neither an IP address nor a CIDR network"
            raise ValueError(msg) from None
        if str(network) not in found:
            found.append(str(network))
    return tuple(found)


Name = Annotated[str, AfterValidator(_no_blanks)]
CompilerList = Annotated[str, Field(max_length=4096), AfterValidator(_compiler_list)]
UserName = Annotated[str, Field(min_length=1), AfterValidator(_no_blanks)]
Interface = Annotated[str, AfterValidator(_interface)]
AbsolutePath = Annotated[Path, AfterValidator(_absolute)]
OptionalPath = Annotated[AbsolutePath | None, BeforeValidator(_empty_is_none)]
Verbosity = Annotated[int, Field(ge=0, le=3), BeforeValidator(_verbosity)]
Port = Annotated[int, Field(ge=1, le=65535)]
LogFormat = Literal["auto", "console", "json", "journal"]
AddressFamily = Literal["any", "ipv4", "ipv6"]
AuthMode = Literal["off", "prefer", "require"]
TelnetControlMode = Literal["auto", "local", "off", "any"]
SchedulerAddress = Annotated[
    HostPort | None,
    BeforeValidator(_parse_host_port),
    BeforeValidator(_empty_is_none),
    PlainSerializer(_host_port_text, return_type=str | None),
]
Networks = Annotated[
    tuple[str, ...],
    Field(max_length=1024),
    BeforeValidator(_split_networks),
    AfterValidator(_networks),
]
HttpAddress = Annotated[
    HostPort | None,
    BeforeValidator(_parse_http_address),
    BeforeValidator(_empty_is_none),
    PlainSerializer(_host_port_text, return_type=str | None),
]
DaemonHttpAddress = Annotated[
    HostPort | None,
    BeforeValidator(_parse_daemon_http_address),
    BeforeValidator(_empty_is_none),
    PlainSerializer(_host_port_text, return_type=str | None),
]


def _check_auth(auth: str, key_file: Path | None, *, encrypt: bool) -> None:
    if encrypt and auth == "off":
        msg = "encrypt = yes needs auth = prefer or require (keys come from the handshake)"
        raise ValueError(msg)
    if auth != "off" and key_file is None:
        msg = f"auth = {auth} needs key_file (the network key; see iceserv keygen)"
        raise ValueError(msg)


class _Settings(BaseSettings):
    """Common configuration: frozen, no unknown fields, no implicit sources."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", validate_default=True, use_attribute_docstrings=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],  # noqa: ARG003 - signature fixed by pydantic-settings
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Use only the values passed in; never read ``os.environ`` or dotenv files."""
        return (init_settings,)


class DaemonSettings(_Settings):
    """Settings of the compile daemon, ``iceccd`` (upstream ``daemon/main.cpp``)."""

    nice_level: Annotated[int, Field(ge=-20, le=19)] = 5
    """Niceness of the daemon and its compile jobs (``--nice``)."""
    host_name: Name = ""
    """Name of this node on the network; empty means the host name (``-N``)."""
    net_name: Name = ""
    """Icecream network to join; the scheduler must serve the same (``-n``)."""
    scheduler_host: SchedulerAddress = None
    """Scheduler to use instead of broadcast discovery (``-s HOST[:PORT]``)."""
    max_processes: Annotated[
        Annotated[int, Field(ge=0)] | None, BeforeValidator(_empty_is_none)
    ] = None
    """Parallel compile jobs; None means one per CPU; 0 accepts no remote jobs (``-m``)."""
    allow_remote: bool = True
    """Accept compile jobs from other nodes (``--no-remote`` clears it)."""
    env_basedir: AbsolutePath = Path("/var/cache/icecream")
    """Where compile environments received from clients are kept (``-b``)."""
    cache_limit: Annotated[int, Field(ge=0)] = 256
    """Maximum size of the environment cache in MB (``--cache-limit``)."""
    verbosity: Verbosity = 0
    """Log detail, 0 to 3 (``-v``, ``-vv``, ``-vvv``)."""
    log_file: OptionalPath = None
    """Log file; None logs to stderr or the journal (``-l``)."""
    log_format: LogFormat = "auto"
    """Log lines as console, json or journal; auto picks by where they go (``--log-format``)."""
    stop_grace: Annotated[float, Field(ge=0, le=86400)] = 60.0
    """Seconds running jobs may take to finish after SIGTERM (``--stop-grace``)."""
    user: UserName = "icecream"
    """User that compile jobs run as when started as root (``-u``)."""
    interface: Interface = ""
    """Network interface to listen on; empty means all (``-i``)."""
    port: Port = DEFAULT_DAEMON_PORT
    """TCP port for clients and other daemons (``-p``)."""
    family: AddressFamily = "any"
    """Address families to listen and connect on: any (IPv6 and IPv4), ipv4 or ipv6
    (``--family``; TOML also ``[network] family``)."""
    daemonize: bool = False
    """Detach from the terminal (``-d``); ignored under systemd or ``--foreground``."""
    handshake_timeout: Annotated[float, Field(gt=0, le=3600)] = 15.0
    """Seconds a new client connection has for its version handshake, in all
    (``--handshake-timeout``)."""
    message_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Seconds a client has to finish a message it has started (``--message-timeout``)."""
    max_clients: Annotated[int, Field(ge=1)] = 1024
    """Client connections on the TCP port at once (``--tcp-clients``)."""
    max_clients_per_host: Annotated[int, Field(ge=1)] = 64
    """Client connections on the TCP port from one host (``--tcp-clients-per-host``)."""
    max_local_clients: Annotated[int, Field(ge=1)] = 1024
    """Client connections on the Unix socket at once; TCP peers never use them up
    (``--local-clients``)."""
    source_buffer_limit: Annotated[int, Field(ge=1, le=4096)] = 16
    """MB of source read ahead for one job waiting for a slot; then the client
    is not read until the job starts (``--source-buffer-limit``)."""
    source_budget: Annotated[int, Field(ge=1, le=65536)] = 64
    """MB of source read ahead for all waiting jobs together (``--source-budget``)."""
    max_env_transfers: Annotated[int, Field(ge=1, le=1024)] = 2
    """Environment transfers unpacked at once; more wait unread (``--unpack-limit``)."""
    env_transfer_queue: Annotated[int, Field(ge=0, le=65536)] = 16
    """Environment transfers waiting; more are refused (``--unpack-queue``)."""
    max_native_builds: Annotated[int, Field(ge=1, le=64)] = 1
    """Native environments (``icecc --build-native``) built at once (``--build-limit``)."""
    native_compilers: CompilerList = "gcc clang"
    """Compilers whose native environments are built right after start, so the first
    compile does not wait: names (found in /usr/local/bin, /usr/bin, /bin) or absolute
    paths, blank- or comma-separated; g++ shares gcc's, clang++ clang's; empty: none
    (``--native-compilers``)."""
    push_ahead: bool = True
    """Once a native environment is built, send it to idle hosts that lack it, so the
    first job there need not wait for the transfer (iceserv schedulers only;
    ``--no-push-ahead``)."""
    key_file: OptionalPath = None
    """File holding the network key (at least 32 random bytes, not world-readable;
    ``iceserv keygen``); unset: no key (``--key-file``; also ``ICECC_NETWORK_KEY_FILE``,
    TOML ``[cluster] key_file``)."""
    previous_key_file: OptionalPath = None
    """The key before a rotation, still accepted from peers until every host has the
    new one (``--previous-key-file``; TOML ``[cluster] previous_key_file``)."""
    auth: AuthMode = "off"
    """Authentication of iceserv peers with the network key: off (1.4's behaviour),
    prefer (1.4 peers served, marked unauthenticated) or require (``--auth``; also
    ``ICECC_AUTH``, TOML ``[cluster] auth``)."""
    encrypt: bool = False
    """Encrypt what iceserv peers that proved the key exchange (scheduler link, source,
    objects, environments, push-ahead; AES-256-GCM); 1.4 peers stay as the auth mode
    says.  Needs auth prefer or require (``--encrypt``; also ``ICECC_ENCRYPT``, TOML
    ``[cluster] encrypt``)."""
    http: DaemonHttpAddress = None
    """Serve the daemon's ``/metrics`` on HOST[:PORT] (port 8768); unset: off (``--http``)."""

    @model_validator(mode="after")
    def _auth_needs_key(self) -> Self:
        """Refuse ``prefer``/``require`` without a key file."""
        _check_auth(self.auth, self.key_file, encrypt=self.encrypt)
        return self


class SchedulerSettings(_Settings):
    """Settings of the scheduler, ``icecc-scheduler`` (upstream ``scheduler/scheduler.cpp``)."""

    net_name: Name = ""
    """Icecream network this scheduler serves (``-n``)."""
    persistent_client_connection: bool = False
    """Keep daemon connections even when a "better" scheduler appears (``-r``)."""
    verbosity: Verbosity = 0
    """Log detail, 0 to 3 (``-v``, ``-vv``, ``-vvv``)."""
    interface: Interface = ""
    """Network interface to listen on; empty means all (``-i``)."""
    log_file: OptionalPath = None
    """Log file; None logs to stderr or the journal (``-l``)."""
    log_format: LogFormat = "auto"
    """Log lines as console, json or journal; auto picks by where they go (``--log-format``)."""
    port: Annotated[int, Field(ge=1, le=65534)] = DEFAULT_SCHEDULER_PORT
    """TCP and UDP port for daemons and clients; telnet uses port + 1 (``-p``)."""
    family: AddressFamily = "any"
    """Address families to listen on: any (IPv6 and IPv4), ipv4 or ipv6
    (``--family``; TOML also ``[network] family``)."""
    user: Annotated[str, AfterValidator(_no_blanks)] = ""
    """User to switch to when started as root; empty keeps the current user (``-u``)."""
    daemonize: bool = False
    """Detach from the terminal (``-d``); ignored under systemd or ``--foreground``."""
    handshake_timeout: Annotated[float, Field(gt=0, le=3600)] = 15.0
    """Seconds a new connection has for its handshake and first message, in all
    (``--handshake-timeout``)."""
    message_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Seconds a daemon has to finish a message it has started (``--message-timeout``)."""
    max_connections: Annotated[int, Field(ge=1)] = 16384
    """Connections on the scheduler port at once: daemons, monitors, handshakes
    (``--max-connections``)."""
    max_connections_per_host: Annotated[int, Field(ge=1)] = 64
    """Connections on the scheduler port from one host (``--max-connections-per-host``)."""
    max_monitors: Annotated[int, Field(ge=0)] = 256
    """Monitors at once; they also count as connections (``--max-monitors``)."""
    max_monitors_per_host: Annotated[int, Field(ge=0)] = 16
    """Monitors from one host (``--max-monitors-per-host``)."""
    max_telnet_sessions: Annotated[int, Field(ge=1)] = 64
    """Telnet sessions at once; when full, the oldest idle one makes room
    (``--max-telnet-sessions``)."""
    max_telnet_sessions_per_host: Annotated[int, Field(ge=1)] = 16
    """Telnet sessions from one host (``--max-telnet-sessions-per-host``)."""
    key_file: OptionalPath = None
    """File holding the network key (at least 32 random bytes, not world-readable;
    ``iceserv keygen``); unset: no key (``--key-file``; also ``ICECC_NETWORK_KEY_FILE``,
    TOML ``[cluster] key_file``)."""
    previous_key_file: OptionalPath = None
    """The key before a rotation, still accepted from peers until every host has the
    new one (``--previous-key-file``; TOML ``[cluster] previous_key_file``)."""
    auth: AuthMode = "off"
    """Authentication of iceserv peers with the network key: off (1.4's behaviour),
    prefer (1.4 peers served, marked unauthenticated) or require (``--auth``; also
    ``ICECC_AUTH``, TOML ``[cluster] auth``)."""
    encrypt: bool = False
    """Encrypt what iceserv peers that proved the key exchange (scheduler link, source,
    objects, environments, push-ahead; AES-256-GCM); 1.4 peers stay as the auth mode
    says.  Needs auth prefer or require (``--encrypt``; also ``ICECC_ENCRYPT``, TOML
    ``[cluster] encrypt``)."""
    telnet_control: TelnetControlMode = "auto"
    """Who may run the telnet commands that change the scheduler (blockcs, unblockcs,
    removecs): local (sessions from this host only), off (nobody), any (everyone, as
    1.4) or auto (local under ``auth = require``, else any) (``--telnet-control``)."""
    monitors: Networks = ()
    """Under ``auth = require``, the hosts or networks (IPv4/IPv6 addresses or CIDR,
    blank- or comma-separated) whose monitors (icemon, icecream-sundae) are served
    besides this host's; other modes serve every monitor (``--monitors``)."""
    http: HttpAddress = None
    """Serve ``/metrics`` and the web view on HOST[:PORT] (port 8767); unset: off (``--http``)."""

    @model_validator(mode="after")
    def _auth_needs_key(self) -> Self:
        """Refuse ``prefer``/``require`` without a key file."""
        _check_auth(self.auth, self.key_file, encrypt=self.encrypt)
        return self

    @property
    def text_port(self) -> int:
        """The telnet (text) port: always :attr:`port` + 1, as in icecream 1.4."""
        return self.port + 1
