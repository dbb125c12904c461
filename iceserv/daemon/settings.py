"""What the daemon's I/O shell needs to know, as one immutable value built by ``iceserv.app``.

This module owns :class:`ServerSettings`: the listening addresses, the
identity announced in LOGIN, the limits and time-outs (reference §7.8) and
the environment handed to compilers.  It reads nothing itself; the app maps
the configuration layer's ``DaemonSettings`` and the few test variables
(``ICECC_TEST_SOCKET``, ``ICECC_TESTS``) onto it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.protocol import DAEMON_PORT, EnvFeature

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["ServerSettings"]

_PROC: Final = Path("/proc")


def _no_broadcasts() -> tuple[str, ...]:
    return ()


def _no_multicast() -> tuple[tuple[str, str], ...]:
    return ()


def _no_addresses() -> tuple[str, ...]:
    return ()


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The daemon's configuration as the shell uses it.

    ``listen_addresses`` is empty when no TCP port is opened (``--no-remote``
    or no chroot possible); ``port`` is still what LOGIN and USE_CS-to-self
    announce (0 then).  ``""`` among them is every address of ``family``
    (``any``, ``ipv4``, ``ipv6``; dual-stack where possible), which also
    restricts how the scheduler is connected to.  ``scheduler`` is
    ``(host, port)`` from ``-s`` or None for discovery on ``broadcasts()``.
    ``nodename`` "" means the host name, re-read at every login.
    """

    unix_socket: Path
    env_basedir: Path
    listen_addresses: tuple[str, ...] = ("",)  # every address, as 1.4 binds all interfaces
    family: str = "any"
    port: int = DAEMON_PORT
    nodename: str = ""
    netname: str = ""
    scheduler: tuple[str, int] | None = None
    discovery_port: int = 8765
    broadcasts: Callable[[], Sequence[str]] = _no_broadcasts
    multicast: Callable[[], Sequence[tuple[str, str]]] = _no_multicast
    host_addresses: Callable[[], Sequence[str]] = _no_addresses
    fast_reconnect: bool = False
    max_kids: int = 1
    nice: int = 5
    cache_limit: int = 256 * 1024 * 1024
    platform: str = "x86_64"
    chroot_possible: bool = True
    supported_features: int = int(EnvFeature.ENV_XZ | EnvFeature.ENV_ZSTD)
    child_environ: Mapping[str, str] = field(default_factory=dict)
    native_command: tuple[str, ...] = ("/usr/bin/icecc", "--build-native")
    proc_dir: Path = field(default_factory=lambda: _PROC)  # where /proc/stat and meminfo are
    # Time-outs in seconds, then size and count limits.
    handshake_timeout: float = 15.0
    idle_timeout: float = 120.0
    wait_timeout: float = 3600.0
    local_job_timeout: float = 6 * 3600.0
    first_env_chunk_timeout: float = 30.0
    source_gap_timeout: float = 60.0
    compile_timeout: float = 3600.0
    write_timeout: float = 30.0
    scheduler_idle: float = 300.0  # a silent scheduler link gets a STATS, never a close
    message_timeout: float = 30.0  # a started message must be complete within this
    # Memory a peer can make the daemon hold (issue 20): source of queued jobs is read
    # only up to these (then the client is not read from, as 1.4 does not read it at all).
    source_buffer_limit: int = 16 * 1024 * 1024  # one queued job
    source_budget: int = 64 * 1024 * 1024  # all queued jobs together
    max_env_transfers: int = 2  # unpackers at once; more transfers wait (not read)
    env_transfer_queue: int = 16  # transfers waiting; more are refused
    max_native_builds: int = 1  # ``icecc --build-native`` at once
    # Native environments built right after start (names on the search path, or paths),
    # and the compression used when a client asks for none.
    native_compilers: tuple[str, ...] = ()
    native_compression: str = "zstd"
    # Send a native environment, once ready, to hosts that lack it (iceserv schedulers only).
    push_ahead: bool = True
    push_timeout: float = 120.0  # one push, connect to VERIFY_ENV_RESULT
    # [cluster] auth (off, prefer, require) and the network keys, current first (issue 14).
    auth: str = "off"
    keys: tuple[bytes, ...] = field(default=(), repr=False)
    #: ``[cluster] encrypt`` (issue 14 item 4): seal the scheduler link and our jobs.
    encrypt: bool = False
    # Connection budgets: TCP (all, and per source host) and, separately, the Unix socket.
    max_clients: int = 1024
    max_clients_per_host: int = 64
    max_local_clients: int = 1024

    @property
    def remote_allowed(self) -> bool:
        """Whether remote jobs are accepted (a TCP listener and chroot are both needed)."""
        return bool(self.listen_addresses) and self.chroot_possible
