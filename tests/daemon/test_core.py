"""The daemon core without sockets: every message in every client state, jobs, installs, the link.

Events go in with an explicit ``now``; the effects that come out are
checked as plain records.  A Hypothesis state machine drives random
interleavings of clients, jobs, disconnects, timers and scheduler loss and
checks the slot and reporting invariants.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iceserv.daemon.core import DaemonCore, host_addresses
from iceserv.daemon.effects import (
    LINK_TIMER,
    WAKE_TIMER,
    AbortUnpack,
    AnnounceLogin,
    AnswerInternals,
    ArmTimer,
    BuildNative,
    ClientConnected,
    ClientGone,
    Close,
    CompileFinished,
    CompileReport,
    ConnKind,
    CountJobCpu,
    DropScheduler,
    EnvPushed,
    EnvVerified,
    FeedCompile,
    FeedUnpack,
    FinishUnpack,
    FromScheduler,
    GoneReason,
    HoldEnv,
    KillCompile,
    LoadSampled,
    Log,
    NativeEnvBuilt,
    NativeFound,
    NativeKey,
    NativeResolved,
    NativesFound,
    PauseReading,
    PushEnv,
    Received,
    ReleaseEnv,
    ResolveNative,
    ResumeReading,
    SchedulerConnecting,
    SchedulerDown,
    SchedulerUp,
    SealChannel,
    Send,
    SendFile,
    SendStats,
    StartCompile,
    StartUnpack,
    Stop,
    TimerExpired,
    ToScheduler,
    Unpacked,
    UnpackFailed,
    VerifyEnvironment,
    WakeScheduler,
)
from iceserv.daemon.settings import ServerSettings
from iceserv.daemon.states import (
    EXIT_CLIENT_KILLED,
    EXIT_IO_ERROR,
    EXIT_NO_HOSTS,
    EXIT_PROTOCOL,
    State,
)
from iceserv.protocol import (
    ICESERV_MARK,
    MAX_MESSAGE_SIZE,
    BlacklistHostEnv,
    CompileFile,
    CompileResult,
    ConfCS,
    End,
    EnvEntry,
    EnvTransfer,
    FileChunk,
    GetCS,
    GetInternalStatus,
    GetNativeEnv,
    HostAddresses,
    JobBegin,
    JobDone,
    JobDoneFlag,
    JobLocalBegin,
    JobLocalDone,
    JobTicket,
    Login,
    NoCS,
    Ping,
    PushQuery,
    PushTargets,
    SlotsAnswer,
    SlotsQuery,
    StatusText,
    UseCS,
    UseNativeEnv,
    VerifyEnv,
    VerifyEnvResult,
)
from iceserv.protocol.auth import KeyRing
from iceserv.protocol.sealing import channel_keys, job_key
from iceserv.protocol.tickets import issue_ticket

T0 = 1_000.0
GCC = NativeKey("zstd", "/usr/bin/gcc", (), (("/usr/bin/gcc", 1.0), ("/usr/bin/g++", 1.0)))
CLANG = NativeKey("zstd", "/usr/bin/clang", (), (("/usr/bin/clang", 2.0),))
NATIVE_KEYS = [GCC, CLANG]
#: CS_CONF from an iceserv scheduler (its mark in bench_source).
ICESERV_CONF = ConfCS(bench_source=ICESERV_MARK + "0.1.0")
OWN_IP = "10.0.0.5"
PORT = 10245
LOCAL = ConnKind(unix=True, loopback=False)
REMOTE = ConnKind(unix=False, loopback=False)


def _settings(**changes: Any) -> ServerSettings:
    base = ServerSettings(
        unix_socket=Path("/nonexistent/sock"),
        env_basedir=Path("/nonexistent"),
        max_kids=1,
        port=PORT,
        source_buffer_limit=1000,
    )
    return dataclasses.replace(base, **changes)


def _core(*, scheduler: bool = True, **changes: Any) -> DaemonCore:
    core = DaemonCore(_settings(**changes), port=PORT)
    if scheduler:
        core.handle(SchedulerUp(OWN_IP, 43), T0)
    return core


def _connect(core: DaemonCore, conn_id: int, kind: ConnKind = LOCAL, protocol: int = 43) -> None:
    core.handle(ClientConnected(conn_id, f"peer{conn_id}", kind, protocol), T0)


def _send(core: DaemonCore, conn_id: int, msg: Any, now: float = T0) -> list[Any]:
    return core.handle(Received(conn_id, msg), now)


def _of(effects: list[Any], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def _to_scheduler(effects: list[Any]) -> list[Any]:
    return [e.message for e in _of(effects, ToScheduler)]


def _sent(effects: list[Any], conn_id: int) -> list[Any]:
    return [e.message for e in _of(effects, Send) if e.conn_id == conn_id]


def _job(job_id: int = 5, env: str = "gcc") -> CompileFile:
    return CompileFile(job_id=job_id, environment=env, target="x86_64", args=("-c",))


BUSY = 99  # a client holding the only slot with a local job


def _occupy(core: DaemonCore) -> None:
    _connect(core, BUSY)
    _send(core, BUSY, JobLocalBegin(outfile="x.o"))
    assert core.state_of(BUSY) is State.CLIENT_WORK


TRANSFERS = (97, 98)  # clients holding both environment transfers (max_env_transfers 2)


def _fill_transfers(core: DaemonCore) -> None:
    for conn_id in TRANSFERS:
        _connect(core, conn_id, REMOTE)
        _send(core, conn_id, EnvTransfer(name=f"env{conn_id}", target="x86_64"))
        assert core.state_of(conn_id) is State.INSTALLING


def _drive(core: DaemonCore, state: State, conn_id: int = 1) -> None:
    """Bring client *conn_id* of *core* (scheduler up, one slot) into *state*."""
    if state in (State.PENDING_USE_CS, State.LINK_WAIT, State.TO_COMPILE):
        _occupy(core)
    if state is State.INSTALL_WAIT:
        _fill_transfers(core)
    _connect(core, conn_id)
    steps: dict[State, list[Any]] = {
        State.NEW: [],
        State.WAIT_NATIVE: [GetNativeEnv(compiler="gcc")],
        State.WAIT_FOR_CS: [GetCS(target="x86_64")],
        State.PENDING_USE_CS: [GetCS(target="x86_64")],
        State.CLIENT_WORK: [JobLocalBegin(outfile="a.o")],
        State.WAIT_COMPILE: [GetCS(target="x86_64")],
        State.LINK_WAIT: [JobLocalBegin(outfile="a.o")],
        State.INSTALLING: [EnvTransfer(name="gcc", target="x86_64")],
        State.INSTALL_WAIT: [EnvTransfer(name="gcc", target="x86_64")],
        State.TO_COMPILE: [_job()],
        State.COMPILING: [_job()],
        State.JOB_DONE: [JobLocalBegin(outfile="a.o"), JobDone(job_id=0, real_msec=5)],
        State.WAIT_SLOTS: [SlotsQuery()],
    }
    if state is State.WAIT_SLOTS:
        core.handle(FromScheduler(ICESERV_CONF), T0)
    for msg in steps[state]:
        _send(core, conn_id, msg)
    if state is State.PENDING_USE_CS:
        core.handle(FromScheduler(NoCS(job_id=70, client_id=conn_id)), T0)
    if state is State.WAIT_COMPILE:
        core.handle(
            FromScheduler(UseCS(job_id=71, hostname="10.0.0.9", port=PORT, client_id=conn_id)), T0
        )
    assert core.state_of(conn_id) is state


# --- every message in every state ------------------------------------------------------

_MESSAGES: dict[str, Any] = {
    "GET_NATIVE_ENV": GetNativeEnv(compiler="gcc"),
    "GET_CS": GetCS(target="x86_64"),
    "JOB_LOCAL_BEGIN": JobLocalBegin(outfile="b.o"),
    "JOB_DONE": JobDone(job_id=0, real_msec=5),
    "BLACKLIST_HOST_ENV": BlacklistHostEnv(environment="gcc", target="x86_64", hostname="h"),
    "END": End(),
    "TRANFER_ENV": EnvTransfer(name="gcc2", target="x86_64"),
    "FILE_CHUNK": FileChunk(b"int x;", 6),
    "VERIFY_ENV": VerifyEnv(environment="gcc", target="x86_64"),
    "COMPILE_FILE": _job(8),
    "COMPILE_FILE(__client)": _job(9, env="__client"),
    "USE_CS": UseCS(job_id=1),  # a scheduler's message from a client: never valid
    "SLOTS_QUERY": SlotsQuery(),  # answered alone: the scheduler is not marked as iceserv
    "JOB_TICKET": JobTicket(job_id=8, ticket="t1"),  # auth off: taken, nothing checked
}

ERR = "protocol error"
GONE = "good bye"
SAME = "unchanged"


def _expected(name: str, state: State) -> State | str:
    """The state table of core.py's docstring, written out independently."""
    table: dict[str, dict[State, State | str]] = {
        "GET_NATIVE_ENV": {State.NEW: State.WAIT_NATIVE},
        "GET_CS": {State.NEW: State.WAIT_FOR_CS, State.JOB_DONE: State.WAIT_FOR_CS},
        "JOB_LOCAL_BEGIN": {State.NEW: State.CLIENT_WORK, State.JOB_DONE: State.CLIENT_WORK},
        "JOB_DONE": {State.CLIENT_WORK: State.JOB_DONE},
        "BLACKLIST_HOST_ENV": dict.fromkeys(State, SAME),
        "END": {
            **dict.fromkeys(State, GONE),
            State.INSTALLING: SAME,
            State.TO_COMPILE: SAME,
            State.COMPILING: SAME,
        },
        "TRANFER_ENV": {State.NEW: State.INSTALLING},
        "FILE_CHUNK": {State.INSTALLING: SAME, State.TO_COMPILE: SAME, State.COMPILING: SAME},
        "VERIFY_ENV": {State.NEW: SAME},
        "COMPILE_FILE": {State.NEW: State.COMPILING},
        "COMPILE_FILE(__client)": {State.CLIENT_WORK: SAME},
        "USE_CS": {},
        "SLOTS_QUERY": {State.NEW: SAME},
        "JOB_TICKET": {State.NEW: SAME},
    }
    return table[name].get(state, ERR)


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.name)
@pytest.mark.parametrize("name", list(_MESSAGES))
def test_every_message_in_every_state(name: str, state: State) -> None:
    """Each message moves a client as the state table says; any other is a protocol error."""
    core = _core()
    _drive(core, state)
    effects = _send(core, 1, _MESSAGES[name], T0 + 1)
    expected = _expected(name, state)
    if expected == ERR:
        assert Close(1) in effects
        assert [e for e in _of(effects, Log) if e.event == "client_protocol_error"]
        assert core.state_of(1) is None
    elif expected == GONE:
        assert Close(1) in effects
        assert core.state_of(1) is None
        assert not [e for e in _of(effects, Log) if e.event == "client_protocol_error"]
    else:
        assert Close(1) not in effects
        assert core.state_of(1) is (state if expected == SAME else expected)
    installs = core.slots.installs if state is State.INSTALL_WAIT else 0  # they start at once
    assert core.slots.used - installs <= core.slots.capacity


class TestLocalClients:
    def test_get_cs_is_forwarded_with_our_client_id_and_count(self):
        """GET_CS goes to the scheduler with the connection id and the client count."""
        core = _core()
        _connect(core, 3)
        (forwarded,) = _to_scheduler(_send(core, 3, GetCS(target="x86_64", client_id=77)))
        assert (forwarded.client_id, forwarded.client_count) == (3, 1)

    def test_use_cs_for_another_host_is_passed_on(self):
        """USE_CS naming another host goes to the client unchanged; it compiles remotely."""
        core = _core()
        _drive(core, State.WAIT_FOR_CS)
        use = UseCS(job_id=4, hostname="10.0.0.9", port=PORT, client_id=1)
        effects = core.handle(FromScheduler(use), T0)
        assert _sent(effects, 1) == [use]
        assert core.state_of(1) is State.WAIT_COMPILE

    def test_use_cs_for_another_daemon_at_loopback_names_localhost(self):
        """A 1.4 scheduler on this host names another daemon 127.0.0.1: forwarded as localhost.

        Clients read 127.0.0.1 as "compile it yourself" (issue 13, one-host clusters).
        """
        core = _core()
        _drive(core, State.WAIT_FOR_CS)
        use = UseCS(job_id=4, hostname="127.0.0.1", port=PORT + 1, client_id=1)
        effects = core.handle(FromScheduler(use), T0)
        assert _sent(effects, 1) == [
            UseCS(job_id=4, hostname="localhost", port=PORT + 1, client_id=1)
        ]
        assert core.state_of(1) is State.WAIT_COMPILE
        (assigned,) = [e for e in _of(effects, Log) if e.event == "compile_server_assigned"]
        assert assigned.fields["server"] == f"127.0.0.1:{PORT + 1}"  # as the scheduler named it

    @pytest.mark.parametrize(
        "answer",
        [
            NoCS(job_id=4, client_id=1),
            UseCS(job_id=4, hostname=OWN_IP, port=PORT, client_id=1, host_platform="x86_64"),
        ],
        ids=["NO_CS", "USE_CS-to-us"],
    )
    def test_compile_yourself_waits_for_a_slot(self, answer):
        """NO_CS or USE_CS to ourselves: a slot, then USE_CS 127.0.0.1 with client id 1."""
        core = _core()
        _occupy(core)
        _drive(core, State.WAIT_FOR_CS)
        effects = core.handle(FromScheduler(answer), T0)
        assert not _sent(effects, 1)
        assert core.state_of(1) is State.PENDING_USE_CS
        effects = _send(core, BUSY, JobDone(job_id=0, real_msec=5))
        (use,) = _sent(effects, 1)
        assert (use.hostname, use.port, use.job_id, use.client_id) == ("127.0.0.1", PORT, 4, 1)
        assert core.state_of(1) is State.CLIENT_WORK

    def test_without_scheduler_the_client_compiles_itself(self):
        """No scheduler: GET_CS is answered at once with a USE_CS to ourselves."""
        core = _core(scheduler=False)
        _connect(core, 2)
        effects = _send(core, 2, GetCS(target="armv7"))
        (use,) = _sent(effects, 2)
        assert (use.hostname, use.job_id, use.host_platform) == ("127.0.0.1", 2, "armv7")
        assert not _to_scheduler(effects)

    def test_answer_for_a_client_that_left(self):
        """USE_CS for a client that is gone: JOB_DONE 107 from the submitter, as 1.4."""
        core = _core()
        effects = core.handle(FromScheduler(UseCS(job_id=12, client_id=55)), T0)
        (done,) = _to_scheduler(effects)
        assert (done.job_id, done.exitcode, done.flags) == (
            12,
            EXIT_IO_ERROR,
            JobDoneFlag.FROM_SUBMITTER,
        )

    def test_late_answer_in_another_state_is_ignored(self):
        """An answer for a client that is not waiting for one changes nothing."""
        core = _core()
        _drive(core, State.CLIENT_WORK)
        effects = core.handle(FromScheduler(NoCS(job_id=3, client_id=1)), T0)
        assert core.state_of(1) is State.CLIENT_WORK
        assert [e.event for e in _of(effects, Log)] == ["unexpected_scheduler_answer"]

    def test_local_job_go_and_job_done(self):
        """JOB_LOCAL_BEGIN: go to the client and JOB_LOCAL_BEGIN to the scheduler; JOB_DONE ends."""
        core = _core()
        _connect(core, 1)
        effects = _send(core, 1, JobLocalBegin(outfile="a.o"), T0 + 5)
        assert _sent(effects, 1) == [JobLocalBegin()]
        (begin,) = _to_scheduler(effects)
        assert (begin.outfile, begin.id, begin.stime) == ("a.o", 1, int(T0 + 5))
        effects = _send(core, 1, JobDone(job_id=0, real_msec=100, user_msec=30, sys_msec=10))
        assert CountJobCpu(40) in effects
        (done,) = _to_scheduler(effects)
        assert done.client_count == 1
        assert core.slots.used == 0

    def test_implausible_cpu_figures_are_not_counted(self):
        """user + sys above real: the figures are not counted in the load (1.4)."""
        core = _core()
        _drive(core, State.CLIENT_WORK)
        effects = _send(core, 1, JobDone(job_id=0, real_msec=10, user_msec=30))
        assert not _of(effects, CountJobCpu)

    def test_client_compiling_itself_announces_its_job(self):
        """COMPILE_FILE with the __client environment: JOB_BEGIN to the scheduler."""
        core = _core()
        _drive(core, State.CLIENT_WORK)
        effects = _send(core, 1, _job(9, env="__client"), T0 + 3)
        assert _to_scheduler(effects) == [JobBegin(job_id=9, stime=int(T0 + 3), client_count=1)]

    def test_native_environment(self):
        """GET_NATIVE_ENV: the shell checks it, the core builds it; USE_NATIVE_ENV, back to NEW."""
        core = _core()
        _connect(core, 1)
        effects = _send(core, 1, GetNativeEnv(compiler="gcc", extrafiles=("/x",)))
        assert effects[0] == ResolveNative(1, "gcc", ("/x",), "")
        effects = core.handle(NativeResolved(1, GCC), T0)
        assert _of(effects, BuildNative) == [BuildNative(GCC, "request")]
        effects = core.handle(NativeEnvBuilt(GCC, path="/envs/native/a.tar.gz"), T0)
        assert _sent(effects, 1) == [UseNativeEnv("/envs/native/a.tar.gz")]
        assert core.state_of(1) is State.NEW

    def test_native_environment_failure(self):
        """A failed native build: END and the client is closed."""
        core = _core()
        _drive(core, State.WAIT_NATIVE)
        core.handle(NativeResolved(1, GCC), T0)
        effects = core.handle(NativeEnvBuilt(GCC, error="no compiler"), T0)
        assert _sent(effects, 1) == [End()]
        assert Close(1) in effects

    def test_native_environment_refused(self):
        """A request whose paths the shell refused: END, closed (121), nothing built."""
        core = _core()
        _drive(core, State.WAIT_NATIVE)
        effects = core.handle(NativeResolved(1, None, error="not owned by root"), T0)
        assert _sent(effects, 1) == [End()]
        assert not _of(effects, BuildNative)
        assert core.state_of(1) is None

    def test_blacklist_is_forwarded(self):
        """BLACKLIST_HOST_ENV goes to the scheduler as it is."""
        core = _core()
        _connect(core, 1)
        msg = BlacklistHostEnv(environment="e", target="t", hostname="h")
        assert _to_scheduler(_send(core, 1, msg)) == [msg]


def _events(effects: list[Any], name: str) -> list[dict[str, Any]]:
    return [e.fields for e in _of(effects, Log) if e.event == name]


def _ask_native(core: DaemonCore, conn_id: int, key: NativeKey, on_disk: str = "", now: float = T0):
    """A local client asks for *key*'s environment; the shell found *on_disk* for it."""
    _connect(core, conn_id)
    _send(core, conn_id, GetNativeEnv(compiler=key.compiler), now)
    return core.handle(NativeResolved(conn_id, key, path=on_disk), now)


class TestNativePrebuild:
    """Native environments built right after start (issue 17, item 1)."""

    def test_prebuilds_are_queued_at_start_one_at_a_time(self):
        """The compilers found at start are built in turn, at most max_native_builds at once."""
        core = _core()
        effects = core.handle(NativesFound((NativeFound(GCC), NativeFound(CLANG))), T0)
        assert _of(effects, BuildNative) == [BuildNative(GCC, "prebuild")]
        (found,) = _events(effects, "native_envs_found")
        assert found["to_build"] == ["/usr/bin/gcc", "/usr/bin/clang"]
        assert core.natives.queued == (CLANG,)
        effects = core.handle(NativeEnvBuilt(GCC, path="/n/gcc.tar.zst"), T0 + 1.5)
        (built,) = _events(effects, "native_env_built")
        assert (built["reason"], built["seconds"], built["waiting_clients"]) == ("prebuild", 1.5, 0)
        assert _of(effects, BuildNative) == [BuildNative(CLANG, "prebuild")]
        (started,) = _events(effects, "native_env_build_started")
        assert started["queued_seconds"] == 1.5

    def test_two_builds_at_once_when_allowed(self):
        """With max_native_builds 2 both prebuilds start at once."""
        core = _core(max_native_builds=2)
        effects = core.handle(NativesFound((NativeFound(GCC), NativeFound(CLANG))), T0)
        assert len(_of(effects, BuildNative)) == 2

    def test_kept_environments_are_not_built_again(self):
        """A tarball kept from the last run is not rebuilt; a client gets it at once."""
        core = _core()
        effects = core.handle(NativesFound((NativeFound(GCC, "/n/gcc.tar.zst"),)), T0)
        assert not _of(effects, BuildNative)
        effects = _ask_native(core, 1, GCC, "/n/gcc.tar.zst")
        assert _sent(effects, 1) == [UseNativeEnv("/n/gcc.tar.zst")]
        (sent,) = _events(effects, "native_env_sent")
        assert (sent["origin"], sent["waited_seconds"]) == ("cache", 0)

    def test_a_prebuilt_environment_is_ready_for_the_first_client(self):
        """After the prebuild a client is answered at once, and the log says it was prebuilt."""
        core = _core()
        core.handle(NativesFound((NativeFound(GCC),)), T0)
        core.handle(NativeEnvBuilt(GCC, path="/n/gcc.tar.zst"), T0 + 1)
        effects = _ask_native(core, 1, GCC, "/n/gcc.tar.zst", T0 + 5)
        assert not _of(effects, BuildNative)
        assert _sent(effects, 1) == [UseNativeEnv("/n/gcc.tar.zst")]
        (sent,) = _events(effects, "native_env_sent")
        assert (sent["origin"], sent["waited_seconds"]) == ("prebuild", 0)

    def test_a_client_shares_a_running_prebuild(self):
        """Clients asking while the prebuild runs wait for it: one build, every client answered."""
        core = _core()
        core.handle(NativesFound((NativeFound(GCC),)), T0)
        first = _ask_native(core, 1, GCC, now=T0 + 0.5)
        second = _ask_native(core, 2, GCC, now=T0 + 1.0)
        assert not _of(first + second, BuildNative)
        (waiting,) = _events(first, "native_env_waiting")
        assert (waiting["build"], waiting["running"]) == ("prebuild", True)
        effects = core.handle(NativeEnvBuilt(GCC, path="/n/gcc.tar.zst"), T0 + 1.5)
        assert _sent(effects, 1) == [UseNativeEnv("/n/gcc.tar.zst")]
        assert _sent(effects, 2) == [UseNativeEnv("/n/gcc.tar.zst")]
        sent = {e["client_id"]: e for e in _events(effects, "native_env_sent")}
        assert (sent[1]["origin"], sent[1]["waited_seconds"]) == ("prebuild", 1.0)
        assert sent[2]["waited_seconds"] == 0.5
        assert core.state_of(1) is State.NEW

    def test_a_failed_shared_build_ends_its_clients(self):
        """A prebuild that fails ends the clients waiting for it (121) and starts the next build."""
        core = _core()
        core.handle(NativesFound((NativeFound(GCC), NativeFound(CLANG))), T0)
        _ask_native(core, 1, GCC)
        effects = core.handle(NativeEnvBuilt(GCC, error="icecc-create-env failed"), T0 + 1)
        assert _sent(effects, 1) == [End()]
        assert Close(1) in effects
        assert _of(effects, BuildNative) == [BuildNative(CLANG, "prebuild")]
        assert _events(effects, "native_env_build_failed")

    def test_a_changed_compiler_is_built_again(self):
        """New mtimes are a new key: built again, although the old one was ready."""
        core = _core()
        core.handle(NativesFound((NativeFound(GCC, "/n/gcc.tar.zst"),)), T0)
        updated = dataclasses.replace(GCC, mtimes=(("/usr/bin/gcc", 9.0), ("/usr/bin/g++", 9.0)))
        effects = _ask_native(core, 1, updated)
        assert _of(effects, BuildNative) == [BuildNative(updated, "request")]
        effects = core.handle(NativeEnvBuilt(updated, path="/n/gcc2.tar.zst"), T0 + 1)
        assert _sent(effects, 1) == [UseNativeEnv("/n/gcc2.tar.zst")]

    def test_an_evicted_environment_is_built_again(self):
        """Ready for the core but gone from disk (the shell found none): built again."""
        core = _core()
        core.handle(NativesFound((NativeFound(GCC, "/n/gcc.tar.zst"),)), T0)
        effects = _ask_native(core, 1, GCC, on_disk="")
        assert _of(effects, BuildNative) == [BuildNative(GCC, "request")]

    def test_a_client_request_jumps_the_prebuild_queue(self):
        """A key a client waits for is built before the prebuilds still queued."""
        other = NativeKey("zstd", "/usr/bin/gcc-13", (), (("/usr/bin/gcc-13", 3.0),))
        core = _core()
        core.handle(NativesFound((NativeFound(GCC), NativeFound(CLANG))), T0)
        effects = _ask_native(core, 1, other)
        assert not _of(effects, BuildNative)  # gcc's prebuild still holds the one build slot
        assert core.natives.queued == (other, CLANG)
        effects = core.handle(NativeEnvBuilt(GCC, path="/n/gcc.tar.zst"), T0 + 1)
        assert _of(effects, BuildNative) == [BuildNative(other, "request")]

    def test_a_queued_prebuild_a_client_wants_moves_first(self):
        """A queued prebuild a client asks for goes ahead of the other queued ones."""
        third = NativeKey("zstd", "/usr/bin/gcc-13", (), (("/usr/bin/gcc-13", 3.0),))
        core = _core()
        core.handle(NativesFound((NativeFound(GCC), NativeFound(CLANG), NativeFound(third))), T0)
        assert core.natives.queued == (CLANG, third)
        _ask_native(core, 1, third)
        assert core.natives.queued == (third, CLANG)
        effects = core.handle(NativeEnvBuilt(GCC, path="/n/gcc.tar.zst"), T0 + 1)
        assert _of(effects, BuildNative) == [BuildNative(third, "prebuild")]
        effects = core.handle(NativeEnvBuilt(third, path="/n/third.tar.zst"), T0 + 2)
        assert _sent(effects, 1) == [UseNativeEnv("/n/third.tar.zst")]

    def test_a_client_gone_while_waiting_is_skipped(self):
        """A client that left while its build ran gets nothing; the build is still kept."""
        core = _core()
        core.handle(NativesFound((NativeFound(GCC),)), T0)
        _ask_native(core, 1, GCC)
        core.handle(ClientGone(1, GoneReason.EOF), T0)
        effects = core.handle(NativeEnvBuilt(GCC, path="/n/gcc.tar.zst"), T0 + 1)
        assert not _sent(effects, 1)
        assert core.natives.ready(GCC) is not None


class TestEndReports:
    @pytest.mark.parametrize(
        ("state", "reason", "expected"),
        [
            (
                State.WAIT_FOR_CS,
                GoneReason.EOF,
                JobDone(
                    job_id=1,
                    exitcode=EXIT_CLIENT_KILLED,
                    client_count=1,
                    flags=JobDoneFlag.FROM_SUBMITTER | JobDoneFlag.UNKNOWN_JOB_ID,
                ),
            ),
            (
                State.WAIT_COMPILE,
                GoneReason.EOF,
                JobDone(
                    job_id=71,
                    exitcode=EXIT_CLIENT_KILLED,
                    client_count=1,
                    flags=JobDoneFlag.FROM_SUBMITTER,
                ),
            ),
            (
                State.PENDING_USE_CS,
                GoneReason.PROTOCOL_ERROR,
                JobDone(
                    job_id=70,
                    exitcode=EXIT_PROTOCOL,
                    client_count=2,
                    flags=JobDoneFlag.FROM_SUBMITTER,
                ),
            ),
            (State.CLIENT_WORK, GoneReason.IO_ERROR, JobLocalDone(job_id=1)),
            (State.NEW, GoneReason.EOF, None),
            (State.JOB_DONE, GoneReason.EOF, None),
            (State.LINK_WAIT, GoneReason.EOF, None),
        ],
    )
    def test_what_the_scheduler_hears(self, state, reason, expected):
        """A client that goes is reported once, as 1.4's handle_end does."""
        core = _core()
        _drive(core, state)
        effects = core.handle(ClientGone(1, reason), T0)
        reports = [m for m in _to_scheduler(effects) if isinstance(m, JobDone | JobLocalDone)]
        assert reports == ([expected] if expected else [])
        assert core.state_of(1) is None
        assert core.slots.running(1) is None
        assert not core.slots.is_waiting(1)

    def test_good_bye_after_a_remote_compile_is_silent(self):
        """END after compiling remotely: nothing to report."""
        core = _core()
        _drive(core, State.WAIT_COMPILE)
        effects = _send(core, 1, End())
        assert not _to_scheduler(effects)
        assert Close(1) in effects

    def test_a_gone_client_is_never_reported_twice(self):
        """EOF after the core already ended the client adds nothing."""
        core = _core()
        _drive(core, State.WAIT_FOR_CS)
        core.handle(ClientGone(1, GoneReason.EOF), T0)
        assert core.handle(ClientGone(1, GoneReason.EOF), T0) == []
        assert _send(core, 1, End()) == []


class TestRemoteCompile:
    def test_life_of_a_job(self):
        """COMPILE_FILE, source, END, compile, answer: JOB_BEGIN, result, object, JOB_DONE."""
        core = _core()
        _connect(core, 1, REMOTE)
        effects = _send(core, 1, _job(5), T0 + 1)
        assert HoldEnv("x86_64", "gcc") in effects
        assert _to_scheduler(effects) == [JobBegin(job_id=5, stime=int(T0 + 1), client_count=1)]
        (start,) = _of(effects, StartCompile)
        assert (start.pieces, start.ended) == ((), False)
        assert _send(core, 1, FileChunk(b"int a;", 3)) == [FeedCompile(1, (b"int a;",))]
        assert FeedCompile(1, ended=True) in _send(core, 1, End())
        report = CompileReport(
            status=0, stdout="o", stderr="e", real_msec=50, user_msec=40, object_data=b"OBJ"
        )
        effects = core.handle(CompileFinished(1, report), T0 + 2)
        (answer,) = _sent(effects, 1)
        assert answer == CompileResult(err="e", out="o", status=0, was_out_of_memory=False)
        assert SendFile(1, b"OBJ") in effects
        assert ReleaseEnv("x86_64", "gcc") in effects
        (done,) = _to_scheduler(effects)
        assert (done.job_id, done.exitcode, done.flags) == (5, 0, JobDoneFlag.FROM_SERVER)
        assert (done.in_uncompressed, done.in_compressed, done.out_uncompressed) == (6, 3, 3)
        assert core.state_of(1) is State.NEW
        assert core.slots.used == 0

    def test_queued_job_preloads_and_starts_with_its_source(self):
        """A queued job buffers its source; the grant hands it over in one StartCompile."""
        core = _core()
        _drive(core, State.TO_COMPILE)
        _send(core, 1, FileChunk(b"abc", 3))
        _send(core, 1, End())
        assert core.source_received(1) == 3
        assert core.buffered == 3
        effects = _send(core, BUSY, JobDone(job_id=0, real_msec=1))
        (start,) = _of(effects, StartCompile)
        assert (start.pieces, start.ended) == ((b"abc",), True)
        assert core.buffered == 0

    def test_too_much_source_while_queued(self):
        """Past the buffer limit plus one chunk while paused: STATUS_TEXT, the client is dropped."""
        core = _core()
        _drive(core, State.TO_COMPILE)
        effects = _send(core, 1, FileChunk(b"x" * 1001, 10))
        assert PauseReading(1) in effects
        assert core.state_of(1) is State.TO_COMPILE
        effects = _send(core, 1, FileChunk(b"x" * MAX_MESSAGE_SIZE, 10))
        assert isinstance(_sent(effects, 1)[0], StatusText)
        assert Close(1) in effects
        (done,) = [m for m in _to_scheduler(effects) if isinstance(m, JobDone)]
        assert (done.job_id, done.exitcode, done.flags) == (
            8 - 3,
            EXIT_CLIENT_KILLED,
            JobDoneFlag.FROM_SERVER,
        )
        assert ReleaseEnv("x86_64", "gcc") in effects

    def test_client_gone_while_compiling(self):
        """EOF during the compile: kill it, answer nobody, the compile reports 118 itself."""
        core = _core()
        _drive(core, State.COMPILING)
        effects = core.handle(ClientGone(1, GoneReason.EOF), T0)
        assert KillCompile(1) in effects
        assert not [m for m in _to_scheduler(effects) if isinstance(m, JobDone)]
        assert core.slots.running(1) is not None  # still held until the compile ends
        assert core.client_count == 1
        effects = core.handle(CompileFinished(1, CompileReport(status=1)), T0)
        assert not _of(effects, Send)
        (done,) = _to_scheduler(effects)
        assert done.exitcode == EXIT_CLIENT_KILLED
        assert core.client_count == 0
        assert core.slots.used == 0

    def test_second_end_cancels(self):
        """Any message after END cancels the job (118), as 1.4."""
        core = _core()
        _drive(core, State.COMPILING)
        _send(core, 1, End())
        effects = _send(core, 1, End())
        assert KillCompile(1) in effects

    def test_environment_missing(self):
        """A job whose environment is gone: STATUS_TEXT, close, JOB_DONE 110, LOGIN again."""
        core = _core()
        _drive(core, State.COMPILING)
        report = CompileReport(give_up="no compiler", give_up_code=110, env_removed=True)
        effects = core.handle(CompileFinished(1, report), T0)
        assert AnnounceLogin(reannounce=True) in effects
        assert _sent(effects, 1) == [StatusText("no compiler")]
        assert Close(1) in effects
        (done,) = [m for m in _to_scheduler(effects) if isinstance(m, JobDone)]
        assert done.exitcode == 110

    def test_no_input_in_time_kills_and_answers_107(self):
        """No source for the gap time-out: the compile is killed, the client told 107."""
        core = _core()
        _drive(core, State.COMPILING)
        gap = core.settings.source_gap_timeout
        effects = core.handle(TimerExpired(1), T0 + gap + 1)
        assert KillCompile(1) in effects
        effects = core.handle(CompileFinished(1, CompileReport(status=-9)), T0 + gap + 2)
        (answer,) = _sent(effects, 1)
        assert (answer.status, answer.was_out_of_memory) == (EXIT_IO_ERROR, True)
        assert Close(1) in effects
        (done,) = [m for m in _to_scheduler(effects) if isinstance(m, JobDone)]
        assert done.exitcode == EXIT_IO_ERROR

    def test_full_load_holds_compiles_back(self):
        """At load 1000 a COMPILE waits; a lower load starts it."""
        core = _core()
        core.handle(LoadSampled(1000), T0)
        _connect(core, 1)
        assert not _of(_send(core, 1, _job()), StartCompile)
        assert core.state_of(1) is State.TO_COMPILE
        assert _of(core.handle(LoadSampled(200), T0), StartCompile)

    def test_verify_env(self):
        """VERIFY_ENV: run the check, answer VERIFY_ENV_RESULT, stay NEW."""
        core = _core()
        _connect(core, 1)
        assert _send(core, 1, VerifyEnv(environment="e", target="t")) == [
            VerifyEnvironment(1, "t", "e")
        ]
        effects = core.handle(EnvVerified(1, ok=True), T0)
        assert _sent(effects, 1) == [VerifyEnvResult(ok=True)]

    @pytest.mark.parametrize("msg", [_job(), EnvTransfer(name="e"), VerifyEnv(environment="e")])
    def test_without_chroot_remote_work_is_refused(self, msg):
        """A daemon that cannot chroot refuses remote work with STATUS_TEXT and closes."""
        core = _core(chroot_possible=False)
        _connect(core, 1)
        effects = _send(core, 1, msg)
        assert isinstance(_sent(effects, 1)[0], StatusText)
        assert Close(1) in effects
        assert not _of(effects, StartCompile | StartUnpack | VerifyEnvironment)

    def test_status_text_only_for_clients_that_know_it(self):
        """Protocol 22 predates STATUS_TEXT from jobs: the client is just closed."""
        core = _core(chroot_possible=False)
        _connect(core, 1, protocol=22)
        effects = _send(core, 1, _job())
        assert not _sent(effects, 1)
        assert Close(1) in effects


class TestInstall:
    def test_install(self):
        """TRANFER_ENV, chunks, END: unpack, install, LOGIN again; the slot is held meanwhile."""
        core = _core()
        _connect(core, 1, REMOTE)
        effects = _send(core, 1, EnvTransfer(name="gcc", target=""))
        assert StartUnpack(1, "x86_64", "gcc") in effects
        assert core.slots.children == 1
        assert _send(core, 1, FileChunk(b"tar", 3)) == [FeedUnpack(1, b"tar")]
        assert _send(core, 1, End()) == [FinishUnpack(1)]
        effects = core.handle(Unpacked(1, size=10, cache_size=10), T0)
        assert AnnounceLogin(reannounce=True) in effects
        assert core.state_of(1) is State.NEW
        assert core.slots.children == 0

    def test_failed_install(self):
        """An unpacker that refuses: STATUS_TEXT, close, LOGIN again (no 'busy installing')."""
        core = _core()
        _drive(core, State.INSTALLING)
        effects = core.handle(UnpackFailed(1, "escapes its directory"), T0)
        assert AnnounceLogin(reannounce=True) in effects
        (text,) = _sent(effects, 1)
        assert "escapes its directory" in text.text
        assert Close(1) in effects
        assert core.slots.used == 0

    def test_bad_name(self):
        """A name with a slash is refused before any unpacker starts."""
        core = _core()
        _connect(core, 1)
        effects = _send(core, 1, EnvTransfer(name="../x", target="x86_64"))
        assert not _of(effects, StartUnpack)
        assert AnnounceLogin(reannounce=True) in effects
        assert Close(1) in effects

    def test_client_gone_during_install(self):
        """EOF while installing: the unpacker is aborted, the slot freed, LOGIN re-sent."""
        core = _core()
        _drive(core, State.INSTALLING)
        effects = core.handle(ClientGone(1, GoneReason.EOF), T0)
        assert AbortUnpack(1) in effects
        assert AnnounceLogin(reannounce=True) in effects
        assert core.slots.used == 0


class TestTimers:
    def test_idle_client_times_out(self):
        """A client silent in NEW for the idle time-out is dropped (107)."""
        core = _core()
        _connect(core, 1)
        idle = core.settings.idle_timeout
        assert core.handle(TimerExpired(1), T0 + idle - 1) == [ArmTimer(1, T0 + idle)]
        effects = core.handle(TimerExpired(1), T0 + idle)
        assert Close(1) in effects

    def test_a_message_moves_the_deadline(self):
        """An expiry after a later message re-arms at that message's deadline."""
        core = _core()
        _connect(core, 1)
        _send(core, 1, BlacklistHostEnv(), T0 + 50)
        idle = core.settings.idle_timeout
        assert core.handle(TimerExpired(1), T0 + idle) == [ArmTimer(1, T0 + 50 + idle)]

    def test_state_change_arms_the_state_timeout(self):
        """Entering CLIENT_WORK arms its (long) local-job time-out."""
        core = _core()
        _connect(core, 1)
        effects = _send(core, 1, JobLocalBegin(), T0 + 1)
        assert ArmTimer(1, T0 + 1 + core.settings.local_job_timeout) in effects


class TestSchedulerLink:
    def test_login_and_stats_period(self):
        """Logged in: LOGIN; STATS every 3 s (or CS_CONF's period)."""
        core = _core(scheduler=False)
        effects = core.handle(SchedulerUp(OWN_IP, 43), T0)
        assert effects == [AnnounceLogin(reannounce=False), ArmTimer(LINK_TIMER, T0 + 3)]
        core.handle(FromScheduler(ConfCS(max_scheduler_pong=7)), T0)
        effects = core.handle(TimerExpired(LINK_TIMER), T0 + 3)
        assert effects == [SendStats(force=False), ArmTimer(LINK_TIMER, T0 + 10)]

    def test_an_idle_link_is_kept_for_hours(self):
        """Hours without a word from the scheduler: STATS go out, forced every idle period,
        and the link is never dropped (1.4 keeps an idle link; only TCP finds a dead peer)."""
        core = _core(scheduler=False, scheduler_idle=300.0)
        effects = core.handle(SchedulerUp(OWN_IP, 43), T0)
        now, forced = T0, []
        for _ in range(4000):  # 4000 ticks of 3 s: 3 h 20 min
            (arm,) = _of(effects, ArmTimer)
            now = arm.deadline
            effects = core.handle(TimerExpired(LINK_TIMER), now)
            assert not _of(effects, DropScheduler)
            forced += [now for e in _of(effects, SendStats) if e.force]
        assert core.scheduler_up
        gaps = [b - a for a, b in zip([T0, *forced], forced, strict=False)]
        assert len(forced) >= 3 * 3600 // 300
        assert max(gaps) <= 300 + 3

    def test_scheduler_loss_drops_all_but_running_compiles(self):
        """As 1.4: clients waiting on the scheduler are ended (116); a compile goes on."""
        core = _core(max_kids=2)
        _drive(core, State.COMPILING, 1)
        _drive(core, State.WAIT_FOR_CS, 2)
        effects = core.handle(SchedulerDown(), T0)
        assert Close(2) in effects
        assert Close(1) not in effects
        assert core.state_of(1) is State.COMPILING
        assert not _to_scheduler(effects)  # nobody to tell
        effects = core.handle(CompileFinished(1, CompileReport(object_data=b"O")), T0)
        assert _of(effects, SendFile)
        assert not _to_scheduler(effects)

    def test_ping_answered_only_below_protocol_27(self):
        """PING is answered on old schedulers only (newer ones rely on TCP keepalive)."""
        old = _core(scheduler=False)
        old.handle(SchedulerUp(OWN_IP, 26), T0)
        assert old.handle(FromScheduler(Ping()), T0) == [ToScheduler(Ping())]
        assert _core().handle(FromScheduler(Ping()), T0) == []

    def test_internals(self):
        """GET_INTERNALS lists the clients with their states."""
        core = _core()
        _drive(core, State.WAIT_FOR_CS)
        (answer,) = core.handle(FromScheduler(GetInternalStatus()), T0)
        assert answer == AnswerInternals(("client 1: peer1 waiting for the scheduler",))

    def test_unexpected_scheduler_message_drops_the_link(self):
        """A message the scheduler never sends a daemon: the link is dropped (and rebuilt)."""
        (effect,) = _core().handle(FromScheduler(Login()), T0)
        assert isinstance(effect, DropScheduler)

    def test_stop_ends_everyone_but_compiles_then_compiles_too(self):
        """Graceful stop: Stop ends all but compiles; Stop(compiles_too) kills those."""
        core = _core(max_kids=2)
        _drive(core, State.COMPILING, 1)
        _drive(core, State.NEW, 2)
        effects = core.handle(Stop(EXIT_NO_HOSTS), T0)
        assert Close(2) in effects
        assert KillCompile(1) not in effects
        assert KillCompile(1) in core.handle(Stop(EXIT_NO_HOSTS, compiles_too=True), T0)


# --- limits a hostile peer meets (issue 20) ----------------------------------------------

LOOPBACK = ConnKind(unix=False, loopback=True)


class TestLocalOnlyRequests:
    @pytest.mark.parametrize(
        "msg",
        [GetNativeEnv(compiler="/usr/bin/gcc"), JobLocalBegin(outfile="a.o"), GetCS(target="x")],
        ids=["GET_NATIVE_ENV", "JOB_LOCAL_BEGIN", "GET_CS"],
    )
    def test_refused_from_a_remote_peer(self, msg):
        """A local client's request from a TCP peer off loopback ends it (120): nothing starts."""
        core = _core()
        _connect(core, 1, REMOTE)
        effects = _send(core, 1, msg)
        assert Close(1) in effects
        assert core.state_of(1) is None
        assert not _of(effects, ResolveNative)
        assert not _to_scheduler(effects)
        assert core.slots.used == 0
        (refused,) = [e for e in _of(effects, Log) if e.event == "client_request_refused"]
        assert refused.fields["request"] == type(msg).__name__

    @pytest.mark.parametrize("kind", [LOCAL, LOOPBACK], ids=["unix", "loopback"])
    def test_served_on_the_unix_socket_and_loopback(self, kind):
        """The same requests from the Unix socket or 127.0.0.1 are served."""
        core = _core()
        _connect(core, 1, kind)
        assert _of(_send(core, 1, GetNativeEnv(compiler="/usr/bin/gcc")), ResolveNative)
        _connect(core, 2, kind)
        _send(core, 2, JobLocalBegin(outfile="a.o"))
        assert core.state_of(2) is State.CLIENT_WORK
        _connect(core, 3, kind)
        assert _to_scheduler(_send(core, 3, GetCS(target="x86_64")))

    def test_remote_jobs_still_come_over_tcp(self):
        """COMPILE_FILE, TRANFER_ENV and VERIFY_ENV stay open to remote peers."""
        core = _core()
        _connect(core, 1, REMOTE)
        assert _of(_send(core, 1, _job()), StartCompile)
        _connect(core, 2, REMOTE)
        assert _of(_send(core, 2, EnvTransfer(name="e", target="x86_64")), StartUnpack)
        _connect(core, 3, REMOTE)
        assert _of(_send(core, 3, VerifyEnv(environment="e", target="x86_64")), VerifyEnvironment)


MIB = 1 << 20


class TestSourceBudget:
    def _queued(self, core: DaemonCore, ids: range) -> None:
        for conn_id in ids:
            _connect(core, conn_id, REMOTE)
            _send(core, conn_id, _job(conn_id, env="nosuchenv"))
            assert core.state_of(conn_id) is State.TO_COMPILE

    def test_the_issue_attack_is_held_to_the_budget(self):
        """8 queued jobs sending 1 MiB chunks: reading pauses, at most budget + one chunk held."""
        core = _core(source_buffer_limit=16 * MIB, source_budget=64 * MIB)
        _occupy(core)
        self._queued(core, range(1, 9))
        paused: set[int] = set()
        for _ in range(255):
            for conn_id in range(1, 9):
                if conn_id in paused:
                    continue  # the shell no longer reads it
                effects = _send(core, conn_id, FileChunk(b"\0" * MIB, 70))
                paused |= {e.conn_id for e in _of(effects, PauseReading)}
            if len(paused) == 8:
                break
        assert len(paused) == 8
        assert core.buffered <= 64 * MIB + MIB
        assert all(core.state_of(i) is State.TO_COMPILE for i in range(1, 9))

    def test_one_job_pauses_at_its_own_limit(self):
        """A queued job alone is paused at source_buffer_limit; its job's start resumes it."""
        core = _core(source_buffer_limit=10, source_budget=1000)
        _occupy(core)
        self._queued(core, range(1, 2))
        assert PauseReading(1) not in _send(core, 1, FileChunk(b"x" * 9, 9))
        assert PauseReading(1) in _send(core, 1, FileChunk(b"x" * 2, 2))
        effects = _send(core, BUSY, JobDone(job_id=0, real_msec=1))
        (start,) = _of(effects, StartCompile)
        assert start.pieces == (b"x" * 9, b"x" * 2)
        assert ResumeReading(1) in effects
        assert core.buffered == 0

    def test_room_in_the_budget_resumes_the_others(self):
        """When a queued client leaves, the budget has room: the paused ones are read again."""
        core = _core(source_buffer_limit=100, source_budget=10)
        _occupy(core)
        self._queued(core, range(1, 3))
        assert PauseReading(1) not in _send(core, 1, FileChunk(b"x" * 6, 6))
        effects = _send(core, 2, FileChunk(b"x" * 6, 6))
        assert {PauseReading(1), PauseReading(2)} <= set(_of(effects, PauseReading))
        effects = core.handle(ClientGone(1, GoneReason.EOF), T0)
        assert ResumeReading(2) in effects

    def test_a_paused_client_waits_without_a_gap_timeout(self):
        """A client we stopped reading is not timed out for the silence we imposed."""
        core = _core(source_buffer_limit=10, source_budget=1000)
        _occupy(core)
        self._queued(core, range(1, 2))
        effects = _send(core, 1, FileChunk(b"x" * 11, 11))
        (timer,) = [e for e in _of(effects, ArmTimer) if e.key == 1]
        assert timer.deadline >= T0 + core.settings.compile_timeout
        assert not _of(core.handle(TimerExpired(1), T0 + 61), Close)


class TestTransferQueue:
    def test_third_transfer_waits_unread_and_starts_when_one_ends(self):
        """Over max_env_transfers a transfer waits paused; a finished install starts it."""
        core = _core()
        _fill_transfers(core)
        _connect(core, 1, REMOTE)
        effects = _send(core, 1, EnvTransfer(name="gcc", target="x86_64"))
        assert PauseReading(1) in effects
        assert not _of(effects, StartUnpack)
        assert core.state_of(1) is State.INSTALL_WAIT
        effects = core.handle(Unpacked(TRANSFERS[0], 10, 10), T0)
        assert ResumeReading(1) in effects
        assert StartUnpack(1, "x86_64", "gcc") in effects
        # The unpacker starts before the client is read again (its chunks need it).
        assert effects.index(StartUnpack(1, "x86_64", "gcc")) < effects.index(ResumeReading(1))
        assert core.state_of(1) is State.INSTALLING
        assert core.slots.installs == 2

    def test_a_failed_or_aborted_install_starts_the_next(self):
        """An unpacker failing, or a transferring client leaving, frees its place too."""
        core = _core()
        _fill_transfers(core)
        for conn_id in (1, 2):
            _connect(core, conn_id, REMOTE)
            _send(core, conn_id, EnvTransfer(name=f"e{conn_id}", target="x86_64"))
        assert StartUnpack(1, "x86_64", "e1") in core.handle(UnpackFailed(TRANSFERS[0], "bad"), T0)
        effects = core.handle(ClientGone(TRANSFERS[1], GoneReason.EOF), T0)
        assert AbortUnpack(TRANSFERS[1]) in effects
        assert StartUnpack(2, "x86_64", "e2") in effects

    def test_a_full_queue_refuses(self):
        """Beyond env_transfer_queue waiting transfers, a new one is refused (137)."""
        core = _core(env_transfer_queue=1)
        _fill_transfers(core)
        _connect(core, 1, REMOTE)
        _send(core, 1, EnvTransfer(name="a", target="x86_64"))
        _connect(core, 2, REMOTE)
        effects = _send(core, 2, EnvTransfer(name="b", target="x86_64"))
        assert Close(2) in effects
        assert core.state_of(2) is None
        assert core.state_of(1) is State.INSTALL_WAIT

    def test_a_waiting_client_that_leaves_is_forgotten(self):
        """A client leaving while it waits is taken out of the queue; LOGIN is re-sent."""
        core = _core()
        _fill_transfers(core)
        _connect(core, 1, REMOTE)
        _send(core, 1, EnvTransfer(name="a", target="x86_64"))
        effects = core.handle(ClientGone(1, GoneReason.EOF), T0)
        assert AnnounceLogin(reannounce=True) in effects
        effects = core.handle(Unpacked(TRANSFERS[0], 10, 10), T0)
        assert not _of(effects, StartUnpack)

    def test_one_host_gets_half_of_the_transfers(self):
        """Issue 20: a host stalling its transfers cannot hold every unpacker (share 1 of 2)."""
        core = _core()
        for conn_id in (1, 2):
            core.handle(ClientConnected(conn_id, f"10.0.0.66:{40000 + conn_id}", REMOTE, 43), T0)
            _send(core, conn_id, EnvTransfer(name=f"stall{conn_id}", target="x86_64"))
        assert core.state_of(1) is State.INSTALLING
        assert core.state_of(2) is State.INSTALL_WAIT  # a place is free, but not for this host
        _connect(core, 3, REMOTE)
        assert StartUnpack(3, "x86_64", "gcc") in _send(
            core, 3, EnvTransfer(name="gcc", target="x86_64")
        )
        # The other host's install ending starts nothing: the waiting one's host is at its share.
        assert not _of(core.handle(Unpacked(3, 10, 10), T0), StartUnpack)
        assert StartUnpack(2, "x86_64", "stall2") in core.handle(Unpacked(1, 10, 10), T0)

    def test_one_host_gets_half_of_the_queue(self):
        """Issue 20: one host cannot fill the waiting places either (half of them, at least one)."""
        core = _core(env_transfer_queue=4)
        for conn_id in range(1, 5):  # one unpacks, two wait, the fourth is refused
            core.handle(ClientConnected(conn_id, f"10.0.0.66:{40000 + conn_id}", REMOTE, 43), T0)
            effects = _send(core, conn_id, EnvTransfer(name=f"e{conn_id}", target="x86_64"))
        assert Close(4) in effects
        assert [core.state_of(i) for i in (1, 2, 3)] == [
            State.INSTALLING,
            State.INSTALL_WAIT,
            State.INSTALL_WAIT,
        ]
        for conn_id in (5, 6):  # another host unpacks in the second place, a third one waits
            _connect(core, conn_id, REMOTE)
            _send(core, conn_id, EnvTransfer(name=f"e{conn_id}", target="x86_64"))
        assert core.state_of(5) is State.INSTALLING
        assert core.state_of(6) is State.INSTALL_WAIT


class TestWakingTheScheduler:
    """Wake datagrams from the connect until 2 s after the handshake (1.4's delayed accept)."""

    SCHED = ("10.0.0.1", 8765)

    @staticmethod
    def _run(core, effects, until):
        """Follow the wake timer up to *until*: the times at which a datagram went out."""
        sent = [T0] if WakeScheduler(*TestWakingTheScheduler.SCHED) in effects else []
        arms = [e for e in effects if isinstance(e, ArmTimer) and e.key == WAKE_TIMER]
        while arms and arms[-1].deadline <= until:
            now = arms[-1].deadline
            effects = core.handle(TimerExpired(WAKE_TIMER), now)
            sent += [now] * len(_of(effects, WakeScheduler))
            arms = [e for e in effects if isinstance(e, ArmTimer) and e.key == WAKE_TIMER]
        return sent, arms

    def test_one_a_second_until_two_seconds_after_the_handshake(self):
        """Connect at T0, handshake at T0 + 4.5: datagrams at T0 .. T0 + 6, then none."""
        core = _core(scheduler=False)
        effects = core.handle(SchedulerConnecting(*self.SCHED), T0)
        assert effects == [WakeScheduler(*self.SCHED), ArmTimer(WAKE_TIMER, T0 + 1)]
        sent, _ = self._run(core, effects, T0 + 4.5)
        assert sent == [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4]
        up = core.handle(SchedulerUp(OWN_IP, 43), T0 + 4.5)
        assert not _of(up, WakeScheduler)  # the timer goes on as armed
        more = core.handle(TimerExpired(WAKE_TIMER), T0 + 5)
        assert more == [WakeScheduler(*self.SCHED), ArmTimer(WAKE_TIMER, T0 + 6)]
        last = core.handle(TimerExpired(WAKE_TIMER), T0 + 6)
        assert last == [WakeScheduler(*self.SCHED), ArmTimer(WAKE_TIMER, T0 + 7)]
        assert core.handle(TimerExpired(WAKE_TIMER), T0 + 7) == []
        assert core.handle(TimerExpired(WAKE_TIMER), T0 + 8) == []

    def test_a_wake_lands_a_second_after_our_accept(self):
        """Whenever the handshake comes, a datagram follows it by >= 1 s (re-arms the accept)."""
        for offset in (0.0, 0.01, 0.5, 0.99, 1.0, 2.3):
            core = _core(scheduler=False)
            effects = core.handle(SchedulerConnecting(*self.SCHED), T0)
            _, arms = self._run(core, effects, T0 + offset)
            core.handle(SchedulerUp(OWN_IP, 43), T0 + offset)
            after, _ = self._run(core, arms, T0 + 100)
            assert after, offset
            assert max(after) >= T0 + offset + 1.0
            assert max(after) <= T0 + offset + 2.0

    def test_loss_before_the_handshake_stops_it(self):
        """A failed connect or handshake: no more datagrams until the next connect."""
        core = _core(scheduler=False)
        core.handle(SchedulerConnecting(*self.SCHED), T0)
        assert core.handle(SchedulerDown(), T0 + 0.5) == []
        assert core.handle(TimerExpired(WAKE_TIMER), T0 + 1) == []
        again = core.handle(SchedulerConnecting("10.0.0.2", 8766), T0 + 30)
        assert again == [WakeScheduler("10.0.0.2", 8766), ArmTimer(WAKE_TIMER, T0 + 31)]

    def test_loss_after_the_handshake_stops_it(self):
        """Logged in and lost within the 2 s: nothing more goes to the old scheduler."""
        core = _core(scheduler=False)
        core.handle(SchedulerConnecting(*self.SCHED), T0)
        core.handle(SchedulerUp(OWN_IP, 43), T0 + 0.2)
        core.handle(SchedulerDown(), T0 + 0.7)
        assert core.handle(TimerExpired(WAKE_TIMER), T0 + 1) == []

    def test_no_wake_without_a_connect(self):
        """A login the link did not announce (nothing to wake) sends none; a stray timer neither."""
        core = _core(scheduler=False)
        assert not _of(core.handle(SchedulerUp(OWN_IP, 43), T0), WakeScheduler)
        assert core.handle(TimerExpired(WAKE_TIMER), T0 + 1) == []


# --- random interleavings -----------------------------------------------------------------


class DaemonMachine(RuleBasedStateMachine):
    """Random clients, jobs, disconnects, timers and scheduler loss against the invariants.

    The model plays the shell: it finishes compiles and unpacks the core
    started, and counts every report.  Invariants: granted slots never exceed
    the capacity (installs, which 1.4 starts at once, aside); no job is
    reported twice; once everything ended, every job the scheduler placed
    while it stayed connected was reported exactly once, and no slot or queue
    entry is left.
    """

    def __init__(self) -> None:
        super().__init__()
        self.core = DaemonCore(_settings(max_kids=2, source_buffer_limit=50), port=PORT)
        self.now = T0
        self.next_id = 1
        self.open: set[int] = set()
        self.compiling: set[int] = set()
        self.unpacking: set[int] = set()
        self.submitter_reports: dict[int, int] = {}
        self.server_reports: dict[int, int] = {}
        self.expected_submitter: set[int] = set()
        self.expected_server: set[int] = set()
        self.next_job = 1000
        self.job_of: dict[int, int] = {}  # the job id the scheduler gave each client
        self._do(SchedulerUp(OWN_IP, 43))

    def _do(self, event: Any) -> None:
        self.now += 0.5
        for effect in self.core.handle(event, self.now):
            if isinstance(effect, StartCompile):
                assert effect.conn_id not in self.compiling
                self.compiling.add(effect.conn_id)
            elif isinstance(effect, StartUnpack):
                self.unpacking.add(effect.conn_id)
            elif isinstance(effect, AbortUnpack):
                self.unpacking.discard(effect.conn_id)
            elif isinstance(effect, Close):
                self.open.discard(effect.conn_id)
            elif isinstance(effect, ToScheduler) and isinstance(effect.message, JobDone):
                self._count(effect.message)

    def _count(self, done: JobDone) -> None:
        if done.flags & JobDoneFlag.UNKNOWN_JOB_ID:
            return
        book = (
            self.server_reports
            if done.flags == JobDoneFlag.FROM_SERVER
            else (self.submitter_reports)
        )
        if done.job_id:
            book[done.job_id] = book.get(done.job_id, 0) + 1
            assert book[done.job_id] == 1, f"job {done.job_id} reported twice"

    @rule()
    def connect(self) -> None:
        conn_id, self.next_id = self.next_id, self.next_id + 1
        self.open.add(conn_id)
        self._do(ClientConnected(conn_id, "p", LOCAL, 43))

    @precondition(lambda self: self.open)
    @rule(
        data=st.data(),
        which=st.sampled_from(
            ["GET_CS", "LOCAL", "COMPILE", "DONE", "END", "CHUNK", "ENV", "NATIVE"]
        ),
    )
    def client_sends(self, data: st.DataObject, which: str) -> None:
        conn_id = data.draw(st.sampled_from(sorted(self.open)))
        state = self.core.state_of(conn_id)
        if which == "COMPILE":
            job_id, self.next_job = self.next_job, self.next_job + 1
            if state is State.NEW and self.core.scheduler_up:
                self.expected_server.add(job_id)
            msg: Any = _job(job_id)
        else:
            msg = {
                "GET_CS": GetCS(target="x86_64"),
                "LOCAL": JobLocalBegin(),
                "DONE": JobDone(
                    job_id=self.job_of.get(conn_id, 0),
                    real_msec=1,
                    flags=JobDoneFlag.FROM_SUBMITTER,
                ),
                "END": End(),
                "CHUNK": FileChunk(b"x" * 20, 20),
                "ENV": EnvTransfer(name="e"),
                "NATIVE": GetNativeEnv(compiler="gcc"),
            }[which]
        self._do(Received(conn_id, msg))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), reason=st.sampled_from(list(GoneReason)))
    def client_goes(self, data: st.DataObject, reason: GoneReason) -> None:
        conn_id = data.draw(st.sampled_from(sorted(self.open)))
        self.open.discard(conn_id)
        self._do(ClientGone(conn_id, reason))

    def _waiting_for_cs(self) -> list[int]:
        return [c for c in sorted(self.open) if self.core.state_of(c) is State.WAIT_FOR_CS]

    @precondition(lambda self: self._waiting_for_cs())
    @rule(data=st.data(), use_us=st.booleans())
    def scheduler_answers(self, data: st.DataObject, *, use_us: bool) -> None:
        conn_id = data.draw(st.sampled_from(self._waiting_for_cs()))
        job_id, self.next_job = self.next_job, self.next_job + 1
        self.expected_submitter.add(job_id)
        self.job_of[conn_id] = job_id
        answer = (
            UseCS(job_id=job_id, hostname=OWN_IP, port=PORT, client_id=conn_id)
            if use_us
            else NoCS(job_id=job_id, client_id=conn_id)
        )
        self._do(FromScheduler(answer))

    @precondition(lambda self: self.core.scheduler_up)
    @rule()
    def answer_for_nobody(self) -> None:
        job_id, self.next_job = self.next_job, self.next_job + 1
        self.expected_submitter.add(job_id)  # answered at once: JOB_DONE 107
        self._do(FromScheduler(NoCS(job_id=job_id, client_id=self.next_id + 50)))

    @precondition(lambda self: self.compiling)
    @rule(data=st.data(), ok=st.booleans())
    def compile_ends(self, data: st.DataObject, *, ok: bool) -> None:
        conn_id = data.draw(st.sampled_from(sorted(self.compiling)))
        self.compiling.discard(conn_id)
        report = CompileReport(status=0 if ok else 1, object_data=b"O" if ok else b"")
        self._do(CompileFinished(conn_id, report))

    @precondition(lambda self: self.unpacking)
    @rule(data=st.data(), ok=st.booleans())
    def unpack_ends(self, data: st.DataObject, *, ok: bool) -> None:
        conn_id = data.draw(st.sampled_from(sorted(self.unpacking)))
        self.unpacking.discard(conn_id)
        self._do(Unpacked(conn_id, 1, 1) if ok else UnpackFailed(conn_id, "bad"))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), key=st.sampled_from(NATIVE_KEYS), on_disk=st.booleans())
    def native_resolved(self, data: st.DataObject, key: NativeKey, *, on_disk: bool) -> None:
        conn_id = data.draw(st.sampled_from(sorted(self.open)))
        self._do(NativeResolved(conn_id, key, path="/n.tgz" if on_disk else ""))

    @rule(key=st.sampled_from(NATIVE_KEYS), ok=st.booleans())
    def native_ends(self, key: NativeKey, *, ok: bool) -> None:
        self._do(NativeEnvBuilt(key, path="/n.tgz" if ok else "", error="" if ok else "x"))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), seconds=st.sampled_from([1.0, 61.0, 130.0, 4000.0]))
    def time_passes(self, data: st.DataObject, seconds: float) -> None:
        conn_id = data.draw(st.sampled_from(sorted(self.open)))
        self.now += seconds
        self._do(TimerExpired(conn_id))

    @rule(up=st.booleans())
    def scheduler(self, *, up: bool) -> None:
        if up and not self.core.scheduler_up:
            self._do(SchedulerUp(OWN_IP, 43))
        elif not up and self.core.scheduler_up:
            self.expected_submitter.clear()  # its reports are lost with it, legitimately
            self.expected_server.clear()
            self._do(SchedulerDown())

    @rule(load=st.sampled_from([0, 500, 1000]))
    def load(self, load: int) -> None:
        self._do(LoadSampled(load))

    @invariant()
    def slots_within_capacity(self) -> None:
        # Installs start at once, as 1.4 forks its unpacker without waiting (a later cap
        # with a queue goes in core._begin_install); everything granted stays within capacity.
        slots = self.core.slots
        assert slots.used - slots.installs <= slots.capacity

    def teardown(self) -> None:
        for conn_id in sorted(self.open):
            self._do(ClientGone(conn_id, GoneReason.EOF))
        self.open.clear()
        while self.compiling:
            self._do(CompileFinished(self.compiling.pop(), CompileReport(status=1)))
        assert self.core.client_count == 0
        assert self.core.slots.used == 0
        assert self.core.slots.waiting() == 0
        if self.core.scheduler_up:
            for job_id in self.expected_submitter:
                assert self.submitter_reports.get(job_id) == 1, f"submitter job {job_id}"
            for job_id in self.expected_server:
                assert self.server_reports.get(job_id) == 1, f"server job {job_id}"


DaemonMachine.TestCase.settings = hypothesis_settings(
    max_examples=250, stateful_step_count=40, deadline=None
)
TestDaemonMachine = DaemonMachine.TestCase


class TestSlotCount:
    """SLOTS_QUERY: forwarded to an iceserv scheduler, else answered with our own slots."""

    def test_forwarded_to_an_iceserv_scheduler_and_answered_in_order(self):
        """Two queries go to the scheduler with our platform; its answers reach them in order."""
        core = _core(max_kids=3)
        core.handle(FromScheduler(ICESERV_CONF), T0)
        _connect(core, 1)
        _connect(core, 2)
        assert _to_scheduler(_send(core, 1, SlotsQuery())) == [SlotsQuery(platform="x86_64")]
        assert _to_scheduler(_send(core, 2, SlotsQuery())) == [SlotsQuery(platform="x86_64")]
        assert core.state_of(1) is State.WAIT_SLOTS
        first, second = SlotsAnswer(9, 4, 3, "cluster"), SlotsAnswer(9, 3, 3, "cluster")
        effects = core.handle(FromScheduler(first), T0 + 0.01)
        assert _sent(effects, 1) == [first]
        assert _sent(effects, 2) == []
        assert _sent(core.handle(FromScheduler(second), T0 + 0.01), 2) == [second]
        assert core.state_of(1) is State.NEW
        assert core.state_of(2) is State.NEW

    def test_a_1_4_scheduler_never_gets_the_query(self):
        """Without the mark in CS_CONF the query stays here: our own slots, and why."""
        core = _core(max_kids=3)
        core.handle(FromScheduler(ConfCS()), T0)
        _connect(core, 1)
        effects = _send(core, 1, SlotsQuery())
        assert _to_scheduler(effects) == []
        assert _sent(effects, 1) == [SlotsAnswer(3, 3, 1, "the scheduler is icecream 1.4")]

    def test_before_cs_conf_the_scheduler_is_not_asked(self):
        """A scheduler that has not sent CS_CONF yet is not known to be iceserv."""
        core = _core(max_kids=2)
        _connect(core, 1)
        effects = _send(core, 1, SlotsQuery())
        assert _to_scheduler(effects) == []
        reason = "the scheduler has not confirmed our login yet"
        assert _sent(effects, 1) == [SlotsAnswer(2, 2, 1, reason)]

    def test_no_scheduler_answers_local_slots_minus_busy_ones(self):
        """Without a scheduler: our capacity, free = capacity minus slots in use."""
        core = _core(scheduler=False, max_kids=1)
        _occupy(core)
        _connect(core, 1)
        effects = _send(core, 1, SlotsQuery())
        assert _sent(effects, 1) == [SlotsAnswer(1, 0, 1, "no scheduler")]
        assert _to_scheduler(effects) == []

    def test_timeout_answers_alone_and_the_late_answer_is_dropped(self):
        """No answer within SLOTS_WAIT: our own count; the late answer goes to nobody else."""
        core = _core(max_kids=2)
        core.handle(FromScheduler(ICESERV_CONF), T0)
        _connect(core, 1)
        effects = _send(core, 1, SlotsQuery())
        (timer,) = [e for e in _of(effects, ArmTimer) if e.key == 1]
        assert timer.deadline <= T0 + 0.3
        effects = core.handle(TimerExpired(1), timer.deadline)
        assert _sent(effects, 1) == [SlotsAnswer(2, 2, 1, "the scheduler did not answer in time")]
        _connect(core, 2)
        _send(core, 2, SlotsQuery(), timer.deadline)
        late, own = SlotsAnswer(7, 7, 2, "cluster"), SlotsAnswer(8, 8, 2, "cluster")
        assert _of(core.handle(FromScheduler(late), timer.deadline), Send) == []
        assert _sent(core.handle(FromScheduler(own), timer.deadline), 2) == [own]

    def test_scheduler_loss_answers_waiting_clients_first(self):
        """A client waiting for the count gets our own answer before it is dropped."""
        core = _core(max_kids=2)
        core.handle(FromScheduler(ICESERV_CONF), T0)
        _connect(core, 1)
        _send(core, 1, SlotsQuery())
        effects = core.handle(SchedulerDown(), T0 + 0.01)
        assert _sent(effects, 1) == [SlotsAnswer(2, 2, 1, "no scheduler")]
        answer = Send(1, SlotsAnswer(2, 2, 1, "no scheduler"))
        assert effects.index(answer) < effects.index(Close(1))

    def test_relogin_forgets_the_mark(self):
        """A new scheduler connection is not iceserv until its own CS_CONF says so."""
        core = _core(max_kids=2)
        core.handle(FromScheduler(ICESERV_CONF), T0)
        core.handle(SchedulerDown(), T0)
        core.handle(SchedulerUp(OWN_IP, 43), T0)
        assert core.scheduler_iceserv is None
        _connect(core, 1)
        assert _to_scheduler(_send(core, 1, SlotsQuery())) == []

    def test_unanswered_queries_are_bounded(self):
        """With 256 queries unanswered the next one is answered here, not remembered."""
        core = _core(max_kids=2)
        core.handle(FromScheduler(ICESERV_CONF), T0)
        for conn_id in range(1, 258):
            _connect(core, conn_id)
            effects = _send(core, conn_id, SlotsQuery())
            core.handle(TimerExpired(conn_id), T0 + 1)
        assert _to_scheduler(effects) == []
        assert _sent(effects, 257) == [SlotsAnswer(2, 2, 1, "the scheduler did not answer in time")]

    def test_unasked_answer_drops_the_scheduler(self):
        """A SLOTS_ANSWER nobody asked for is the scheduler's protocol error."""
        core = _core()
        effects = core.handle(FromScheduler(SlotsAnswer(1, 1, 1, "cluster")), T0)
        assert _of(effects, DropScheduler)

    def test_a_client_may_not_send_the_answer(self):
        """SLOTS_ANSWER from a client is a protocol error."""
        core = _core()
        _connect(core, 1)
        assert Close(1) in _send(core, 1, SlotsAnswer())


GCC_TARBALL = "/n/native/0123abcd.tar.zst"
GCC_ENV = "0123abcd"


def _pushing_core(**changes: Any) -> DaemonCore:
    """A core logged in to an iceserv scheduler whose gcc prebuild just finished."""
    core = _core(**changes)
    core.handle(FromScheduler(ICESERV_CONF), T0)
    core.handle(NativesFound((NativeFound(GCC),)), T0)
    return core


class TestPushAhead:
    """A ready native environment is pushed ahead to the hosts the scheduler names (issue 17)."""

    def test_a_finished_prebuild_asks_the_iceserv_scheduler(self):
        """The built tarball's name (base name, no suffix) and our platform go in PUSH_QUERY."""
        core = _pushing_core()
        effects = core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        assert _to_scheduler(effects) == [PushQuery("x86_64", GCC_ENV, 2)]

    def test_the_named_hosts_get_it_one_at_a_time_and_each_end_is_logged(self):
        """Two targets: one push runs; its end logs bytes and seconds and starts the next."""
        core = _pushing_core()
        core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        answer = PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245", "[fd00::8]:10300"))
        effects = core.handle(FromScheduler(answer), T0 + 2)
        first = PushEnv("10.0.0.7", 10245, GCC_ENV, "x86_64", GCC_TARBALL)
        assert _of(effects, PushEnv) == [first]
        effects = core.handle(EnvPushed("10.0.0.7", 10245, GCC_ENV, 30_000_000, 0.42), T0 + 3)
        (pushed,) = _events(effects, "native_env_pushed")
        assert pushed == {"host": "10.0.0.7:10245", "env": GCC_ENV, "bytes": 30_000_000,
                          "seconds": 0.42}  # fmt: skip
        assert _of(effects, PushEnv) == [PushEnv("fd00::8", 10300, GCC_ENV, "x86_64", GCC_TARBALL)]
        effects = core.handle(EnvPushed("fd00::8", 10300, GCC_ENV, error="cannot connect"), T0 + 4)
        (failed,) = _events(effects, "native_env_push_failed")
        assert (failed["host"], failed["reason"]) == ("fd00::8:10300", "cannot connect")
        assert _of(effects, PushEnv) == []
        assert not [e for e in effects if isinstance(e, Close | Send)]  # nobody else is touched

    def test_a_1_4_scheduler_is_never_asked(self):
        """Without the iceserv mark in CS_CONF no PUSH_QUERY goes out, before or after a build."""
        core = _core()
        core.handle(FromScheduler(ConfCS()), T0)
        core.handle(NativesFound((NativeFound(GCC),)), T0)
        effects = core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        assert _to_scheduler(effects) == []
        assert _to_scheduler(core.handle(FromScheduler(ConfCS()), T0 + 3)) == []

    def test_an_environment_ready_before_the_scheduler_is_asked_about_at_its_cs_conf(self):
        """A kept tarball at start, no scheduler yet: the query goes out once CS_CONF marks it."""
        core = _core(scheduler=False)
        core.handle(NativesFound((NativeFound(GCC, GCC_TARBALL),)), T0)
        core.handle(SchedulerUp(OWN_IP, 43), T0 + 1)
        effects = core.handle(FromScheduler(ICESERV_CONF), T0 + 1)
        assert _to_scheduler(effects) == [PushQuery("x86_64", GCC_ENV, 2)]
        # CS_CONF again (after each re-LOGIN): not asked twice on one connection.
        assert _to_scheduler(core.handle(FromScheduler(ICESERV_CONF), T0 + 2)) == []
        # A new scheduler connection is asked again.
        core.handle(SchedulerDown(), T0 + 3)
        core.handle(SchedulerUp(OWN_IP, 43), T0 + 4)
        effects = core.handle(FromScheduler(ICESERV_CONF), T0 + 4)
        assert _to_scheduler(effects) == [PushQuery("x86_64", GCC_ENV, 2)]

    def test_the_setting_turns_it_off(self):
        """push_ahead false: no query, and a stray answer starts nothing."""
        core = _pushing_core(push_ahead=False)
        effects = core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        assert _to_scheduler(effects) == []
        effects = core.handle(FromScheduler(PushTargets(GCC_ENV, "x86_64", ("h:1",))), T0 + 2)
        assert _of(effects, PushEnv) == []

    def test_a_client_talking_to_a_compile_server_goes_first(self):
        """While a local client waits for or uses a compile server no push starts; then it does."""
        core = _pushing_core()
        core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        _connect(core, 1)
        _send(core, 1, GetCS(target="x86_64"), T0 + 2)
        assert core.state_of(1) is State.WAIT_FOR_CS
        answer = PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245",))
        assert _of(core.handle(FromScheduler(answer), T0 + 2), PushEnv) == []
        effects = _send(core, 1, End(), T0 + 3)
        assert _of(effects, PushEnv) == [PushEnv("10.0.0.7", 10245, GCC_ENV, "x86_64", GCC_TARBALL)]

    def test_a_host_is_pushed_to_once_and_bad_addresses_are_skipped(self):
        """The same host named again is not queued twice; unparsable entries are ignored."""
        core = _pushing_core()
        core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        answer = PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245", "nonsense", "h:0", ":5"))
        assert len(_of(core.handle(FromScheduler(answer), T0 + 2), PushEnv)) == 1
        core.handle(EnvPushed("10.0.0.7", 10245, GCC_ENV, 1, 0.1), T0 + 3)
        again = PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245",))
        assert _of(core.handle(FromScheduler(again), T0 + 4), PushEnv) == []
        assert core.pushes.queued == ()

    def test_an_answer_for_an_unknown_environment_starts_nothing(self):
        """PUSH_TARGETS naming an environment we never offered is ignored, not an error."""
        core = _pushing_core()
        answer = PushTargets("other", "x86_64", ("10.0.0.7:10245",))
        effects = core.handle(FromScheduler(answer), T0)
        assert _of(effects, PushEnv) == []
        assert not _of(effects, DropScheduler)
        (logged,) = _events(effects, "native_env_push_queued")
        assert logged["queued"] == []

    def test_a_failed_build_is_not_offered(self):
        """Only a tarball that exists is pushed."""
        core = _pushing_core()
        effects = core.handle(NativeEnvBuilt(GCC, error="boom"), T0 + 2)
        assert _to_scheduler(effects) == []

    def test_a_stray_push_end_changes_nothing(self):
        """EnvPushed with no push running (cannot happen) is dropped."""
        core = _pushing_core()
        assert core.handle(EnvPushed("h", 1, GCC_ENV), T0) == []

    def test_a_job_sent_to_a_host_being_pushed_to_waits_for_the_push(self):
        """USE_CS without the env, to the host our push runs to: held, then passed on got_env."""
        core = _pushing_core()
        core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        answer = PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245",))
        assert _of(core.handle(FromScheduler(answer), T0 + 2), PushEnv)
        _connect(core, 1)
        versions = (EnvEntry("x86_64", GCC_ENV),)
        _send(core, 1, GetCS(versions=versions, target="x86_64"), T0 + 2.1)
        use = UseCS(job_id=9, port=10245, hostname="10.0.0.7", host_platform="x86_64",
                    got_env=False, client_id=1)  # fmt: skip
        effects = core.handle(FromScheduler(use), T0 + 2.2)
        assert _sent(effects, 1) == []
        (held,) = _events(effects, "compile_server_held")
        assert held["server"] == "10.0.0.7:10245"
        effects = core.handle(EnvPushed("10.0.0.7", 10245, GCC_ENV, 100, 0.5), T0 + 2.5)
        installed = UseCS(job_id=9, port=10245, hostname="10.0.0.7", host_platform="x86_64",
                          got_env=True, client_id=1)  # fmt: skip
        assert _sent(effects, 1) == [installed]
        assert core.state_of(1) is State.WAIT_COMPILE

    def test_a_held_job_goes_as_assigned_when_the_push_fails(self):
        """The push failed: the client gets the scheduler's USE_CS unchanged and sends the env."""
        core = _pushing_core()
        core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        core.handle(FromScheduler(PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245",))), T0 + 2)
        _connect(core, 1)
        _send(core, 1, GetCS(versions=(EnvEntry("x86_64", GCC_ENV),), target="x86_64"), T0 + 2)
        use = UseCS(job_id=9, port=10245, hostname="10.0.0.7", host_platform="x86_64",
                    client_id=1)  # fmt: skip
        core.handle(FromScheduler(use), T0 + 2.2)
        effects = core.handle(EnvPushed("10.0.0.7", 10245, GCC_ENV, error="refused"), T0 + 3)
        assert _sent(effects, 1) == [use]

    def test_other_jobs_are_not_held(self):
        """Another host, another environment, or got_env already: passed on at once."""
        core = _pushing_core()
        core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        core.handle(FromScheduler(PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245",))), T0 + 2)
        cases = [
            ((EnvEntry("x86_64", GCC_ENV),), "10.0.0.8", False),
            ((EnvEntry("x86_64", "other"),), "10.0.0.7", False),
            ((EnvEntry("x86_64", GCC_ENV),), "10.0.0.7", True),
        ]
        for conn_id, (versions, host, got_env) in enumerate(cases, start=1):
            _connect(core, conn_id)
            _send(core, conn_id, GetCS(versions=versions, target="x86_64"), T0 + 2)
            use = UseCS(job_id=conn_id, port=10245, hostname=host, host_platform="x86_64",
                        got_env=got_env, client_id=conn_id)  # fmt: skip
            assert _sent(core.handle(FromScheduler(use), T0 + 2.2), conn_id) == [use]

    def test_a_loopback_server_named_localhost_is_the_push_target(self):
        """The scheduler names a loopback server localhost in USE_CS, 127.0.0.1 in PUSH_TARGETS."""
        core = _pushing_core()
        core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        core.handle(FromScheduler(PushTargets(GCC_ENV, "x86_64", ("127.0.0.1:10300",))), T0 + 2)
        _connect(core, 1)
        _send(core, 1, GetCS(versions=(EnvEntry("x86_64", GCC_ENV),), target="x86_64"), T0 + 2)
        use = UseCS(job_id=9, port=10300, hostname="localhost", host_platform="x86_64",
                    client_id=1)  # fmt: skip
        assert _sent(core.handle(FromScheduler(use), T0 + 2.2), 1) == []
        effects = core.handle(EnvPushed("127.0.0.1", 10300, GCC_ENV, 100, 0.5), T0 + 2.5)
        (released,) = _sent(effects, 1)
        assert (released.hostname, released.got_env) == ("localhost", True)

    def test_a_job_placed_before_the_hosts_relogin_is_told_the_host_has_it(self):
        """After our push installed it, a USE_CS there without got_env goes on with got_env."""
        core = _pushing_core()
        core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        core.handle(FromScheduler(PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245",))), T0 + 2)
        core.handle(EnvPushed("10.0.0.7", 10245, GCC_ENV, 100, 0.5), T0 + 3)
        _connect(core, 1)
        _send(core, 1, GetCS(versions=(EnvEntry("x86_64", GCC_ENV),), target="x86_64"), T0 + 3)
        use = UseCS(job_id=9, port=10245, hostname="10.0.0.7", host_platform="x86_64",
                    client_id=1)  # fmt: skip
        effects = core.handle(FromScheduler(use), T0 + 3.1)
        (sent,) = _sent(effects, 1)
        assert sent.got_env is True
        (assigned,) = _events(effects, "compile_server_assigned")
        assert (assigned["got_env"], assigned["env_from"]) == (True, "push")

    def test_a_held_job_goes_as_assigned_when_the_push_is_slow(self):
        """A push still running after the hold's bound: the client gets USE_CS as it was."""
        core = _pushing_core()
        core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        core.handle(FromScheduler(PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245",))), T0 + 2)
        _connect(core, 1)
        _send(core, 1, GetCS(versions=(EnvEntry("x86_64", GCC_ENV),), target="x86_64"), T0 + 2)
        use = UseCS(job_id=9, port=10245, hostname="10.0.0.7", host_platform="x86_64",
                    client_id=1)  # fmt: skip
        effects = core.handle(FromScheduler(use), T0 + 2.2)
        (timer,) = [e for e in _of(effects, ArmTimer) if e.key == 1]
        assert timer.deadline <= T0 + 2.2 + 10
        effects = core.handle(TimerExpired(1), timer.deadline)
        assert _sent(effects, 1) == [use]
        assert _events(effects, "compile_server_released")
        assert core.state_of(1) is State.WAIT_COMPILE
        # The push's end later changes nothing for that client.
        effects = core.handle(EnvPushed("10.0.0.7", 10245, GCC_ENV, 100, 30.0), T0 + 40)
        assert _sent(effects, 1) == []

    def test_turned_on_by_a_reload_asks_about_what_was_built_while_off(self):
        """push_ahead off at start, on after SIGHUP: the ready environment is asked about."""
        core = _pushing_core(push_ahead=False)
        core.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        effects = core.reconfigure(_settings(push_ahead=True), port=PORT, now=T0 + 3)
        assert _to_scheduler(effects) == [PushQuery("x86_64", GCC_ENV, 2)]
        effects = core.reconfigure(_settings(push_ahead=True), port=PORT, now=T0 + 4)
        assert _to_scheduler(effects) == []


# --- job tickets (issue 14 item 3) -----------------------------------------------------

KEY = b"k" * 32
CLIENT_IP = "10.0.0.7"
ICESERV_LOCAL = ConnKind(unix=True, loopback=False, iceserv=True)


def _ticket(
    job_id: int = 5, *, client: str = CLIENT_IP, server: str = OWN_IP, expires: float = T0 + 60
) -> str:
    return issue_ticket(
        KeyRing((KEY,)), job_id=job_id, client=client, server=server, expires=int(expires)
    )


def _keyed(mode: str) -> DaemonCore:
    return _core(auth=mode, keys=(KEY,))


def _remote_client(core: DaemonCore, conn_id: int, ip: str = CLIENT_IP) -> None:
    core.handle(ClientConnected(conn_id, f"{ip}:40000", REMOTE, 43), T0)


def _refusals(effects: list[Any]) -> list[str]:
    return [e.fields["reason"] for e in _of(effects, Log) if e.event == "job_refused"]


class TestJobTickets:
    """The compile server's side: which transfers and jobs a ticket lets in, per mode."""

    @pytest.mark.parametrize(
        "request_",
        [_job(5), VerifyEnv("gcc", "x86_64"), EnvTransfer("gcc", "x86_64")],
        ids=lambda m: type(m).__name__,
    )
    def test_require_refuses_without_ticket(self, request_):
        """Under require a job, a verification or a transfer without a ticket is refused."""
        core = _keyed("require")
        _remote_client(core, 1)
        effects = _send(core, 1, request_)
        assert _refusals(effects) == ["no job ticket"]
        assert Close(1) in effects
        assert StatusText("job refused: no job ticket") in _sent(effects, 1)
        assert not _of(effects, HoldEnv)
        assert not _of(effects, StartUnpack)
        assert not _of(effects, VerifyEnvironment)

    def test_valid_ticket_lets_its_job_in(self):
        """A valid ticket for this job, client host and server is spent and the job queued."""
        core = _keyed("require")
        _remote_client(core, 1)
        assert not _refusals(_send(core, 1, JobTicket(job_id=5, ticket=_ticket())))
        effects = _send(core, 1, _job(5))
        assert Close(1) not in effects
        assert _of(effects, HoldEnv)
        assert core.ticketed == 1
        assert core.state_of(1) in (State.TO_COMPILE, State.COMPILING)

    def test_ticket_for_any_address_we_told_the_scheduler(self):
        """Named by a declared address (HOST_ADDRESSES), not the login one: still ours."""
        core = _keyed("require")
        core.handle(SchedulerUp(OWN_IP, 43, FOUND), T0)
        _remote_client(core, 1)
        assert not _refusals(_send(core, 1, JobTicket(job_id=5, ticket=_ticket(server="fd00::5"))))
        _remote_client(core, 2)
        effects = _send(core, 2, JobTicket(job_id=5, ticket=_ticket(server="fd00::77")))
        assert _refusals(effects)

    def test_ticket_allows_transfer_then_its_job(self):
        """With a ticket the client installs its environment, verifies it, then sends the job."""
        core = _keyed("require")
        _remote_client(core, 1)
        _send(core, 1, JobTicket(job_id=5, ticket=_ticket()))
        assert _of(_send(core, 1, VerifyEnv("gcc", "x86_64")), VerifyEnvironment)
        assert _of(_send(core, 1, EnvTransfer("gcc", "x86_64")), StartUnpack)

    def test_replayed_ticket_is_refused(self):
        """The same ticket on a second connection is refused: each is good for one."""
        core = _keyed("require")
        ticket = _ticket()
        _remote_client(core, 1)
        _send(core, 1, JobTicket(job_id=5, ticket=ticket))
        _remote_client(core, 2)
        effects = _send(core, 2, JobTicket(job_id=5, ticket=ticket))
        assert _refusals(effects) == ["replayed ticket"]
        assert Close(2) in effects

    @pytest.mark.parametrize(
        ("ticket", "reason"),
        [
            (_ticket(expires=T0 - 1), "expired ticket"),
            (_ticket(client="10.0.0.8"), "ticket for another job or host"),
            (_ticket(server="10.0.0.6"), "ticket for another job or host"),
            (_ticket(job_id=6), "ticket for another job or host"),
            (_ticket().replace(" 5 ", " 6 "), "altered ticket"),
            ("t1 garbage", "malformed ticket"),
        ],
        ids=["expired", "other-client", "other-server", "other-job", "altered", "malformed"],
    )
    def test_bad_ticket_is_refused(self, ticket, reason):
        """Expired, bound elsewhere, altered or malformed: refused with the reason, closed."""
        core = _keyed("prefer")  # even under prefer: a bad ticket is not "no ticket"
        _remote_client(core, 1)
        effects = _send(core, 1, JobTicket(job_id=5, ticket=ticket))
        assert _refusals(effects) == [reason]
        assert Close(1) in effects

    def test_ticket_for_another_job_than_compile_file(self):
        """A ticket for job 5 does not let job 6 in."""
        core = _keyed("require")
        _remote_client(core, 1)
        _send(core, 1, JobTicket(job_id=5, ticket=_ticket()))
        effects = _send(core, 1, _job(6))
        assert _refusals(effects) == ["ticket for another job"]
        assert not _of(effects, HoldEnv)

    def test_prefer_serves_without_ticket_counted_once(self):
        """Under prefer a client without a ticket (1.4's) is served and counted unauthenticated."""
        core = _keyed("prefer")
        _remote_client(core, 1)
        first = _send(core, 1, VerifyEnv("gcc", "x86_64"))
        second = _send(core, 1, _job(5))
        assert _of(first, VerifyEnvironment)
        assert _of(second, HoldEnv)
        assert [e.event for e in _of(first + second, Log)].count("job_unauthenticated") == 1
        assert core.unticketed == 1

    def test_off_checks_nothing(self):
        """With auth off (1.4's behaviour) nothing is checked, a ticket is simply taken."""
        core = _core()
        _remote_client(core, 1)
        _send(core, 1, JobTicket(job_id=5, ticket="anything"))
        assert _of(_send(core, 1, _job(6)), HoldEnv)

    def test_second_ticket_is_a_protocol_error(self):
        """One ticket per connection: a second one ends the client."""
        core = _keyed("require")
        _remote_client(core, 1)
        _send(core, 1, JobTicket(job_id=5, ticket=_ticket()))
        effects = _send(core, 1, JobTicket(job_id=5, ticket=_ticket()))
        assert Close(1) in effects

    def test_without_scheduler_no_ticket_matches(self):
        """Without a scheduler link we do not know our address: every ticket fails (closed)."""
        core = DaemonCore(_settings(auth="require", keys=(KEY,)), port=PORT)
        _remote_client(core, 1)
        effects = _send(core, 1, JobTicket(job_id=5, ticket=_ticket()))
        assert _refusals(effects) == ["ticket for another job or host"]


@hypothesis_settings(max_examples=60, deadline=None)
@given(index=st.integers(min_value=0), char=st.characters(min_codepoint=32, max_codepoint=126))
def test_any_tampered_ticket_is_refused_and_nothing_runs(index, char):
    """Whatever character of a valid ticket is changed, the core refuses it and runs nothing."""
    ticket = _ticket()
    index %= len(ticket)
    tampered = ticket[:index] + char + ticket[index + 1 :]
    if tampered == ticket:
        return
    core = _keyed("require")
    _remote_client(core, 1)
    effects = _send(core, 1, JobTicket(job_id=5, ticket=tampered))
    assert len(_refusals(effects)) == 1
    assert core.state_of(1) is None
    assert not _of(_send(core, 1, _job(5)), HoldEnv)


class TestPushTickets:
    """Our push-ahead carries a ticket of our own when tickets are checked: environments only."""

    def test_keyed_push_carries_a_push_ticket_the_target_accepts(self):
        """Job 0, our address, the target's: the target lets the transfer in, no COMPILE_FILE."""
        pusher = _pushing_core(auth="require", keys=(KEY,))
        pusher.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        answer = PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245",))
        (push,) = _of(pusher.handle(FromScheduler(answer), T0 + 2), PushEnv)
        target = DaemonCore(_settings(auth="require", keys=(KEY,)), port=PORT)
        target.handle(SchedulerUp("10.0.0.7", 43), T0)
        _remote_client(target, 1, ip=OWN_IP)
        assert not _refusals(_send(target, 1, JobTicket(job_id=0, ticket=push.ticket)))
        assert _of(_send(target, 1, EnvTransfer(GCC_ENV, "x86_64")), StartUnpack)
        _remote_client(target, 2, ip=OWN_IP)
        assert _refusals(_send(target, 2, JobTicket(job_id=0, ticket=push.ticket))) == [
            "replayed ticket"
        ]
        _remote_client(target, 3, ip=OWN_IP)
        fresh = _ticket(0, client=OWN_IP, server="10.0.0.7")
        _send(target, 3, JobTicket(job_id=0, ticket=fresh))
        assert _refusals(_send(target, 3, _job(0))) == ["ticket for another job"]

    def test_unkeyed_push_has_no_ticket(self):
        """With auth off the push is 1.4's client conversation, unchanged."""
        pusher = _pushing_core()
        pusher.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        answer = PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245",))
        (push,) = _of(pusher.handle(FromScheduler(answer), T0 + 2), PushEnv)
        assert push.ticket == ""


class TestTicketPassing:
    """The submitter's side: the scheduler's ticket goes on to our own client only."""

    def _placed(self, kind: ConnKind, *, ticket: bool = True) -> list[Any]:
        core = _keyed("require")
        core.handle(ClientConnected(1, "local", kind, 43), T0)
        _send(core, 1, GetCS(target="x86_64"))
        effects: list[Any] = []
        if ticket:
            effects += core.handle(FromScheduler(JobTicket(job_id=71, client_id=1, ticket="t")), T0)
        use = UseCS(job_id=71, hostname="10.0.0.9", port=PORT, client_id=1)
        return effects + core.handle(FromScheduler(use), T0)

    def test_iceserv_client_gets_ticket_before_use_cs(self):
        """On the iceserv endpoint the client gets JOB_TICKET (client id 0), then USE_CS."""
        sent = _sent(self._placed(ICESERV_LOCAL), 1)
        assert sent[0] == JobTicket(job_id=71, client_id=0, ticket="t")
        assert isinstance(sent[1], UseCS)

    def test_14_client_never_gets_a_ticket(self):
        """On the ordinary socket (icecream 1.4's client too) only USE_CS goes out."""
        sent = _sent(self._placed(LOCAL), 1)
        assert [type(m) for m in sent] == [UseCS]

    def test_no_ticket_from_scheduler(self):
        """Without a ticket from the scheduler our client gets USE_CS alone."""
        sent = _sent(self._placed(ICESERV_LOCAL, ticket=False), 1)
        assert [type(m) for m in sent] == [UseCS]

    def test_ticket_for_another_client_state_is_dropped(self):
        """A ticket for a client that is not waiting for a server is ignored."""
        core = _keyed("require")
        core.handle(ClientConnected(1, "local", ICESERV_LOCAL, 43), T0)
        assert core.handle(FromScheduler(JobTicket(job_id=71, client_id=1, ticket="t")), T0) == []
        assert core.handle(FromScheduler(JobTicket(job_id=71, client_id=9, ticket="t")), T0) == []


class TestSealedJobs:
    """Issue 14 item 4: a ticket with the client's salt seals the channel both ways."""

    SALT = bytes(range(32))

    def test_salt_beside_a_valid_ticket_seals_with_the_job_keys(self):
        """The core derives the job key from the ticket and the channel keys from the salt."""
        core = _keyed("require")
        _remote_client(core, 1)
        ticket = _ticket()
        effects = _send(core, 1, JobTicket(job_id=5, ticket=ticket, secret=self.SALT.hex()))
        (seal,) = _of(effects, SealChannel)
        c2s, s2c = channel_keys(job_key(KeyRing((KEY,)), ticket), self.SALT)
        assert (seal.conn_id, seal.receive, seal.send) == (1, c2s, s2c)
        assert not _refusals(effects)
        assert _of(_send(core, 1, _job(5)), HoldEnv)

    def test_no_seal_for_a_bad_ticket(self):
        """An altered ticket is refused before anything is sealed (the reason goes in clear)."""
        core = _keyed("require")
        _remote_client(core, 1)
        bad = _ticket()[:-1] + ("0" if _ticket()[-1] != "0" else "1")
        effects = _send(core, 1, JobTicket(job_id=5, ticket=bad, secret=self.SALT.hex()))
        assert not _of(effects, SealChannel)
        assert _refusals(effects) == ["altered ticket"]

    @pytest.mark.parametrize("salt", ["zz", "00" * 31, "00" * 33])
    def test_a_malformed_salt_is_refused(self, salt):
        """A salt that is not 32 bytes of hex refuses the job."""
        core = _keyed("prefer")
        _remote_client(core, 1)
        effects = _send(core, 1, JobTicket(job_id=5, ticket=_ticket(), secret=salt))
        assert _refusals(effects) == ["malformed channel salt"]

    def test_require_and_encrypt_refuse_a_clear_ticketed_job(self):
        """With encrypt = yes under require, a ticket without a salt is refused."""
        core = _core(auth="require", keys=(KEY,), encrypt=True)
        _remote_client(core, 1)
        effects = _send(core, 1, JobTicket(job_id=5, ticket=_ticket()))
        assert _refusals(effects) == ["job not encrypted (encrypt = yes)"]

    def test_prefer_and_encrypt_serve_a_clear_ticketed_job(self):
        """Under prefer a clear ticketed job is served (as a 1.4 peer would be)."""
        core = _core(auth="prefer", keys=(KEY,), encrypt=True)
        _remote_client(core, 1)
        effects = _send(core, 1, JobTicket(job_id=5, ticket=_ticket()))
        assert not _refusals(effects)
        assert not _of(effects, SealChannel)

    def test_auth_off_cannot_seal(self):
        """Without keys we cannot open what would follow: refused, never misread."""
        core = _core()
        _remote_client(core, 1)
        effects = _send(core, 1, JobTicket(job_id=5, ticket="t1", secret=self.SALT.hex()))
        assert _refusals(effects) == ["cannot encrypt (no key)"]

    @pytest.mark.parametrize(("encrypt", "sealed"), [(True, False), (False, True), (False, False)])
    def test_push_carries_its_job_key_when_encrypting(self, encrypt, sealed):
        """A push is sealed with encrypt = yes or over a sealed scheduler link."""
        pusher = _core(scheduler=False, auth="require", keys=(KEY,), encrypt=encrypt)
        pusher.handle(SchedulerUp(OWN_IP, 43, sealed=sealed), T0)
        pusher.handle(FromScheduler(ICESERV_CONF), T0)
        pusher.handle(NativesFound((NativeFound(GCC),)), T0)
        pusher.handle(NativeEnvBuilt(GCC, path=GCC_TARBALL), T0 + 2)
        answer = PushTargets(GCC_ENV, "x86_64", ("10.0.0.7:10245",))
        (push,) = _of(pusher.handle(FromScheduler(answer), T0 + 2), PushEnv)
        if encrypt or sealed:
            assert bytes.fromhex(push.secret) == job_key(KeyRing((KEY,)), push.ticket)
        else:
            assert push.secret == ""


FOUND = ("10.0.0.5", "192.0.2.5", "fd00::5")


class TestAddressFamilies:
    """HOST_ADDRESSES to an iceserv scheduler; IPv6 servers only for our own clients."""

    def _up(self, **changes: Any) -> DaemonCore:
        core = _core(scheduler=False, **changes)
        core.handle(SchedulerUp(OWN_IP, 43, FOUND), T0)
        return core

    def test_told_once_per_connection_after_the_mark(self):
        core = self._up()
        effects = core.handle(FromScheduler(ICESERV_CONF), T0)
        assert _to_scheduler(effects) == [HostAddresses(FOUND, ("ipv4", "ipv6"))]
        assert _to_scheduler(core.handle(FromScheduler(ICESERV_CONF), T0 + 1)) == []  # re-LOGIN
        core.handle(SchedulerDown(), T0 + 2)
        core.handle(SchedulerUp(OWN_IP, 43, FOUND), T0 + 3)
        assert _to_scheduler(core.handle(FromScheduler(ICESERV_CONF), T0 + 3)) == [
            HostAddresses(FOUND, ("ipv4", "ipv6"))
        ]

    def test_a_1_4_scheduler_never_hears_of_it(self):
        """Unmarked CS_CONF: the bytes to a 1.4 scheduler stay those of 1.4's daemon."""
        core = self._up()
        assert _to_scheduler(core.handle(FromScheduler(ConfCS()), T0)) == []

    def test_family_and_listen_addresses_restrict_it(self):
        settings = _settings(family="ipv6")
        assert host_addresses(settings, FOUND) == HostAddresses(("fd00::5",), ("ipv6",))
        settings = _settings(listen_addresses=("192.0.2.5", "127.0.0.1"))
        assert host_addresses(settings, FOUND) == HostAddresses(("192.0.2.5",), ("ipv4", "ipv6"))
        settings = _settings(listen_addresses=("::",))
        assert host_addresses(settings, FOUND) == HostAddresses(("fd00::5",), ("ipv4", "ipv6"))
        settings = _settings(listen_addresses=())  # --no-remote: a submitter only
        assert host_addresses(settings, FOUND) == HostAddresses((), ("ipv4", "ipv6"))
        assert host_addresses(_settings(), ()) == HostAddresses((), ())

    def test_nothing_routable_nothing_told(self):
        core = _core(scheduler=False)
        core.handle(SchedulerUp(OWN_IP, 43, ()), T0)
        assert _to_scheduler(core.handle(FromScheduler(ICESERV_CONF), T0)) == []

    def _assigned(self, kind: ConnKind, hostname: str) -> list[Any]:
        core = _core()
        _connect(core, 1, kind)
        _send(core, 1, GetCS(target="x86_64"))
        use = UseCS(job_id=71, hostname=hostname, port=PORT, host_platform="x86_64", client_id=1)
        return core.handle(FromScheduler(use), T0)

    def test_an_ipv6_server_is_not_named_to_an_unmarked_client(self):
        """A client that did not come through our endpoint may be 1.4's: it compiles here."""
        effects = self._assigned(LOCAL, "fd00::9")
        (use,) = _sent(effects, 1)
        assert (use.hostname, use.job_id) == ("127.0.0.1", 71)
        (warned,) = _events(effects, "compile_server_unusable")
        assert warned["server"] == "[fd00::9]:10245"

    def test_our_client_gets_the_ipv6_server(self):
        (use,) = _sent(self._assigned(ICESERV_LOCAL, "fd00::9"), 1)
        assert use.hostname == "fd00::9"

    def test_an_unmarked_client_still_gets_ipv4_servers(self):
        (use,) = _sent(self._assigned(LOCAL, "10.0.0.9"), 1)
        assert use.hostname == "10.0.0.9"
