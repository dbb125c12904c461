"""The scheduler's answer to SLOTS_QUERY: which hosts' slots count, and how many are free."""

from __future__ import annotations

import pytest
from scheduler.builders import T0, get_cs, login, new_core, sends

from iceserv.errors import RemoteProtocolError
from iceserv.protocol import SlotsAnswer, SlotsQuery, Stats


def _ask(core, conn_id=1, platform=""):
    effects = core.handle_message(conn_id, SlotsQuery(platform=platform), T0)
    answers = [m for m in sends(effects, conn_id) if isinstance(m, SlotsAnswer)]
    assert len(answers) == 1
    return answers[0]


class TestCountSlots:
    def test_counts_every_usable_host_and_answers_only_the_asker(self):
        """Two usable daemons: their max_kids add up; only the asking daemon hears the answer."""
        core = new_core()
        login(core, 1, "a", max_kids=2)
        login(core, 2, "b", max_kids=3)
        effects = core.handle_message(1, SlotsQuery(), T0)
        assert sends(effects) == [SlotsAnswer(total=5, free=5, hosts=2, source="cluster")]
        assert sends(effects, 2) == []

    def test_no_remote_drained_and_unprobed_hosts_do_not_count(self):
        """--no-remote, drained and unreachable daemons are left out; so is one without chroot."""
        core = new_core()
        login(core, 1, "a", max_kids=2)
        login(core, 2, "noremote", max_kids=3, noremote=True, port=0)
        login(core, 3, "drained", max_kids=4)
        login(core, 4, "closed", max_kids=5)
        login(core, 5, "nochroot", max_kids=6, chroot_possible=False)
        login(core, 6, "b", max_kids=7)
        core.drain_hosts(["drained"], T0)
        core.probe_finished(4, ok=False, now=T0)
        assert _ask(core) == SlotsAnswer(total=9, free=9, hosts=2, source="cluster")

    def test_own_host_counts_even_with_no_remote(self):
        """The asking daemon's own slots count although it takes no remote jobs."""
        core = new_core()
        login(core, 1, "a", max_kids=2, noremote=True, port=0)
        login(core, 2, "b", max_kids=3)
        assert _ask(core).total == 5

    def test_platform_must_run_the_environment(self):
        """An aarch64 host cannot run an x86_64 native environment; an x86_64 one runs i686's."""
        core = new_core()
        login(core, 1, "a", max_kids=2)
        login(core, 2, "arm", max_kids=8, host_platform="aarch64")
        login(core, 3, "c", max_kids=3)
        assert _ask(core).total == 5
        assert _ask(core, platform="i686").total == 5
        assert _ask(core, platform="aarch64") == SlotsAnswer(10, 10, 2, "cluster")

    def test_free_excludes_jobs_full_load_and_daemons_without_stats(self):
        """Free slots: max_kids minus assigned jobs, none at full load or before the first STATS."""
        core = new_core()
        login(core, 1, "a", max_kids=1)
        login(core, 2, "b", max_kids=3)
        login(core, 3, "busy", max_kids=4)
        login(core, 4, "new", max_kids=5, load=None)
        core.handle_message(3, Stats(load=1000), T0)
        get_cs(core, 1, count=2)
        placed = {h.nodename: len(h.jobs) for h in core.state.hosts.values()}
        assert placed["a"] + placed["b"] >= 1
        answer = _ask(core)
        assert (answer.total, answer.hosts) == (13, 4)
        assert answer.free == max(0, 1 - placed["a"]) + max(0, 3 - placed["b"])
        assert answer.free < 1 + 3

    def test_blocked_daemon_disappears(self):
        """blockcs removes the daemon, so its slots no longer count."""
        core = new_core()
        login(core, 1, "a", max_kids=2)
        login(core, 2, "b", max_kids=3)
        core.remove_hosts(["b"], T0, block=True)
        assert _ask(core).total == 2

    def test_query_before_login_is_a_protocol_error(self):
        """Only a logged-in daemon may ask."""
        core = new_core()
        core.peer_connected(1, "10.0.0.1", 43, 43)
        with pytest.raises(RemoteProtocolError):
            core.handle_message(1, SlotsQuery(), T0)
