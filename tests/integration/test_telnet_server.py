"""The telnet line server over real sockets on 127.0.0.1: sessions, line rules, limits."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from typing import TYPE_CHECKING, Any, Self

import pytest
import structlog
from telnet.fakes import FakeControl, FakeHost, FakeJob

from iceserv.hostfacts import local_addresses
from iceserv.netio import is_link_local, is_loopback
from iceserv.telnet.commands import HELP, TelnetControl
from iceserv.telnet.server import LINE_TOO_LONG, TelnetServer, serve_telnet

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

GREETING = (
    b"200-ICECC 1.4.0: 5s uptime, 1 hosts, 1 jobs in queue (4 total).\n"
    b"200 Use 'help' for help and 'quit' to quit.\n"
)
HELP_REPLY = ("\n".join(HELP) + "\n200 done\n").encode()
LISTCS_REPLY = (
    b" nodeA (127.0.0.1:10245) [x86_64] speed=0.00 jobs=1/2 load=100\n"
    b"   4 WAIT sub:nodeA on:nodeA a.c\n200 done\n"
)
DONE = b"200 done\n"
BYE = b"200 Good Bye!\n"
WAIT = 5.0  # bound for any single expected answer


def control() -> FakeControl:
    job = FakeJob(4, "WAIT", "nodeA", "nodeA")
    return FakeControl(
        uptime=5, hosts=[FakeHost("nodeA", load=100, jobs=[job])], jobs=[job], total=4
    )


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


@contextlib.asynccontextmanager
async def serving(ctrl: FakeControl | None = None, **limits: Any) -> AsyncIterator[TelnetServer]:
    own = limits.pop("own_addresses", None)
    if own is not None:  # serve_telnet has no seam for it; the server has
        server = TelnetServer(ctrl or control(), own_addresses=own, **limits)
        await server.start("127.0.0.1", 0)
    else:
        server = await serve_telnet(ctrl or control(), "127.0.0.1", 0, **limits)
    try:
        yield server
    finally:
        await server.close()


async def until(predicate: Callable[[], bool], limit: float = WAIT) -> None:
    """Poll *predicate* every 10 ms until it holds; fail after *limit* seconds."""
    for _ in range(int(limit / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(predicate)


class Client:
    """A test peer on an asyncio stream; every read is bounded."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: TelnetServer, *, greeting: bytes | None = GREETING) -> Self:
        """Connect; read the greeting and compare it with *greeting* unless that is None."""
        reader, writer = await asyncio.open_connection(*server.address)
        client = cls(reader, writer)
        if greeting is not None:
            assert await client.read_until(b"quit.\n") == greeting
        return client

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_until(self, marker: bytes, limit: float = WAIT) -> bytes:
        async with asyncio.timeout(limit):
            return await self.reader.readuntil(marker)

    async def read_to_eof(self, limit: float = WAIT) -> bytes:
        async with asyncio.timeout(limit):
            return await self.reader.read()

    async def command(self, data: bytes) -> bytes:
        await self.send(data)
        return await self.read_until(DONE)

    def close(self) -> None:
        self.writer.transport.abort()


class TestTelnetSession:
    def test_greeting_comes_at_once_without_input(self):
        """The two greeting lines arrive on accept, before the peer sends anything."""

        async def scenario() -> None:
            async with serving() as server:
                started = time.monotonic()
                client = await Client.connect(server, greeting=None)
                assert await client.read_until(b"quit.\n", limit=1.0) == GREETING
                assert time.monotonic() - started < 1.0
                client.close()

        run(scenario)

    def test_commands_are_answered_byte_for_byte(self):
        """help and listcs answer the exact 1.4 bytes, each ending with '200 done'."""

        async def scenario() -> None:
            async with serving() as server:
                client = await Client.connect(server)
                assert await client.command(b"help\n") == HELP_REPLY
                assert await client.command(b"listcs\n") == LISTCS_REPLY
                assert await client.command(b"FOO bar\n") == b"Invalid command 'FOO bar'\n" + DONE
                client.close()

        run(scenario)

    def test_crlf_lf_and_nul_end_a_line_alike(self):
        """'\\r\\n', '\\n' and '\\0' in one segment each end exactly one command."""

        async def scenario() -> None:
            async with serving() as server:
                client = await Client.connect(server)
                for ending in (b"\r\n", b"\n", b"\0", b"\r\n\r\n\0"):
                    await client.send(b"listblocks" + ending + b"listjobs\n")
                    assert await client.read_until(DONE) == DONE
                    assert await client.read_until(DONE) == b" 4 WAIT sub:nodeA on:nodeA a.c\n" + (
                        DONE
                    )
                client.close()

        run(scenario)

    def test_cr_and_lf_in_separate_segments_make_an_empty_command(self):
        """A '\\r' and a '\\n' that arrive apart give an extra empty command, as in 1.4."""

        async def scenario() -> None:
            async with serving() as server:
                client = await Client.connect(server)
                assert await client.command(b"listblocks\r") == DONE
                assert await client.command(b"\n") == b"Invalid command ''\n" + DONE
                client.close()

        run(scenario)

    def test_tab_and_control_bytes_end_lines(self):
        """Any byte below 0x20 ends a line, so 'help\\tx' is help and then the command 'x'."""

        async def scenario() -> None:
            async with serving() as server:
                client = await Client.connect(server)
                await client.send(b"help\tx\n")
                assert await client.read_until(DONE) == HELP_REPLY
                assert await client.read_until(DONE) == b"Invalid command 'x'\n" + DONE
                client.close()

        run(scenario)

    def test_several_commands_in_one_segment_are_answered_in_order(self):
        """Pipelined commands are all answered, in order."""

        async def scenario() -> None:
            async with serving() as server:
                client = await Client.connect(server)
                await client.send(b"listblocks\nhelp\nLISTCS\n")
                assert await client.read_until(DONE) == DONE
                assert await client.read_until(DONE) == HELP_REPLY
                assert await client.read_until(DONE) == LISTCS_REPLY
                client.close()

        run(scenario)

    def test_quit_says_good_bye_closes_and_ignores_the_rest(self):
        """quit answers '200 Good Bye!' and closes; later lines in the segment are dropped."""

        async def scenario() -> None:
            async with serving() as server:
                for word in (b"quit", b"EXIT"):
                    client = await Client.connect(server)
                    await client.send(word + b"\nhelp\n")
                    assert await client.read_to_eof() == BYE
                    client.close()

        run(scenario)

    def test_state_changes_show_in_the_same_session(self):
        """removecs acts on the facade, and the next listcs shows the result."""

        async def scenario() -> None:
            ctrl = control()
            async with serving(ctrl) as server:
                client = await Client.connect(server)
                assert await client.command(b"removecs nodeA\n") == b"removing host nodeA\n" + DONE
                assert await client.command(b"listcs\n") == DONE
                assert ctrl.calls == [("remove_hosts", ["nodeA"])]
                client.close()

        run(scenario)

    def test_internals_text_is_sent_verbatim(self):
        """A daemon's internals text goes out unchanged, a silent daemon as 'not reporting'."""

        async def scenario() -> None:
            ctrl = control()
            ctrl.hosts.append(FakeHost("nodeB"))
            ctrl.internals_texts["nodeB"] = "Node Name: nodeB\n  load: 1\n"
            async with serving(ctrl) as server:
                client = await Client.connect(
                    server, greeting=GREETING.replace(b"1 hosts", b"2 hosts")
                )
                assert await client.command(b"internals\n") == (
                    b"nodeA not reporting\nNode Name: nodeB\n  load: 1\n" + DONE
                )
                client.close()

        run(scenario)

    def test_idle_session_gets_good_bye(self):
        """Without a complete line for idle_timeout seconds the session gets '200 Good Bye!'."""

        async def scenario() -> None:
            async with serving(idle_timeout=0.3) as server:
                client = await Client.connect(server)
                started = time.monotonic()
                assert await client.read_to_eof(limit=3.0) == BYE
                assert 0.25 <= time.monotonic() - started < 2.0
                client.close()

        run(scenario)

    def test_each_line_restarts_the_idle_timer(self):
        """A session that sends a line more often than the idle time-out stays open."""

        async def scenario() -> None:
            async with serving(idle_timeout=0.4) as server:
                client = await Client.connect(server)
                for _ in range(5):
                    await asyncio.sleep(0.2)
                    assert await client.command(b"\n") == b"Invalid command ''\n" + DONE
                assert await client.read_to_eof(limit=3.0) == BYE
                client.close()

        run(scenario)

    def test_partial_lines_do_not_restart_the_idle_timer(self):
        """Bytes without a line end do not keep a session alive (no slow-loris)."""

        async def scenario() -> None:
            async with serving(idle_timeout=0.4) as server:
                client = await Client.connect(server)
                started = time.monotonic()
                for _ in range(4):
                    await client.send(b"x")
                    await asyncio.sleep(0.15)
                assert await client.read_to_eof(limit=3.0) == BYE
                assert time.monotonic() - started < 1.5
                client.close()

        run(scenario)

    def test_end_of_input_drops_the_unfinished_line_and_says_good_bye(self):
        """After the peer half-closes, an unfinished line is ignored and '200 Good Bye!' is sent."""

        async def scenario() -> None:
            async with serving() as server:
                client = await Client.connect(server)
                await client.send(b"listjobs\nhelp")
                client.writer.write_eof()
                assert await client.read_to_eof() == b" 4 WAIT sub:nodeA on:nodeA a.c\n" + (
                    DONE + BYE
                )
                client.close()

        run(scenario)


class TestHostileClients:
    def test_overlong_line_gets_an_error_and_is_disconnected(self):
        """A line longer than max_line without an end gets '500 Line too long.' and EOF."""

        async def scenario() -> None:
            async with serving(max_line=64) as server:
                client = await Client.connect(server)
                await client.send(b"a" * 65)
                assert await client.read_to_eof() == LINE_TOO_LONG.encode() + b"\n"
                client.close()
                other = await Client.connect(server)
                assert await other.command(b"listblocks\n") == DONE
                other.close()

        run(scenario)

    def test_line_of_exactly_max_line_is_accepted(self):
        """A line of max_line bytes, sent in pieces, is still a command."""

        async def scenario() -> None:
            async with serving(max_line=64) as server:
                client = await Client.connect(server)
                await client.send(b"b" * 40)
                await asyncio.sleep(0.05)
                await client.send(b"b" * 24)
                await asyncio.sleep(0.05)
                assert (
                    await client.command(b"\n") == b"Invalid command '" + b"b" * 64 + b"'\n" + DONE
                )
                client.close()

        run(scenario)

    def test_binary_junk_is_answered_and_the_session_survives(self):
        """Random bytes become invalid commands echoed as received; quit still works after."""

        async def scenario() -> None:
            junk = random.Random(4).randbytes(16384)  # noqa: S311 - reproducible
            junk = junk.translate(bytes.maketrans(b"qQxX", b"____"))  # no quit or exit in it
            async with serving() as server:
                client = await Client.connect(server)
                await client.send(junk + b"\nquit\n")
                out = await client.read_to_eof(limit=10.0)
                assert out.endswith(DONE + BYE)
                answers = out[: -len(BYE)].split(DONE)
                assert answers[-1] == b""
                assert all(a.startswith(b"Invalid command '") for a in answers[:-1])
                assert sum(a.count(b"\0") for a in answers) == 0
                other = await Client.connect(server)
                assert await other.command(b"listblocks\n") == DONE
                other.close()

        run(scenario)

    def test_command_flood_is_answered_completely(self):
        """Thousands of pipelined commands each get their full answer."""

        async def scenario() -> None:
            async with serving() as server:
                client = await Client.connect(server)
                count = 3000
                await client.send(b"help\n" * count + b"quit\n")
                out = await client.read_to_eof(limit=20.0)
                assert out == HELP_REPLY * count + BYE
                client.close()

        run(scenario)

    def test_peer_that_never_reads_is_dropped(self):
        """A peer flooding commands without reading is dropped after write_timeout."""

        async def scenario() -> None:
            async with serving(write_timeout=0.3) as server:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)  # noqa: FBT003 - the stdlib signature
                await asyncio.get_running_loop().sock_connect(sock, server.address)
                reader, writer = await asyncio.open_connection(sock=sock)
                writer.write(b"help\n" * 400_000)  # about 35 MB of answers
                await until(lambda: server.session_count == 0, 15.0)
                writer.transport.abort()
                other = await Client.connect(server)
                assert await other.command(b"listblocks\n") == DONE
                other.close()
                del reader

        run(scenario)

    def test_broken_facade_closes_only_that_session(self):
        """An exception in the facade ends the session; the server keeps serving others."""

        class Broken(FakeControl):
            def list_jobs(self) -> list[FakeJob]:
                msg = "boom"
                raise RuntimeError(msg)

        async def scenario() -> None:
            async with serving(Broken()) as server:
                client = await Client.connect(server, greeting=None)
                await client.read_until(b"quit.\n")
                await client.send(b"listjobs\n")
                assert await client.read_to_eof() == b""
                client.close()
                other = await Client.connect(server, greeting=None)
                await other.read_until(b"quit.\n")
                assert await other.command(b"help\n") == HELP_REPLY
                other.close()

        run(scenario)

    def test_stray_cancelled_error_from_the_facade_closes_only_that_session(self):
        """A CancelledError leaked by the facade is logged as a failed session, not a shutdown."""

        class Leaky(FakeControl):
            async def internals(self, _names: list[str], /) -> list[str]:
                future = asyncio.get_running_loop().create_future()
                future.cancel()
                return [await future]

        async def scenario() -> None:
            async with serving(Leaky()) as server:
                client = await Client.connect(server, greeting=None)
                await client.read_until(b"quit.\n")
                await client.send(b"internals\n")
                with structlog.testing.capture_logs() as logs:
                    assert await client.read_to_eof() == b""
                    client.close()
                    await until(lambda: server.session_count == 0)
                assert [e["event"] for e in logs] == ["telnet_session_failed"]
                other = await Client.connect(server, greeting=None)
                await other.read_until(b"quit.\n")
                assert await other.command(b"listblocks\n") == DONE
                other.close()

        run(scenario)


class TestTelnetServer:
    def test_many_clients_at_once(self):
        """Fifty concurrent sessions each get the greeting and their own answers."""

        async def one(server: TelnetServer, index: int) -> None:
            client = await Client.connect(server)
            assert await client.command(f"blockcs c{index}\n".encode()) == DONE
            assert await client.command(b"listcs\n") == LISTCS_REPLY
            await client.send(b"quit\n")
            assert await client.read_to_eof() == BYE
            client.close()

        async def scenario() -> None:
            ctrl = control()
            async with serving(ctrl, max_sessions_per_host=64) as server:
                await asyncio.gather(*(one(server, i) for i in range(50)))
                assert sorted(ctrl.blocks) == sorted(f"c{i}" for i in range(50))
                await until(lambda: server.session_count == 0)

        run(scenario)

    def test_full_port_closes_the_oldest_idle_session(self):
        """Over max_sessions the idle session with the oldest last line says goodbye."""

        async def scenario() -> None:
            async with serving(max_sessions=2) as server:
                first = await Client.connect(server)
                second = await Client.connect(server)
                assert await first.command(b"listblocks\n") == DONE  # first is now the newer
                third = await Client.connect(server)
                assert await second.read_to_eof() == BYE
                assert await first.command(b"listblocks\n") == DONE
                await until(lambda: server.session_count == 2)
                for client in (first, second, third):
                    client.close()

        run(scenario)

    def test_full_host_makes_room_from_its_own_sessions(self):
        """Over max_sessions_per_host the host's own oldest idle session goes, not another's."""

        async def scenario() -> None:
            async with serving(max_sessions=8, max_sessions_per_host=1) as server:
                first = await Client.connect(server)
                second = await Client.connect(server)
                assert await first.read_to_eof() == BYE
                assert await second.command(b"listblocks\n") == DONE
                first.close()
                second.close()

        run(scenario)

    def test_busy_sessions_are_never_closed_for_room(self):
        """When no session is idle a new connection is reset without a greeting."""

        async def scenario() -> None:
            async with serving(max_sessions=1) as server:
                first = await Client.connect(server)
                for session in server._sessions.values():
                    session.busy = True
                try:  # the reset can come before connect() returns
                    second = await Client.connect(server, greeting=None)
                except ConnectionError:
                    pass
                else:
                    with contextlib.suppress(ConnectionError):
                        assert await second.read_to_eof() == b""
                    second.close()
                assert await first.command(b"listblocks\n") == DONE
                first.close()

        run(scenario)

    def test_close_ends_sessions_and_stops_listening(self):
        """close() drops open sessions and refuses new connections."""

        async def scenario() -> None:
            server = await serve_telnet(control(), "127.0.0.1", 0)
            address = server.address
            assert address[1] > 0
            client = await Client.connect(server)
            await server.close()
            assert await client.read_to_eof() == b""
            assert server.session_count == 0
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(*address)

        run(scenario)

    def test_start_twice_is_an_error(self):
        """A server can be started only once."""

        async def scenario() -> None:
            server = TelnetServer(control())
            await server.start("127.0.0.1", 0)
            try:
                with pytest.raises(RuntimeError, match="twice"):
                    await server.start("127.0.0.1", 0)
            finally:
                await server.close()

        run(scenario)


def _own_non_loopback() -> str:
    """An address of this host that is not loopback (the test machine has one on eth0)."""
    mine = sorted(a for a in local_addresses() if not is_loopback(a) and not is_link_local(a))
    assert mine, f"no non-loopback address among {sorted(local_addresses())}"
    return mine[0]


class TestControlPolicy:
    """Issue 14 item 5 on real sockets: who may run blockcs, unblockcs and removecs."""

    def test_off_refuses_every_changing_command_with_one_line_and_one_log(self):
        """Under off each changing command gets a 403 line, is logged once and changes nothing."""

        async def scenario() -> None:
            ctrl = control()
            async with serving(ctrl, control_policy=TelnetControl.OFF) as server:
                client = await Client.connect(server)
                with structlog.testing.capture_logs() as logs:
                    for name in (b"blockcs", b"unblockcs", b"removecs"):
                        answer = await client.command(name + b" nodeA\n")
                        assert (
                            answer == b"403 " + name + b" is disabled on this scheduler.\n" + DONE
                        )
                # The session goes on, and the read-only commands are 1.4's bytes.
                assert await client.command(b"listcs\n") == LISTCS_REPLY
                assert await client.command(b"help\n") == HELP_REPLY
                client.close()
            assert ctrl.calls == []
            refused = [e for e in logs if e["event"] == "telnet_command_refused"]
            assert [e["command"] for e in refused] == ["blockcs", "unblockcs", "removecs"]
            assert {e["policy"] for e in refused} == {"off"}
            assert all(e["log_level"] == "warning" for e in refused)

        run(scenario)

    def test_local_serves_loopback_and_asks_only_at_a_changing_command(self):
        """Under local a session from 127.0.0.1 may change; addresses are read lazily, once."""

        async def scenario() -> None:
            ctrl = control()
            asked: list[int] = []

            def own() -> frozenset[str]:
                asked.append(1)
                return frozenset()  # loopback is this host whatever the list says

            async with serving(
                ctrl, control_policy=TelnetControl.LOCAL, own_addresses=own
            ) as server:
                client = await Client.connect(server)
                assert await client.command(b"listcs\n") == LISTCS_REPLY
                assert asked == []
                assert await client.command(b"blockcs nodeA\n") == b"removing host nodeA\n" + DONE
                assert await client.command(b"unblockcs nodeA\n") == DONE
                assert asked == [1]
                client.close()
            assert ctrl.calls == [("block_hosts", ["nodeA"]), ("unblock_hosts", ["nodeA"])]

        run(scenario)

    def test_local_serves_this_hosts_own_address_and_refuses_others(self):
        """A session from a non-loopback address: served if it is this host's, else refused."""

        async def scenario() -> None:
            address = _own_non_loopback()
            for own, allowed in ((local_addresses, True), (frozenset, False)):
                ctrl = control()
                server = TelnetServer(ctrl, control_policy=TelnetControl.LOCAL, own_addresses=own)
                await server.start(address, 0)
                try:
                    reader, writer = await asyncio.open_connection(*server.address[:2])
                    client = Client(reader, writer)
                    assert await client.read_until(b"quit.\n") == GREETING
                    answer = await client.command(b"removecs nodeA\n")
                    if allowed:
                        assert answer == b"removing host nodeA\n" + DONE
                        assert ctrl.calls == [("remove_hosts", ["nodeA"])]
                    else:
                        assert answer == (
                            b"403 removecs is allowed only from the scheduler's host.\n" + DONE
                        )
                        assert ctrl.calls == []
                    client.close()
                finally:
                    await server.close()

        run(scenario)
