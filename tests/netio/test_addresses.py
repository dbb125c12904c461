"""Family-neutral addresses and dual-stack listeners, on real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from iceserv.netio import (
    WILDCARD,
    Family,
    Listener,
    bind_listeners,
    host_port,
    in_networks,
    is_ipv6,
    is_loopback,
    is_own_host,
    socket_families,
    unmapped,
)


def _close(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def _connects(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect((host, port))
        except OSError:
            return False
    return True


class TestOwnHost:
    def test_loopback_is_always_this_host(self):
        """127.x, ::1 and mapped 127.x are this host even with no address list."""
        for address in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
            assert is_own_host(address, ())

    def test_own_addresses_in_any_spelling(self):
        """A listed address matches mapped, zoned and differently written forms."""
        own = ("10.0.0.5", "fd00::2", "fe80::3")
        for address in ("10.0.0.5", "::ffff:10.0.0.5", "fd00:0::2", "fe80::3%eth0"):
            assert is_own_host(address, own)

    def test_others_and_garbage_are_not(self):
        """Another address, a name or junk is never this host."""
        own = ("10.0.0.5", "fd00::2")
        for address in ("10.0.0.6", "fd00::3", "localhost", "", "10.0.0.5/32", "::ffff:10.0.0.6"):
            assert not is_own_host(address, own)


class TestInNetworks:
    def test_cidr_of_both_families(self):
        """IPv4 and IPv6 networks and single addresses; mapped IPv4 counts as IPv4."""
        nets = ("10.0.0.0/8", "fd00::/64", "192.0.2.7")
        for address in ("10.200.1.1", "::ffff:10.0.0.1", "fd00::99", "fd00::1%eth0", "192.0.2.7"):
            assert in_networks(address, nets)
        for address in ("11.0.0.1", "fd01::1", "192.0.2.8", "::1", "junk"):
            assert not in_networks(address, nets)

    def test_a_bad_network_matches_nothing(self):
        """An unparsable entry is skipped, never an error."""
        assert not in_networks("10.0.0.1", ("not-a-net",))
        assert in_networks("10.0.0.1", ("not-a-net", "10.0.0.0/8"))


class TestPrinting:
    def test_host_port_brackets_ipv6_only(self):
        """IPv6 literals print as [v6]:port, IPv4 and names as host:port."""
        assert host_port("fd00::1", 8765) == "[fd00::1]:8765"
        assert host_port("fe80::1%eth0", 1) == "[fe80::1%eth0]:1"
        assert host_port("10.0.0.1", 8765) == "10.0.0.1:8765"
        assert host_port("sched.lab", 8765) == "sched.lab:8765"

    def test_unmapped(self):
        """An IPv4-mapped peer becomes plain IPv4; everything else is kept."""
        assert unmapped("::ffff:10.1.2.3") == "10.1.2.3"
        assert unmapped("::FFFF:127.0.0.1") == "127.0.0.1"
        assert unmapped("::1") == "::1"
        assert unmapped("fd00::ffff:1") == "fd00::ffff:1"
        assert unmapped("10.1.2.3") == "10.1.2.3"
        assert unmapped("::ffff:not-an-ip") == "::ffff:not-an-ip"
        assert unmapped("") == ""

    def test_is_ipv6_and_loopback(self):
        """Only literals count as IPv6; loopback covers 127/8, ::1 and mapped 127/8."""
        assert is_ipv6("fd00::1")
        assert is_ipv6("fe80::1%eth0")
        assert not is_ipv6("10.0.0.1")
        assert not is_ipv6("sched.lab")
        assert not is_ipv6("a:b")  # not an address
        assert is_loopback("127.0.0.2")
        assert is_loopback("::1")
        assert is_loopback("::ffff:127.0.0.1")
        assert not is_loopback("fd00::1")
        assert not is_loopback("localhost")

    def test_socket_families(self):
        """The family setting maps to getaddrinfo's family argument."""
        assert socket_families("any") == socket.AF_UNSPEC
        assert socket_families(Family.IPV4) == socket.AF_INET
        assert socket_families("ipv6") == socket.AF_INET6
        with pytest.raises(ValueError, match="ipx"):
            socket_families("ipx")


class TestBindListeners:
    def test_wildcard_any_is_one_dual_stack_socket(self):
        """family=any binds one :: socket that IPv4 and IPv6 clients both reach."""
        socks = bind_listeners([WILDCARD], 0, family=Family.ANY)
        try:
            assert len(socks) == 1
            sock = socks[0]
            assert sock.family == socket.AF_INET6
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
            port = sock.getsockname()[1]
            assert _connects(socket.AF_INET, "127.0.0.1", port)
            assert _connects(socket.AF_INET6, "::1", port)
        finally:
            _close(socks)

    def test_wildcard_ipv4_only(self):
        """family=ipv4 binds 0.0.0.0 only: ::1 is refused."""
        socks = bind_listeners([WILDCARD], 0, family="ipv4")
        try:
            assert [s.family for s in socks] == [socket.AF_INET]
            port = socks[0].getsockname()[1]
            assert _connects(socket.AF_INET, "127.0.0.1", port)
            assert not _connects(socket.AF_INET6, "::1", port)
        finally:
            _close(socks)

    def test_wildcard_ipv6_only(self):
        """family=ipv6 binds :: with IPV6_V6ONLY: 127.0.0.1 is refused."""
        socks = bind_listeners([WILDCARD], 0, family="ipv6")
        try:
            assert [s.family for s in socks] == [socket.AF_INET6]
            assert socks[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            port = socks[0].getsockname()[1]
            assert _connects(socket.AF_INET6, "::1", port)
            assert not _connects(socket.AF_INET, "127.0.0.1", port)
        finally:
            _close(socks)

    def test_literals_share_the_first_port(self):
        """Several literals (an interface's two families) listen on one port."""
        socks = bind_listeners(["127.0.0.1", "::1"], 0)
        try:
            ports = {s.getsockname()[1] for s in socks}
            assert len(ports) == 1
            (port,) = ports
            assert _connects(socket.AF_INET, "127.0.0.1", port)
            assert _connects(socket.AF_INET6, "::1", port)
        finally:
            _close(socks)

    def test_family_filters_literals(self):
        """Literals of a family the setting excludes are skipped."""
        socks = bind_listeners(["127.0.0.1", "::1"], 0, family="ipv6")
        try:
            assert [s.getsockname()[0] for s in socks] == ["::1"]
        finally:
            _close(socks)

    def test_nothing_left_is_an_error(self):
        """A family that leaves no address to bind is an OSError, not a silent no-op."""
        with pytest.raises(OSError, match="no address of family ipv6"):
            bind_listeners(["127.0.0.1"], 0, family="ipv6")

    def test_a_failing_address_closes_the_others(self):
        """When one address cannot be bound, the sockets already bound are closed."""
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
            taken.bind(("::1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(OSError):
                bind_listeners(["127.0.0.1", "::1"], port)
            # 127.0.0.1 on that port was released again.
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", port))


class TestListenerPeers:
    def test_ipv4_peer_on_dual_stack_socket_is_plain_ipv4(self):
        """The accept loop hands on 127.0.0.1 for an IPv4 peer, not ::ffff:127.0.0.1."""

        async def scenario() -> list[str]:
            accepted: asyncio.Queue[str] = asyncio.Queue()

            def on_accept(conn: socket.socket, address: tuple[str, int]) -> None:
                conn.close()
                accepted.put_nowait(address[0])

            (sock,) = bind_listeners([WILDCARD], 0)
            listener = Listener(sock, on_accept, name="test")
            listener.start()
            port = listener.address[1]
            seen: list[str] = []
            try:
                loop = asyncio.get_running_loop()
                for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                    client = socket.socket(family, socket.SOCK_STREAM)
                    client.setblocking(False)  # noqa: FBT003 - socket API
                    with contextlib.closing(client):
                        await loop.sock_connect(client, (host, port))
                        async with asyncio.timeout(10):
                            seen.append(await accepted.get())
            finally:
                listener.close()
            return seen

        assert asyncio.run(scenario()) == ["127.0.0.1", "::1"]
