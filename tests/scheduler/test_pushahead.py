"""The scheduler's answer to PUSH_QUERY: which hosts should get a native environment ahead."""

from __future__ import annotations

import pytest
from scheduler.builders import NATIVE, T0, get_cs, login, new_core, sends

from iceserv.errors import RemoteProtocolError
from iceserv.protocol import (
    BlacklistHostEnv,
    End,
    EnvEntry,
    Login,
    PushQuery,
    PushTargets,
    Stats,
)
from iceserv.scheduler.pushahead import MAX_PROMISES, MAX_TARGETS, MAX_WANTS, PROMISE_SECONDS

ENV = "0123abcd"


def _ask(core, conn_id=1, platform="", environment=ENV, **changes):
    now = changes.get("now", T0)
    query = PushQuery(platform, environment, changes.get("features", 0))
    effects = core.handle_message(conn_id, query, now)
    answers = [m for m in sends(effects, conn_id) if isinstance(m, PushTargets)]
    assert len(answers) == 1
    assert len(sends(effects)) == 1  # nobody else hears it
    return answers[0]


class TestPushTargets:
    def test_names_the_other_usable_hosts_with_their_compile_ports(self):
        """Every other daemon that takes remote jobs is named by address:port, not the asker."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "b", port=10300)
        login(core, 3, "c")
        answer = _ask(core)
        assert answer.environment == ENV
        assert answer.target == "x86_64"
        assert sorted(answer.hosts) == ["10.0.0.2:10300", "10.0.0.3:10245"]

    def test_hosts_that_cannot_take_jobs_are_left_out(self):
        """--no-remote, drained, unreachable, no-chroot, zero-slot and other-platform hosts."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "noremote", noremote=True, port=0)
        login(core, 3, "drained")
        login(core, 4, "closed")
        login(core, 5, "nochroot", chroot_possible=False)
        login(core, 6, "zero", max_kids=0)
        login(core, 7, "arm", host_platform="aarch64")
        login(core, 8, "good")
        core.drain_hosts(["drained"], T0)
        core.probe_finished(4, ok=False, now=T0)
        assert _ask(core).hosts == ("10.0.0.8:10245",)

    def test_a_host_that_lists_the_environment_is_left_out(self):
        """A LOGIN (or re-LOGIN after an install) naming the environment: nothing to push there."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "has", envs=(EnvEntry("x86_64", ENV),))
        login(core, 3, "other-target", envs=(EnvEntry("i686", ENV),))
        assert _ask(core).hosts == ("10.0.0.3:10245",)

    def test_a_named_host_is_promised_until_it_relogs_in_or_the_promise_ends(self):
        """A second asker is not sent to the same host while the first push runs."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "b")
        login(core, 3, "c")
        assert set(_ask(core).hosts) == {"10.0.0.2:10245", "10.0.0.3:10245"}
        # c is promised to a's push; a itself has no installed copy, so b may push there.
        assert _ask(core, conn_id=2).hosts == ("10.0.0.1:10245",)
        assert _ask(core, conn_id=3, environment="other").hosts[0] == "10.0.0.1:10245"
        later = T0 + PROMISE_SECONDS + 1
        assert _ask(core, conn_id=2, now=later).hosts == ("10.0.0.1:10245", "10.0.0.3:10245")
        relogin = Login(port=0, max_kids=4, nodename="c", envs=(EnvEntry("x86_64", ENV),))
        core.handle_message(3, relogin, later)
        again = later + PROMISE_SECONDS + 1
        assert _ask(core, conn_id=2, now=again).hosts == ("10.0.0.1:10245",)

    def test_idle_hosts_come_first_and_the_list_is_bounded(self):
        """Busy or loaded hosts come after idle ones; at most MAX_TARGETS are named."""
        core = new_core()
        login(core, 1, "a", max_kids=1)
        login(core, 2, "busy", max_kids=1)
        login(core, 3, "loaded", load=900)
        for conn_id in range(4, 4 + MAX_TARGETS + 2):
            login(core, conn_id, f"h{conn_id}")
        get_cs(core, 1, versions=NATIVE, preferred_host="busy")
        busy = next(h for h in core.state.hosts.values() if h.nodename == "busy")
        assert busy.jobs  # the job went there
        hosts = _ask(core).hosts
        assert len(hosts) == MAX_TARGETS
        assert "10.0.0.2:10245" not in hosts
        assert "10.0.0.3:10245" not in hosts
        assert hosts[0] == "10.0.0.4:10245"

    def test_a_host_blacklisted_for_the_environment_is_left_out(self):
        """The asker's clients saw that host refuse the environment: do not push it there."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "b")
        login(core, 3, "c")
        core.handle_message(1, BlacklistHostEnv(ENV, "x86_64", "10.0.0.2"), T0)
        assert _ask(core).hosts == ("10.0.0.3:10245",)

    def test_empty_environment_names_nobody(self):
        """An empty environment name gets an empty list (and is not remembered)."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "b")
        assert _ask(core, environment="").hosts == ()
        assert _ask(core).hosts == ("10.0.0.2:10245",)

    def test_explicit_platform_picks_compatible_hosts(self):
        """An i686 environment may go to x86_64 hosts; an aarch64 one only to aarch64 hosts."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "b")
        login(core, 3, "arm", host_platform="aarch64")
        assert _ask(core, platform="i686").hosts == ("10.0.0.2:10245",)
        assert _ask(core, platform="aarch64").hosts == ("10.0.0.3:10245",)

    def test_a_host_must_unpack_the_compression(self):
        """A zstd environment goes only to hosts whose LOGIN announces zstd."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "old", supported_features=0)
        login(core, 3, "xz-only", supported_features=1)
        login(core, 4, "new", supported_features=3)
        assert _ask(core, features=2).hosts == ("10.0.0.4:10245",)
        assert set(_ask(core, environment="plain").hosts) == {
            "10.0.0.2:10245",
            "10.0.0.3:10245",
            "10.0.0.4:10245",
        }

    def test_query_before_login_is_a_protocol_error(self):
        """Only a logged-in daemon may ask."""
        core = new_core()
        core.peer_connected(1, "10.0.0.1", 43, 43)
        with pytest.raises(RemoteProtocolError):
            core.handle_message(1, PushQuery("", ENV, 0), T0)

    def test_promises_per_host_are_bounded(self):
        """A daemon flooding queries with new names: a host holds at most MAX_PROMISES."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "b")
        named = sum(len(_ask(core, environment=f"e{i}").hosts) for i in range(MAX_PROMISES + 50))
        assert named == MAX_PROMISES
        host = next(h for h in core.state.hosts.values() if h.nodename == "b")
        assert len(host.pushes) == MAX_PROMISES
        later = T0 + PROMISE_SECONDS + 1
        assert _ask(core, environment="fresh", now=later).hosts == ("10.0.0.2:10245",)
        assert len(host.pushes) == 1

    def test_stats_do_not_forget_the_promise(self):
        """A STATS from a named host keeps it promised (only its LOGIN list counts)."""
        core = new_core()
        login(core, 1, "a")
        login(core, 2, "b")
        assert _ask(core).hosts == ("10.0.0.2:10245",)
        core.handle_message(2, Stats(load=10), T0 + 1)
        assert _ask(core, now=T0 + 2).hosts == ()


class TestStandingQueries:
    def test_a_host_logging_in_later_is_named_to_the_daemon_that_asked(self):
        """The asker's query stands: a newcomer lacking the environment is sent to it at once."""
        core = new_core()
        login(core, 1, "a")
        assert _ask(core, features=2).hosts == ()
        effects = login(core, 2, "late")
        assert sends(effects, 1) == [PushTargets(ENV, "x86_64", ("10.0.0.2:10245",))]
        # ... and promised: another asker is not sent there too.
        assert _ask(core, conn_id=2).hosts == ("10.0.0.1:10245",)

    def test_a_newcomer_that_cannot_take_it_is_not_named(self):
        """No zstd, no remote jobs, or the environment already installed: nothing is sent."""
        core = new_core()
        login(core, 1, "a")
        _ask(core, features=2)
        assert sends(login(core, 2, "old", supported_features=0), 1) == []
        assert sends(login(core, 3, "noremote", noremote=True, port=0), 1) == []
        assert sends(login(core, 4, "has", envs=(EnvEntry("x86_64", ENV),)), 1) == []

    def test_the_query_ends_with_its_daemon(self):
        """A daemon gone (and logged in again) asked nothing on its new connection."""
        core = new_core()
        login(core, 1, "a")
        _ask(core)
        core.handle_message(1, End(), T0)
        login(core, 3, "a")
        assert [m for m in sends(login(core, 4, "late")) if isinstance(m, PushTargets)] == []

    def test_wants_are_bounded(self):
        """A daemon asking about many environments is remembered for MAX_WANTS of them."""
        core = new_core()
        login(core, 1, "a")
        for i in range(MAX_WANTS + 5):
            _ask(core, environment=f"env{i}")
        named = [m for m in sends(login(core, 2, "late"), 1) if isinstance(m, PushTargets)]
        assert len(named) == MAX_WANTS


class TestAddressFamilies:
    def test_ipv6_hosts_in_brackets_and_only_to_ipv6_askers(self):
        """A host known by IPv6 is named [v6]:port, and never to a daemon that came over IPv4."""
        core = new_core()
        login(core, 1, "six-asker", ip="fd00::1")
        login(core, 2, "four-asker", ip="10.0.0.2")
        login(core, 3, "six", ip="fd00::3")
        login(core, 4, "four", ip="10.0.0.4")
        assert sorted(_ask(core, 1).hosts) == ["10.0.0.2:10245", "10.0.0.4:10245",
                                               "[fd00::3]:10245"]  # fmt: skip
        assert _ask(core, 2, environment="other").hosts == ("10.0.0.4:10245",)
