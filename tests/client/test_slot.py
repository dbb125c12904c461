"""The local-slot conversation written by hand: same bytes as the protocol, same answers."""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from testbed.client_fakes import FakeDaemon

from iceserv.client.slot import job_local_begin, local_slot
from iceserv.protocol import PROTOCOL_VERSION, JobLocalBegin, MsgType
from iceserv.protocol.connection import Connection
from iceserv.protocol.messages import decode, encode

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


class TestFrame:
    @given(
        stime=st.integers(0, 2**32 - 1),
        # What os.fsdecode can give: any character but NUL and lone surrogates, plus the
        # surrogateescape range (undecodable bytes of a path).
        outfile=st.text(
            st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))
            | st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00)]),
            max_size=300,
        ),
    )
    def test_same_bytes_as_the_protocol_encoder(self, stime, outfile):
        """job_local_begin() writes exactly what iceserv.protocol encodes (paths hold no NUL)."""
        for version in (21, 35, PROTOCOL_VERSION):
            expected = encode(JobLocalBegin(stime=stime, outfile=outfile, id=0), version)
            assert job_local_begin(stime, outfile) == expected

    def test_the_protocol_decodes_it(self):
        """The frame decodes to the message it stands for."""
        frame = job_local_begin(7, "/src/a.o")
        assert int.from_bytes(frame[4:8], "big") == MsgType.JOB_LOCAL_BEGIN
        assert decode(MsgType.JOB_LOCAL_BEGIN, frame[8:], 43) == JobLocalBegin(7, "/src/a.o", 0)

    def test_constants_match_the_protocol(self):
        """The copied constants are the protocol's."""
        from iceserv.client import slot  # noqa: PLC0415
        from iceserv.protocol import MIN_PROTOCOL_VERSION  # noqa: PLC0415
        from iceserv.protocol.constants import MAX_HANDSHAKE_VERSION, MAX_MESSAGE_SIZE  # noqa: PLC0415

        assert slot.PROTOCOL_VERSION == PROTOCOL_VERSION
        assert slot.MIN_PROTOCOL_VERSION == MIN_PROTOCOL_VERSION
        assert slot.MAX_HANDSHAKE_VERSION == MAX_HANDSHAKE_VERSION
        assert slot._MAX_FRAME == MAX_MESSAGE_SIZE
        assert slot.JOB_LOCAL_BEGIN == MsgType.JOB_LOCAL_BEGIN


def peer(script: Callable[[socket.socket], None]) -> socket.socket:
    """Our end of a socket pair whose other end runs *script* in a thread."""
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=lambda: (script(theirs), theirs.close()), daemon=True)
    thread.start()
    return ours


def answer_with(*chunks: bytes) -> Callable[[socket.socket], None]:
    """A peer that sends its version, echoes, reads our request and sends *chunks*."""

    def run(sock: socket.socket) -> None:
        conn = Connection()
        sock.sendall(conn.data_to_send())
        sock.settimeout(10)
        while (data := sock.recv(65536)) and not chunks_due(conn, data):
            sock.sendall(conn.data_to_send())
        sock.sendall(conn.data_to_send())
        for chunk in chunks:
            sock.sendall(chunk)

    return run


def chunks_due(conn: Connection, data: bytes) -> bool:
    """Feed *data*; True once our JOB_LOCAL_BEGIN arrived."""
    conn.receive_data(data)
    while (event := conn.next_event()) is not None and type(event).__name__ != "NeedData":
        if isinstance(event, JobLocalBegin):
            return True
    return False


class TestLocalSlot:
    def test_the_fake_daemon_grants_a_slot(self, tmp_path: Path):
        """Against a protocol-built daemon the go arrives and the daemon saw our request."""
        daemon = FakeDaemon(tmp_path / "d.sock").start()
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(tmp_path / "d.sock"))
            assert local_slot(sock, "/src/a.o", 10.0)
            sock.close()
        finally:
            daemon.close()
        assert [type(m) for m in daemon.messages()[0]] == [JobLocalBegin]
        assert daemon.messages()[0][0].outfile == "/src/a.o"

    def test_a_refusing_daemon_is_no_slot(self, tmp_path: Path):
        """A daemon that hangs up instead of the go means no slot."""
        daemon = FakeDaemon(tmp_path / "d.sock", go=False).start()
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(tmp_path / "d.sock"))
            assert not local_slot(sock, "/src/a.o", 10.0)
            sock.close()
        finally:
            daemon.close()

    @pytest.mark.parametrize(("reply", "granted"), [
        (encode(JobLocalBegin(), 43), True),
        (b"\x00\x00\x00\x04\x00\x00\x00\x43", False),  # another message (END)
        (b"\x7f\x00\x00\x00\x00\x00\x00\x4e", False),  # a frame longer than 1 MiB
        (b"\x00\x00\x00\x02", False),  # a frame too short for its type, then EOF
        (encode(JobLocalBegin(), 43)[:10], False),  # cut short
        (b"", False),  # end of file
    ])  # fmt: skip
    def test_what_counts_as_the_go(self, reply, granted):
        """Only a whole JOB_LOCAL_BEGIN frame is the go; anything else is no slot."""
        sock = peer(answer_with(reply))
        try:
            assert local_slot(sock, "x.o", 10.0) is granted
        finally:
            sock.close()

    def test_a_bad_version_is_no_slot(self):
        """A peer announcing a version below 21 gets no request at all."""
        sock = peer(lambda s: s.sendall((5).to_bytes(4, "little")))
        try:
            assert not local_slot(sock, "x.o", 10.0)
        finally:
            sock.close()

    def test_a_silent_daemon_times_out(self):
        """No go within the time-out is no slot (bounded, not a hang)."""
        sock = peer(answer_with())
        try:
            assert not local_slot(sock, "x.o", 0.3)
        finally:
            sock.close()
