"""The name of a daemon's iceserv-only local endpoint, derived from its ordinary address.

A client may send iceserv's own message types (``SLOTS_QUERY``) to its local
daemon only when that daemon is iceserv: 1.4 closes the channel on a type it
does not know and logs a protocol error.  The 1.4 handshake has no spare bit
to say so (a version word above 43 would break negotiation with a newer
icecream), and every 1.4 request a client could probe with has side effects.
So an iceserv daemon also listens on a Linux *abstract* Unix socket whose
name this module derives from the address the client found the daemon at
(its Unix socket path, or ``tcp:<port>`` for 127.0.0.1).  A client that can
connect there is talking to iceserv; a 1.4 daemon never hears of it.

Abstract names live in the network namespace, need no file and vanish with
the listener.  Pure: no sockets here.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["ENDPOINT_PREFIX", "iceserv_endpoint", "tcp_address"]

#: The abstract socket name: NUL, this prefix, a digest of the daemon's address.
ENDPOINT_PREFIX: Final = "iceserv-daemon/"
# FNV-1a, 64 bits: no import (hashlib costs the client milliseconds); not a security boundary.
_FNV_OFFSET: Final = 0xCBF29CE484222325
_FNV_PRIME: Final = 0x100000001B3
_MASK: Final = (1 << 64) - 1


def tcp_address(port: int) -> str:
    """Return the address string of a daemon reached at 127.0.0.1:*port*."""
    return f"tcp:{port}"


def iceserv_endpoint(address: str) -> str:
    """Return the abstract socket name (leading NUL) for a daemon found at *address*.

    *address* is a Unix socket path (made absolute, not resolved: the client
    and the daemon spell it alike, e.g. ``ICECC_TEST_SOCKET``) or
    :func:`tcp_address`.  A digest keeps the name within ``sun_path``'s 108 bytes.
    ``iceserv.client.slotcount`` computes the same name without importing
    the protocol (its test checks that they agree).
    """
    key = address if address.startswith("tcp:") else os.path.abspath(address)  # noqa: PTH100 - no symlinks resolved
    digest = _FNV_OFFSET
    for byte in key.encode("utf-8", "surrogateescape"):
        digest = ((digest ^ byte) * _FNV_PRIME) & _MASK
    return f"\0{ENDPOINT_PREFIX}{digest:016x}"
