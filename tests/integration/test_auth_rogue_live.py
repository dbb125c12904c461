"""Rogue schedulers with a higher version on the same net, under ``auth = require`` (issue 14).

Five namespace hosts on one bridge, one net name.  The right scheduler (h1,
ours, keyed, ``require``, protocol 43) and, around it:

* a real icecream 1.4 ``icecc-scheduler`` (h5), started before it, so it
  wins 1.4's "earliest start" rule;
* a *witness*: our scheduler without a key (h4) with one keyless daemon
  (``-s``), which believes plain announcements, so its yielding to a rogue
  (``scheduler_preferred``, or ``scheduler_standby`` naming the rogue as the
  active scheduler) proves that a rogue's "better" announcement really went
  over the net;
* after the keyed daemon logged in to h1: two rogue iceserv schedulers that
  claim protocol version 50 and serve at once instead of standing by
  (``testbed.rogue.scheduler``), one without a key (h3) and one with
  another key (h2, ``prefer``, so that it serves keyless daemons).

Keyed daemons (``require``, broadcast discovery) stay with, and newly go
to, h1; h1 never yields to the rogues' announcements; no rogue ever sees a
keyed daemon.  A keyless daemon on the same net, as a control, goes to a
rogue (without the key anyone would).  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import TYPE_CHECKING, Final

import pytest
from testbed import NetnsBed, OurDaemon, OurScheduler, RealScheduler, wait_for

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.live, pytest.mark.netns]

_PORT: Final = 8765
_LOGIN: Final = 60.0
_ROGUE_VERSION: Final = 50


class _RogueScheduler(OurScheduler):
    """Our scheduler advertising protocol version 50 (``testbed.rogue.scheduler``)."""

    program = "rogue scheduler"

    def start(self) -> _RogueScheduler:
        """Start ``python -m testbed.rogue.scheduler`` with the usual arguments."""
        self._prepare("rogue")
        args = ["-p", str(self.port), "-n", self.netname, "-vv", "-l", str(self.log_path),
                "--rogue-version", str(_ROGUE_VERSION), *self.extra_args]  # fmt: skip
        return self._start_module("testbed.rogue.scheduler", args, {})


def _key(path: Path) -> Path:
    path.write_bytes(secrets.token_bytes(48))
    path.chmod(0o600)
    return path


def _auth(key: Path, mode: str) -> list[str]:
    return ["--key-file", str(key), "--auth", mode]


def _names(scheduler: OurScheduler) -> set[str]:
    return {str(e["nodename"]) for e in scheduler.events("daemon_logged_in")}


def test_keyed_daemons_stay_with_the_right_scheduler(tmp_path):
    """Rogues with a higher version or an earlier start neither attract nor capture daemons."""
    good_key, other_key = _key(tmp_path / "good.key"), _key(tmp_path / "other.key")
    netname = f"RGE{os.getpid()}"
    with NetnsBed(5) as bed, contextlib.ExitStack() as stack:
        h1, h2, h3, h4, h5 = bed

        def ours(cls: type[OurScheduler], host: object, args: list[str]) -> OurScheduler:
            scheduler = cls(host=host, port=_PORT, loopback_only=False, netname=netname,
                            extra_args=args).start()  # fmt: skip
            stack.callback(scheduler.stop)
            return scheduler

        def daemon(name: str, host: object, args: list[str], to: str | None = None) -> OurDaemon:
            started = OurDaemon(name, to, host=host, max_jobs=1, port=10245, netname=netname,
                                native_compilers="", extra_args=args).start()  # fmt: skip
            stack.callback(started.stop)
            return started

        real14 = stack.enter_context(RealScheduler(host=h5, port=_PORT, netname=netname))
        witness = ours(OurScheduler, h4, [])
        watched = daemon("rgwatched", h4, [], to=f"{h4.ip}:{_PORT}")  # what the witness drops
        good = ours(OurScheduler, h1, _auth(good_key, "require"))
        first = daemon("rgfirst", h2, _auth(good_key, "require"))
        (login,) = first.wait_events("scheduler_logged_in", 1, timeout=_LOGIN)[:1]
        assert login["connected_to"] == f"{h1.ip}:{_PORT}", first.log_tail()
        wait_for(lambda: "rgwatched" in _names(witness), _LOGIN, "the witness's daemon",
                 context=watched.log_tail)  # fmt: skip

        rogue_keyless = ours(_RogueScheduler, h3, [])
        rogue_keyed = ours(_RogueScheduler, h2, _auth(other_key, "prefer"))
        # The rogues' version-50 announcements reached the net: the keyless witness, which
        # believes them, yielded to a rogue (serving: it handed its daemon over; a standby
        # of the 1.4 scheduler: it now watches the rogue as the active one).
        rogues = (h2.ip, h3.ip)

        def witness_yielded() -> bool:
            preferred = [e for e in witness.events("scheduler_preferred")
                         if e["version"] == _ROGUE_VERSION and e["peer"] in rogues]  # fmt: skip
            watching = [e for e in witness.events("scheduler_standby")
                        if str(e["active"]).rsplit(":", 1)[0] in rogues]  # fmt: skip
            return bool(preferred or watching)

        wait_for(witness_yielded, 30, "the witness to yield to a rogue", context=witness.log_tail)

        # A keyless control daemon elects a rogue; a new keyed one still elects h1.
        control = daemon("rgcontrol", h5, [])
        later = daemon("rglater", h3, _auth(good_key, "require"))
        (record,) = later.wait_events("scheduler_logged_in", 1, timeout=_LOGIN)[:1]
        assert record["connected_to"] == f"{h1.ip}:{_PORT}", later.log_tail()
        (record,) = control.wait_events("scheduler_logged_in", 1, timeout=_LOGIN)[:1]
        assert record["connected_to"] in (f"{h2.ip}:{_PORT}", f"{h3.ip}:{_PORT}")
        wait_for(lambda: "rgcontrol" in _names(rogue_keyless) | _names(rogue_keyed), _LOGIN,
                 "the control daemon at a rogue")  # fmt: skip

        # The right scheduler kept its daemon and never yielded; no rogue saw a keyed daemon.
        wait_for(lambda: {"rgfirst", "rglater"} <= _names(good), _LOGIN, "both keyed logins")
        assert not good.events("scheduler_preferred")
        assert len(first.events("scheduler_logged_in")) == 1  # never dropped, never moved
        assert {e["auth"] for e in good.events("daemon_logged_in")} == {"authenticated"}
        for rogue in (rogue_keyless, rogue_keyed, witness):
            assert not {"rgfirst", "rglater"} & _names(rogue)
        assert not {"rgfirst", "rglater"} & set(real14.host_names())
