"""A fake service manager's notify socket (sd_notify receiver) for the service tests.

Lives in its own module, not in a conftest.py: several test directories have
one, and ``from conftest import ...`` then finds whichever was loaded last.
"""

from __future__ import annotations

import socket
import struct
import time

_UCRED = struct.Struct("3i")


class FakeManager:
    """An ``AF_UNIX``/``SOCK_DGRAM`` socket standing in for systemd's notify socket.

    It receives with ``SO_PASSCRED`` so every datagram carries the sender's
    PID, as systemd checks it for ``NotifyAccess=main``.
    """

    def __init__(self, address: str, bind_to: str | bytes) -> None:
        self.address = address  # the NOTIFY_SOCKET value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(bind_to)
        self.received: list[tuple[int, str]] = []

    def receive(self, timeout: float = 5.0) -> tuple[int, str]:
        """Return ``(sender pid, datagram text)`` of the next datagram."""
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(_UCRED.size))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        item = (pid, data.decode())
        self.received.append(item)
        return item

    def messages(self, timeout: float = 5.0) -> list[str]:
        """Return every datagram that arrives until the socket is quiet for *timeout*."""
        out = []
        while True:
            try:
                out.append(self.receive(timeout)[1])
            except TimeoutError:
                return out

    def wait_for(self, predicate, timeout: float = 20.0) -> list[str]:
        """Receive until a datagram satisfies *predicate*; return all received on the way."""
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                _, text = self.receive(left)
            except TimeoutError:
                break
            seen.append(text)
            if predicate(text):
                return seen
        msg = f"no matching datagram within {timeout} s; got {seen!r}"
        raise AssertionError(msg)

    def close(self) -> None:
        self.sock.close()
