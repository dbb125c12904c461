"""Self-tests of the wrapper tests' fake daemon: what it records is what clients did."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from testbed.client_fakes import FakeDaemon

if TYPE_CHECKING:
    from pathlib import Path


def test_a_connection_queued_at_close_is_still_recorded(tmp_path: Path):
    """A client that connected and left just before close() is one empty connection.

    The client's connection sits in the listen queue ahead of close()'s wake-up
    connection; the acceptor must serve it, not take it for the wake-up.
    """
    for round_ in range(50):
        daemon = FakeDaemon(tmp_path / f"daemon{round_}.sock").start()
        assert daemon._acceptor is not None
        daemon._acceptor._stop.set()  # close() has begun: the race, made certain
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(daemon.path))
        daemon.close()
        assert daemon.messages() == [[]], round_
