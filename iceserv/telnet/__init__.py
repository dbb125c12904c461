"""The scheduler's telnet text interface (TCP scheduler port + 1, reference §6).

``commands`` parses input lines and renders the answers (pure); ``server`` is
the asyncio line server around it; ``facade`` declares the
``SchedulerControl`` protocol the scheduler must satisfy.  This package never
imports ``iceserv.scheduler``: ``app/`` passes the control object in.
"""

from __future__ import annotations

from iceserv.telnet.commands import Command, Reply, greeting, parse, run_command
from iceserv.telnet.facade import SchedulerControl, TelnetHost, TelnetJob
from iceserv.telnet.server import TelnetServer, serve_telnet

__all__ = [
    "Command",
    "Reply",
    "SchedulerControl",
    "TelnetHost",
    "TelnetJob",
    "TelnetServer",
    "greeting",
    "parse",
    "run_command",
    "serve_telnet",
]
