"""connect_tcp: the client's connection to a compile server, on real loopback sockets."""

from __future__ import annotations

import socket

import pytest

from iceserv.client.sockets import connect_tcp


@pytest.fixture
def server():
    """A dual-stack listener on a free port (127.0.0.1 and ::1 both reach it)."""
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as sock:
        yield sock.getsockname()[1]


class TestConnectTcp:
    @pytest.mark.parametrize(
        ("host", "family"),
        [("127.0.0.1", socket.AF_INET), ("localhost", socket.AF_INET), ("::1", socket.AF_INET6)],
    )
    def test_ipv4_names_and_ipv6_literals(self, server, host, family):
        """Dotted IPv4, names (IPv4, as 1.4) and IPv6 literals from USE_CS all connect."""
        sock = connect_tcp(host, server, 5.0)
        assert sock is not None
        try:
            assert sock.family == family
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            sock.close()

    @pytest.mark.parametrize("host", ["::1:bad:zz", "no-such-host.invalid"])
    def test_unusable_address_is_none(self, server, host):
        """A malformed literal or an unknown name gives None, not an exception."""
        assert connect_tcp(host, server, 5.0) is None
