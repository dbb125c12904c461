"""The opt-in HTTP endpoints: the scheduler's ``/metrics`` and web view, the daemon's ``/metrics``.

``facade`` declares what this package needs from the scheduler and the
daemon (structural Protocols; ``app`` passes the concrete ``ClusterControl``
or ``DaemonControl`` in), ``exposition`` and ``daemon_exposition`` render
their metrics with ``prometheus_client``, ``live`` turns
the cluster observer's calls into Server-Sent Events, and ``server`` is the
aiohttp application with its connection limits.  The page itself is
``static/`` (no build step, nothing loaded from the internet).  This package
must not import ``iceserv.scheduler``, ``iceserv.daemon``, ``config`` or ``app``.
"""

from __future__ import annotations

from iceserv.web.daemon_exposition import make_daemon_registry
from iceserv.web.server import HttpEndpoint, serve_http

__all__ = ["HttpEndpoint", "make_daemon_registry", "serve_http"]
