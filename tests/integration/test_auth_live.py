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
import os
import secrets
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Final

import pytest
from testbed import NetnsBed, OurDaemon, OurScheduler, RealScheduler, wait_for

from iceserv.protocol import AuthHello, ConnectionClosed, Login
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

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
        """Under prefer a real 1.4 iceccd's real icecc job compiles on our keyed daemon."""
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
