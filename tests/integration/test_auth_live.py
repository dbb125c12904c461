"""The network key on real sockets (issue 14 items 1 and 2): our programs and the real 1.4 ones.

Loopback only: our scheduler (``python -m iceserv.app.scheduler``) with
``--key-file``/``--auth``, our daemons with ``-s`` to it, a real 1.4
``iceccd`` and a real 1.4 ``icecc-scheduler`` as the peers that cannot prove
the key, and a raw connection speaking our codec as a peer with a wrong key.
What each side concluded is read from the JSON logs (``daemon_logged_in``
with its ``auth`` field, ``peer_refused``, ``scheduler_unproven``) and from
the real scheduler's telnet ``listcs``.  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest
from testbed import (
    ClientPlan,
    Cluster,
    DaemonPlan,
    NetnsBed,
    OurDaemon,
    OurScheduler,
    RealScheduler,
    wait_for,
)
from testbed.netns import run_in_netns

from iceserv.protocol import (
    AuthHello,
    CompileFile,
    ConnectionClosed,
    EnvEntry,
    GetCS,
    JobTicket,
    Login,
    StatusText,
    UseCS,
    VerifyEnv,
    VerifyEnvResult,
)
from iceserv.protocol.auth import KeyRing
from iceserv.protocol.endpoint import iceserv_endpoint
from iceserv.protocol.tickets import issue_ticket
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.live

_LOGIN: Final = 30.0
#: Long enough for a few login attempts of a daemon under ICECC_TESTS (3 s apart).
_REFUSALS: Final = 30.0


def _key(path: Path) -> Path:
    path.write_bytes(secrets.token_bytes(48))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two keys: the cluster's and another one."""
    root = tmp_path_factory.mktemp("keys")
    return {"good": _key(root / "good.key"), "other": _key(root / "other.key")}


def _auth_args(key: Path, mode: str, previous: Path | None = None) -> list[str]:
    args = ["--key-file", str(key), "--auth", mode]
    return args + (["--previous-key-file", str(previous)] if previous else [])


@pytest.fixture(scope="module")
def require(keys: dict[str, Path]) -> Iterator[OurScheduler]:
    """Our scheduler under ``auth = require`` with the good key."""
    scheduler = OurScheduler(extra_args=_auth_args(keys["good"], "require")).start()
    try:
        yield scheduler
    finally:
        assert scheduler.stop() == 0


def _daemon(name: str, scheduler: str, args: list[str]) -> OurDaemon:
    return OurDaemon(name, scheduler, native_compilers="", extra_args=args).start()


def _logged_in(scheduler: OurScheduler, name: str) -> dict[str, object] | None:
    return next((e for e in scheduler.events("daemon_logged_in") if e["nodename"] == name), None)


class TestRequire:
    def test_keyed_daemon_authenticates(self, require, keys):
        """A daemon with the key proves it, checks the scheduler's proof and logs in."""
        daemon = _daemon("authgood", require.address, _auth_args(keys["good"], "require"))
        try:
            login = wait_for(lambda: _logged_in(require, "authgood"), _LOGIN, "the login",
                             context=daemon.log_tail)  # fmt: skip
            assert login["auth"] == "authenticated"
            assert daemon.events("scheduler_authenticated")
            assert daemon.events("scheduler_logged_in")
        finally:
            daemon.stop()

    def test_wrong_key_daemon_never_connects(self, require, keys):
        """A daemon with another key gets no proven offer and never logs in."""
        daemon = _daemon("authwrong", require.address, _auth_args(keys["other"], "require"))
        try:
            daemon.wait_events("scheduler_unproven", 1, timeout=_LOGIN)
            assert not daemon.events("scheduler_logged_in")
            assert _logged_in(require, "authwrong") is None
        finally:
            daemon.stop()

    def test_wrong_key_peer_is_refused_on_tcp(self, require, keys):
        """A peer naming a key the scheduler lacks is refused and closed, one log line."""
        from iceserv.protocol.auth import key_id  # noqa: PLC0415 - only here

        before = len(require.events("peer_refused"))
        channel = BlockingChannel.connect("127.0.0.1", require.port, timeout=10.0)
        try:
            wrong = key_id(keys["other"].read_bytes()).hex()
            channel.send(AuthHello(secrets.token_bytes(32).hex(), (wrong,)))
            try:
                closed = isinstance(channel.receive(), ConnectionClosed)  # no challenge: the end
            except ConnectionResetError:
                closed = True
            assert closed
        finally:
            channel.close()
        refused = require.wait_events("peer_refused", before + 1)[before:]
        assert [r["reason"] for r in refused] == ["no key in common (wrong key)"]

    def test_login_without_proof_is_refused(self, require):
        """A LOGIN with no proof (as a 1.4 or keyless daemon sends it) is refused."""
        before = len(require.events("peer_refused"))
        channel = BlockingChannel.connect("127.0.0.1", require.port, timeout=10.0)
        try:
            channel.send(Login(port=1, max_kids=1, nodename="authnokey", host_platform="x86_64"))
            refused = require.wait_events("peer_refused", before + 1)[before:]
        finally:
            channel.close()
        assert refused[0]["reason"].startswith("no proof of the network key")
        assert _logged_in(require, "authnokey") is None

    def test_real_14_daemon_is_refused(self, require, real_daemon_factory):
        """A real 1.4 iceccd is refused with one line per attempt and never listed."""
        before = len(require.events("peer_refused"))
        daemon = real_daemon_factory("authreal14", require.address)
        require.wait_events("peer_refused", before + 1, timeout=_REFUSALS)
        assert daemon.check_alive()
        assert _logged_in(require, "authreal14") is None

    def test_rogue_14_scheduler_cannot_capture(self, real_scheduler, keys):
        """A daemon with a key never logs in to a real 1.4 scheduler (it cannot prove the key)."""
        daemon = _daemon("authrogue", real_scheduler.address, _auth_args(keys["good"], "prefer"))
        try:
            daemon.wait_events("scheduler_unproven", 2, timeout=_LOGIN)
            assert not daemon.events("scheduler_logged_in")
            assert "authrogue" not in real_scheduler.host_names()
        finally:
            daemon.stop()


class TestPreferAndRotation:
    def test_prefer_serves_14_marked_unauthenticated(self, keys, real_daemon_factory):
        """Under prefer a real 1.4 iceccd logs in, marked unauthenticated."""
        scheduler = OurScheduler(extra_args=_auth_args(keys["good"], "prefer")).start()
        try:
            real_daemon_factory("authpref14", scheduler.address)
            login = wait_for(lambda: _logged_in(scheduler, "authpref14"), _LOGIN, "the login",
                             context=scheduler.log_tail)  # fmt: skip
            assert login["auth"] == "unauthenticated"
            assert not scheduler.events("peer_refused")
        finally:
            assert scheduler.stop() == 0

    def test_prefer_mixed_build(self, keys, real_daemon_factory, tmp_path):
        """Under prefer jobs through a real 1.4 iceccd compile on our keyed daemon, no ticket.

        The real icecc's and ours: neither gets a ticket behind a 1.4 daemon, and
        both objects equal local gcc's.
        """
        scheduler = OurScheduler(extra_args=_auth_args(keys["good"], "prefer")).start()
        ours = _daemon("authmixb", scheduler.address, _auth_args(keys["good"], "prefer"))
        try:
            old = real_daemon_factory("authmixa", scheduler.address)
            for name in ("authmixa", "authmixb"):
                wait_for(lambda n=name: _logged_in(scheduler, n), _LOGIN, f"{name}'s login",
                         context=scheduler.log_tail)  # fmt: skip
            assert _logged_in(scheduler, "authmixb")["auth"] == "authenticated"
            (tmp_path / "hello.c").write_text("int main(void) { return 0; }\n")
            env = old.client_env(
                {"ICECC_PREFERRED_HOST": "authmixb", "ICECC_TEST_REMOTEBUILD": "1"}
            )
            subprocess.run(["icecc", "gcc", "-c", "hello.c", "-o", "remote.o"], cwd=tmp_path,
                           env=env, check=True, timeout=120)  # fmt: skip
            subprocess.run(["gcc", "-c", "hello.c", "-o", "local.o"], cwd=tmp_path, check=True,
                           timeout=60)  # fmt: skip
            assert (tmp_path / "remote.o").read_bytes() == (tmp_path / "local.o").read_bytes()
            (finished,) = scheduler.wait_events("job_finished", 1)
            assert (finished["submitter"], finished["server"]) == ("authmixa", "authmixb")
            # No ticket (1.4's client, 1.4's daemon): served under prefer, counted once.
            (served,) = ours.wait_events("job_unauthenticated", 1)
            assert served["request"] == "EnvTransfer"  # its first request: the environment
            # Our client behind the 1.4 daemon: no endpoint there, no ticket; served the same.
            subprocess.run([_our_client(tmp_path), "gcc", "-c", "hello.c", "-o", "ours.o"],
                           cwd=tmp_path, env={**env, "ICECC_FALLBACK": "fail"}, check=True,
                           timeout=120)  # fmt: skip
            assert (tmp_path / "ours.o").read_bytes() == (tmp_path / "local.o").read_bytes()
            assert len(ours.wait_events("job_unauthenticated", 2)) == 2
            assert not ours.events("job_refused")
        finally:
            ours.stop()
            assert scheduler.stop() == 0

    def test_rotation_and_sighup_reload(self, keys, tmp_path):
        """previous_key_file accepts the old key; SIGHUP loads a new key file content."""
        key = tmp_path / "cluster.key"
        key.write_bytes(keys["other"].read_bytes())
        key.chmod(0o600)
        args = _auth_args(key, "require", previous=keys["good"])
        scheduler = OurScheduler(extra_args=args).start()
        try:
            old = _daemon("authold", scheduler.address, _auth_args(keys["good"], "require"))
            try:
                login = wait_for(lambda: _logged_in(scheduler, "authold"), _LOGIN, "old key",
                                 context=old.log_tail)  # fmt: skip
                assert login["auth"] == "authenticated"
            finally:
                old.stop()
            fresh = tmp_path / "fresh.key"
            _key(fresh)
            fresh.replace(key)  # the new key, same path
            assert scheduler.proc is not None
            scheduler.proc.send_signal(signal.SIGHUP)
            scheduler.wait_events("network_key_loaded", 1)
            new = _daemon("authnew", scheduler.address, _auth_args(key, "require"))
            try:
                wait_for(lambda: _logged_in(scheduler, "authnew"), _LOGIN, "the reloaded key",
                         context=new.log_tail)  # fmt: skip
            finally:
                new.stop()
        finally:
            assert scheduler.stop() == 0


def test_no_discovery_reply_to_plain_requests_changes(require):
    """A plain 1-byte discovery request still gets 1.4's 268-byte reply under require."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        deadline = time.monotonic() + 10
        while True:
            sock.sendto(bytes([43]), ("127.0.0.1", require.port))
            try:
                data, _ = sock.recvfrom(1024)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
    assert len(data) == 268


@pytest.mark.netns
def test_rogue_schedulers_on_the_net_cannot_capture(keys):
    """By broadcast discovery a keyed daemon logs in to the keyed scheduler, not to rogues.

    Three namespace hosts on one bridge, one net name: a real 1.4 scheduler
    (h2) and a keyless iceserv scheduler (h3), both started first (the
    longest-running scheduler wins 1.4's election), and our keyed scheduler
    (h1).  The keyed daemon on h3 discovers by broadcast and logs in to h1
    (without its key it goes to a rogue: checked when this test was written).
    """
    netname = f"AUTH{os.getpid()}"
    with NetnsBed(3) as bed, contextlib.ExitStack() as stack:
        h1, h2, h3 = bed
        rogue14 = stack.enter_context(RealScheduler(host=h2, port=8765, netname=netname))
        rogue = OurScheduler(host=h3, port=8765, loopback_only=False, netname=netname).start()
        stack.callback(rogue.stop)
        good = OurScheduler(host=h1, port=8765, loopback_only=False, netname=netname,
                            extra_args=_auth_args(keys["good"], "require")).start()  # fmt: skip
        stack.callback(good.stop)
        daemon = OurDaemon("authnet", host=h3, max_jobs=1, port=10245, netname=netname,
                           native_compilers="",
                           extra_args=_auth_args(keys["good"], "prefer")).start()  # fmt: skip
        stack.callback(daemon.stop)
        (record,) = daemon.wait_events("scheduler_logged_in", 1, timeout=60)[:1]
        assert record["connected_to"] == f"{h1.ip}:8765", daemon.log_tail()
        login = wait_for(lambda: _logged_in(good, "authnet"), _LOGIN, "the login")
        assert login["auth"] == "authenticated"
        assert _logged_in(rogue, "authnet") is None
        assert "authnet" not in rogue14.host_names()


# --- job tickets (issue 14 item 3) -----------------------------------------------------

_REPO: Final = Path(__file__).resolve().parents[2]
#: Our ``icecc``, importing iceserv from this checkout.
_OUR_CLIENT: Final = (
    "#!{python}\nimport sys\nsys.path.insert(0, {repo!r})\n"
    "from iceserv.client.main import main\nsys.exit(main())\n"
)
_HELLO: Final = "int answer(int x) { return 6 * x; }\n"


class _TicketCluster:
    """Our scheduler and two daemons (a submits, b compiles), all under one auth mode."""

    def __init__(self, keys: dict[str, Path], mode: str, extra: tuple[str, ...] = ()) -> None:
        self.key = keys["good"].read_bytes()
        args = [*_auth_args(keys["good"], mode), *extra]
        self.scheduler = OurScheduler(extra_args=args).start()
        self.a = OurDaemon("tka" + mode[0], self.scheduler.address, extra_args=args,
                           extra_env={OurDaemon.PUSH_AHEAD_ENV: "yes"}).start()  # fmt: skip
        self.b = _daemon("tkb" + mode[0], self.scheduler.address, args)
        for daemon in (self.a, self.b):
            login = wait_for(lambda d=daemon: _logged_in(self.scheduler, d.name), _LOGIN,
                             f"{daemon.name}'s login", context=daemon.log_tail)  # fmt: skip
            assert login["auth"] == "authenticated"

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()
        assert self.scheduler.stop() == 0

    def placement(self) -> tuple[BlockingChannel, JobTicket, UseCS]:
        """Play our client on a's iceserv endpoint: GET_CS for b; the ticket and USE_CS."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30.0)
        sock.connect(iceserv_endpoint(str(self.a.socket_path)))
        channel = BlockingChannel(sock, timeout=30.0)
        channel.send(GetCS(versions=(EnvEntry("x86_64", "tk.tar.gz"),), filename="tk.c", count=1,
                           target="x86_64", preferred_host=self.b.name,
                           minimal_host_version=21))  # fmt: skip
        ticket, use = channel.receive(), channel.receive()
        assert isinstance(ticket, JobTicket), ticket
        assert isinstance(use, UseCS), use
        assert (use.port, ticket.job_id, ticket.client_id) == (self.b.port, use.job_id, 0)
        return channel, ticket, use

    def to_b(self, *messages: object) -> object:
        """Send *messages* on a new connection to b; return its answer (STATUS_TEXT: refused)."""
        assert self.b.port is not None
        channel = BlockingChannel.connect("127.0.0.1", self.b.port, timeout=30.0)
        try:
            channel.send(*messages)  # type: ignore[arg-type]
            answer = channel.receive()
            if isinstance(answer, StatusText):
                try:
                    closed = channel.receive()
                except ConnectionResetError:
                    closed = ConnectionClosed()
                assert isinstance(closed, ConnectionClosed)
            return answer
        finally:
            channel.close()

    def forged(self, job_id: int, expires: float) -> JobTicket:
        """A ticket made with the cluster's key (as only a key holder can)."""
        text = issue_ticket(KeyRing((self.key,)), job_id=job_id, client="127.0.0.1",
                            server="127.0.0.1", expires=int(expires))  # fmt: skip
        return JobTicket(job_id=job_id, ticket=text)

    def refusals(self, before: int) -> list[str]:
        """The reasons of b's ``job_refused`` lines after the first *before*."""
        return [e["reason"] for e in self.b.wait_events("job_refused", before + 1)[before:]]


@pytest.fixture(scope="module")
def tickets_require(keys: dict[str, Path]) -> Iterator[_TicketCluster]:
    """A keyed cluster under ``auth = require``."""
    cluster = _TicketCluster(keys, "require")
    try:
        yield cluster
    finally:
        cluster.stop()


def _our_client(workdir: Path) -> str:
    launcher = workdir / "icecc"
    launcher.write_text(_OUR_CLIENT.format(python=sys.executable, repo=str(_REPO)))
    launcher.chmod(0o755)
    return str(launcher)


def _as_nobody(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run *argv* as ``nobody``: the compiling user cannot read the key (mode 0600, root)."""
    wrapped = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    return subprocess.run(wrapped, cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
                          check=False)  # fmt: skip


def _local_object(workdir: Path) -> bytes:
    subprocess.run(["gcc", "-c", "hello.c", "-o", "local.o"], cwd=workdir, check=True, timeout=60)
    return (workdir / "local.o").read_bytes()


@pytest.fixture
def build_dir() -> Iterator[Path]:
    """A world-writable directory with hello.c, so ``nobody`` can build there.

    Not under pytest's ``tmp_path``: its parents are private to root.
    """
    with tempfile.TemporaryDirectory(prefix=f"iceserv-tk-{os.getpid()}-") as name:
        path = Path(name)
        path.chmod(0o777)
        (path / "hello.c").write_text(_HELLO)
        yield path


class TestTicketsRequire:
    def test_keyed_cluster_builds_with_tickets(self, tickets_require, build_dir, keys):
        """Our client, as a user who cannot read the key, builds on b with its ticket."""
        cluster = tickets_require
        with pytest.raises(PermissionError):  # what the compiling user can read of the key
            _as_nobody_read(keys["good"])
        env = cluster.a.client_env({"ICECC_PREFERRED_HOST": cluster.b.name,
                                    "ICECC_FALLBACK": "fail", "ICECC_DEBUG": "debug"})  # fmt: skip
        done = _as_nobody([_our_client(build_dir), "gcc", "-c", "hello.c", "-o", "remote.o"],
                          build_dir, env)  # fmt: skip
        assert done.returncode == 0, done.stderr + cluster.b.log_tail()
        assert (build_dir / "remote.o").read_bytes() == _local_object(build_dir)
        (job,) = cluster.scheduler.wait_events("job_finished", 1)  # the first job of the cluster
        assert (job["submitter"], job["server"]) == (cluster.a.name, cluster.b.name)
        accepted = [e["job_id"] for e in cluster.b.events("job_ticket_accepted")]
        assert job["job_id"] in accepted

    def test_push_ahead_carries_its_own_ticket(self, tickets_require):
        """a's prebuilt environment reaches b under require: a's push ticket lets it in."""
        cluster = tickets_require
        (pushed,) = cluster.a.wait_events("native_env_pushed", 1, timeout=180)[:1]
        assert pushed["host"] == f"127.0.0.1:{cluster.b.port}"
        assert cluster.b.wait_events("env_installed", 1)
        assert not cluster.a.events("native_env_push_failed")

    def test_captured_ticket_replayed_is_refused(self, tickets_require):
        """A real ticket is good once; replayed on another connection it is refused, one line."""
        cluster = tickets_require
        channel, ticket, _ = cluster.placement()
        try:
            probe = VerifyEnv("absent", "x86_64")
            assert cluster.to_b(ticket, probe) == VerifyEnvResult(ok=False)  # spent here
            before = len(cluster.b.events("job_refused"))
            answer = cluster.to_b(ticket, probe)
        finally:
            channel.close()
        assert answer == StatusText("job refused: replayed ticket")
        assert cluster.refusals(before) == ["replayed ticket"]

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ("mac", "altered ticket"),
            ("job", "ticket for another job or host"),
        ],
    )
    def test_altered_ticket_is_refused(self, tickets_require, change, reason):
        """A real ticket with one changed character, or sent for another job, is refused."""
        cluster = tickets_require
        channel, ticket, _ = cluster.placement()
        try:
            if change == "mac":
                last = ticket.ticket[-1]
                text = ticket.ticket[:-1] + ("0" if last != "0" else "1")
                altered = JobTicket(job_id=ticket.job_id, ticket=text)
            else:
                altered = JobTicket(job_id=ticket.job_id + 1000, ticket=ticket.ticket)
            before = len(cluster.b.events("job_refused"))
            answer = cluster.to_b(altered, VerifyEnv("absent", "x86_64"))
        finally:
            channel.close()
        assert answer == StatusText(f"job refused: {reason}")
        assert cluster.refusals(before) == [reason]

    @pytest.mark.parametrize("request_", ["verify", "compile"])
    def test_job_without_ticket_is_refused(self, tickets_require, request_):
        """Straight to b's port without a ticket: refused, nothing installed or compiled."""
        cluster = tickets_require
        before = len(cluster.b.events("job_refused"))
        message = (VerifyEnv("absent", "x86_64") if request_ == "verify" else
                   CompileFile(job_id=4242, environment="tk.tar.gz", target="x86_64",
                               args=("-c",), compiler_name="gcc"))  # fmt: skip
        assert cluster.to_b(message) == StatusText("job refused: no job ticket")
        assert cluster.refusals(before) == ["no job ticket"]
        assert not [e for e in cluster.b.events("job_started") if e.get("job_id") == 4242]

    def test_expired_ticket_is_refused(self, tickets_require):
        """A ticket signed with the key but past its expiry is refused (a fresh one is not)."""
        cluster = tickets_require
        probe = VerifyEnv("absent", "x86_64")
        fresh = cluster.forged(777, time.time() + 60)
        assert cluster.to_b(fresh, probe) == VerifyEnvResult(ok=False)
        before = len(cluster.b.events("job_refused"))
        assert cluster.to_b(cluster.forged(778, time.time() - 5), probe) == StatusText(
            "job refused: expired ticket"
        )
        assert cluster.refusals(before) == ["expired ticket"]

    def test_real_client_through_our_daemon_falls_back(self, tickets_require, build_dir):
        """The real 1.4 icecc on a's ordinary socket gets no ticket: b refuses, it builds here."""
        cluster = tickets_require
        before = len(cluster.b.events("job_refused"))
        env = cluster.a.client_env({"ICECC_PREFERRED_HOST": cluster.b.name})
        done = subprocess.run(["icecc", "gcc", "-c", "hello.c", "-o", "remote.o"], cwd=build_dir,
                              env=env, capture_output=True, text=True, timeout=180,
                              check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (build_dir / "remote.o").read_bytes() == _local_object(build_dir)
        assert cluster.refusals(before) == ["no job ticket"]
        assert not cluster.a.events("client_protocol_error")  # it never got a byte it can't parse


def _as_nobody_read(path: Path) -> None:
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", str(path)]
    done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        raise PermissionError(done.stderr.decode().strip())


def _placement(daemon: OurDaemon, server: str) -> tuple[BlockingChannel, JobTicket]:
    """GET_CS for *server* on *daemon*'s iceserv endpoint; the open channel and the ticket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30.0)
    sock.connect(iceserv_endpoint(str(daemon.socket_path)))
    channel = BlockingChannel(sock, timeout=30.0)
    channel.send(GetCS(versions=(EnvEntry("x86_64", "tk.tar.gz"),), filename="tk.c",
                       count=1, target="x86_64", preferred_host=server,
                       minimal_host_version=21))  # fmt: skip
    ticket = channel.receive()
    assert isinstance(ticket, JobTicket), ticket
    assert isinstance(channel.receive(), UseCS)
    return channel, ticket


def _send_to(host: str, port: int, *messages: object) -> object:
    """Send *messages* on a new connection to a daemon's compile port; return its answer."""
    channel = BlockingChannel.connect(host, port, timeout=30.0)
    try:
        channel.send(*messages)  # type: ignore[arg-type]
        return channel.receive()
    finally:
        channel.close()


@pytest.mark.netns
def test_tickets_between_namespace_hosts(keys, build_dir):
    """Two hosts with their own addresses: a ticket binds the submitter's and the server's.

    h1 runs our scheduler (require) and the submitting daemon a, h2 the compile
    daemon b.  Our client on h1, as ``nobody``, builds on b with its ticket; a
    real ticket sent to b from h1 is good once (replayed: refused), and an
    unused one sent from h2 is refused as bound to another client host.
    """
    with NetnsBed(2) as bed, contextlib.ExitStack() as stack:
        h1, h2 = bed
        auth = _auth_args(keys["good"], "require")
        scheduler = OurScheduler(host=h1, port=8765, loopback_only=False, extra_args=auth).start()
        stack.callback(scheduler.stop)
        sched = f"{h1.ip}:8765"
        a = OurDaemon("tna", sched, host=h1, port=10245, extra_args=auth).start()
        stack.callback(a.stop)
        b = OurDaemon("tnb", sched, host=h2, port=10245, native_compilers="",
                      extra_args=auth).start()  # fmt: skip
        stack.callback(b.stop)
        for name in ("tna", "tnb"):
            login = wait_for(lambda n=name: _logged_in(scheduler, n), _LOGIN, f"{name}'s login",
                             context=scheduler.log_tail)  # fmt: skip
            assert login["auth"] == "authenticated"
        env = a.client_env({"ICECC_PREFERRED_HOST": "tnb", "ICECC_FALLBACK": "fail"})
        launcher = _our_client(build_dir)
        done = h1.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                       launcher, "gcc", "-c", "hello.c", "-o", "remote.o"], cwd=build_dir,
                      env=env, capture_output=True, check=False, timeout=180)  # fmt: skip
        assert done.returncode == 0, done.stderr.decode() + b.log_tail()
        assert (build_dir / "remote.o").read_bytes() == _local_object(build_dir)
        (job,) = scheduler.wait_events("job_finished", 1)
        assert (job["submitter"], job["server"]) == ("tna", "tnb")
        assert job["job_id"] in [e["job_id"] for e in b.events("job_ticket_accepted")]

        probe = VerifyEnv("absent", "x86_64")
        to_b = functools.partial(_send_to, h2.ip, 10245)
        first, ticket = run_in_netns(h1.name, lambda: _placement(a, "tnb"), timeout=60)
        try:
            assert run_in_netns(h1.name, lambda: to_b(ticket, probe), 60) == VerifyEnvResult(
                ok=False
            )
            replayed = run_in_netns(h1.name, lambda: to_b(ticket, probe), 60)
        finally:
            first.close()
        assert replayed == StatusText("job refused: replayed ticket")
        second, unused = run_in_netns(h1.name, lambda: _placement(a, "tnb"), timeout=60)
        try:
            elsewhere = run_in_netns(h2.name, lambda: to_b(unused, probe), 60)
        finally:
            second.close()
        assert elsewhere == StatusText("job refused: ticket for another job or host")


@pytest.mark.netns
def test_c_project_through_a_require_cluster(keys, project, zstd):
    """A real C project built with our client through a require cluster: objects as local gcc's.

    Two namespace hosts, our scheduler and daemons all under ``auth = require``
    (key and mode from the environment, as a packaged service would get them),
    h1 submitting with one slot of its own: every job h2 compiled came with a
    ticket it accepted, and none was refused.
    """
    keyed = {"ICECC_NETWORK_KEY_FILE": str(keys["good"]), "ICECC_AUTH": "require"}
    plans = (DaemonPlan("ours", max_jobs=1, extra_env=keyed), DaemonPlan("ours", extra_env=keyed))
    with NetnsBed(2) as bed, Cluster(bed, "ours", plans, scheduler_env=keyed) as cluster:
        result = cluster.build(project, zstd.reference, ClientPlan("ours"), on=0, jobs=4)
        problems = result.problems(on=("h1-ours", "h2-ours"))
        assert not problems, "\n- ".join([result.summary(), *problems]) + cluster.log_tails()
        server = cluster.daemon(1)
        assert isinstance(server, OurDaemon)
        began = result.placement.began["h2-ours"]
        accepted = server.wait_events("job_ticket_accepted", began)
        assert len({e["job_id"] for e in accepted if e["job_id"]}) >= began
        assert not server.events("job_refused")
        assert not server.events("job_unauthenticated")
