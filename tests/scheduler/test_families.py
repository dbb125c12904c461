"""Family-aware placement: each daemon's addresses (HOST_ADDRESSES) and its clients' families."""

from __future__ import annotations

from scheduler.builders import NATIVE, T0, add_host, get_cs, login, new_core, sends

from iceserv.protocol import HostAddresses, NoCS, PushQuery, PushTargets, UseCS
from iceserv.scheduler import placement
from iceserv.scheduler.effects import HostsSkipped, JobsWaiting
from iceserv.scheduler.handlers import MAX_DECLARED_ADDRESSES, Scheduler, checked_addresses
from iceserv.scheduler.state import IPV4, IPV6, ClusterState


def declare(core: Scheduler, conn_id: int, *addresses: str, families: tuple[str, ...] = ()) -> list:
    return core.handle_message(conn_id, HostAddresses(addresses, families), T0)


def use_cs(core: Scheduler, conn_id: int, client_id: int = 7) -> UseCS:
    (use,) = sends(get_cs(core, conn_id, client_id=client_id), conn_id)
    assert isinstance(use, UseCS)
    return use


class TestPlacement:
    def test_dual_stack_daemon_logged_in_over_ipv6_serves_ipv4_submitters(self):
        """Known by fd00::2 from its login, it declared 10.0.0.2: a 1.4 submitter is sent there."""
        core = new_core()
        login(core, 1, "old", ip="10.0.0.1", max_kids=0)
        login(core, 2, "dual", ip="fd00::2", envs=NATIVE)
        declare(core, 2, "10.0.0.2", "fd00::2", families=("ipv4", "ipv6"))
        use = use_cs(core, 1)
        assert (use.hostname, use.port) == ("10.0.0.2", 10245)

    def test_without_the_declaration_the_ipv6_login_keeps_it_from_ipv4_submitters(self):
        core = new_core()
        login(core, 1, "old", ip="10.0.0.1", max_kids=0)
        login(core, 2, "six", ip="fd00::2", envs=NATIVE)
        assert sends(get_cs(core, 1), 1) == [NoCS(1, 7)]  # compile it yourself

    def test_ipv4_first_when_both_would_do(self):
        """A dual-stack submitter is told the IPv4 address: a 1.4 client behind it parses it."""
        core = new_core()
        login(core, 1, "me", ip="fd00::1", max_kids=0)
        declare(core, 1, "10.0.0.1", families=("ipv4", "ipv6"))
        login(core, 2, "dual", ip="fd00::2", envs=NATIVE)
        declare(core, 2, "10.0.0.2", families=("ipv4", "ipv6"))
        assert use_cs(core, 1).hostname == "10.0.0.2"

    def test_ipv6_only_submitter_gets_the_declared_ipv6_address(self):
        """Logged in over IPv4, it declared fd00::2: an IPv6-only submitter is sent there."""
        core = new_core()
        login(core, 1, "six", ip="fd00::1", max_kids=0)
        declare(core, 1, "fd00::1", families=("ipv6",))
        login(core, 2, "dual", ip="10.0.0.2", envs=NATIVE)
        declare(core, 2, "10.0.0.2", "fd00::2", families=("ipv4", "ipv6"))
        assert use_cs(core, 1).hostname == "fd00::2"

    def test_ipv6_only_submitter_never_gets_an_ipv4_only_server(self):
        """An IPv4-only server is never named to an IPv6-only submitter; the log says why."""
        core = new_core()
        login(core, 1, "six", ip="fd00::1", max_kids=0)
        declare(core, 1, "fd00::1", families=("ipv6",))
        login(core, 2, "four", ip="10.0.0.2", envs=NATIVE)
        login(core, 3, "busy", ip="fd00::3", envs=NATIVE, load=1000)
        effects = get_cs(core, 1)
        assert not sends(effects, 1)
        (skipped,) = [e for e in effects if isinstance(e, HostsSkipped)]
        assert skipped.submitter == "six"
        assert dict(skipped.reasons) == {
            "four": "has no address the submitter's clients can reach: it offers 10.0.0.2 (IPv4),"
            " they reach IPv6 only"
        }
        (report,) = [e for e in core.handle_timer(T0 + 2) if isinstance(e, JobsWaiting)]
        assert dict(report.reasons)["four"] == dict(skipped.reasons)["four"]

    def test_skipped_hosts_are_logged_once_per_pair(self):
        core = new_core()
        login(core, 1, "old", ip="10.0.0.1", max_kids=0)
        login(core, 2, "six", ip="fd00::2", envs=NATIVE)
        login(core, 3, "four", ip="10.0.0.3", envs=NATIVE)
        first = [e for e in get_cs(core, 1, client_id=1) if isinstance(e, HostsSkipped)]
        assert [dict(e.reasons) for e in first] == [
            {
                "six": "is known only by the IPv6 address fd00::2 and the submitter logged in"
                " over IPv4 (icecream 1.4 clients cannot reach IPv6)"
            }
        ]
        assert not [e for e in get_cs(core, 1, client_id=2) if isinstance(e, HostsSkipped)]
        assert {use_cs(core, 1, c).hostname for c in range(3, 6)} == {"10.0.0.3"}

    def test_link_local_login_uses_the_declared_routable_address(self):
        core = new_core()
        login(core, 1, "new", ip="fd00::1", max_kids=0)
        login(core, 2, "link", ip="fe80::2%eth0", envs=NATIVE)
        assert sends(get_cs(core, 1, client_id=1), 1) == [NoCS(1, 1)]  # the scheduler's zone
        declare(core, 2, "fe80::2", "fd00::2")  # the link-local one is dropped
        assert use_cs(core, 1).hostname == "fd00::2"

    def test_family_limited_count_follows_declarations(self):
        core = new_core()
        login(core, 1, "six", ip="fd00::2")
        assert core.state.family_limited == 1
        declare(core, 1, "10.0.0.2", families=("ipv4", "ipv6"))
        assert core.state.family_limited == 0
        declare(core, 1, families=("ipv6",))
        assert core.state.family_limited == 1
        core.connection_lost(1, T0)
        assert core.state.family_limited == 0

    def test_push_targets_name_the_address_the_asker_reaches(self):
        core = new_core()
        login(core, 1, "asker", ip="10.0.0.1")
        login(core, 2, "dual", ip="fd00::2")
        declare(core, 2, "10.0.0.2", families=("ipv4", "ipv6"))
        query = PushQuery(platform="x86_64", environment="e.tar.zst", required_features=0)
        (answer,) = sends(core.handle_message(1, query, T0), 1)
        assert isinstance(answer, PushTargets)
        assert answer.hosts == ("10.0.0.2:10245",)


class TestRules:
    def test_reachable_and_address_for(self):
        state = ClusterState()
        four = add_host(state, "four", ip="10.0.0.1")
        six = add_host(state, "six", ip="fd00::2", addresses=("fd00::2",), declared_reach=IPV6)
        dual = add_host(state, "dual", ip="fd00::3", addresses=("10.0.0.3",))
        loop = add_host(state, "loop", ip="127.0.0.1")
        assert (dual.v4, dual.v6, dual.offers, dual.reach) == ("10.0.0.3", "fd00::3", 3, 3)
        assert placement.reachable(four, dual)
        assert placement.address_for(four, dual) == "10.0.0.3"
        assert placement.address_for(six, dual) == "fd00::3"
        assert not placement.reachable(six, four)
        assert not placement.reachable(four, six)
        assert placement.reachable(six, loop)
        assert placement.address_for(six, loop) == "127.0.0.1"  # jobs names it localhost
        assert placement.reachable(six, six)
        assert four.reach == IPV4

    def test_checked_addresses(self):
        assert checked_addresses(
            ["10.0.0.2", "::ffff:10.0.0.3", "FD00::0:2", "127.0.0.1", "::1", "fe80::1",
             "fd00::5%eth0", "0.0.0.0", "::",  # noqa: S104 - not bound, refused "ff02::1", "224.0.0.1", "nonsense", "x" * 100,
             "10.0.0.2"]
        ) == ("10.0.0.2", "10.0.0.3", "fd00::2")  # fmt: skip
        many = [f"10.0.1.{i}" for i in range(50)]
        assert len(checked_addresses(many)) == MAX_DECLARED_ADDRESSES

    def test_unknown_family_names_are_ignored(self):
        core = new_core()
        login(core, 1, "h", ip="10.0.0.1")
        declare(core, 1, families=("ipx", "ipv6"))
        assert core.state.hosts[1].reach == IPV6
        assert IPV4 | IPV6 == 3
