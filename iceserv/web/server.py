"""The HTTP endpoint: aiohttp serving ``/metrics``, the web view and its event stream.

This module owns :class:`HttpEndpoint` and :func:`serve_http`.  Routes:
``GET /`` (the page), ``/app.js`` and ``/style.css`` (its parts, read from
the package once), ``/metrics`` (Prometheus; one rendering, and its gzip
form when asked for, serves every scrape for :data:`METRICS_TTL` seconds or
longer, see :func:`reuse_time`), ``/events`` (Server-Sent
Events from :class:`~iceserv.web.live.LiveFeed`) and ``/api/cluster`` (the
snapshot the page starts from, as JSON).  aiohttp parses HTTP; unknown paths
get 404, other methods 405, oversized request lines or headers 400/431.
:meth:`HttpEndpoint.metrics_only` serves just ``/metrics`` from a given
registry (the daemon's), with the same bounds.

Bounds, so no client can make the scheduler hold unbounded descriptors or
memory: a connection must send a whole request within :data:`IDLE_TIMEOUT`
seconds of connecting or of its last response (aiohttp's keep-alive timer,
which also runs before the first request), at most
:data:`MAX_CONNECTIONS` connections are open at once (a new one closes the
oldest idle one; when all are busy it is closed at once), and every write
runs under :data:`WRITE_TIMEOUT`.  It must not touch the scheduler's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import socket
import time
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Final

import structlog
from aiohttp import web

from iceserv.web.exposition import CONTENT_TYPE, make_registry, render
from iceserv.web.live import LiveFeed, snapshot

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp.web_protocol import RequestHandler
    from prometheus_client import CollectorRegistry

    from iceserv.web.facade import SchedulerLike

__all__ = ["IDLE_TIMEOUT", "MAX_CONNECTIONS", "HttpEndpoint", "serve_http"]

log = structlog.get_logger()

#: Seconds a connection may take to send a request (and may stay idle between requests).
IDLE_TIMEOUT: Final = 10.0
#: Open connections at most.
MAX_CONNECTIONS: Final = 256
#: Seconds a write to a client may take.
WRITE_TIMEOUT: Final = 10.0
#: A rendered /metrics is reused for at least this long: a render costs ~5-10 µs per
#: series, so scrapes 10 times a second must not each pay it on the scheduler's loop.
METRICS_TTL: Final = 1.0
#: ... and for longer when rendering is slow (many hosts, a busy machine): long enough
#: that rendering takes at most this share of the loop's time, however often it is scraped.
RENDER_SHARE: Final = 0.01
#: ... but never longer than this (seconds).
METRICS_TTL_MAX: Final = 10.0
#: Seconds between keep-alive comments on an idle event stream.
HEARTBEAT: Final = 15.0
#: aiohttp's limits on the request line and each header, and the number of headers.
MAX_LINE: Final = 8190
MAX_HEADERS: Final = 64
_STATIC: Final = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def reuse_time(render_seconds: float) -> float:
    """Return how long a rendering that took *render_seconds* serves scrapes.

    :data:`METRICS_TTL` at least; longer when rendering is slow, so that it
    takes at most :data:`RENDER_SHARE` of the loop; :data:`METRICS_TTL_MAX` at most.
    """
    return min(METRICS_TTL_MAX, max(METRICS_TTL, render_seconds / RENDER_SHARE))


def accepts_gzip(accept_encoding: str) -> bool:
    """Return whether an ``Accept-Encoding`` header value allows gzip (RFC 9110 12.5.3)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip"):
            continue
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


@dataclass(slots=True)
class _Rendered:
    """One rendering of ``/metrics``: when (loop time), for how long, the text and its gzip."""

    at: float = float("-inf")
    ttl: float = 0.0
    body: bytes = b""
    zipped: bytes | None = None


def _read_static() -> dict[str, tuple[bytes, str]]:
    files = resources.files("iceserv.web").joinpath("static")
    return {
        path: (files.joinpath(name).read_bytes(), kind) for path, (name, kind) in _STATIC.items()
    }


class _Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, plus whether the client has sent anything.

    It passes every call on to aiohttp's handler and keeps itself in *table*
    (in connection order) from its creation until the connection is lost.
    """

    def __init__(self, handler: RequestHandler, table: dict[_Connection, None]) -> None:
        self._handler = handler
        self._table = table
        self.transport: asyncio.BaseTransport | None = None
        self.heard = False
        self._refused = False
        table[self] = None  # counted from now on, so a burst of accepts cannot overfill

    def closing(self) -> bool:
        """Return whether the connection is being closed."""
        return self.transport is not None and self.transport.is_closing()

    def silent(self) -> bool:
        """Return whether the client has sent nothing, not even bytes still unread."""
        if self.heard:
            return False
        if self.transport is None:
            return True  # accepted in this same burst: not even made yet
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return True
        try:
            with socket.socket(fileno=os.dup(sock.fileno())) as peek:
                self.heard = bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return True
        except OSError:
            return False
        return not self.heard

    def refuse(self) -> None:
        """Close the connection as soon as it is made."""
        self._refused = True

    def close(self) -> None:
        """Close the connection now (or as soon as it is made)."""
        self._refused = True
        self._handler.force_close()
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._handler.connection_made(transport)
        if self._refused:
            self._table.pop(self, None)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._table.pop(self, None)
        self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        self._handler.data_received(data)

    def eof_received(self) -> None:
        self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()


class HttpEndpoint:
    """The running HTTP endpoint of a scheduler; see the module docstring."""

    def __init__(  # noqa: PLR0913 - the scheduler's parts, or a registry alone
        self,
        control: SchedulerLike | None,
        *,
        version: str,
        clock: Callable[[], float] = time.time,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._control = control
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._clock = clock
        if registry is None:
            if control is None:
                msg = "an HTTP endpoint needs a scheduler or a registry"
                raise ValueError(msg)
            registry = make_registry(control, version=version)
        self._registry = registry
        self.feed = LiveFeed(control, clock=clock) if control is not None else None
        self._static = _read_static() if control is not None else {}
        self._busy: dict[object, int] = {}
        self._conns: dict[_Connection, None] = {}
        self._rendered = _Rendered()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] = ("", 0)

    @classmethod
    def metrics_only(
        cls,
        registry: CollectorRegistry,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> HttpEndpoint:
        """Return an endpoint that serves only ``/metrics`` from *registry* (the daemon's)."""
        return cls(
            None,
            version="",
            registry=registry,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
        )

    # --- life cycle -------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Listen on *host*:*port* (``[v6]`` without brackets; port 0 picks one)."""
        app = web.Application(middlewares=[self._track], client_max_size=1024)
        for path in self._static:
            app.router.add_get(path, self._static_file)
        app.router.add_get("/metrics", self._metrics)
        if self._control is not None:
            app.router.add_get("/events", self._events)
            app.router.add_get("/api/cluster", self._cluster)
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self._idle_timeout,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
            shutdown_timeout=1.0,
            handler_cancellation=True,
        )
        await self._runner.setup()
        factory = self._runner.server
        assert factory is not None  # noqa: S101 - setup() made it
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = await loop.create_server(
            lambda: self._admit(factory),
            host,
            port,
            family=family,
            reuse_address=True,
            backlog=128,
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        log.info("http_listening", address=self.address[0], port=self.address[1])

    def open_connections(self) -> int:
        """Return how many HTTP connections are open."""
        return len(self._conns)

    async def close(self) -> None:
        """Stop listening, end the event streams and close every connection."""
        if self.feed is not None:
            self.feed.close()
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await self._runner.cleanup()
        self._server = self._runner = None

    def _admit(self, factory: web.Server) -> asyncio.Protocol:
        """Make the protocol for a new connection; when full, close a connection to make room.

        The first to go is the oldest that never sent a byte, then the oldest
        idle one; when every connection is serving a request the new one is
        closed at once.  (A client that sent its request is never the one
        closed, so a flood of silent connections cannot push it out.)
        """
        if len(self._conns) >= self._max_connections:
            for closing in [c for c in self._conns if c.closing()]:
                self._conns.pop(closing, None)  # on its way out: its place is free
        if len(self._conns) >= self._max_connections:
            victim = next((c for c in self._conns if c.silent()), None)
            if victim is None:
                victim = next((c for c in self._conns if c.transport not in self._busy), None)
            if victim is not None:
                self._conns.pop(victim, None)
                victim.close()
        full = len(self._conns) >= self._max_connections
        conn = _Connection(factory(), self._conns)
        if full:
            conn.refuse()
        return conn

    # --- handlers ---------------------------------------------------------------------

    @web.middleware
    async def _track(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Mark the connection busy while a request runs (busy ones are never evicted)."""
        key = request.transport
        self._busy[key] = self._busy.get(key, 0) + 1
        try:
            response = await handler(request)
        finally:
            left = self._busy.pop(key) - 1
            if left:
                self._busy[key] = left
        response.headers.update(_SECURITY_HEADERS)
        return response

    async def _static_file(self, request: web.Request) -> web.Response:
        body, kind = self._static[request.path]
        return web.Response(body=body, content_type=kind, charset="utf-8")

    async def _metrics(self, request: web.Request) -> web.Response:
        rendered = self._rendered
        now = asyncio.get_running_loop().time()
        if now - rendered.at >= rendered.ttl:
            start = time.perf_counter()
            body = render(self._registry)
            ttl = reuse_time(time.perf_counter() - start)
            rendered = self._rendered = _Rendered(now, ttl, body)
        headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            if rendered.zipped is None:
                rendered.zipped = gzip.compress(rendered.body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=rendered.zipped, headers=headers)
        return web.Response(body=rendered.body, headers=headers)

    async def _cluster(self, _request: web.Request) -> web.Response:
        assert self._control is not None  # noqa: S101 - routed only with a scheduler
        return web.json_response(snapshot(self._control, self._clock()))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        assert self.feed is not None  # noqa: S101 - routed only with a scheduler
        subscriber = self.feed.subscribe()
        if subscriber is None:
            raise web.HTTPServiceUnavailable(text="too many event streams\n")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await response.prepare(request)
                await response.write(b"retry: 1000\n\n")
            while not subscriber.dropped.is_set():
                try:
                    async with asyncio.timeout(HEARTBEAT):
                        data = await subscriber.queue.get()
                except TimeoutError:
                    data = b": keep-alive\n\n"
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(data)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.feed.unsubscribe(subscriber)
        return response


async def serve_http(control: SchedulerLike, host: str, port: int, *, version: str) -> HttpEndpoint:
    """Start the HTTP endpoint for *control* on *host*:*port* and return it."""
    endpoint = HttpEndpoint(control, version=version)
    await endpoint.start(host, port)
    return endpoint
