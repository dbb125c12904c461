"""A tampered sealed record on the daemon ↔ scheduler link (issue 14 item 4), on real sockets.

Our scheduler (``auth = require``, ``encrypt = yes``) runs in one namespace
host, our keyed daemon in another, and a small proxy in this test joins them:
it listens in the daemon's namespace on the scheduler's address
(``127.0.0.1:P``: each namespace has its own loopback) and connects from the
scheduler's namespace, from the very address and port the daemon used.  Both
programs thus see the same TCP endpoints, which the proofs and the link keys
cover, and the proxy is invisible to them until it is told to flip one bit
in the next sealed record of one direction:

* daemon → scheduler (the daemon's next STATS): the scheduler logs one
  warning naming the failed authentication, drops that link and lives on;
* scheduler → daemon (the GET_INTERNALS of a telnet ``internals``): the
  daemon logs one such warning, drops the link and never answers the
  altered request (the telnet answer is ``not reporting``).

Each time the daemon logs in again (sealed) and answers ``internals``
afterwards.  The proxy relays UDP too (the daemon's probe for a scheduler
that proves the key, and its wake datagrams).  Every wait is bounded.
"""

# ruff: noqa: F811 - keys is test_auth_live's fixture, taken as a parameter
from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Final

import pytest
from integration.test_auth_live import _auth_args, keys  # noqa: F401 - keys is a fixture
from testbed import NetnsBed, OurDaemon, OurScheduler, wait_for

from iceserv.protocol.constants import IceservMsgType

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from testbed.hosts import Host
    from testbed.netns import NetnsHost

pytestmark = [pytest.mark.live, pytest.mark.netns]

_LOGIN: Final = 30.0
_LOCAL: Final = "127.0.0.1"
#: Each direction starts with two 4-byte handshake words (version, then the agreed one).
_HANDSHAKE: Final = 8
_HEADER: Final = struct.Struct(">II")
_SEALED: Final = int(IceservMsgType.SEALED)
_TAMPERED: Final = "failed authentication"
UP: Final = "daemon → scheduler"
DOWN: Final = "scheduler → daemon"


class _Pump:
    """One direction of one relayed connection: frames pass whole, one may get a bit flipped."""

    def __init__(self, proxy: _TamperProxy, src: socket.socket, dst: socket.socket,
                 direction: str) -> None:  # fmt: skip
        self.proxy, self.src, self.dst, self.direction = proxy, src, dst, direction
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buffer = bytearray()
        skip = _HANDSHAKE
        try:
            while chunk := self.src.recv(65536):
                buffer += chunk
                if skip:
                    passed = bytes(buffer[:skip])
                    del buffer[: len(passed)]
                    skip -= len(passed)
                    self.dst.sendall(passed)
                while len(buffer) >= _HEADER.size and not skip:
                    length, kind = _HEADER.unpack_from(buffer)
                    if len(buffer) < 4 + length:
                        break
                    frame = bytearray(buffer[: 4 + length])
                    del buffer[: 4 + length]
                    if kind == _SEALED and self.proxy.take(self.direction):
                        frame[_HEADER.size + (length - 4) // 2] ^= 0x10  # one bit of the record
                        self.proxy.flipped[self.direction].set()
                    self.dst.sendall(frame)
        except OSError:
            pass
        finally:
            for sock in (self.src, self.dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _TamperProxy:
    """A TCP and UDP relay from ``outside``'s 127.0.0.1:port to ``inside``'s, same endpoints."""

    def __init__(self, outside: NetnsHost, inside: NetnsHost, port: int) -> None:
        self.inside, self.port = inside, port
        self.flipped = {UP: threading.Event(), DOWN: threading.Event()}
        self.connections = 0
        self._armed: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._pumps: list[_Pump] = []
        self.listener = outside.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((_LOCAL, port))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.udp = outside.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((_LOCAL, port))
        self._threads = [threading.Thread(target=self._accept, daemon=True),
                         threading.Thread(target=self._datagrams, daemon=True)]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def arm(self, direction: str) -> None:
        """Flip one bit in the next sealed record that goes *direction*."""
        with self._lock:
            self.flipped[direction].clear()
            self._armed.add(direction)

    def take(self, direction: str) -> bool:
        with self._lock:
            armed = direction in self._armed
            self._armed.discard(direction)
            return armed

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                down, (_, port) = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            up = self.inside.socket()
            try:
                # The daemon's own endpoint, seen from the scheduler's namespace.
                up.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                up.bind((_LOCAL, port))
                up.connect((_LOCAL, self.port))
            except OSError:
                down.close()
                up.close()
                continue
            self.connections += 1
            self._sockets += [down, up]
            self._pumps += [_Pump(self, down, up, UP), _Pump(self, up, down, DOWN)]

    def _datagrams(self) -> None:
        """Relay each source's datagrams to the scheduler's UDP port and the answers back."""
        selector = selectors.DefaultSelector()
        selector.register(self.udp, selectors.EVENT_READ, None)
        relays: dict[tuple[str, int], socket.socket] = {}
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.2):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data, origin = sock.recvfrom(2048)
                    except OSError:
                        continue
                    if key.data is not None:  # an answer for the source key.data
                        self.udp.sendto(data, key.data)
                        continue
                    relay = relays.get(origin)
                    if relay is None and len(relays) < 64:
                        relay = relays[origin] = self.inside.socket(socket.AF_INET,
                                                                    socket.SOCK_DGRAM)  # fmt: skip
                        selector.register(relay, selectors.EVENT_READ, origin)
                    if relay is not None:
                        with contextlib.suppress(OSError):
                            relay.sendto(data, (_LOCAL, self.port))
        finally:
            selector.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for sock in [self.listener, self.udp, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for pump in self._pumps:
            pump.thread.join(5)


def _telnet(host: Host, port: int, command: str, timeout: float = 30.0) -> list[str]:
    """One command on the scheduler's telnet port; its lines before ``200 done``."""
    sock = host.socket()
    try:
        sock.settimeout(timeout)
        sock.connect((_LOCAL, port))
        sock.sendall(command.encode() + b"\nquit\n")
        data = b""
        deadline = time.monotonic() + timeout
        while b"200 done" not in data and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    lines = data.decode(errors="replace").splitlines()
    assert "200 done" in lines, lines
    greeting = next(i for i, line in enumerate(lines) if line.startswith("200 "))
    return lines[greeting + 1 : lines.index("200 done")]


class _Bed:
    """The scheduler in h1, the daemon in h2, the proxy between them."""

    def __init__(self, bed: NetnsBed, key: Path) -> None:
        args = [*_auth_args(key, "require"), "--encrypt"]
        self.h1, self.h2 = bed[0], bed[1]
        self.scheduler = OurScheduler(host=self.h1, extra_args=args).start()
        assert self.scheduler.port is not None
        self.proxy = _TamperProxy(self.h2, self.h1, self.scheduler.port)
        self.daemon = OurDaemon("tampered", f"{_LOCAL}:{self.scheduler.port}", host=self.h2,
                                native_compilers="", extra_args=args,
                                # fast reconnects; a STATS at every link tick (3 s)
                                extra_env={"ICECC_TESTS": "1",
                                           "ICECC_TEST_SCHEDULER_IDLE": "1"}).start()  # fmt: skip

    def logins(self, count: int) -> list[dict[str, object]]:
        """The scheduler's first *count* ``daemon_logged_in`` records of our daemon (waits)."""

        def ours() -> list[dict[str, object]]:
            self.scheduler.check_alive()
            self.daemon.check_alive()
            return [e for e in self.scheduler.events("daemon_logged_in")
                    if e["nodename"] == self.daemon.name]  # fmt: skip

        wait_for(lambda: len(ours()) >= count, _LOGIN, f"login {count} of the daemon",
                 context=lambda: self.daemon.log_tail() + self.scheduler.log_tail())  # fmt: skip
        return ours()

    def internals(self) -> list[str]:
        assert self.scheduler.port is not None
        return _telnet(self.h1, self.scheduler.port + 1, f"internals {self.daemon.name}")

    def stop(self) -> None:
        try:
            self.daemon.stop()
        finally:
            self.proxy.close()
            assert self.scheduler.stop() == 0


def _tamper_lines(program: OurScheduler | OurDaemon) -> list[str]:
    """The lines of *program*'s log that name a failed authentication of a record."""
    return [line for line in program.log_path.read_text(errors="replace").splitlines()
            if _TAMPERED in line]  # fmt: skip


@pytest.fixture(scope="module")
def linked(keys: dict[str, Path]) -> Iterator[_Bed]:
    """A sealed, proxied link, the daemon listed once."""
    with NetnsBed(2) as bed:
        linked = _Bed(bed, keys["good"])
        try:
            (login,) = linked.logins(1)
            assert login["encrypted"] is True
            assert login["auth"] == "authenticated"
            assert linked.proxy.connections == 1, "the daemon's link goes through the proxy"
            yield linked
        finally:
            linked.stop()


def test_a_tampered_record_from_the_daemon(linked):
    """The scheduler drops the link with one clear line; the daemon logs in again."""
    scheduler, daemon = linked.scheduler, linked.daemon
    logins = len(linked.logins(1))
    logged_in = len(daemon.events("scheduler_logged_in"))
    linked.proxy.arm(UP)
    assert linked.proxy.flipped[UP].wait(_LOGIN), "no sealed record went up (no STATS?)"
    (dropped,) = [e for e in scheduler.wait_events("daemon_logged_out", 1)
                  if _TAMPERED in e["reason"]]  # fmt: skip
    assert dropped["level"] == "warning"
    assert dropped["nodename"] == daemon.name
    assert dropped["reason"].startswith("protocol error: sealed record failed authentication")
    assert len(_tamper_lines(scheduler)) == 1
    assert not scheduler.events("message_dropped")
    # The daemon saw the scheduler close the link, and logs in again, sealed.
    relogin = linked.logins(logins + 1)[-1]
    assert relogin["encrypted"] is True
    daemon.wait_events("scheduler_logged_in", logged_in + 1)
    assert not _tamper_lines(daemon)
    assert linked.internals()[0] != f"{daemon.name} not reporting"
    assert scheduler.alive()
    assert daemon.alive()


def test_a_tampered_record_from_the_scheduler(linked):
    """The daemon drops the link with one clear line, never answers the request, logs in again."""
    scheduler, daemon = linked.scheduler, linked.daemon
    logins = len(linked.logins(1))
    before = len(_tamper_lines(daemon))
    answer = linked.internals()
    assert answer
    assert answer[0] != f"{daemon.name} not reporting", "the daemon answers untampered requests"
    linked.proxy.arm(DOWN)
    # The GET_INTERNALS is the record flipped: the daemon must not answer it.
    assert linked.internals() == [f"{daemon.name} not reporting"]
    assert linked.proxy.flipped[DOWN].is_set()
    (lost,) = [e for e in daemon.wait_events("scheduler_connection_lost", 1)
               if _TAMPERED in e["error"]]  # fmt: skip
    assert lost["level"] == "warning"
    assert lost["error"].startswith("sealed record failed authentication")
    assert len(_tamper_lines(daemon)) == before + 1
    relogin = linked.logins(logins + 1)[-1]
    assert relogin["encrypted"] is True
    assert linked.internals()[0] != f"{daemon.name} not reporting"
    assert len(linked.logins(logins + 1)) == logins + 1, "one re-login, no loop"
    assert scheduler.alive()
    assert daemon.alive()
