"""Tests of iceserv.scheduler.auth (the per-connection gate) and the core's auth states."""

from __future__ import annotations

import dataclasses

import pytest
from scheduler.builders import T0, get_cs, login, new_core, sends

from iceserv.protocol import (
    AuthChallenge,
    AuthHello,
    AuthProof,
    HostAddresses,
    JobTicket,
    Login,
    MonLogin,
    Stats,
    UseCS,
)
from iceserv.protocol.auth import AuthError, AuthMode, DaemonHandshake, Endpoints, KeyRing, key_id
from iceserv.protocol.sealing import SEAL_OPTION, WANT_SEAL, Opener, Sealer, job_key, link_keys
from iceserv.protocol.tickets import verify_ticket
from iceserv.scheduler.auth import AuthGate, AuthState
from iceserv.scheduler.jobs import TICKET_LIFETIME

KEY = bytes(range(32))
RING = KeyRing((KEY,))
ENDS = Endpoints(("10.0.0.2", 40000), ("10.0.0.1", 8765))
NONCE = b"s" * 32
LOGIN = Login(port=10245, max_kids=4, nodename="a", host_platform="x86_64")


def _gate(mode: AuthMode = AuthMode.REQUIRE) -> AuthGate:
    return AuthGate(mode, RING, NONCE, ENDS)


def _prove(gate: AuthGate, ring: KeyRing = RING) -> None:
    daemon = DaemonHandshake(ring, b"d" * 32, ENDS)
    verdict = gate.handle(daemon.hello())
    assert isinstance(verdict.send, AuthChallenge)
    assert gate.handle(daemon.answer(verdict.send)).refuse == ""


class TestAuthGate:
    def test_off_passes_everything(self):
        """With auth off every message, AUTH_HELLO too, goes to the core untouched."""
        gate = _gate(AuthMode.OFF)
        hello = AuthHello("00", ("11",))
        assert gate.handle(hello).forward is hello
        assert gate.state is AuthState.OFF

    def test_proof_then_login(self):
        """A daemon that proved the key logs in as authenticated."""
        gate = _gate()
        _prove(gate)
        assert gate.handle(LOGIN).forward is LOGIN
        assert gate.state is AuthState.AUTHENTICATED
        assert gate.key_id == key_id(KEY).hex()

    def test_require_refuses_a_login_without_proof(self):
        """Under require a bare LOGIN (1.4, keyless) is refused with one reason."""
        verdict = _gate().handle(LOGIN)
        assert verdict.forward is None
        assert verdict.refuse == "no proof of the network key (icecream 1.4 or no key)"

    def test_prefer_marks_a_login_without_proof(self):
        """Under prefer a bare LOGIN passes, marked unauthenticated."""
        gate = _gate(AuthMode.PREFER)
        assert gate.handle(LOGIN).forward is LOGIN
        assert gate.state is AuthState.UNAUTHENTICATED

    def test_wrong_key_and_bad_proof_are_refused(self):
        """A hello with another key, or a bad proof, is refused."""
        other = KeyRing((bytes(range(1, 33)),))
        assert "wrong key" in _gate().handle(DaemonHandshake(other, b"d" * 32, ENDS).hello()).refuse
        gate = _gate(AuthMode.PREFER)
        gate.handle(DaemonHandshake(RING, b"d" * 32, ENDS).hello())
        assert gate.handle(AuthProof("00" * 32)).refuse == "wrong key"

    def test_nothing_else_between_hello_and_proof(self):
        """Once challenged, a LOGIN before the proof is refused (even under prefer)."""
        gate = _gate(AuthMode.PREFER)
        gate.handle(DaemonHandshake(RING, b"d" * 32, ENDS).hello())
        assert gate.handle(LOGIN).refuse == "Login before the proof of the key"

    def test_monitors_pass(self):
        """MON_LOGIN passes in every mode: monitors only read."""
        msg = MonLogin()
        assert _gate().handle(msg).forward is msg

    def test_after_login_everything_passes(self):
        """After the LOGIN the gate stands aside (the core handles the rest)."""
        gate = _gate()
        _prove(gate)
        gate.handle(LOGIN)
        stats = Stats(load=1)
        assert gate.handle(stats).forward is stats


def _login_as(core, conn_id: int, name: str, state: AuthState, ip: str = "") -> None:
    """Connect, record what the gate concluded, then LOGIN and STATS (as the shell does)."""
    core.peer_connected(conn_id, ip or f"10.0.0.{conn_id}", 43, 43)
    core.peer_authenticated(conn_id, state)
    fields = {"port": 10245, "max_kids": 4, "nodename": name, "host_platform": "x86_64",
              "chroot_possible": True, "supported_features": 3}  # fmt: skip
    core.handle_message(conn_id, Login(**fields), T0)
    core.handle_message(conn_id, Stats(load=0), T0)


class TestCoreAuthState:
    def test_unauthenticated_daemon_gets_no_foreign_jobs(self):
        """A prefer-mode 1.4 daemon logs in as no-remote: other hosts' jobs never go to it."""
        core = new_core()
        _login_as(core, 1, "old", AuthState.UNAUTHENTICATED)
        host = core.host_by_conn(1)
        assert host is not None
        assert (host.auth, host.noremote) == ("unauthenticated", True)
        login(core, 2, "client", max_kids=0)
        effects = get_cs(core, 2, T0)
        used = [m.hostname for m in sends(effects) if isinstance(m, UseCS)]
        assert "10.0.0.1" not in used

    def test_authenticated_daemon_takes_jobs(self):
        """An authenticated daemon is an ordinary compile server, its state recorded."""
        core = new_core()
        _login_as(core, 1, "new", AuthState.AUTHENTICATED)
        login(core, 2, "client", max_kids=0)
        assert core.host_by_conn(1).auth == "authenticated"
        used = [m for m in sends(get_cs(core, 2, T0)) if isinstance(m, UseCS)]
        assert [m.hostname for m in used] == ["10.0.0.1"]


def _keyed_core():
    core = new_core()
    core.config = dataclasses.replace(core.config, ticket_keys=(KEY,))
    return core


class TestTickets:
    """Placements carry a JOB_TICKET only between authenticated daemons (issue 14 item 3)."""

    def test_ticket_goes_just_before_use_cs(self):
        """The submitter gets a ticket for the job, its host and the server's, then USE_CS."""
        core = _keyed_core()
        _login_as(core, 1, "server", AuthState.AUTHENTICATED)
        _login_as(core, 2, "client", AuthState.AUTHENTICATED)
        core.host_by_conn(2).max_jobs = 0  # the job must go to the server
        ticket, use = sends(get_cs(core, 2, T0), 2)
        assert isinstance(ticket, JobTicket)
        assert isinstance(use, UseCS)
        assert (ticket.job_id, ticket.client_id) == (use.job_id, use.client_id)
        expires = verify_ticket(
            RING, ticket.ticket, job_id=use.job_id, client="10.0.0.2", server="10.0.0.1", now=T0
        )
        assert expires == int(T0) + TICKET_LIFETIME
        with pytest.raises(AuthError, match="expired"):
            verify_ticket(RING, ticket.ticket, job_id=use.job_id, client="10.0.0.2",
                          server="10.0.0.1", now=T0 + TICKET_LIFETIME + 1)  # fmt: skip

    @pytest.mark.parametrize(
        ("server", "client"),
        [
            (AuthState.AUTHENTICATED, AuthState.UNAUTHENTICATED),
            (AuthState.OFF, AuthState.OFF),
        ],
        ids=["14-submitter", "auth-off-peers"],
    )
    def test_no_ticket_unless_both_proved_the_key(self, server, client):
        """A 1.4 (unauthenticated) submitter never receives the iceserv-only JOB_TICKET."""
        core = _keyed_core()
        _login_as(core, 1, "server", server)
        _login_as(core, 2, "client", client)
        core.host_by_conn(2).max_jobs = 0
        assert [type(m) for m in sends(get_cs(core, 2, T0), 2)] == [UseCS]

    def test_dual_stack_ticket_names_the_addresses_of_the_family_used(self):
        """Both logged in over IPv6 and declared IPv4: USE_CS names IPv4, so does the ticket."""
        core = _keyed_core()
        _login_as(core, 1, "server", AuthState.AUTHENTICATED, ip="fd00::1")
        _login_as(core, 2, "client", AuthState.AUTHENTICATED, ip="fd00::2")
        core.handle_message(1, HostAddresses(("10.0.0.1", "fd00::1"), ("ipv4", "ipv6")), T0)
        core.handle_message(2, HostAddresses(("10.0.0.2", "fd00::2"), ("ipv4", "ipv6")), T0)
        core.host_by_conn(2).max_jobs = 0
        ticket, use = sends(get_cs(core, 2, T0), 2)
        assert use.hostname == "10.0.0.1"
        verify_ticket(RING, ticket.ticket, job_id=use.job_id, client="10.0.0.2",
                      server="10.0.0.1", now=T0)  # fmt: skip

    def test_no_ticket_without_keys(self):
        """A scheduler without ticket keys (auth off) sends USE_CS alone, as 1.4."""
        core = new_core()
        _login_as(core, 1, "server", AuthState.AUTHENTICATED)
        _login_as(core, 2, "client", AuthState.AUTHENTICATED)
        core.host_by_conn(2).max_jobs = 0
        assert [type(m) for m in sends(get_cs(core, 2, T0), 2)] == [UseCS]


class TestServerAnnouncements:
    """The shell's UDP dispatch under a key (in-process, no sockets)."""

    def _server(self, auth: str, keys: tuple[bytes, ...]):
        import random  # noqa: PLC0415 - only here

        from iceserv.scheduler.server import SchedulerServer, SchedulerServerSettings  # noqa: PLC0415
        from iceserv.testing import FakeClock  # noqa: PLC0415

        clock = FakeClock()
        settings = SchedulerServerSettings(auth=auth, keys=keys, netname="ICECREAM")
        server = SchedulerServer(settings, clock=clock, rng=random.Random(1))  # noqa: S311
        heard: list[object] = []

        def record(info, _now):
            heard.append(info)
            return []

        server.core.handle_announcement = record  # a recorder in place of the core's handler
        return server, clock, heard

    def test_keyed_scheduler_hears_only_proven_announcements(self):
        """Under a key a plain ICF is ignored and a proven announcement is heard."""
        from iceserv.protocol.auth import encode_proven_announcement  # noqa: PLC0415
        from iceserv.protocol.discovery import SchedulerInfo, encode_announcements  # noqa: PLC0415

        server, clock, heard = self._server("require", (KEY,))
        better = SchedulerInfo(43, 1, "ICECREAM")
        addr = ("192.0.2.9", 8765)
        for datagram in encode_announcements(better):
            server.datagram_received(datagram, addr)
        assert heard == []
        server.datagram_received(encode_proven_announcement(RING, better, clock.now()), addr)
        assert heard == [better]

    def test_unkeyed_scheduler_hears_icf_as_before(self):
        """With auth off the ICF announcement is heard as in 1.4; a proven one is not parsed."""
        from iceserv.protocol.auth import encode_proven_announcement  # noqa: PLC0415
        from iceserv.protocol.discovery import SchedulerInfo, encode_announcements  # noqa: PLC0415

        server, clock, heard = self._server("off", ())
        better = SchedulerInfo(43, 1, "ICECREAM")
        server.datagram_received(
            encode_proven_announcement(RING, better, clock.now()), ("192.0.2.9", 8765)
        )
        assert heard == []
        server.datagram_received(encode_announcements(better)[1], ("192.0.2.9", 8765))
        assert heard == [better]


class TestSealing:
    """Issue 14 item 4: the gate seals a daemon's link when agreed; sealed links get job keys."""

    def _hello(self, *options: str) -> tuple[DaemonHandshake, AuthHello]:
        daemon = DaemonHandshake(RING, b"d" * 32, ENDS)
        return daemon, daemon.hello(options)

    @pytest.mark.parametrize(
        ("encrypt", "options"),
        [(True, (SEAL_OPTION,)), (False, (SEAL_OPTION, WANT_SEAL))],
        ids=["scheduler-wants", "daemon-asks"],
    )
    def test_agreed_sealing_seals_after_the_challenge_and_opens_after_the_proof(
        self, encrypt, options
    ):
        """The challenge says so, we seal from it on, and open the daemon's side after its proof."""
        gate = AuthGate(AuthMode.REQUIRE, RING, NONCE, ENDS, encrypt=encrypt)
        daemon, hello = self._hello(*options)
        verdict = gate.handle(hello)
        assert isinstance(verdict.send, AuthChallenge)
        assert verdict.send.options == (SEAL_OPTION,)
        assert verdict.seal is not None
        assert verdict.open is None
        proof = gate.handle(daemon.answer(verdict.send))
        assert proof.open is not None
        assert gate.sealed
        # Both ends derive the same keys: what the gate seals, the daemon opens.
        d2s, s2d = link_keys(daemon.material)
        record = verdict.seal.seal(b"\0\0\0\x04\0\0\0\x41")
        assert Opener(s2d).open(record[:8], record[8:]) == b"\0\0\0\x04\0\0\0\x41"
        record = Sealer(d2s).seal(b"\0\0\0\x04\0\0\0\x42")
        assert proof.open.open(record[:8], record[8:]) == b"\0\0\0\x04\0\0\0\x42"

    def test_nobody_wants_it_stays_clear(self):
        """A daemon that can seal but does not ask, and a scheduler without encrypt: clear."""
        gate = AuthGate(AuthMode.REQUIRE, RING, NONCE, ENDS)
        verdict = gate.handle(self._hello(SEAL_OPTION)[1])
        assert verdict.send is not None
        assert verdict.send.options == ()
        assert verdict.seal is None
        assert not gate.sealed

    @pytest.mark.parametrize("mode", [AuthMode.PREFER, AuthMode.REQUIRE])
    def test_a_daemon_that_cannot_seal(self, mode):
        """encrypt = yes: one that cannot seal is served in clear (prefer), refused (require)."""
        gate = AuthGate(mode, RING, NONCE, ENDS, encrypt=True)
        verdict = gate.handle(self._hello()[1])
        if mode is AuthMode.REQUIRE:
            assert verdict.refuse == "the daemon cannot encrypt (encrypt = yes)"
        else:
            assert verdict.seal is None
            assert verdict.send is not None

    @pytest.mark.parametrize(("server", "client"), [(True, True), (True, False), (False, True)])
    def test_job_key_only_when_both_links_are_sealed(self, server, client):
        """The job key rides beside the ticket only if both daemons' links are sealed."""
        core = _keyed_core()
        for conn_id, name, sealed in ((1, "server", server), (2, "client", client)):
            core.peer_connected(conn_id, f"10.0.0.{conn_id}", 43, 43)
            core.peer_authenticated(conn_id, AuthState.AUTHENTICATED, sealed=sealed)
            fields = {"port": 10245, "max_kids": 4, "nodename": name, "host_platform": "x86_64",
                      "chroot_possible": True, "supported_features": 3}  # fmt: skip
            core.handle_message(conn_id, Login(**fields), T0)
            core.handle_message(conn_id, Stats(load=0), T0)
        core.host_by_conn(2).max_jobs = 0
        ticket, _ = sends(get_cs(core, 2, T0), 2)
        assert isinstance(ticket, JobTicket)
        if server and client:
            assert bytes.fromhex(ticket.secret) == job_key(RING, ticket.ticket)
        else:
            assert ticket.secret == ""
