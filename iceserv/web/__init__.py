"""The scheduler's opt-in HTTP endpoint: Prometheus ``/metrics`` and a live web view at ``/``.

``facade`` declares what this package needs from the scheduler (structural
Protocols; ``app`` passes the concrete ``ClusterControl`` in),
``exposition`` renders the metrics with ``prometheus_client``, ``live`` turns
the cluster observer's calls into Server-Sent Events, and ``server`` is the
aiohttp application with its connection limits.  The page itself is
``static/`` (no build step, nothing loaded from the internet).  This package
must not import ``iceserv.scheduler``, ``config`` or ``app``.
"""

from __future__ import annotations

from iceserv.web.server import HttpEndpoint, serve_http

__all__ = ["HttpEndpoint", "serve_http"]
