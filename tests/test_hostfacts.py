"""The host facts every layer shares: platform name, 1.4's socket options, interfaces."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from iceserv.hostfacts import (
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    MANAGER_VARIABLES,
    USER_TIMEOUT_MS,
    broadcast_addresses,
    host_platform,
    interface_address,
    interface_addresses,
    local_addresses,
    multicast_sources,
    set_keepalive,
    without_manager_variables,
)


class TestHostPlatform:
    def test_linux_is_the_machine_name(self):
        """On Linux the platform is ``uname -m``, as 1.4's determine_platform."""
        assert host_platform() == os.uname().machine

    def test_darwin_and_others(self, monkeypatch):
        """Elsewhere it is <sysname>_<machine>; Darwin adds its major release; no spaces."""
        uname = os.uname_result(("Darwin", "mac", "23.4.0", "v", "arm 64"))
        monkeypatch.setattr(os, "uname", lambda: uname)
        assert host_platform() == "Darwin23_arm64"
        uname = os.uname_result(("FreeBSD", "bsd", "14.0", "v", "amd64"))
        monkeypatch.setattr(os, "uname", lambda: uname)
        assert host_platform() == "FreeBSD_amd64"


class TestKeepalive:
    def test_sets_1_4_options(self):
        """A TCP socket gets keepalive 27 s + 3 x 3 s and a 9 s user time-out."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            set_keepalive(sock)
            get = sock.getsockopt
            assert get(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert get(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE == 27
            assert get(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE_INTERVAL == 3
            assert get(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE_COUNT == 3
            assert get(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == USER_TIMEOUT_MS == 9000

    def test_extra_options_follow(self):
        """Extra (level, name, value) options are applied after 1.4's."""
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            set_keepalive(sock, (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1

    def test_leaves_none_and_unix_sockets_alone(self):
        """None and a Unix-domain socket are not touched (and nothing raises)."""
        set_keepalive(None)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            set_keepalive(sock)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0

    def test_refused_option_is_skipped(self):
        """An option the kernel refuses is skipped; the others are still set."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            set_keepalive(sock, (socket.IPPROTO_TCP, 0xDEAD, 1))
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


class TestManagerVariables:
    def test_children_never_see_them(self):
        """Every service-manager variable is removed; the rest is kept."""
        environ = dict.fromkeys(MANAGER_VARIABLES, "x") | {"PATH": "/bin", "HOME": "/h"}
        assert without_manager_variables(environ) == {"PATH": "/bin", "HOME": "/h"}
        assert {"NOTIFY_SOCKET", "LISTEN_FDS", "WATCHDOG_USEC"} <= MANAGER_VARIABLES


class TestInterfaces:
    def test_literal_is_returned(self):
        """An IPv4 literal is its own address."""
        assert interface_address("10.1.2.3") == "10.1.2.3"

    def test_loopback_interface(self):
        """The loopback interface has 127.0.0.1."""
        assert interface_address("lo") == "127.0.0.1"

    def test_unknown_interface_raises(self):
        """An interface that does not exist is an OSError."""
        with pytest.raises(OSError):
            interface_address("nosuchif0")

    def test_broadcasts_exclude_loopback(self):
        """Broadcast addresses are unique IPv4 addresses and never loopback's."""
        found = broadcast_addresses()
        assert len(found) == len(set(found))
        assert all(not a.startswith("127.") for a in found)
        for address in found:
            socket.inet_aton(address)


# /proc/net/if_inet6 rows: address, index, prefix length, scope, flags, name.
IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000002 02 40 20 80     eth0
fd000000000000000000000000000002 02 40 00 80     eth0
fe800000000000000000000000000003 03 40 20 80     wlan9
"""


class TestIpv6Addresses:
    def test_lo_has_both_families(self):
        """-i lo: 127.0.0.1 and ::1, IPv4 first; each family alone on request."""
        assert interface_addresses("lo") == ["127.0.0.1", "::1"]
        assert interface_addresses("lo", ipv4=False) == ["::1"]
        assert interface_addresses("lo", ipv6=False) == ["127.0.0.1"]

    def test_ipv4_literal_kept(self):
        """1.4 accepts an IPv4 address for -i: it is its own address list."""
        assert interface_addresses("10.1.2.3") == ["10.1.2.3"]

    def test_unknown_interface_is_enodev(self):
        """An unknown interface is ENODEV, which main reports with its strerror."""
        with pytest.raises(OSError, match="No such device") as info:
            interface_addresses("nosuchif0")
        assert info.value.strerror

    def test_multicast_sources_prefer_routable_addresses(self, tmp_path):
        """One source per non-loopback interface: its routable address, else link-local."""
        table = tmp_path / "if_inet6"
        table.write_text(IF_INET6)
        assert multicast_sources(if_inet6=str(table)) == [
            ("eth0", "fd00::2"),
            ("wlan9", "fe80::3%wlan9"),
        ]
        assert multicast_sources(if_inet6=str(tmp_path / "absent")) == []


# /proc/net/fib_trie excerpt: a secondary address, a broadcast and a network line.
FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.0.0.0/24 2 0 2
        |-- 10.0.0.0
           /24 link UNICAST
        |-- 10.0.0.5
           /32 host LOCAL
        |-- 10.0.0.9
           /32 host LOCAL
        |-- 10.0.0.255
           /32 link BROADCAST
"""


class TestLocalAddresses:
    def test_every_local_ipv4_and_every_ipv6_address(self, tmp_path):
        """IPv4 from the LOCAL routes (secondary ones too), IPv6 from if_inet6 without zones."""
        (tmp_path / "fib").write_text(FIB_TRIE)
        (tmp_path / "inet6").write_text(IF_INET6)
        found = local_addresses(fib_trie=str(tmp_path / "fib"), if_inet6=str(tmp_path / "inet6"))
        assert found == {"10.0.0.5", "10.0.0.9", "::1", "fe80::2", "fd00::2", "fe80::3"}

    def test_without_the_files_the_interfaces_primary_addresses(self, tmp_path):
        """Without fib_trie each interface's IPv4 address (127.0.0.1 at least) is used."""
        absent = str(tmp_path / "absent")
        assert "127.0.0.1" in local_addresses(fib_trie=absent, if_inet6=absent)

    def test_this_machine(self):
        """The real kernel lists loopback in both families."""
        assert {"127.0.0.1", "::1"} <= local_addresses()


class TestImportCost:
    def test_no_heavy_modules(self):
        """Importing it loads neither socket nor typing: the wrapper imports it on every call."""
        probe = "import sys, iceserv.hostfacts; print(' '.join(sorted(sys.modules)))"
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
        ).stdout.split()
        assert not {"socket", "typing", "fcntl", "ipaddress", "struct"} & set(out)
