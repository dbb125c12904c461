"""``icecc --slots``: asked through the daemon's iceserv-only endpoint, never a 1.4 daemon."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from testbed.client_fakes import FakeDaemon

from iceserv.client.slotcount import QUERY_FRAME, endpoint_name, parse_answer
from iceserv.protocol import ConnectionClosed, SlotsAnswer, SlotsQuery
from iceserv.protocol.endpoint import iceserv_endpoint, tcp_address
from iceserv.protocol.messages import encode
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from pathlib import Path

    from client.bed import WrapperBed

TIMEOUT = 10.0


class FakeIceservEndpoint:
    """The abstract endpoint an iceserv daemon at *path* listens on, answering SLOTS_QUERY."""

    def __init__(self, path: Path, answer: SlotsAnswer) -> None:
        self.answer = answer
        self.queries: list[object] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(iceserv_endpoint(str(path)))
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            sock, _ = self.listener.accept()
            channel = BlockingChannel(sock, timeout=TIMEOUT)
            event = channel.receive()
            self.queries.append(event)
            channel.send(self.answer)
            assert isinstance(channel.receive(), ConnectionClosed)
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(TIMEOUT)


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


class TestSlotsOption:
    def test_cluster_count_from_an_iceserv_daemon(self, bed: WrapperBed):
        """The daemon's endpoint gets SLOTS_QUERY; stdout is the total, stderr is empty."""
        endpoint = FakeIceservEndpoint(bed.root / "daemon.sock", SlotsAnswer(12, 5, 4, "cluster"))
        try:
            done = bed.run([bed.program("ours", "icecc"), "--slots"])
        finally:
            endpoint.close()
        assert (done.status, done.stdout, done.stderr) == (0, b"12\n", b"")
        assert endpoint.queries == [SlotsQuery()]

    def test_free_prints_the_free_slots(self, bed: WrapperBed):
        """--free prints the answer's free count."""
        endpoint = FakeIceservEndpoint(bed.root / "daemon.sock", SlotsAnswer(12, 5, 4, "cluster"))
        try:
            done = bed.run([bed.program("ours", "icecc"), "--slots", "--free"])
        finally:
            endpoint.close()
        assert (done.status, done.stdout) == (0, b"5\n")

    def test_daemon_alone_says_why_on_stderr(self, bed: WrapperBed):
        """An answer the daemon made alone: its count on stdout, the reason on stderr."""
        answer = SlotsAnswer(3, 2, 1, "the scheduler is icecream 1.4")
        endpoint = FakeIceservEndpoint(bed.root / "daemon.sock", answer)
        try:
            done = bed.run([bed.program("ours", "icecc"), "--slots"])
        finally:
            endpoint.close()
        assert (done.status, done.stdout) == (0, b"3\n")
        assert done.stderr == (
            b"icecc: the scheduler is icecream 1.4; counting this host's slots only\n"
        )

    def test_a_1_4_daemon_is_sent_nothing(self, bed: WrapperBed):
        """A daemon without the endpoint is connected to and left: not one message; CPUs count."""
        daemon = FakeDaemon(bed.root / "daemon.sock")
        done = bed.run([bed.program("ours", "icecc"), "--slots"], daemon=daemon)
        assert (done.status, done.stdout) == (0, f"{_cpus()}\n".encode())
        assert done.daemon == [[]]
        assert done.stderr == (
            b"icecc: the local daemon is not iceserv (icecream 1.4?); "
            + f"counting this machine's {_cpus()} CPUs\n".encode()
        )

    def test_no_daemon(self, bed: WrapperBed):
        """Nobody at ICECC_TEST_SOCKET: the CPU count, and why."""
        done = bed.run([bed.program("ours", "icecc"), "--slots", "--free"])
        assert (done.status, done.stdout) == (0, f"{_cpus()}\n".encode())
        assert done.stderr.startswith(b"icecc: no local daemon; ")

    @pytest.mark.parametrize("argv", [["--slots", "--all"], ["--slots", "gcc"]])
    def test_unknown_arguments(self, bed: WrapperBed, argv):
        """Anything but --free after --slots is a usage error (exit 2)."""
        done = bed.run([bed.program("ours", "icecc"), *argv])
        usage = b"usage: icecc --slots [--free]\n"
        assert (done.status, done.stdout, done.stderr) == (2, b"", usage)


#: Path-like addresses: normal absolute paths take the client's short cut, the rest do not.
PATHS = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["/", "//", ""]),
    st.lists(st.sampled_from(["run", "icecc", "", ".", "..", ".x", "d.sock"]), max_size=6),
)


class TestHandWrittenBytes:
    """The client's own query bytes, answer decoder and endpoint name match the protocol's."""

    def test_query_frame_is_the_encoders(self):
        """QUERY_FRAME is exactly encode(SlotsQuery()) at protocol 43."""
        assert encode(SlotsQuery(), 43) == QUERY_FRAME

    @given(
        total=st.integers(0, 2**32 - 1),
        free=st.integers(0, 2**32 - 1),
        hosts=st.integers(0, 2**32 - 1),
        source=st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                              blacklist_characters="\0"), max_size=40),
    )  # fmt: skip
    def test_answer_decodes_like_the_protocol(self, total, free, hosts, source):
        """Every encodable SLOTS_ANSWER payload decodes to the same fields."""
        payload = encode(SlotsAnswer(total, free, hosts, source), 43)[8:]
        answer = parse_answer(payload)
        assert answer is not None
        assert (answer.total, answer.free, answer.hosts, answer.source) == (
            total,
            free,
            hosts,
            source,
        )

    @pytest.mark.parametrize("payload", [b"", b"\0" * 15, b"\0" * 12 + b"\0\0\0\5ab\0", b"\0" * 17])
    def test_malformed_answers_are_refused(self, payload):
        """Short payloads and a string length that does not match the frame give None."""
        assert parse_answer(payload) is None

    @given(address=st.one_of(st.text(max_size=60), st.integers(1, 65535).map(tcp_address), PATHS))
    def test_endpoint_name_is_the_protocols(self, address):
        """The client's endpoint name equals iceserv.protocol.endpoint's for any address."""
        assert endpoint_name(address) == iceserv_endpoint(address)
