"""The daemon's running totals, fed what the real core hears and answers (no sockets).

Each test drives :class:`~iceserv.daemon.core.DaemonCore` with events as
the shell would, hands every event and the core's effects to
:class:`~iceserv.daemon.metrics.DaemonMetrics`, and checks the counts and
histograms against what happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iceserv.daemon.core import DaemonCore
from iceserv.daemon.effects import (
    ClientConnected,
    ClientGone,
    Close,
    CompileFinished,
    CompileReport,
    ConnKind,
    FromScheduler,
    GoneReason,
    KillCompile,
    NativeEnvBuilt,
    NativeKey,
    NativeResolved,
    Received,
    SchedulerUp,
    StartCompile,
    StartUnpack,
    Unpacked,
    UnpackFailed,
)
from iceserv.daemon.metrics import (
    COMPILE_BUCKETS,
    FAIL_REASONS,
    INSTALL_BUCKETS,
    INSTALL_RESULTS,
    JOB_KINDS,
    MAX_OPEN,
    TICKET_RESULTS,
    DaemonMetrics,
)
from iceserv.daemon.settings import ServerSettings
from iceserv.protocol import (
    CompileFile,
    End,
    EnvTransfer,
    FileChunk,
    GetCS,
    GetNativeEnv,
    JobLocalBegin,
    JobTicket,
    NoCS,
    UseCS,
    VerifyEnv,
)
from iceserv.protocol.auth import KeyRing
from iceserv.protocol.tickets import issue_ticket

T0 = 1_000.0
LOCAL = ConnKind(unix=True, loopback=False)
REMOTE = ConnKind(unix=False, loopback=False)


class _Bed:
    """A core and a tally fed as the shell feeds them."""

    def __init__(self, *, max_kids: int = 4, scheduler: bool = True, auth: str = "off") -> None:
        settings = ServerSettings(
            unix_socket=Path("/nonexistent/sock"),
            env_basedir=Path("/nonexistent"),
            max_kids=max_kids,
            port=10245,
            auth=auth,
            keys=(b"k" * 32,) if auth != "off" else (),
        )
        self.core = DaemonCore(settings, port=10245)
        self.metrics = DaemonMetrics()
        if scheduler:
            self.feed(SchedulerUp("10.0.0.5", 43))

    def feed(self, event: Any, now: float = T0) -> list[Any]:
        effects = self.core.handle(event, now)
        self.metrics.event(event, now)
        self.metrics.effects(effects, now)
        return effects

    def connect(self, conn_id: int, kind: ConnKind = REMOTE) -> None:
        self.feed(ClientConnected(conn_id, f"peer{conn_id}", kind, 43))

    def send(self, conn_id: int, msg: Any, now: float = T0) -> list[Any]:
        return self.feed(Received(conn_id, msg), now)

    def compile(self, conn_id: int, job_id: int) -> None:
        """Connect a remote client whose job starts at once (source ended)."""
        self.connect(conn_id)
        self.send(conn_id, CompileFile(job_id=job_id, environment="gcc", target="x86_64"))
        self.send(conn_id, FileChunk(b"int x;", 6))
        self.send(conn_id, End())


def _view(bed: _Bed) -> Any:
    return bed.metrics.view()


class TestFixedLabels:
    def test_every_label_value_is_there_from_the_start(self):
        """A new tally lists every kind, reason and result with 0: the series never change."""
        view = DaemonMetrics().view()
        assert view.jobs_started == dict.fromkeys(JOB_KINDS, 0)
        assert view.jobs_failed == dict.fromkeys(FAIL_REASONS, 0)
        assert view.installs == dict.fromkeys(INSTALL_RESULTS, 0)
        assert view.tickets == dict.fromkeys(TICKET_RESULTS, 0)
        assert view.compile_time.cumulative == (0,) * (len(COMPILE_BUCKETS) + 1)
        assert view.install_time.cumulative == (0,) * (len(INSTALL_BUCKETS) + 1)


class TestTickets:
    @pytest.mark.parametrize(
        ("auth", "ticket", "result"),
        [
            ("prefer", None, "missing"),
            ("require", None, "refused"),
            ("require", "t1 forged", "refused"),
            ("require", "valid", "accepted"),
        ],
    )
    def test_each_connection_counts_once_by_result(self, auth, ticket, result):
        """A ticket accepted, refused (bad, or none under require) or missing (prefer) counts."""
        bed = _Bed(auth=auth)
        bed.feed(ClientConnected(1, "10.0.0.7:4000", REMOTE, 43))
        if ticket == "valid":
            ticket = issue_ticket(KeyRing((b"k" * 32,)), job_id=3, client="10.0.0.7",
                                  server="10.0.0.5", expires=int(T0) + 60)  # fmt: skip
        if ticket is not None:
            bed.send(1, JobTicket(job_id=3, ticket=ticket))
        bed.send(1, VerifyEnv("gcc", "x86_64"))
        bed.send(1, VerifyEnv("gcc", "x86_64"))
        expected = dict.fromkeys(TICKET_RESULTS, 0)
        expected[result] = 1
        assert _view(bed).tickets == expected


class TestRemoteCompiles:
    def test_ok_error_oom_and_not_started(self):
        """Four compiles end four ways: one ok, three failures, each under its reason."""
        bed = _Bed()
        reports = {
            1: CompileReport(status=0, real_msec=300, object_data=b"obj"),
            2: CompileReport(status=1, real_msec=1200, stderr="error"),
            3: CompileReport(status=1, was_out_of_memory=True, real_msec=40),
            4: CompileReport(give_up="environment gone", give_up_code=107),
        }
        for conn_id in reports:
            bed.compile(conn_id, job_id=conn_id)
        assert _view(bed).jobs_started["remote"] == 4
        for conn_id, report in reports.items():
            bed.feed(CompileFinished(conn_id, report), T0 + 2)
        view = _view(bed)
        assert view.jobs_finished == 4
        assert view.jobs_failed == {
            "compile_error": 1,
            "out_of_memory": 1,
            "killed": 0,
            "not_started": 1,
        }
        assert view.compile_time.count == 3  # the one that never started has no time
        assert view.compile_time.total == 0.3 + 1.2 + 0.04
        assert view.compile_time.cumulative[COMPILE_BUCKETS.index(0.05)] == 1
        assert view.compile_time.cumulative[COMPILE_BUCKETS.index(0.5)] == 2

    def test_a_client_leaving_kills_its_compile(self):
        """The client goes while its compile runs: the core kills it; it counts as killed."""
        bed = _Bed()
        bed.compile(1, job_id=7)
        bed.feed(ClientGone(1, GoneReason.EOF))
        bed.feed(CompileFinished(1, CompileReport(status=-9, real_msec=10)))
        view = _view(bed)
        assert (view.jobs_finished, view.jobs_failed["killed"]) == (1, 1)
        assert sum(view.jobs_failed.values()) == 1

    def test_a_queued_compile_starts_when_a_slot_frees(self):
        """With one slot the second job waits; it counts as started only when granted."""
        bed = _Bed(max_kids=1)
        bed.compile(1, job_id=1)
        bed.compile(2, job_id=2)
        assert _view(bed).jobs_started["remote"] == 1
        bed.feed(CompileFinished(1, CompileReport(real_msec=5)))
        assert _view(bed).jobs_started["remote"] == 2


class TestLocalJobs:
    def test_local_job_compile_yourself_and_another_host(self):
        """Granted JOB_LOCAL_BEGIN counts ``local``, NO_CS ``self``; USE_CS elsewhere nothing."""
        bed = _Bed()
        bed.connect(1, LOCAL)
        bed.send(1, JobLocalBegin(outfile="a.out"))
        bed.connect(2, LOCAL)
        bed.send(2, GetCS(filename="b.c", target="x86_64"))
        bed.feed(FromScheduler(UseCS(job_id=3, hostname="10.0.0.9", port=10245, client_id=2)))
        bed.connect(3, LOCAL)
        bed.send(3, GetCS(filename="c.c", target="x86_64"))
        bed.feed(FromScheduler(NoCS(job_id=4, client_id=3)))
        assert _view(bed).jobs_started == {"remote": 0, "local": 1, "self": 1}

    def test_without_a_scheduler_the_client_compiles_itself(self):
        """No scheduler: GET_CS is answered USE_CS 127.0.0.1 under our slot, counted ``self``."""
        bed = _Bed(scheduler=False)
        bed.connect(1, LOCAL)
        bed.send(1, GetCS(filename="a.c", target="x86_64"))
        assert _view(bed).jobs_started == {"remote": 0, "local": 0, "self": 1}


class TestInstalls:
    def test_installed_failed_and_aborted(self):
        """Three transfers: one lands (timed), one fails, one client leaves mid-way."""
        bed = _Bed()
        for conn_id in (1, 2, 3):
            bed.connect(conn_id)
            bed.send(conn_id, EnvTransfer(name=f"env{conn_id}", target="x86_64"), T0)
        assert _view(bed).installs == {"ok": 0, "failed": 0, "aborted": 0}
        bed.feed(Unpacked(1, 5_000_000, 5_000_000, evicted=("x86_64/old",)), T0 + 3.0)
        bed.feed(UnpackFailed(2, "bad tarball"), T0 + 1.0)
        bed.feed(ClientGone(3, GoneReason.EOF), T0 + 1.0)
        view = _view(bed)
        assert view.installs == {"ok": 1, "failed": 1, "aborted": 1}
        assert view.evictions == 1
        assert (view.install_time.count, view.install_time.total) == (1, 3.0)
        assert view.install_time.cumulative[INSTALL_BUCKETS.index(2.5)] == 0
        assert view.install_time.cumulative[INSTALL_BUCKETS.index(5.0)] == 1

    def test_native_environments(self):
        """A native build that gave a path counts ok; an error counts failed."""
        bed = _Bed()
        for conn_id in (1, 2):
            bed.connect(conn_id, LOCAL)
            bed.send(conn_id, GetNativeEnv(compiler="gcc"))
        gcc, clang = NativeKey("zstd", "/usr/bin/gcc"), NativeKey("zstd", "/usr/bin/clang")
        bed.feed(NativeResolved(1, gcc))
        bed.feed(NativeResolved(2, clang))
        bed.feed(NativeEnvBuilt(gcc, path="/x/native.tar.gz"))
        bed.feed(NativeEnvBuilt(clang, error="no compiler"))
        assert _view(bed).native_builds == {"ok": 1, "failed": 1}


class TestBounded:
    def test_open_records_are_capped(self):
        """Starts that never end (a shell bug) cannot grow the tally without bound."""
        metrics = DaemonMetrics()
        for conn_id in range(MAX_OPEN + 500):
            metrics.effects([StartUnpack(conn_id, "t", "n"), KillCompile(conn_id)], T0)
        assert len(metrics._unpacking) == MAX_OPEN
        assert len(metrics._killed) == MAX_OPEN


_REPORTS = (
    CompileReport(status=0, real_msec=20, object_data=b"o"),
    CompileReport(status=1, real_msec=30),
    CompileReport(status=1, was_out_of_memory=True, real_msec=40),
    CompileReport(give_up="environment gone", give_up_code=107),
)


class MetricsMachine(RuleBasedStateMachine):
    """Random compiles, installs, disconnects and results; the tally must match the core.

    The model plays the shell (it finishes what the core started).  At every
    step: remote compiles started minus finished equals the compiles the core
    runs (its slots), failures never exceed finishes, and every install
    started is either still running or counted under one result.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bed = _Bed(max_kids=2)
        self.now = T0
        self.next_id = 1
        self.open: set[int] = set()
        self.compiling: set[int] = set()
        self.unpacking: set[int] = set()
        self.install_starts = 0

    def _do(self, event: Any) -> None:
        self.now += 0.25
        for effect in self.bed.feed(event, self.now):
            if isinstance(effect, StartCompile):
                self.compiling.add(effect.conn_id)
            elif isinstance(effect, StartUnpack):
                self.unpacking.add(effect.conn_id)
                self.install_starts += 1
            elif isinstance(effect, Close):
                self.open.discard(effect.conn_id)

    def _new(self) -> int:
        conn_id, self.next_id = self.next_id, self.next_id + 1
        self.open.add(conn_id)
        self._do(ClientConnected(conn_id, "p", REMOTE, 43))
        return conn_id

    @rule()
    def compile_job(self) -> None:
        conn_id = self._new()
        for msg in (CompileFile(job_id=conn_id, environment="gcc", target="x86_64"), End()):
            if conn_id in self.open:
                self._do(Received(conn_id, msg))

    @rule()
    def install(self) -> None:
        conn_id = self._new()
        self._do(Received(conn_id, EnvTransfer(name=f"e{conn_id}", target="x86_64")))

    @precondition(lambda self: self.compiling)
    @rule(data=st.data(), report=st.sampled_from(_REPORTS))
    def compile_ends(self, data: st.DataObject, report: CompileReport) -> None:
        conn_id = data.draw(st.sampled_from(sorted(self.compiling)))
        self.compiling.discard(conn_id)
        self._do(CompileFinished(conn_id, report))

    @precondition(lambda self: self.unpacking)
    @rule(data=st.data(), ok=st.booleans())
    def install_ends(self, data: st.DataObject, ok: bool) -> None:  # noqa: FBT001 - a rule's draw
        conn_id = data.draw(st.sampled_from(sorted(self.unpacking)))
        self.unpacking.discard(conn_id)
        self._do(Unpacked(conn_id, 10, 10) if ok else UnpackFailed(conn_id, "bad"))

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def client_leaves(self, data: st.DataObject) -> None:
        conn_id = data.draw(st.sampled_from(sorted(self.open)))
        self.unpacking.discard(conn_id)  # the core aborts the install (AbortUnpack)
        self._do(ClientGone(conn_id, GoneReason.EOF))

    @invariant()
    def totals_match_the_core(self) -> None:
        view = self.bed.metrics.view()
        slots = self.bed.core.slots
        running = view.jobs_started["remote"] - view.jobs_finished
        assert running == len(self.compiling) == slots.children - slots.installs
        assert sum(view.jobs_failed.values()) <= view.jobs_finished
        assert view.compile_time.count <= view.jobs_finished
        assert sum(view.installs.values()) + len(self.unpacking) == self.install_starts
        assert view.install_time.count == view.installs["ok"]


TestMetricsMachine = MetricsMachine.TestCase
TestMetricsMachine.settings = hypothesis_settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
