"""Telnet control and monitors under ``auth = require`` (issue 14 item 5), on a namespace bed.

Three namespace hosts on one bridge, each with an IPv4 and an IPv6 address:
h1 runs our keyed scheduler (``--auth require``, ``--monitors`` naming h2's
IPv4 address and h2's IPv6 network) and one keyed daemon, so monitors have a
host to show.  What is checked is what users see: the bytes a telnet session
gets (from h1 itself over loopback, over its own IPv4 and IPv6 addresses,
and from h2 over both families), the real ``icecream-sundae``'s screen on an
allowed host (h2, and h1 itself) and a refused one (h3), and the scheduler's
JSON log lines.  Under ``prefer`` the same refused host's sundae is served.
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import textwrap
from typing import TYPE_CHECKING, Final

import pytest
from testbed import NetnsBed, OurDaemon, OurScheduler, RealSundae, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from testbed.netns import NetnsHost

pytestmark = [pytest.mark.live, pytest.mark.netns]

_PORT: Final = 8765
_LOGIN: Final = 60.0
#: A telnet client run inside a namespace: greeting, then each argv line's answer, then quit.
_TELNET: Final = textwrap.dedent("""
    import socket, sys
    host, port, *lines = sys.argv[1:]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        got = b""
        def until(marker):
            global got
            while marker not in got:
                data = sock.recv(4096)
                if not data:
                    raise SystemExit("closed early: %r" % got)
                got += data
            head, _, rest = got.partition(marker)
            got = rest
            return head + marker
        until(b"quit.\\n")
        for line in lines:
            sock.sendall(line.encode() + b"\\n")
            sys.stdout.write(until(b"200 done\\n").decode() + "\\x00")
        sock.sendall(b"quit\\n")
        until(b"200 Good Bye!\\n")
""")


def _telnet(host: NetnsHost, address: str, *lines: str, port: int = _PORT) -> list[str]:
    """Each of *lines*' answers (through ``200 done``) from the telnet port at *address*.

    *port* is the scheduler's; telnet is on the next one.
    """
    out = host.python(_TELNET, address, str(port + 1), *lines, capture_output=True).stdout
    return out.decode().split("\x00")[:-1]


def _key(path: Path) -> Path:
    path.write_bytes(secrets.token_bytes(48))
    path.chmod(0o600)
    return path


def _v6(bed: NetnsBed, host: NetnsHost) -> str:
    """The ULA we give *host*: fdXX:: + the last byte of its IPv4 address."""
    return f"fd{os.getpid() % 256:02x}:{bed.subnet.split('.')[2]}::{host.ip.rsplit('.', 1)[1]}"


class _Bed:
    """The namespace bed and the require cluster on h1."""

    def __init__(self, stack: contextlib.ExitStack, key: Path) -> None:
        self.bed = stack.enter_context(NetnsBed(3))
        self.h1, self.h2, self.h3 = self.bed
        for host in self.bed:
            host.add_address(_v6(self.bed, host), 64)
        self.v6 = {host.label: _v6(self.bed, host) for host in self.bed}
        self.netname = f"CTL{os.getpid()}"
        self.key = key
        # h2's addresses of both families as CIDR; h3 shares h2's /24 and /64 but is not named.
        monitors = f"{self.h2.ip}/32, {self.v6['h2']}/128"
        self.scheduler = OurScheduler(
            host=self.h1, port=_PORT, loopback_only=False, netname=self.netname,
            extra_args=["--key-file", str(key), "--auth", "require", "--monitors", monitors],
        ).start()  # fmt: skip
        stack.callback(self.scheduler.stop)
        self.daemon = OurDaemon(
            "ctlnode", f"{self.h1.ip}:{_PORT}", host=self.h1, max_jobs=1, port=10245,
            netname=self.netname, native_compilers="",
            extra_args=["--key-file", str(key), "--auth", "require"],
        ).start()  # fmt: skip
        stack.callback(self.daemon.stop)
        wait_for(
            lambda: any(
                e["nodename"] == "ctlnode" for e in self.scheduler.events("daemon_logged_in")
            ),
            _LOGIN, "the keyed daemon's login", context=self.scheduler.log_tail,
        )  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Bed]:
    """One bed for every test here (a bed and a keyed daemon take seconds to start)."""
    key = _key(tmp_path_factory.mktemp("ctlkey") / "network.key")
    with contextlib.ExitStack() as stack:
        yield _Bed(stack, key)


def _refusals(bed: _Bed) -> list[dict[str, object]]:
    return bed.scheduler.events("telnet_command_refused")


class TestTelnetUnderRequire:
    def test_changing_commands_refused_from_another_host_in_both_families(self, cluster):
        """From h2 (IPv4 and IPv6) blockcs/unblockcs/removecs get one 403 line; nothing changes."""
        before = len(_refusals(cluster))
        for address in (cluster.h1.ip, cluster.v6["h1"]):
            answers = _telnet(cluster.h2, address, "blockcs ctlnode", "unblockcs ctlnode",
                              "removecs ctlnode", "listblocks", "listcs")  # fmt: skip
            refusal = "403 {} is allowed only from the scheduler's host.\n200 done\n"
            assert answers[:3] == [refusal.format(n) for n in ("blockcs", "unblockcs", "removecs")]
            assert answers[3] == "200 done\n"  # nothing was blocked
            assert answers[4].startswith(" ctlnode (")  # the daemon is still listed, 1.4's line
        refused = cluster.scheduler.wait_events("telnet_command_refused", before + 6)[before:]
        assert [e["command"] for e in refused] == ["blockcs", "unblockcs", "removecs"] * 2
        assert {e["policy"] for e in refused} == {"local"}
        peers = {str(e["peer"][0]) for e in refused}
        assert peers <= {cluster.h2.ip, f"::ffff:{cluster.h2.ip}", cluster.v6["h2"]}
        assert any(cluster.v6["h2"] == p for p in peers)
        assert any(cluster.h2.ip in p for p in peers)

    def test_changing_commands_accepted_from_the_schedulers_own_host(self, cluster):
        """From h1 itself, over loopback and over its own IPv4 and IPv6 addresses, they run."""
        before = len(_refusals(cluster))
        for address in ("127.0.0.1", "::1", cluster.h1.ip, cluster.v6["h1"]):
            answers = _telnet(cluster.h1, address, "blockcs nosuchhost", "listblocks",
                              "unblockcs nosuchhost", "listblocks")  # fmt: skip
            assert answers == ["200 done\n", "   nosuchhost\n200 done\n", "200 done\n",
                               "200 done\n"], address  # fmt: skip
        assert len(_refusals(cluster)) == before

    def test_read_only_commands_answer_alike_from_every_host(self, cluster):
        """listcs, listjobs, listblocks, help and an unknown word: same bytes on h1 and h2."""
        lines = ("listcs", "listjobs", "listblocks", "help", "crashme")
        here = _telnet(cluster.h1, cluster.h1.ip, *lines)
        there = _telnet(cluster.h2, cluster.h1.ip, *lines)
        assert here == there
        assert here[4] == "Invalid command 'crashme'\n200 done\n"  # as iceserv under off


class TestMonitorsUnderRequire:
    def test_real_sundae_from_an_allowed_host_shows_the_cluster(self, cluster):
        """icecream-sundae on h2 (named in --monitors) and on h1 (this host) shows the daemon."""
        for host in (cluster.h2, cluster.h1):
            with RealSundae(host=host, scheduler=f"{cluster.h1.ip}:{_PORT}") as sundae:
                sundae.wait_for_text("ctlnode", timeout=30)
            assert any(str(e["peer"]).endswith(host.ip)
                       for e in cluster.scheduler.events("monitor_logged_in"))  # fmt: skip
        assert not [e for e in cluster.scheduler.events("monitor_refused")
                    if e["peer"] in (cluster.h1.ip, cluster.h2.ip)]  # fmt: skip

    def test_real_sundae_from_another_host_is_refused_with_one_line(self, cluster):
        """icecream-sundae on h3 is closed after its MON_LOGIN: one monitor_refused line each."""
        with RealSundae(host=cluster.h3, scheduler=f"{cluster.h1.ip}:{_PORT}") as sundae:
            (refused,) = cluster.scheduler.wait_events("monitor_refused", 1, timeout=30)[:1]
            assert str(refused["peer"]).endswith(cluster.h3.ip)
            assert refused["auth"] == "require"
            screen = sundae.screen_text()
        assert "ctlnode" not in screen  # it never got the cluster's state
        assert not [e for e in cluster.scheduler.events("monitor_logged_in")
                    if str(e["peer"]).endswith(cluster.h3.ip)]  # fmt: skip

        # One line per refused connection (sundae retries): as many as such closings.
        def closings() -> int:
            return sum(e.get("reason") == "monitor refused"
                       for e in cluster.scheduler.events("connection_closed"))  # fmt: skip

        wait_for(lambda: closings() == len(cluster.scheduler.events("monitor_refused")), 10,
                 "one monitor_refused line per closed monitor")  # fmt: skip


def test_under_prefer_every_monitor_is_served(cluster):
    """A prefer scheduler on h1 serves the sundae on h3 that require refused."""
    prefer = OurScheduler(
        host=cluster.h1, port=_PORT + 10, loopback_only=False, netname=cluster.netname + "P",
        extra_args=["--key-file", str(cluster.key), "--auth", "prefer",
                    "--monitors", f"{cluster.h2.ip}/32"],
    ).start()  # fmt: skip
    try:
        with RealSundae(host=cluster.h3, scheduler=f"{cluster.h1.ip}:{_PORT + 10}") as sundae:
            sundae.wait_for_text("Scheduler:", timeout=30)
            wait_for(lambda: prefer.events("monitor_logged_in"), 30, "the monitor's login")
        assert not prefer.events("monitor_refused")
        # Telnet under prefer keeps 1.4's behaviour: h3 may block and unblock.
        answers = _telnet(cluster.h3, cluster.h1.ip, "blockcs nosuchhost", "unblockcs nosuchhost",
                          port=_PORT + 10)  # fmt: skip
        assert answers == ["200 done\n", "200 done\n"]
    finally:
        assert prefer.stop() == 0


def test_keyless_iceserv_daemon_is_refused_and_never_listed(cluster):
    """Our daemon without a key (auth off), pointed at the require scheduler: one line per try."""
    before = len(cluster.scheduler.events("peer_refused"))
    keyless = OurDaemon(
        "ctlkeyless", f"{cluster.h1.ip}:{_PORT}", host=cluster.h2, max_jobs=1, port=10245,
        netname=cluster.netname, native_compilers="",
    ).start()  # fmt: skip
    try:
        refused = cluster.scheduler.wait_events("peer_refused", before + 1, timeout=30)[before:]
        assert str(refused[0]["peer"]).endswith(cluster.h2.ip)
        assert refused[0]["reason"].startswith("no proof of the network key")
        assert keyless.check_alive()
    finally:
        keyless.stop()
    assert "ctlkeyless" not in {e["nodename"] for e in cluster.scheduler.events("daemon_logged_in")}
    assert " ctlkeyless (" not in _telnet(cluster.h1, "127.0.0.1", "listcs")[0]
