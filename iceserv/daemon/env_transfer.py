"""Receiving one environment from a client: TRANFER_ENV, FILE_CHUNK..., END.

This module owns the daemon's side of an environment transfer for one
session (upstream ``daemon/main.cpp``: ``handle_transfer_env``,
``handle_file_chunk_env``, ``finish_transfer_env``): validate the name and
target (an empty target means our own platform), start the unpacker, feed it
chunk by chunk, and on END install the tree, shrink the cache to its limit
and re-announce to the scheduler.  Any failure removes what was written,
tells the client why (STATUS_TEXT) and ends the connection, as 1.4 does.
The install counts against the slots while it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from iceserv.daemon.environments import EnvInstallError, check_name

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from iceserv.daemon.environments import EnvironmentCache, Installer
    from iceserv.daemon.settings import ServerSettings
    from iceserv.daemon.slots import Slots
    from iceserv.protocol import EnvTransfer

__all__ = ["EXIT_ENV_FAILED", "EnvReceiver"]

#: JOB_DONE/exit code 1.4 uses for a failed environment transfer.
EXIT_ENV_FAILED: Final = 137


class _Host(Protocol):
    settings: ServerSettings
    slots: Slots
    cache: EnvironmentCache

    def reannounce(self) -> None: ...

    def schedule(self) -> None: ...


class _Client(Protocol):
    client_id: int

    def error_text(self, text: str) -> None: ...

    async def flush(self) -> None: ...

    def close(self) -> None: ...


class EnvReceiver:
    """One environment transfer; :meth:`begin`, then :meth:`chunk`... and :meth:`finish`."""

    def __init__(self, host: _Host, client: _Client, log: FilteringBoundLogger) -> None:
        self._host = host
        self._client = client
        self._log = log
        self._installer: Installer | None = None
        self.key = ""

    @property
    def active(self) -> bool:
        """Whether a transfer is in progress."""
        return self._installer is not None

    async def begin(self, msg: EnvTransfer) -> bool:
        """Start receiving *msg*'s environment; False (client told, closed) on failure."""
        target = msg.target or self._host.settings.platform
        self.key = f"{target}/{msg.name}"
        try:
            check_name(target, "target")
            check_name(msg.name, "name")
            self._installer = self._host.cache.begin_install(target, msg.name)
            await self._installer.start()
        except (EnvInstallError, OSError) as exc:
            await self.fail(str(exc))
            return False
        self._host.slots.start_install(self._client.client_id)
        self._log.info("env_transfer_started", env=self.key)
        return True

    async def chunk(self, data: bytes) -> bool:
        """Pass one piece of the tarball on; False after a failure."""
        if self._installer is None:
            return False
        try:
            await self._installer.feed(data)
        except EnvInstallError as exc:
            await self.fail(str(exc))
            return False
        return True

    async def finish(self) -> bool:
        """END arrived: install, evict, re-announce; False after a failure."""
        installer = self._installer
        if installer is None:
            return False
        try:
            size = await installer.finish()
        except EnvInstallError as exc:
            await self.fail(str(exc))
            return False
        self._installer = None
        host = self._host
        host.slots.release(self._client.client_id)
        evicted = host.cache.evict(keep=self.key)
        self._log.info("env_installed", env=self.key, size=size, cache_size=host.cache.size,
                       evicted=evicted)  # fmt: skip
        host.reannounce()
        host.schedule()
        return True

    async def abort(self) -> None:
        """Stop the unpacker and remove its files (the client left)."""
        installer, self._installer = self._installer, None
        if installer is not None:
            await installer.abort()
            self._host.slots.release(self._client.client_id)

    async def fail(self, text: str) -> None:
        """Give up: clean up, tell the client, end the connection."""
        await self.abort()
        self._client.error_text(f"environment {self.key or '?'} not installed: {text}")
        await self._client.flush()
        self._client.close()
