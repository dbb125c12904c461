"""The scheduler's telnet text interface (TCP scheduler port + 1, reference §6).

``commands`` parses input lines and renders the answers (pure); ``server`` is
the asyncio line server around it; ``facade`` declares the
``SchedulerControl`` protocol the scheduler must satisfy.  This package never
imports ``iceserv.scheduler``: ``app/`` passes the control object in.
"""

from __future__ import annotations

from iceserv.telnet.commands import (
    MUTATING,
    Command,
    Reply,
    TelnetControl,
    greeting,
    parse,
    run_command,
)
from iceserv.telnet.facade import SchedulerControl, TelnetHost, TelnetJob
from iceserv.telnet.server import TelnetServer, serve_telnet

__all__ = [
    "MUTATING",
    "Command",
    "Reply",
    "SchedulerControl",
    "TelnetControl",
    "TelnetHost",
    "TelnetJob",
    "TelnetServer",
    "greeting",
    "parse",
    "run_command",
    "serve_telnet",
]
