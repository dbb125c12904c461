"""Encryption between iceserv peers on real sockets (issue 14 item 4): our programs and 1.4's.

* Loopback, one shared ``require`` + ``encrypt`` cluster (our scheduler, daemons
  a and b): our client, as a user who cannot read the key, builds on b over a
  sealed channel; a forged record on a sealed channel ends it with one clear
  log line; a real 1.4 client through our daemon gets no ticket and is refused
  (require), so it builds locally — it never received a byte it cannot parse.
* Loopback, ``prefer`` + ``encrypt`` with a real 1.4 ``iceccd``: the mixed
  build still works (in clear, marked unauthenticated).
* Namespace bed: a real C project (zstd) through a ``require`` + ``encrypt``
  cluster with a raw capture on the compile host's link: every object equals
  the local build, and the project's identifiers never cross the wire in
  clear while the clear handshake does (the capture sees the traffic).
Every wait is bounded.
"""

# ruff: noqa: F811 - keys and build_dir are test_auth_live's fixtures, taken as parameters
from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import subprocess
import threading
from typing import TYPE_CHECKING, Final

import pytest
from integration.test_auth_live import (  # noqa: F401 - build_dir and keys are fixtures
    _as_nobody,
    _auth_args,
    _local_object,
    _logged_in,
    _our_client,
    _TicketCluster,
    build_dir,
    keys,
)
from testbed import ClientPlan, Cluster, DaemonPlan, NetnsBed, OurDaemon, OurScheduler, wait_for
from testbed.netns import run_in_netns

from iceserv.protocol import ConnectionClosed, JobTicket, VerifyEnv
from iceserv.protocol.constants import IceservMsgType
from iceserv.protocol.sealing import SALT_BYTES, channel_keys
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.live

_LOGIN: Final = 30.0
_ETH_P_ALL: Final = 0x0003
#: The capture keeps at most this much (a bounded buffer, whatever the build sends).
_CAPTURE_LIMIT: Final = 256 << 20


@pytest.fixture(scope="module")
def sealed(keys: dict[str, Path]) -> Iterator[_TicketCluster]:
    """A keyed cluster under ``auth = require`` and ``encrypt = yes`` (a pushes ahead)."""
    cluster = _TicketCluster(keys, "require", ("--encrypt",))
    try:
        yield cluster
    finally:
        cluster.stop()


class TestRequireEncrypt:
    def test_links_are_sealed(self, sealed):
        """Both daemons' scheduler links were sealed (the scheduler logged it)."""
        for daemon in (sealed.a, sealed.b):
            login = _logged_in(sealed.scheduler, daemon.name)
            assert login is not None
            assert login["encrypted"] is True
            (authenticated,) = daemon.events("scheduler_authenticated")[:1]
            assert authenticated["encrypted"] is True

    def test_our_client_builds_over_a_sealed_channel(self, sealed, build_dir):
        """Our client (as ``nobody``) builds on b; b accepted the ticket and sealed the job."""
        env = sealed.a.client_env({"ICECC_PREFERRED_HOST": sealed.b.name,
                                   "ICECC_FALLBACK": "fail"})  # fmt: skip
        done = _as_nobody([_our_client(build_dir), "gcc", "-c", "hello.c", "-o", "remote.o"],
                          build_dir, env)  # fmt: skip
        assert done.returncode == 0, done.stderr + sealed.b.log_tail()
        assert (build_dir / "remote.o").read_bytes() == _local_object(build_dir)
        jobs = [e for e in sealed.scheduler.events("job_finished")
                if e["server"] == sealed.b.name]  # fmt: skip
        assert jobs
        accepted = {e["job_id"]: e for e in sealed.b.events("job_ticket_accepted")}
        assert accepted[jobs[-1]["job_id"]]["encrypted"] is True

    def test_placement_hands_the_job_key_to_our_client_only(self, sealed):
        """On a's iceserv endpoint the ticket comes with the job key (the link is sealed)."""
        channel, ticket, _ = sealed.placement()
        channel.close()
        assert len(bytes.fromhex(ticket.secret)) == 32

    def test_a_forged_record_ends_the_channel_with_one_line(self, sealed):
        """After a sealed ticket, a record that fails to open closes b's side, logged once."""
        channel, ticket, _ = sealed.placement()
        channel.close()
        salt = secrets.token_bytes(SALT_BYTES)
        b = sealed.b
        before = len(b.events("client_protocol_error"))
        assert b.port is not None
        with socket.create_connection(("127.0.0.1", b.port), timeout=30) as sock:
            peer = BlockingChannel(sock, timeout=30.0)
            peer.send(JobTicket(job_id=ticket.job_id, ticket=ticket.ticket, secret=salt.hex()))
            forged = secrets.token_bytes(64)
            header = struct.pack(">II", 4 + len(forged), int(IceservMsgType.SEALED))
            sock.sendall(header + forged)
            sock.settimeout(30)
            # b closes without a word we could read in clear
            data = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(4096):
                    data += chunk
            assert data == b""
        (line,) = b.wait_events("client_protocol_error", before + 1)[before:]
        assert "failed authentication" in line["error"]
        # The genuine keys would have opened a genuine record: the failure is the forgery's.
        c2s, _ = channel_keys(bytes.fromhex(ticket.secret), salt)
        assert len(c2s) == 32

    def test_a_clear_ticketed_job_is_refused(self, sealed):
        """encrypt = yes under require: a ticket without a salt is refused in clear."""
        channel, ticket, _ = sealed.placement()
        channel.close()
        before = len(sealed.b.events("job_refused"))
        answer = sealed.to_b(JobTicket(job_id=ticket.job_id, ticket=ticket.ticket),
                             VerifyEnv("absent", "x86_64"))  # fmt: skip
        assert not isinstance(answer, ConnectionClosed)
        assert sealed.refusals(before) == ["job not encrypted (encrypt = yes)"]

    def test_real_14_client_gets_nothing_it_cannot_parse(self, sealed, build_dir):
        """The real 1.4 icecc through our daemon: no ticket, refused by b, builds locally."""
        before = len(sealed.b.events("job_refused"))
        env = sealed.a.client_env({"ICECC_PREFERRED_HOST": sealed.b.name})
        subprocess.run(["icecc", "gcc", "-c", "hello.c", "-o", "real.o"], cwd=build_dir,
                       env=env, check=True, timeout=120)  # fmt: skip
        assert (build_dir / "real.o").read_bytes() == _local_object(build_dir)
        assert sealed.refusals(before) == ["no job ticket"]
        assert not sealed.a.events("client_protocol_error")


def test_prefer_encrypt_with_a_real_14_daemon_still_builds(keys, real_daemon_factory, tmp_path):
    """prefer + encrypt: a real 1.4 iceccd logs in (clear, unauthenticated) and its job builds."""
    args = [*_auth_args(keys["good"], "prefer"), "--encrypt"]
    scheduler = OurScheduler(extra_args=args).start()
    ours = OurDaemon("encmixb", scheduler.address, native_compilers="", extra_args=args).start()
    try:
        old = real_daemon_factory("encmixa", scheduler.address)
        for name in ("encmixa", "encmixb"):
            wait_for(lambda n=name: _logged_in(scheduler, n), _LOGIN, f"{name}'s login",
                     context=scheduler.log_tail)  # fmt: skip
        assert _logged_in(scheduler, "encmixa")["auth"] == "unauthenticated"
        assert _logged_in(scheduler, "encmixa")["encrypted"] is False
        assert _logged_in(scheduler, "encmixb")["encrypted"] is True
        (tmp_path / "hello.c").write_text("int answer(int x) { return 6 * x; }\n")
        env = old.client_env({"ICECC_PREFERRED_HOST": "encmixb", "ICECC_TEST_REMOTEBUILD": "1"})
        subprocess.run(["icecc", "gcc", "-c", "hello.c", "-o", "remote.o"], cwd=tmp_path,
                       env=env, check=True, timeout=120)  # fmt: skip
        assert (tmp_path / "remote.o").read_bytes() == _local_object(tmp_path)
        (finished,) = scheduler.wait_events("job_finished", 1)
        assert (finished["submitter"], finished["server"]) == ("encmixa", "encmixb")
        ours.wait_events("job_unauthenticated", 1)
        assert not ours.events("job_refused")
        assert not ours.events("client_protocol_error")
    finally:
        ours.stop()
        assert scheduler.stop() == 0


class _Capture:
    """A raw capture of one namespace interface, reassembled per TCP direction (IPv4)."""

    def __init__(self, netns: str, interface: str = "eth0") -> None:
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
            sock.bind((interface, 0))
            sock.settimeout(0.2)
            return sock

        self._sock = run_in_netns(netns, make)
        self._segments: dict[tuple[bytes, bytes, int, int], dict[int, bytes]] = {}
        self._kept = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            del address  # both directions are wanted
            self._add(frame)

    def _add(self, frame: bytes) -> None:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != socket.IPPROTO_TCP:
            return
        ihl = (frame[14] & 0x0F) * 4
        tcp = 14 + ihl
        total = int.from_bytes(frame[16:18], "big")
        sport, dport, seq = struct.unpack_from(">HHI", frame, tcp)
        offset = (frame[tcp + 12] >> 4) * 4
        payload = frame[tcp + offset : 14 + total]
        if not payload or self._kept > _CAPTURE_LIMIT:
            return
        flow = (frame[26:30], frame[30:34], sport, dport)
        self._segments.setdefault(flow, {}).setdefault(seq, payload)
        self._kept += len(payload)

    def stop(self) -> list[bytes]:
        """Stop; return each TCP direction's bytes in sequence order (gaps left out)."""
        self._stop.set()
        self._thread.join(10)
        self._sock.close()
        streams = []
        for segments in self._segments.values():
            data, end = bytearray(), None
            for seq in sorted(segments):
                piece = segments[seq]
                if end is not None and seq < end:
                    piece = piece[end - seq :]
                data += piece
                end = max(end or 0, seq + len(segments[seq]))
            streams.append(bytes(data))
        return streams


@pytest.mark.netns
def test_c_project_through_a_require_encrypt_cluster(keys, project, zstd):
    """zstd through require + encrypt: objects as local gcc's, no source on the wire in clear.

    Two namespace hosts; the scheduler and daemons get key, mode and
    ``ICECC_ENCRYPT=yes`` from the environment.  A raw capture on h2's link
    (scheduler link and compile jobs) sees the clear handshake (the seal
    option in AUTH_HELLO) but never ``ZSTD_``, which every preprocessed unit
    and every object of the project is full of.
    """
    keyed = {"ICECC_NETWORK_KEY_FILE": str(keys["good"]), "ICECC_AUTH": "require",
             "ICECC_ENCRYPT": "yes"}  # fmt: skip
    plans = (DaemonPlan("ours", max_jobs=1, extra_env=keyed), DaemonPlan("ours", extra_env=keyed))
    with NetnsBed(2) as bed:
        capture = _Capture(bed[1].name)
        try:
            with Cluster(bed, "ours", plans, scheduler_env=keyed) as cluster:
                result = cluster.build(project, zstd.reference, ClientPlan("ours"), on=0, jobs=4)
                problems = result.problems(on=("h1-ours", "h2-ours"))
                assert not problems, "\n- ".join([result.summary(), *problems]) + (
                    cluster.log_tails()
                )
                server = cluster.daemon(1)
                assert isinstance(server, OurDaemon)
                began = result.placement.began["h2-ours"]
                accepted = server.wait_events("job_ticket_accepted", began)
                assert all(e["encrypted"] for e in accepted if e["job_id"])
                assert not server.events("job_refused")
        finally:
            streams = capture.stop()
    wire = b"\n".join(streams)
    assert sum(map(len, streams)) > 100_000, "the capture saw the build's traffic"
    assert b"seal-aesgcm-v1" in wire, "the capture sees the clear handshake"
    assert b"ZSTD_" not in wire, "project source or objects crossed the link in clear"
