"""Typed dispatch tables: a message reaches the handler of its class, or is the peer's fault."""

from __future__ import annotations

import pytest

from iceserv.errors import RemoteProtocolError
from iceserv.protocol import End, Login, MsgType, Ping, Stats
from iceserv.protocol.dispatch import Dispatch


def _login(msg: Login, conn_id: int) -> str:
    return f"login {msg.nodename} on {conn_id}"


def _ping(_msg: Ping, conn_id: int) -> str:
    return f"ping on {conn_id}"


class TestDispatch:
    def setup_method(self):
        self.table = Dispatch[[int], str]("test peer").on(Login, _login).on(Ping, _ping)

    def test_routes_by_class(self):
        """Each message goes to its own class's handler with the extra arguments."""
        assert self.table(Login(nodename="h1"), 7) == "login h1 on 7"
        assert self.table(Ping(), 3) == "ping on 3"

    def test_unexpected_message_is_the_peers_fault(self):
        """A class without a handler raises RemoteProtocolError naming the type and the table."""
        with pytest.raises(RemoteProtocolError, match="unexpected STATS from a test peer") as err:
            self.table(Stats(), 1)
        assert err.value.msg_type == MsgType.STATS

    def test_membership(self):
        """`cls in table` says whether a class has a handler."""
        assert Login in self.table
        assert End not in self.table

    def test_later_entry_replaces(self):
        """Registering a class again replaces its handler."""
        self.table.on(Ping, lambda _msg, conn_id: f"pong {conn_id}")
        assert self.table(Ping(), 2) == "pong 2"
