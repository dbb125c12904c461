"""The compile daemon ``iceccd``: slots, environments, compile jobs, scheduler link, shell.

``slots``, ``load`` and ``states`` are pure.  This package must not import
``scheduler``, ``config``, ``service``, ``telnet`` or ``app``.
"""

from __future__ import annotations

__all__: list[str] = []
