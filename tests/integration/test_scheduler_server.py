"""SchedulerServer in-process on 127.0.0.1: discovery layouts, time-outs, monitors, probes.

The server runs on its own event loop in a thread; the tests play daemons and
monitors with blocking sockets (``BlockingChannel``).  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest
from testbed import wait_for

from iceserv.protocol import (
    EnvEntry,
    GetCS,
    Login,
    MonGetCS,
    MonLogin,
    MonStats,
    Stats,
    UseCS,
    encode,
)
from iceserv.protocol.discovery import SchedulerInfo, decode_reply, encode_announcements
from iceserv.scheduler import SchedulerServer, SchedulerServerSettings
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class _WallClock:
    def now(self) -> float:
        return time.time()


class Running:
    """A SchedulerServer on a private event loop in a thread."""

    def __init__(self, **settings: object) -> None:
        options: dict[str, object] = {"address": "127.0.0.1", "port": 0, "netname": "TESTNET",
                                      "handshake_timeout": 0.5} | settings  # fmt: skip
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        rng = random.Random(1)  # noqa: S311 - seeded on purpose
        self.server = self.call(self._make(SchedulerServerSettings(**options), rng))  # type: ignore[arg-type]
        self.call(self.server.start())

    @staticmethod
    async def _make(settings: SchedulerServerSettings, rng: random.Random) -> SchedulerServer:
        return SchedulerServer(settings, clock=_WallClock(), rng=rng)

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    @property
    def port(self) -> int:
        return self.server.port

    def connect(self) -> BlockingChannel:
        return BlockingChannel.connect("127.0.0.1", self.port, timeout=5.0)

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def running() -> Iterator[Running]:
    server = Running()
    try:
        yield server
    finally:
        server.close()


def _login(running: Running, name: str, **fields: object) -> BlockingChannel:
    channel = running.connect()
    values: dict[str, object] = {"port": 1, "max_kids": 2, "nodename": name,
                                 "host_platform": "x86_64", "chroot_possible": True}  # fmt: skip
    values.update(fields)
    channel.send(Login(**values))  # type: ignore[arg-type]
    channel.receive()  # CS_CONF
    return channel


def _closed(channel: BlockingChannel, timeout: float = 5.0) -> bool:
    channel.sock.settimeout(timeout)
    try:
        return channel.sock.recv(65536) == b""
    except ConnectionResetError:
        return True


class TestDiscovery:
    @pytest.mark.parametrize(("version", "size"), [(43, 268), (38, 268), (37, 268), (35, 32),
                                                   (33, 32), (32, 16), (21, 16)])  # fmt: skip
    def test_every_reply_layout(self, running, version, size):
        """A request of version v gets the layout a v requester accepts (reference 4.3)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(bytes([version]), ("127.0.0.1", running.port))
            reply, source = sock.recvfrom(1024)
        assert source == ("127.0.0.1", running.port)
        assert len(reply) == size
        info = decode_reply(reply, own_version=version)
        assert info is not None
        assert info.netname == "TESTNET"
        if version >= 33:
            assert info == SchedulerInfo(43, running.server.core.config.start_time, "TESTNET")

    def test_too_old_requests_unanswered(self, running):
        """Requests below protocol 21 get no answer."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.5)
            sock.sendto(bytes([20]), ("127.0.0.1", running.port))
            with pytest.raises(TimeoutError):
                sock.recvfrom(1024)

    def test_better_scheduler_takes_our_daemons(self, running):
        """An ICF announcement of an older scheduler of our net closes our daemons."""
        daemon = _login(running, "d1")
        start = running.server.core.config.start_time - 100
        _, icf = encode_announcements(SchedulerInfo(43, start, "TESTNET"))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(icf, ("127.0.0.1", running.port))
        assert _closed(daemon)


class TestBothFamilies:
    """The scheduler port and discovery on IPv6 and IPv4 (issue 15)."""

    def test_loopback_pair(self):
        """-i lo's two addresses: logins, monitors, discovery on both; IPv6 peers stay IPv6."""
        running = Running(addresses=("127.0.0.1", "::1"))
        try:
            port = running.port
            assert running.server.bound == [f"127.0.0.1:{port}", f"[::1]:{port}"]
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                with socket.socket(family, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(5)
                    sock.sendto(bytes([43]), (host, port))
                    reply, source = sock.recvfrom(1024)
                assert source[:2] == (host, port)
                assert decode_reply(reply, own_version=43) is not None
            six = BlockingChannel.connect("::1", port, timeout=5.0)
            values = {"port": 1, "max_kids": 2, "nodename": "six", "host_platform": "x86_64",
                      "chroot_possible": True}  # fmt: skip
            six.send(Login(**values))  # type: ignore[arg-type]
            six.receive()  # CS_CONF
            wait_for(lambda: running.server.core.state.hosts, 5, "the login")
            (host,) = running.server.core.state.hosts.values()
            assert host.ip == "::1"
            monitor = BlockingChannel.connect("::1", port, timeout=5.0)  # a monitor over IPv6
            monitor.send(MonLogin())
            stats = monitor.receive()
            assert isinstance(stats, MonStats)
            assert "IP:::1\n" in stats.statmsg
            monitor.close()
            six.close()
        finally:
            running.close()

    @pytest.mark.parametrize("routable", [True, False])
    def test_election_prefers_dual_stack(self, routable):
        """A dual-stack scheduler yields to an older one of its version only if it is dual too.

        Without a routable IPv6 address (link-local only) 1.4's rule applies unchanged.
        """
        running = Running(addresses=("127.0.0.1", "::1"), routable_ipv6=routable)
        try:
            daemon = _login(running, "d1")
            start = running.server.core.config.start_time - 100
            _, icf = encode_announcements(SchedulerInfo(43, start, "TESTNET"))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.sendto(icf, ("127.0.0.1", running.port))
                # A request after it on the same socket: its answer means the ICF was handled.
                sock.sendto(bytes([43]), ("127.0.0.1", running.port))
                sock.recvfrom(1024)
            if not routable:
                assert _closed(daemon)
                return
            assert running.server.core.state.hosts  # heard over IPv4 only: single-stack
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
                sock.sendto(icf, ("::1", running.port))
            assert _closed(daemon)  # over both families: dual-stack and older, so it wins
        finally:
            running.close()

    def test_dual_stack_wildcard_sees_plain_ipv4(self):
        """On the one dual-stack :: socket an IPv4 daemon is 127.0.0.1, never ::ffff:127.0.0.1."""
        running = Running(address="")
        try:
            assert running.server.bound == [f"[::]:{running.port}"]
            four = _login(running, "four")
            wait_for(lambda: running.server.core.state.hosts, 5, "the login")
            (host,) = running.server.core.state.hosts.values()
            assert host.ip == "127.0.0.1"
            four.close()
        finally:
            running.close()


class TestConnections:
    def test_silent_peer_is_dropped_after_handshake_timeout(self, running):
        """A peer that never shakes hands is closed after the handshake time-out."""
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
            assert sock.recv(4) == (43).to_bytes(4, "little")
            started = time.monotonic()
            assert sock.recv(4) == b""
            assert time.monotonic() - started < 3

    def test_bad_first_message_closes(self, running):
        """A STATS before LOGIN is a protocol error: the connection is closed."""
        channel = running.connect()
        channel.send(Stats())
        assert _closed(channel)

    def test_keepalive_options(self, running):
        """Accepted daemon sockets get 1.4's keepalive settings (reference 1.3)."""
        daemon = _login(running, "ka")
        wait_for(lambda: running.server.core.state.hosts, 5, "the login")
        (peer,) = (p for p in running.server._peers.values() if not p.monitor)
        sock = peer.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 27
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 9000
        daemon.close()

    def test_socket_timeout_drops_the_daemon(self, running):
        """A daemon whose socket fails with ETIMEDOUT is dropped, and the server serves on.

        Found by the fault-injection link cut (tests/integration/test_faults.py):
        the read loop took the socket's error (errno 110, a ``TimeoutError``
        once keepalive gave up on an unreachable daemon) for its own idle read
        time-out and retried at once, forever, at 100 % CPU.
        """
        # Both channels are held: a dropped one closes its socket, and the scheduler would
        # remove that daemon for the end of file rather than for the error under test.
        unreachable = _login(running, "unreachable")
        wait_for(lambda: running.server.core.state.hosts, 5, "the login")
        (peer,) = (p for p in running.server._peers.values() if not p.monitor)
        error = TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
        # What asyncio's socket transport does when recv() fails (selector_events).
        running.loop.call_soon_threadsafe(peer.transport._fatal_error, error,
                                          "Fatal read error on socket transport")  # fmt: skip
        wait_for(lambda: not running.server.core.state.hosts, 5, "the daemon to be dropped")
        following = _login(running, "next")  # the event loop is free to serve a new daemon
        assert [h.nodename for h in running.server.core.state.hosts.values()] == ["next"]
        following.close()
        unreachable.close()

    def test_job_through_the_server(self, running):
        """GET_CS from one daemon gets USE_CS naming the other (on 127.0.0.1 too: localhost)."""
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            server_port = listener.getsockname()[1]
            submitter = _login(running, "sub", max_kids=0)
            compiler = _login(running, "cs", port=server_port)
            compiler.send(Stats(load=0))
            wait_for(lambda: running.server.core.state.hosts[2].load == 0, 5, "the STATS")
            request = GetCS(versions=(EnvEntry("x86_64", "n"),), filename="a.c",
                            target="x86_64", client_id=3, minimal_host_version=21)  # fmt: skip
            submitter.send(request)
            answer = submitter.receive()
            assert answer == UseCS(1, server_port, "localhost", "x86_64", got_env=False,
                                   client_id=3)  # fmt: skip
            probe = running.server.core.state.hosts[2].probe
            wait_for(lambda: probe.next_at > time.time(), 10, "the reachability probe to succeed")
            assert running.server.core.state.hosts[2].probe.accepting
        finally:
            listener.close()

    def test_unreachable_daemon_is_excluded(self, running):
        """A daemon whose compile port refuses connections fails the probe."""
        with socket.create_server(("127.0.0.1", 0)) as gone:
            dead_port = gone.getsockname()[1]
        channel = _login(running, "dead", port=dead_port)  # kept open: closing it logs out
        try:
            wait_for(lambda: not running.server.core.state.hosts[1].probe.accepting, 10,
                     "the probe to fail")  # fmt: skip
        finally:
            channel.close()


def _request(filename: str) -> GetCS:
    return GetCS(versions=(EnvEntry("x86_64", "n"),), filename=filename, target="x86_64",
                 client_id=3, minimal_host_version=21)  # fmt: skip


class _HeldLoop:
    """Hold the server's event loop (a callback that blocks) until :meth:`release`.

    Whatever the test sends meanwhile waits in the kernel, so the loop finds
    it all at once when it goes on: a deterministic burst.
    """

    def __init__(self, running: Running) -> None:
        self._entered = threading.Event()
        self._gate = threading.Event()
        running.loop.call_soon_threadsafe(self._hold)
        assert self._entered.wait(10)

    def _hold(self) -> None:
        self._entered.set()
        self._gate.wait(20)

    def release(self) -> None:
        self._gate.set()


def _send_burst(channel: BlockingChannel, count: int, *, close: bool = False) -> None:
    """Send *count* GET_CS (f0000.c, f0001.c, ...) in one write (and EOF if *close*)."""
    for number in range(count):
        channel.conn.send(_request(f"f{number:04d}.c"))
    data = channel.conn.data_to_send()
    channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * len(data))

    def write() -> None:
        channel.sock.sendall(data)
        if close:  # its end of file (a close() with unread input would reset instead)
            channel.sock.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(10)  # the kernel holds it all (send buffer): done while the loop is held
    assert not writer.is_alive()


def _monitor(running: Running, hosts: int) -> BlockingChannel:
    """A monitor, logged in, past the MON_STATS of the *hosts* daemons there."""
    monitor = running.connect()
    monitor.send(MonLogin())
    for _ in range(hosts):
        assert isinstance(monitor.receive(), MonStats)
    return monitor


def _encoded(message: GetCS) -> bytes:
    return encode(message, 43)


def _monitor_events(monitor: BlockingChannel, until: Callable[[object], bool]) -> list[object]:
    events: list[object] = []
    while not events or not until(events[-1]):
        events.append(monitor.receive())
    return events


class TestBursts:
    """Issue 19 item 4: a burst of one daemon is handled in slices, others in between."""

    @pytest.fixture
    def roomy(self) -> Iterator[Running]:
        # Monitors get one MON_GET_CS per job: room for 5,000 of them in user space.
        server = Running(monitor_buffer_limit=1 << 23, monitor_buffer_total=1 << 24)
        try:
            yield server
        finally:
            server.close()

    def test_burst_does_not_starve_another_daemon(self, roomy):
        """5,000 GET_CS from one daemon and then one from another, found together by the
        loop: the other's is handled within two slices of the burst (without slices it came
        after the whole first read of the burst), and the burst keeps its order."""
        burst = _login(roomy, "burst", max_kids=0)
        other = _login(roomy, "other", max_kids=0)
        monitor = _monitor(roomy, 2)
        held = _HeldLoop(roomy)
        try:
            _send_burst(burst, 5000)
            other.send(_request("other.c"))
        finally:
            held.release()
        events = _monitor_events(monitor, lambda e: isinstance(e, MonGetCS) and e.client_id == 2)
        before = [e.filename for e in events if isinstance(e, MonGetCS) and e.client_id == 1]
        # Two slices (128 messages each) at most came first; the first read alone holds
        # some 700 GET_CS (64 KiB), all handled before "other.c" without slices.
        assert len(before) < 300
        events += _monitor_events(monitor, lambda e: getattr(e, "filename", "") == "f4999.c")
        burst_files = [e.filename for e in events if isinstance(e, MonGetCS) and e.client_id == 1]
        assert burst_files == [f"f{n:04d}.c" for n in range(5000)]
        for channel in (burst, other, monitor):
            channel.close()

    def test_daemon_closing_with_a_backlog_has_every_message_handled(self, roomy):
        """A daemon sends 5,000 GET_CS and closes at once (the loop finds both together):
        every GET_CS is handled, in order, before it is logged out."""
        burst = _login(roomy, "burst", max_kids=0)
        monitor = _monitor(roomy, 1)
        held = _HeldLoop(roomy)
        try:
            _send_burst(burst, 5000, close=True)
        finally:
            held.release()
        events = _monitor_events(monitor, lambda e: e == MonStats(1, "State:Offline\n"))
        requests = [e.filename for e in events if isinstance(e, MonGetCS)]
        assert requests == [f"f{n:04d}.c" for n in range(5000)]
        burst.close()
        monitor.close()

    def test_connection_lost_with_a_backlog_still_handles_what_was_read(self, roomy):
        """The transport of a daemon whose burst waits for slices fails (aborted from the
        loop while the backlog is pending): every complete message read before is still
        handled, in order, and only then is the daemon logged out."""
        burst = _login(roomy, "burst", max_kids=0)
        monitor = _monitor(roomy, 1)
        server = roomy.server
        seen: dict[str, int] = {}

        def abort_when_backlogged() -> None:
            peer = next(p for p in server._peers.values() if p.nodename == "burst")
            if not peer.backlog:
                roomy.loop.call_soon(abort_when_backlogged)
                return
            seen["handled"] = len(server.core.state.jobs)  # every job still queued
            seen["buffered"] = peer.conn.buffered
            peer.transport.abort()

        held = _HeldLoop(roomy)
        try:
            _send_burst(burst, 5000)
            roomy.loop.call_soon_threadsafe(abort_when_backlogged)
        finally:
            held.release()
        events = _monitor_events(monitor, lambda e: e == MonStats(1, "State:Offline\n"))
        requests = [e.filename for e in events if isinstance(e, MonGetCS)]
        size = len(_encoded(_request("f0000.c")))
        expected = seen["handled"] + seen["buffered"] // size
        assert seen["buffered"] >= size  # the backlog was pending when the transport went
        assert requests == [f"f{n:04d}.c" for n in range(expected)]
        burst.close()
        monitor.close()


class TestMonitors:
    def test_monitor_gets_hosts_and_events(self, running):
        """A monitor gets MON_STATS for existing and new daemons, and Offline when they go."""
        first = _login(running, "one")
        monitor = running.connect()
        monitor.send(MonLogin())
        assert monitor.receive() == MonStats(1, running_stats_text("one"))
        second = _login(running, "two")
        event = monitor.receive()
        assert isinstance(event, MonStats)
        assert event.statmsg.startswith("Name:two\n")
        second.close()
        assert monitor.receive() == MonStats(2, "State:Offline\n")
        first.close()

    def test_stalled_monitor_is_dropped(self):
        """A monitor that does not read is dropped once its buffer passes the limit."""
        running = Running(monitor_buffer_limit=0)
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills quickly
            sock.connect(("127.0.0.1", running.port))
            monitor = BlockingChannel(sock, timeout=5.0)
            monitor.send(MonLogin())
            wait_for(lambda: running.server.core.monitors, 5, "the monitor login")
            daemon = _login(running, "busy")
            for load in range(3000):  # about 600 kB of MON_STATS nobody reads
                daemon.send(Stats(load=load % 1000))
            wait_for(lambda: not running.server.core.monitors, 10, "the monitor to be dropped")
            assert running.server.core.state.hosts  # the daemon is unaffected
            monitor.close()
        finally:
            running.close()


def running_stats_text(name: str) -> str:
    return (f"Name:{name}\nIP:127.0.0.1\nMaxJobs:2\nNoRemote:false\nPlatform:x86_64\n"
            "Version:43\nFeatures:--\nSpeed:0.000000\nLoad:1000\n")  # fmt: skip
