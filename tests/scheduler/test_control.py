"""Tests of the control facade: views, actions and internals over a fake shell."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scheduler.builders import T0, get_cs, login, new_core

from iceserv.protocol import JobBegin, JobDone, JobDoneFlag, StatusText
from iceserv.scheduler import ClusterControl, HostView, JobView, Scheduler
from iceserv.scheduler.effects import Close, Effect, InternalsReply, Send


@dataclass
class FakeShell:
    """Applies effects by recording them; routes internals answers to the control."""

    core: Scheduler
    clock: float = T0
    applied: list[Effect] = field(default_factory=list)
    control: ClusterControl | None = None

    def now(self) -> float:
        return self.clock

    def apply(self, effects: list[Effect]) -> None:
        self.applied += effects
        for effect in effects:
            if isinstance(effect, InternalsReply) and self.control is not None:
                self.control.deliver_internals(effect.host_id, effect.text)
        if self.control is not None:
            self.control.observe(effects)


def make(timeout: float = 0.2) -> tuple[FakeShell, ClusterControl]:
    shell = FakeShell(new_core())
    control = ClusterControl(shell, internals_timeout=timeout)
    shell.control = control
    return shell, control


class TestViews:
    def test_numbers_and_lists(self):
        """Greeting numbers, listcs and listjobs reflect the core's state."""
        shell, control = make()
        core = shell.core
        login(core, 1, "sub", max_kids=0)
        login(core, 2, "cs", max_kids=2)
        get_cs(core, 1, filename="proj/src/a.c")
        shell.clock = T0 + 12.7
        assert (control.uptime_seconds(), control.host_count()) == (12, 2)
        assert (control.job_count(), control.total_jobs()) == (1, 1)
        assert (control.jobs_queued(), control.jobs_running()) == (0, 1)
        assert (control.netname(), control.started_at()) == ("ICECREAM", T0)
        job = JobView(1, "WAIT", "sub", "cs", "proj/src/a.c", queued_at=None, started_at=None)
        assert control.list_jobs() == [job]
        sub, cs = control.list_hosts()
        common = {
            "port": 10245,
            "platform": "x86_64",
            "speed": 0.0,
            "load": 0,
            "protocol": 43,
            "no_remote": False,
            "environments": (),
            "blocked": False,
            "draining": False,
        }
        assert sub == HostView(
            nodename="sub",
            ip="10.0.0.1",
            jobs_assigned=0,
            max_jobs=0,
            busy_installing_since=None,
            jobs=[],
            **common,
        )
        assert cs == HostView(nodename="cs", ip="10.0.0.2", jobs_assigned=1, max_jobs=2,
                              busy_installing_since=12, jobs=[job], **common)  # fmt: skip
        hosts = control.list_hosts()
        assert control.slot_use() == (sum(h.jobs_assigned for h in hosts),
                                      sum(h.max_jobs for h in hosts)) == (1, 2)  # fmt: skip

    def test_queued_job_has_unknown_server(self):
        """A PEND job shows '<unknown>' as its server."""
        shell, control = make()
        login(shell.core, 1, "sub", max_kids=0)
        login(shell.core, 2, "cs", load=1000)
        get_cs(shell.core, 1)
        assert control.list_jobs() == [
            JobView(1, "PEND", "sub", "<unknown>", "proj/src/a.c", None, None)]  # fmt: skip
        assert (control.jobs_queued(), control.jobs_running()) == (1, 0)


class TestEvents:
    def test_observers_hear_applied_effects_and_jobs_get_times(self):
        """Effects applied through the shell reach observers; listed jobs carry their times."""
        shell, control = make()
        heard: list[str] = []

        class Observer:
            def host_joined(self, nodename, _ip, /):
                heard.append(f"+{nodename}")

            def host_left(self, nodename, _ip, /):
                heard.append(f"-{nodename}")

            def job_started(self, job, /):
                heard.append(f"started {job.id}")

            def job_finished(self, job, exitcode, /):
                heard.append(f"finished {job.id} {exitcode}")

            def cluster_changed(self):
                heard.append("changed")

        control.add_observer(Observer())
        shell.apply(login(shell.core, 1, "sub", max_kids=0))
        shell.clock = T0 + 5
        shell.apply(get_cs(shell.core, 1))
        (job,) = control.list_jobs()
        assert (job.queued_at, job.started_at) == (T0 + 5, None)
        control.drain_hosts(["x"])
        assert heard == ["+sub", "changed", "changed", "changed"]


class TestActions:
    def test_remove_block_unblock(self):
        """Actions return matched names and their effects reach the shell."""
        shell, control = make()
        login(shell.core, 1, "a")
        login(shell.core, 2, "b")
        assert control.remove_hosts(["a", "nope"]) == ["a"]
        assert Close(1) in shell.applied
        assert control.block_hosts(["b", "c"]) == ["b"]
        assert control.blocked() == ["b", "c"]
        control.unblock_hosts(["c"])
        assert control.blocked() == ["b"]
        assert control.host_count() == 0

    def test_drain_and_resume(self):
        """Draining lists the names, marks matching daemons, keeps them; resume undoes it."""
        shell, control = make()
        login(shell.core, 1, "a")
        assert control.drain_hosts(["a", "later"]) == ["a"]
        assert control.drained() == ["a", "later"]
        (host,) = control.list_hosts()
        assert (host.draining, host.blocked) == (True, False)
        assert control.host_count() == 1
        control.resume_hosts(["a"])
        assert control.drained() == ["later"]
        assert not control.list_hosts()[0].draining


class TestInternals:
    def test_answers_in_login_order_and_silence(self):
        """Answers come back in login order; a silent daemon is 'not reporting'."""
        shell, control = make(timeout=0.2)
        login(shell.core, 1, "a")
        login(shell.core, 2, "b")

        async def scenario() -> list[str]:
            task = asyncio.create_task(control.internals([]))
            await asyncio.sleep(0)
            sent = [e.conn_id for e in shell.applied if isinstance(e, Send)
                    and type(e.message).__name__ == "GetInternalStatus"]  # fmt: skip
            assert sent == [1, 2]
            shell.apply(shell.core.handle_message(2, StatusText("Node Name: b\n"), T0))
            return await task

        assert asyncio.run(scenario()) == ["a not reporting\n", "Node Name: b\n"]

    def test_only_matching_daemons(self):
        """With names, only matching daemons are asked; none matching gives nothing."""
        shell, control = make(timeout=0.05)
        login(shell.core, 1, "a")
        assert asyncio.run(control.internals(["zz"])) == []
        assert asyncio.run(control.internals(["10.0.0.1"])) == ["a not reporting\n"]


# --- list_jobs reuses views: equal to a fresh rebuild after random job streams -----------

_STEP = st.tuples(st.sampled_from(("login", "get_cs", "begin", "done", "lost")), st.integers(0, 7))


def _fresh(control: ClusterControl) -> list[JobView]:
    jobs = control._shell.core.state.jobs
    return [control._job_view(jobs[job_id]) for job_id in sorted(jobs)]


def _step(shell: FakeShell, kind: str, pick: int) -> None:
    """Apply one random event of a build to the core through the shell."""
    core, state = shell.core, shell.core.state
    conns = sorted(host.conn_id for host in state.hosts.values())
    shell.clock += 0.25
    now = shell.clock
    if kind == "login" or not conns:
        conn = 1 + pick
        if core.host_by_conn(conn) is None:
            shell.apply(login(core, conn, f"node{conn}", max_kids=pick % 3, now=now))
        return
    conn = conns[pick % len(conns)]
    jobs = sorted(state.jobs.values(), key=lambda job: job.job_id)
    if kind == "get_cs":
        shell.apply(get_cs(core, conn, now, filename=f"src/{pick}.c", client_id=pick))
    elif kind == "lost":
        shell.apply(core.connection_lost(conn, now))
    elif jobs:
        job = jobs[pick % len(jobs)]
        server = state.hosts.get(job.server) if job.server is not None else None
        if kind == "begin" and server is not None:
            shell.apply(core.handle_message(server.conn_id, JobBegin(job.job_id, 1, 1), now))
        elif kind == "done" and server is not None:
            flags = int(JobDoneFlag.FROM_SERVER)
            shell.apply(core.handle_message(server.conn_id, JobDone(job.job_id, 0, flags=flags),
                                            now))  # fmt: skip


class TestListJobsReuse:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_STEP, max_size=60), st.integers(1, 4))
    def test_equals_a_fresh_rebuild_after_every_event(self, steps, every):
        """After any stream of logins, GET_CS, JOB_BEGIN, JOB_DONE and lost daemons,
        list_jobs (asked every *every* events) equals views built anew (also after a
        repeated JOB_BEGIN, which moves the start time); an unchanged job keeps its
        view object (the telnet and D-Bus caches rely on it)."""
        shell, control = make()
        before: dict[int, JobView] = {}
        for number, (kind, pick) in enumerate(steps):
            _step(shell, kind, pick)
            if number % every:
                continue
            listed = control.list_jobs()
            assert listed == _fresh(control)
            for view in listed:
                old = before.get(view.id)
                if old is not None and old == view:
                    assert old is view
            before = {view.id: view for view in listed}
        assert control.list_jobs() == _fresh(control)
