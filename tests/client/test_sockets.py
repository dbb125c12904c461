"""connect_tcp: the client's connection to a compile server, on real loopback sockets."""

from __future__ import annotations

import socket

import pytest

from iceserv.client.env import ClientEnv
from iceserv.client.sockets import connect_tcp, endpoint_name, find_local_daemon
from iceserv.protocol.endpoint import iceserv_endpoint


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


class TestMarkedConnect:
    """Our client reaches the daemon through its iceserv-only endpoint when there is one."""

    def _listen(self, address: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address)
        sock.listen(1)
        return sock

    def _peer_of(self, address: str) -> tuple[object, bool]:
        found = find_local_daemon(ClientEnv.from_mapping({"ICECC_TEST_SOCKET": address}))
        assert found is not None
        sock, marked = found
        try:
            return sock.getpeername(), marked
        finally:
            sock.close()

    def test_endpoint_first_then_the_socket(self, tmp_path):
        path = str(tmp_path / "d.sock")
        with self._listen(path):
            assert self._peer_of(path) == (path, False)  # no endpoint: a 1.4 daemon
            with self._listen(endpoint_name(path)):
                assert self._peer_of(path) == (endpoint_name(path).encode(), True)

    def test_the_name_is_the_protocols(self):
        for address in ("/run/icecc/iceccd.socket", "tcp:10245", "rel/x.sock"):
            assert endpoint_name(address) == iceserv_endpoint(address)
