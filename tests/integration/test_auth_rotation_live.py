"""Rotating the network key while the daemon ↔ scheduler links are sealed (issue 14 items 1, 4).

Loopback, our scheduler and daemons under ``auth = require`` and
``encrypt = yes``, each with ``key_file`` and ``previous_key_file``, the
procedure of ``docs/security.md`` ("Key life cycle and rotation"):

1. the scheduler gets the new key (the old one as previous) and reloads
   (SIGHUP): the sealed link made under the old key keeps working (the daemon
   answers ``internals``; it is not dropped);
2. a new daemon holding the new key only logs in, sealed;
3. the old daemon gets the new key and reloads: it logs in again once, sealed,
   and answers ``internals``;
4. the rotation ends (the scheduler's previous key becomes the new one too):
   a daemon that still has only the old key is no longer let in.

Nothing logs a record that failed to open.  Every wait is bounded.
"""

# ruff: noqa: F811 - keys is test_auth_live's fixture, taken as a parameter
from __future__ import annotations

import secrets
import signal
from typing import TYPE_CHECKING, Final

import pytest
from integration.test_auth_live import _auth_args, keys  # noqa: F401 - keys is a fixture
from integration.test_auth_tamper_live import _telnet
from testbed import OurDaemon, OurScheduler, wait_for
from testbed.hosts import LOOPBACK

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.live

_LOGIN: Final = 30.0


def _put(path: Path, key: bytes) -> Path:
    """Replace *path* by a key file holding *key* (mode 0600), as an administrator would."""
    fresh = path.with_suffix(".new")
    fresh.write_bytes(key)
    fresh.chmod(0o600)
    fresh.replace(path)
    return path


def _args(key: Path, previous: Path | None = None) -> list[str]:
    return [*_auth_args(key, "require", previous), "--encrypt"]


def _logins(scheduler: OurScheduler, name: str, count: int) -> list[dict[str, object]]:
    def ours() -> list[dict[str, object]]:
        scheduler.check_alive()
        return [e for e in scheduler.events("daemon_logged_in") if e["nodename"] == name]

    wait_for(lambda: len(ours()) >= count, _LOGIN, f"login {count} of {name}",
             context=scheduler.log_tail)  # fmt: skip
    return ours()


def _answers(scheduler: OurScheduler, name: str) -> bool:
    """Whether daemon *name* answers the scheduler's ``internals`` over its link."""
    assert scheduler.port is not None
    lines = _telnet(LOOPBACK, scheduler.port + 1, f"internals {name}")
    return bool(lines) and lines != [f"{name} not reporting"]


def test_rotation_while_sealed(keys: dict[str, Path], tmp_path):
    """Old sealed links survive the scheduler's reload; daemons move to the new key cleanly."""
    old, new = keys["good"].read_bytes(), secrets.token_bytes(48)
    older = keys["other"].read_bytes()  # the key before the old one: previous at the start
    s_key, s_prev = _put(tmp_path / "s.key", old), _put(tmp_path / "s-prev.key", older)
    a_key, a_prev = _put(tmp_path / "a.key", old), _put(tmp_path / "a-prev.key", older)
    scheduler = OurScheduler(extra_args=_args(s_key, s_prev)).start()
    daemons: list[OurDaemon] = []

    def daemon(name: str, args: list[str]) -> OurDaemon:
        started = OurDaemon(name, scheduler.address, native_compilers="", extra_args=args)
        daemons.append(started)
        return started.start()

    try:
        a = daemon("rota", _args(a_key, a_prev))
        (login,) = _logins(scheduler, "rota", 1)
        assert (login["auth"], login["encrypted"]) == ("authenticated", True)

        # 1. The scheduler first: new key, the old one as previous.
        _put(s_key, new)
        _put(s_prev, old)
        loaded = len(scheduler.events("network_key_loaded"))
        assert scheduler.proc is not None
        scheduler.proc.send_signal(signal.SIGHUP)
        scheduler.wait_events("network_key_loaded", loaded + 1)
        assert _answers(scheduler, "rota"), "the link sealed under the old key goes on"
        assert not scheduler.events("daemon_logged_out")

        # 2. A new daemon with the new key only.
        b = daemon("rotb", _args(_put(tmp_path / "b.key", new)))
        (login,) = _logins(scheduler, "rotb", 1)
        assert (login["auth"], login["encrypted"]) == ("authenticated", True)

        # 3. The old daemon moves to the new key: one new login, sealed.
        _put(a_key, new)
        _put(a_prev, old)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGHUP)
        relogin = _logins(scheduler, "rota", 2)[-1]
        assert (relogin["auth"], relogin["encrypted"]) == ("authenticated", True)
        assert _answers(scheduler, "rota")
        assert _answers(scheduler, "rotb")
        assert len(_logins(scheduler, "rota", 2)) == 2, "one re-login, no loop"

        # 4. The rotation ends: the old key is no longer accepted.
        _put(s_prev, new)
        loaded = len(scheduler.events("network_key_loaded"))
        scheduler.proc.send_signal(signal.SIGHUP)
        scheduler.wait_events("network_key_loaded", loaded + 1)
        late = daemon("rotc", _args(_put(tmp_path / "c.key", old)))
        late.wait_events("scheduler_unproven", 1, timeout=_LOGIN)
        assert not late.events("scheduler_logged_in")
        assert _answers(scheduler, "rota")
        assert _answers(scheduler, "rotb")

        for program in (scheduler, a, b, late):
            text = program.log_path.read_text(errors="replace")
            assert "failed authentication" not in text
            assert program.alive()
    finally:
        for started in daemons:
            started.stop()
        assert scheduler.stop() == 0
