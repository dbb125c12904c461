"""Tests for iceserv.scheduler.standby: who serves among schedulers of one net name."""

from __future__ import annotations

from iceserv.protocol.discovery import SchedulerInfo
from iceserv.scheduler.standby import (
    Announce,
    AnswerRequest,
    Confirm,
    Probe,
    ProbeAll,
    Role,
    Standby,
    StandbySettings,
    StepDown,
    TakeOver,
)

NET = "FARM"
OWN = SchedulerInfo(43, 2_000, NET)
ACTIVE = ("10.0.0.1", 8765)
DAEMON = ("10.0.0.9", 40000)
SETTINGS = StandbySettings()


def _standby_of(active: SchedulerInfo, now: float = 0.0) -> Standby:
    machine = Standby(OWN, SETTINGS, now)
    assert machine.start() == [ProbeAll()]
    machine.scheduler_heard(ACTIVE, active, now + 0.1, wins_tie=False)
    assert machine.handle_timer(now + SETTINGS.listen) == []  # the end of listening
    return machine


def _run(machine: Standby, until: float, step: float = 0.05) -> list[object]:
    effects: list[object] = []
    now = 0.0
    while now <= until:
        if machine.get_timer() <= now:
            effects += machine.handle_timer(now)
        now = round(now + step, 6)
    return effects


class TestListening:
    def test_alone_it_takes_over_after_listening(self):
        """Nobody of our net answers within ``listen``: the scheduler serves, with its own time."""
        machine = Standby(OWN, SETTINGS, 0.0)
        machine.start()
        assert machine.handle_timer(0.5) == []
        effects = machine.handle_timer(SETTINGS.listen)
        assert effects[:2] == [TakeOver(OWN, None), Announce(OWN)]
        assert machine.serving

    def test_requests_heard_while_listening_are_answered_at_the_takeover(self):
        """Daemons that asked during the listening second get their reply then."""
        machine = Standby(OWN, SETTINGS, 0.0)
        assert machine.request_heard(DAEMON, 43, 0.2) == []
        effects = machine.handle_timer(SETTINGS.listen)
        assert AnswerRequest(DAEMON, 43) in effects

    def test_an_active_one_of_our_net_makes_it_a_standby(self):
        """Even a worse (younger) active scheduler is not displaced: the first one up serves."""
        machine = _standby_of(SchedulerInfo(43, 9_000, NET))
        assert machine.role is Role.STANDBY
        assert machine.active == ACTIVE
        assert machine.request_heard(DAEMON, 43, 0.5) == []  # never answers
        assert not any(isinstance(e, (Announce, TakeOver)) for e in _run(machine, 1.4))

    def test_other_net_names_are_ignored(self):
        """A scheduler of another net name (case-sensitive, as 1.4) does not matter."""
        machine = Standby(OWN, SETTINGS, 0.0)
        machine.scheduler_heard(ACTIVE, SchedulerInfo(43, 1, "farm"), 0.1, wins_tie=False)
        assert machine.role is Role.LISTENING


class TestWatching:
    def test_probes_the_active_one_while_it_answers(self):
        """Every probe_interval a unicast request goes to the active one; answers keep it."""
        machine = _standby_of(SchedulerInfo(43, 1_000, NET))
        now = SETTINGS.listen
        for _ in range(10):
            now += SETTINGS.probe_interval
            assert machine.handle_timer(now) == [Probe(ACTIVE)]
            machine.scheduler_heard(ACTIVE, SchedulerInfo(43, 1_000, NET), now, wins_tie=False)
        assert machine.role is Role.STANDBY

    def test_silence_asks_for_the_tcp_check_then_takes_over(self):
        """No answer for ``silence``: Confirm; a failed check makes it serve with a lower term."""
        machine = _standby_of(SchedulerInfo(43, 1_000, NET))
        effects = _run(machine, 2.0 + SETTINGS.listen)
        assert Confirm(ACTIVE) in effects
        assert machine.get_timer() == float("inf")  # waits for the check
        taken = machine.confirmed(alive=False, now=2.5)
        assert taken[0] == TakeOver(SchedulerInfo(43, 999, NET), ACTIVE)
        assert machine.serving
        assert machine.request_heard(DAEMON, 43, 2.6) == [AnswerRequest(DAEMON, 43)]

    def test_a_slow_but_alive_active_is_not_taken_over(self):
        """The TCP check succeeds (its kernel accepts): keep watching."""
        machine = _standby_of(SchedulerInfo(43, 1_000, NET))
        _run(machine, 3.0)
        assert machine.confirmed(alive=True, now=3.0) == []
        assert machine.role is Role.STANDBY
        assert machine.handle_timer(machine.get_timer()) == [Probe(ACTIVE)]

    def test_replay_answers_only_recent_requests(self):
        """Requests older than ``replay`` seconds are not answered at a takeover."""
        machine = _standby_of(SchedulerInfo(43, 1_000, NET))
        old, recent = ("10.0.0.7", 1), ("10.0.0.8", 2)
        machine.request_heard(old, 43, 1.2)
        machine.request_heard(recent, 43, 5.0)
        effects = machine.confirmed(alive=False, now=6.0) if _confirming(machine, 6.0) else []
        assert AnswerRequest(recent, 43) in effects
        assert AnswerRequest(old, 43) not in effects


def _confirming(machine: Standby, now: float) -> bool:
    """Let the active one be silent until *now*; return whether the check was asked for."""
    return machine.handle_timer(now) == [Confirm(ACTIVE)]


class TestActive:
    def test_a_better_active_makes_it_step_down(self):
        """An active one with a lower term (earlier start) answers a rival probe: step down."""
        machine = Standby(OWN, SETTINGS, 0.0)
        machine.handle_timer(SETTINGS.listen)
        better = SchedulerInfo(43, 1_500, NET)
        assert machine.handle_timer(SETTINGS.listen + SETTINGS.rival_interval) == [ProbeAll()]
        assert machine.scheduler_heard(ACTIVE, better, 4.0, wins_tie=False) == [
            StepDown(ACTIVE, better)
        ]
        assert machine.role is Role.STANDBY
        assert machine.active == ACTIVE

    def test_a_worse_one_is_ignored(self):
        """The restarted old scheduler (younger) never takes the daemons back."""
        machine = Standby(OWN, SETTINGS, 0.0)
        machine.handle_timer(SETTINGS.listen)
        assert (
            machine.scheduler_heard(ACTIVE, SchedulerInfo(43, 5_000, NET), 2.0, wins_tie=False)
            == []
        )
        assert machine.serving

    def test_a_tie_is_decided_by_the_address(self):
        """Same version and start time: the lower address serves."""
        machine = Standby(OWN, SETTINGS, 0.0)
        machine.handle_timer(SETTINGS.listen)
        assert machine.scheduler_heard(ACTIVE, OWN, 2.0, wins_tie=False) == []
        assert machine.scheduler_heard(ACTIVE, OWN, 2.0, wins_tie=True) == [StepDown(ACTIVE, OWN)]

    def test_terms_only_go_down_over_failovers(self):
        """Each takeover advertises min(own, predecessor) - 1."""
        first = _standby_of(SchedulerInfo(43, 1_000, NET))
        _run(first, 3.0)
        first.confirmed(alive=False, now=3.0)
        assert first.info.start_time == 999
        second = Standby(SchedulerInfo(43, 3_000, NET), SETTINGS, 0.0)
        second.scheduler_heard(ACTIVE, first.info, 0.1, wins_tie=False)
        _run(second, 3.0)
        second.confirmed(alive=False, now=3.0)
        assert second.info.start_time == 998


class TestDualStack:
    def test_a_dual_stack_newcomer_serves_beside_a_single_stack_one(self):
        """The election prefers dual-stack: a dual-stack one does not defer to a single one."""
        machine = Standby(OWN, SETTINGS, 0.0, dual=True)
        machine.scheduler_heard(ACTIVE, SchedulerInfo(43, 1_000, NET), 0.1, wins_tie=False)
        assert isinstance(machine.handle_timer(SETTINGS.listen)[0], TakeOver)

    def test_it_defers_to_a_dual_stack_one(self):
        """Evidence of IPv6 that arrives after the IPv4 reply still counts."""
        machine = Standby(OWN, SETTINGS, 0.0, dual=True)
        active = SchedulerInfo(43, 1_000, NET)
        machine.scheduler_heard(ACTIVE, active, 0.1, wins_tie=False)
        machine.scheduler_heard(ACTIVE, active, 0.2, wins_tie=False, other_dual=True)
        assert machine.handle_timer(SETTINGS.listen) == []
        assert machine.role is Role.STANDBY

    def test_an_active_dual_stack_one_makes_a_single_one_step_down(self):
        """Same version: the dual-stack one is better whatever the start times."""
        machine = Standby(SchedulerInfo(43, 1_000, NET), SETTINGS, 0.0)
        machine.handle_timer(SETTINGS.listen)
        dual = SchedulerInfo(43, 5_000, NET)
        assert machine.scheduler_heard(ACTIVE, dual, 2.0, wins_tie=False) == []
        assert machine.scheduler_heard(ACTIVE, dual, 2.0, wins_tie=False, other_dual=True) == [
            StepDown(ACTIVE, dual)
        ]
