"""Tests for iceserv.netio.accept: accepting, pausing on EMFILE with back-off, quiet logs."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import TYPE_CHECKING

import pytest
from structlog.testing import capture_logs

from iceserv.netio import Listener, bind_tcp, open_stream
from iceserv.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

WAIT = 5.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


class _ScriptedSocket:
    """A listening socket whose accept() follows a script; always readable.

    It is readable because a byte waits on one end of a real socket pair;
    each accept() pops the next outcome (an exception to raise, or a real
    connected socket to return) and raises BlockingIOError when the script
    is empty.
    """

    def __init__(self, outcomes: list[BaseException | socket.socket]) -> None:
        self._a, self._b = socket.socketpair()
        self._b.send(b"x")
        self.outcomes = outcomes
        self.calls = 0

    def fileno(self) -> int:
        return self._a.fileno()

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 1)

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        self.calls += 1
        if not self.outcomes:
            raise BlockingIOError
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome, ("192.0.2.1", 4242)

    def close(self) -> None:
        self._a.close()
        self._b.close()


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(predicate)


class TestListener:
    def test_accepts_and_hands_over_connections(self):
        """A real listener hands each connection to the callback; open_stream makes streams."""

        async def scenario() -> None:
            got: list[tuple[str, int]] = []
            replies: list[bytes] = []

            async def echo(sock: socket.socket) -> None:
                reader, writer = await open_stream(sock, limit=1024)
                writer.write(await reader.readexactly(5))
                await writer.drain()
                writer.close()

            tasks: set[asyncio.Task[None]] = set()

            def on_accept(sock: socket.socket, address: tuple[str, int]) -> None:
                got.append(address)
                tasks.add(asyncio.get_running_loop().create_task(echo(sock)))

            listener = Listener(bind_tcp("127.0.0.1", 0), on_accept, name="test")
            listener.start()
            try:
                for _ in range(3):
                    reader, writer = await asyncio.open_connection(*listener.address)
                    writer.write(b"hello")
                    replies.append(await asyncio.wait_for(reader.read(), WAIT))
                    writer.close()
            finally:
                listener.close()
            assert replies == [b"hello"] * 3
            assert [host for host, _ in got] == ["127.0.0.1"] * 3

        run(scenario)

    def test_unix_socket_connections_have_an_empty_address(self, tmp_path):
        """A Unix listening socket works too: its peers come with the address ("", 0)."""

        async def scenario() -> None:
            got: list[tuple[str, int]] = []
            path = tmp_path / "sock"
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(path))
            server.listen(8)
            server.setblocking(False)  # noqa: FBT003 - the socket API's spelling
            listener = Listener(server, lambda sock, address: (got.append(address), sock.close()),
                                name="unix")  # fmt: skip
            listener.start()
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(path))
            try:
                await _until(lambda: bool(got))
            finally:
                client.close()
                listener.close()
            assert got == [("", 0)]

        run(scenario)

    def test_emfile_pauses_with_back_off_and_one_log_record(self):
        """EMFILE stops accepting; retries back off and log once per interval, no traceback."""

        async def scenario() -> None:
            emfile = [OSError(errno.EMFILE, "Too many open files") for _ in range(6)]
            accepted = socket.socketpair()
            fake = _ScriptedSocket([*emfile, accepted[0]])
            clock = FakeClock(100.0)
            got: list[tuple[socket.socket, int]] = []
            listener = Listener(fake, lambda sock, _: got.append((sock, fake.calls)), name="test",  # type: ignore[arg-type]
                                min_delay=0.01, max_delay=0.04, log_interval=60.0,
                                monotonic=clock.now)  # fmt: skip
            with capture_logs() as logs:
                listener.start()
                await _until(lambda: bool(got))
                listener.close()
            accepted[1].close()
            got[0][0].close()
            # One accept() per pause, not one per backlog slot: 6 failures, then the success.
            assert got[0][1] == 7
            events = [(e["event"], e.get("failures")) for e in logs]
            assert events == [("accept_paused", 1), ("accept_resumed", 6)]
            assert all("exc_info" not in e for e in logs)

        run(scenario)

    def test_backoff_doubles_up_to_the_maximum(self):
        """Each failure doubles the delay, capped at max_delay; success resets it."""

        async def scenario() -> None:
            fake = _ScriptedSocket([OSError(errno.ENFILE, "x") for _ in range(5)])
            listener = Listener(fake, lambda *_: None, name="test", min_delay=0.001,  # type: ignore[arg-type]
                                max_delay=0.004, log_interval=0.0)  # fmt: skip
            with capture_logs() as logs:
                listener.start()
                await _until(lambda: listener.failures == 5 and not listener.paused)
                listener.close()
            delays = [e["retry_in"] for e in logs if e["event"] == "accept_paused"]
            assert delays == [0.001, 0.002, 0.004, 0.004, 0.004]

        run(scenario)

    def test_other_errors_also_pause(self):
        """An unexpected accept() error pauses too (logged as accept_failed), never spins."""

        async def scenario() -> None:
            fake = _ScriptedSocket([OSError(errno.EPERM, "x")])
            listener = Listener(fake, lambda *_: None, name="test", min_delay=0.001)  # type: ignore[arg-type]
            with capture_logs() as logs:
                listener.start()
                await _until(lambda: fake.calls >= 2)
                listener.close()
            assert [e["event"] for e in logs] == ["accept_failed"]
            assert logs[0]["error"] == "EPERM"

        run(scenario)

    def test_close_while_paused_cancels_the_retry(self):
        """close() during a pause leaves no retry behind and closes the socket."""

        async def scenario() -> None:
            fake = _ScriptedSocket([OSError(errno.EMFILE, "x")])
            listener = Listener(fake, lambda *_: None, name="test", min_delay=0.05)  # type: ignore[arg-type]
            with capture_logs():
                listener.start()
                await _until(lambda: listener.paused)
                listener.close()
                listener.close()
            assert not listener.paused
            with pytest.raises(OSError, match="Bad file descriptor"):
                fake._a.send(b"x")

        run(scenario)
