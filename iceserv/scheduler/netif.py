"""Transitional alias: the interface queries now live in :mod:`iceserv.hostfacts`.

Only ``iceserv/app/daemon.py`` still imports them from here; it belongs to
issue 12's daemon rewrite, which switches it to ``iceserv.hostfacts``.  Then
this module is deleted.  New code imports :mod:`iceserv.hostfacts`.
"""

from __future__ import annotations

from iceserv.hostfacts import broadcast_addresses, interface_address

__all__ = ["broadcast_addresses", "interface_address"]
