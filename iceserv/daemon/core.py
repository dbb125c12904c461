"""The daemon core: every client's state, the slots, transfers, jobs and the scheduler link's state.

This module owns :class:`DaemonCore`, the sans-I/O state machine of
``iceccd`` (upstream ``daemon/main.cpp``: ``Daemon::handle_*``,
``handle_old_request``, ``handle_end``).  ``handle(event, now)`` takes one
:mod:`~iceserv.daemon.effects` event and returns the effects the asyncio
shell (:mod:`iceserv.daemon.server`) carries out.  It must not do I/O, use
asyncio, log (it returns ``Log`` effects), read a clock or the environment.

Theory of operation
-------------------
A client exists for the core once the shell completed its version
handshake (``ClientConnected``, with the connection's kind: Unix socket or
TCP, loopback or not).  Each client is in one :class:`~iceserv.daemon.states.State`::

    NEW --GET_NATIVE_ENV--> WAIT_NATIVE --built--> NEW (USE_NATIVE_ENV sent)
    NEW|JOB_DONE --GET_CS--> WAIT_FOR_CS --USE_CS (other host)--> WAIT_COMPILE --END--> (bye)
                           |--NO_CS / USE_CS (us) / no scheduler--> PENDING_USE_CS
    PENDING_USE_CS --slot--> CLIENT_WORK (USE_CS 127.0.0.1 sent) --JOB_DONE--> JOB_DONE
    NEW|JOB_DONE --JOB_LOCAL_BEGIN--> LINK_WAIT --slot--> CLIENT_WORK (go sent)
    NEW --TRANFER_ENV--> [INSTALL_WAIT --transfer slot-->] INSTALLING --END, unpacked--> NEW
    NEW --VERIFY_ENV--> NEW (VERIFY_ENV_RESULT sent)
    NEW --COMPILE_FILE--> TO_COMPILE --slot--> COMPILING --result sent--> NEW
    NEW --SLOTS_QUERY--> [WAIT_SLOTS --SLOTS_ANSWER or 0.25 s-->] NEW (SLOTS_ANSWER sent)

What each message does in each state (any cell not listed: the peer broke
the protocol; the client is ended with exit 120)::

    message           state(s)                       what the daemon does
    ----------------  -----------------------------  ----------------------------------------
    (local only: from a TCP peer that is not on loopback, GET_NATIVE_ENV,
    GET_CS and JOB_LOCAL_BEGIN end the client with exit 120)
    GET_NATIVE_ENV    NEW                            ResolveNative (the shell checks the paths)
                                                     -> USE_NATIVE_ENV when ready, else join or
                                                     start its build; failed: END, close (121)
    GET_CS            NEW, JOB_DONE                  forward to the scheduler (our client id,
                                                     client count); no scheduler: compile
                                                     yourself
    JOB_LOCAL_BEGIN   NEW, JOB_DONE                  queue for a LINK slot; then "go", and
                                                     JOB_LOCAL_BEGIN to the scheduler
    JOB_DONE          CLIENT_WORK                    free the slot, count the CPU, forward
    BLACKLIST_HOST_ENV any                           forward to the scheduler
    END               INSTALLING                     finish the install
                      TO_COMPILE, COMPILING          end of the source; a second END cancels (118)
                      any other                      good bye (119): end the client
    TRANFER_ENV       NEW                            refuse without chroot; check names, unpack
                                                     (an install slot at once) when fewer than
                                                     max_env_transfers run, else wait unread
                                                     (INSTALL_WAIT; a full queue: refused, 137)
    FILE_CHUNK        INSTALLING                     to the unpacker
                      TO_COMPILE, COMPILING          to the job's source (bounded while queued:
                                                     see "Memory" below)
    VERIFY_ENV        NEW                            refuse without chroot; run /bin/true there
    COMPILE_FILE      NEW                            refuse without chroot; hold the environment,
                                                     queue for a COMPILE slot
                      CLIENT_WORK ("__client" env)   the client compiles itself: JOB_BEGIN
    SLOTS_QUERY       NEW                            iceserv only: to an iceserv scheduler (it
                                                     marked CS_CONF), answer passed on in FIFO
                                                     order; else, or after SLOTS_WAIT, our own
                                                     slots with the reason as ``source``
    JOB_TICKET        NEW (once)                     iceserv only: with ``auth`` prefer/require,
                                                     check and spend it (a bad one: refused,
                                                     one ``job_refused`` line); off: taken
    (scheduler) JOB_TICKET     client in WAIT_FOR_CS  iceserv only: kept for its USE_CS
    (scheduler) USE_CS, NO_CS  client in WAIT_FOR_CS  pass on (other host; 127.0.0.1 named
                                                     localhost; after the job's JOB_TICKET to
                                                     a client of the iceserv endpoint only)
                                                     or compile yourself
                               client gone            JOB_DONE 107 for the job; else ignored
    (scheduler) PUSH_TARGETS   any                   iceserv only: queue pushes of that native
                                                     environment (see "Push-ahead" below)

Slots (:class:`~iceserv.daemon.slots.Slots`, reference §5.3): after every
event the core hands out what the free slots and the load allow: LINK, then
USE_CS_SELF, then COMPILE (only below full load).  Installs take a slot at
once.  A granted COMPILE sends JOB_BEGIN and ``StartCompile`` with the
source buffered so far; later chunks go out as ``FeedCompile``.

When a client ends (END, EOF, failed socket, protocol error, its read timer,
scheduler loss, stop) the core reports it exactly once, as 1.4's
``handle_end``: :func:`~iceserv.daemon.states.end_report` (JOB_DONE from
the submitter, JOB_LOCAL_DONE, or nothing); a queued compile reports its own
JOB_DONE from the server; an install is aborted and LOGIN re-sent (the
scheduler counts us "busy installing" until then).  A running compile is
killed and the client is kept until ``CompileFinished``: the compile then
sends its JOB_DONE and frees the slot.

Memory (issue 20): a queued job's source is buffered ("preloaded") only
up to ``source_buffer_limit`` for that job and ``source_budget`` for all
queued jobs together.  When either is reached the core stops reading the
client (``PauseReading``: its bytes stay in the kernel and TCP slows the
sender, as 1.4, which reads nothing before the job runs) and reads it again
(``ResumeReading``) when its job starts or the budget has room.  So at most
one chunk (<= 1 MiB) crosses either limit; a paused client that still sends
past its limit plus one chunk is dropped.  Environment transfers run at most
``max_env_transfers`` at once; others wait unread in FIFO order
(``INSTALL_WAIT``), at most ``env_transfer_queue`` of them.

Timers: each client has a read deadline that depends on its state
(:func:`~iceserv.daemon.states.read_timeout`); a message moves it, and
``ArmTimer`` goes out only when the state changed (an expiry of a moved
deadline re-arms).  The scheduler link's timer (:data:`LINK_TIMER`) sends
STATS every ``max_scheduler_pong`` seconds (3, or CS_CONF's), forced at
least every ``scheduler_idle`` seconds: a quiet scheduler is normal, never a
reason to drop the link (TCP keepalive and that write find a dead peer).
Losing the scheduler ends every client but running compiles (116), as 1.4.

Waking the scheduler (:data:`WAKE_TIMER`): from ``SchedulerConnecting``
(named or discovered) a ``WakeScheduler`` datagram goes to it every second
until 2 s after ``SchedulerUp`` (or at once to ``SchedulerDown``).  1.4's
scheduler polls its listening socket again only when its loop wakes a second
or more after its last accept (scheduler.cpp, main loop's ``next_listen``):
our own connect may be parked behind another daemon's accept, and another
daemon's connect behind ours, each for up to ~35 s, unless something wakes it.

The module is longer than the house's 800 lines on purpose: the brief is
one object from which a reader can name what the daemon does with each
message in each state, so the table, the handlers and the end rules stay
together (events and effects are in :mod:`~iceserv.daemon.effects`).

Push-ahead (issue 17, :mod:`~iceserv.daemon.pushahead`): every native
environment that becomes ready is offered; an iceserv scheduler is asked
(PUSH_QUERY) where it is missing, and the hosts it names get it by
``PushEnv`` (the shell's client-like TRANFER_ENV + VERIFY_ENV), one at a
time, never started while a local client waits for or talks to a compile
server; ``EnvPushed`` logs the outcome.  A USE_CS without the environment
for the host our running push goes to is held until the push ends, then
passed on with ``got_env`` set (or unchanged if the push failed, or after
``_HOLD_MAX`` seconds), so the client does not send the environment a second
time.

Job tickets (issue 14 item 3): with ``auth`` prefer/require a client that
sends TRANFER_ENV, VERIFY_ENV or COMPILE_FILE (in NEW) must have sent a
valid, unspent JOB_TICKET first (:mod:`iceserv.protocol.tickets`: the job
id, the client's address, ours on the scheduler link, the expiry); a
ticket lets in one COMPILE_FILE, of its own job (job 0: environments only).
Without one, ``require`` refuses (STATUS_TEXT, one ``job_refused`` line) and
``prefer`` serves it, logged once as ``job_unauthenticated`` (icecream 1.4's
client, or one behind a 1.4 daemon).  The submitting side passes the
scheduler's ticket on only to a client of the iceserv-only endpoint
(``ConnKind.iceserv``): our client, never 1.4's.

Local-only requests: :meth:`DaemonCore._admit` refuses GET_NATIVE_ENV,
JOB_LOCAL_BEGIN and GET_CS from a client that is neither on the Unix socket
nor on a loopback address (1.4's clients send them only to their own
daemon).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from typing import TYPE_CHECKING, Any, Final

from iceserv.daemon.effects import (
    LINK_TIMER,
    WAKE_TIMER,
    AbortUnpack,
    AnnounceLogin,
    AnswerInternals,
    ArmTimer,
    ClientConnected,
    ClientGone,
    Close,
    CompileFinished,
    CompileReport,
    CountJobCpu,
    DropScheduler,
    Effect,
    EnvPushed,
    EnvVerified,
    Event,
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
from iceserv.daemon.environments import EnvInstallError, check_name
from iceserv.daemon.natives import NativeBook
from iceserv.daemon.pushahead import PushBook
from iceserv.daemon.slots import Slots, SourceBuffer, SourceTooLargeError, Work
from iceserv.daemon.states import (
    EXIT_CLIENT_KILLED,
    EXIT_ENV_FAILED,
    EXIT_GOOD_BYE,
    EXIT_IO_ERROR,
    EXIT_NATIVE_FAILED,
    EXIT_NO_HOSTS,
    EXIT_PROTOCOL,
    State,
    end_report,
    read_timeout,
)
from iceserv.protocol import (
    ICESERV_MARK,
    MAX_MESSAGE_SIZE,
    BlacklistHostEnv,
    CompileFile,
    CompileResult,
    ConfCS,
    End,
    EnvTransfer,
    Feature,
    FileChunk,
    GetCS,
    GetInternalStatus,
    GetNativeEnv,
    HostAddresses,
    JobBegin,
    JobDone,
    JobDoneFlag,
    JobLocalBegin,
    JobTicket,
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
from iceserv.protocol.auth import AuthError, KeyRing
from iceserv.protocol.dispatch import Dispatch
from iceserv.protocol.features import supports
from iceserv.protocol.records import replace
from iceserv.protocol.sealing import SALT_BYTES, channel_keys, job_key
from iceserv.protocol.tickets import TicketLedger, issue_ticket, ticket_address, verify_ticket

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from iceserv.daemon.effects import BuildNative, ConnKind
    from iceserv.daemon.settings import ServerSettings
    from iceserv.protocol import EnvEntry, Message

__all__ = ["DaemonCore"]

#: COMPILE_FILE's environment name when the client compiles itself under our slot.
_CLIENT_ENV: Final = "__client"
#: The address a USE_CS names for "compile it yourself" (clients read it so).
_SELF_ADDRESS: Final = "127.0.0.1"
#: Bounds of CS_CONF's ``max_scheduler_pong`` (seconds between STATS).
_MIN_PONG: Final = 1.0
_MAX_PONG: Final = 60.0
_DEFAULT_PONG: Final = 3.0
#: Requests a client sends only to the daemon on its own host.
_LOCAL_ONLY: Final = (GetNativeEnv, JobLocalBegin, GetCS)
#: SLOTS_QUERYs sent to the scheduler and not yet answered, at most (later ones: our own count).
_MAX_SLOTS_QUERIES: Final = 256
#: Seconds a job waits, at most, for our push of its environment to its server to end.
_HOLD_MAX: Final = 10.0
#: A ticket's job id that allows only environment transfers (a daemon's own push-ahead).
PUSH_TICKET_JOB: Final = 0
#: Seconds our own push ticket is good for (it is spent at once; the rest: clock skew).
_PUSH_TICKET_LIFETIME: Final = 300
#: What a client with a verified ticket sends; without one, only under ``auth = prefer``.
_TICKETED: Final = (EnvTransfer, VerifyEnv, CompileFile)
#: Wake datagrams to a scheduler being connected to: every second, until 2 s after the login.
_WAKE_INTERVAL: Final = 1.0
_WAKE_AFTER_LOGIN: Final = 2.0


@dataclass(frozen=True, slots=True)
class _Result:
    """What the client is answered: status, out-of-memory flag, object and ``.dwo``."""

    status: int
    was_out_of_memory: bool = False
    object_data: bytes = b""
    dwo_data: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.object_data) + len(self.dwo_data or b"")


@dataclass(slots=True, eq=False)
class _Job:
    """A COMPILE_FILE from a client: its source stream and how it was stopped."""

    msg: CompileFile
    source: SourceBuffer
    abort_code: int = 0
    close_after: bool = False  # timed out: answer (107), then end the client


@dataclass(slots=True, eq=False)
class _Client:
    conn_id: int
    peer: str
    kind: ConnKind
    protocol: int
    state: State = State.NEW
    job_id: int = 0
    use_cs: UseCS | None = None
    envs: tuple[EnvEntry, ...] = ()  # GET_CS's environments
    held_use_cs: UseCS | None = None  # waits for our push of its environment to that host
    outfile: str = ""
    job: _Job | None = None
    install: str = ""  # "target/name" while an install runs or waits
    install_target: tuple[str, str] = ("", "")  # (target, name) of a waiting install
    paused: bool = False  # the shell stopped reading it (PauseReading sent)
    last_read: float = 0.0
    deadline: float = 0.0
    gone: bool = False  # ended while its compile runs; forgotten at CompileFinished
    exit_override: int = 0
    #: Submitter side: the scheduler's JOB_TICKET for this client's job, passed on with USE_CS.
    ticket: JobTicket | None = None
    #: Server side: the job id its verified JOB_TICKET allows (None: no ticket yet).
    ticket_job: int | None = None
    #: Server side: served without a ticket under ``auth = prefer`` (logged once).
    unauthenticated: bool = False

    def supports(self, feature: Feature) -> bool:
        return supports(self.protocol, feature)


def _host_of(peer: str) -> str:
    """Return the host part of a client's ``ip:port`` (``local``: every Unix-socket client)."""
    return peer.rsplit(":", 1)[0]


def _peer_address(peer: str) -> str:
    """Return the address of a client's ``ip:port`` / ``[v6]:port``."""
    return _host_of(peer).removeprefix("[").removesuffix("]")


def _same_server(host: str, port: int, use: UseCS) -> bool:
    """Whether *use* names the daemon at *host*:*port* (a scheduler names 127.0.0.1 localhost)."""
    named = _SELF_ADDRESS if use.hostname == "localhost" else use.hostname
    return (named, use.port) == (host, port)


def host_addresses(settings: ServerSettings, found: Sequence[str]) -> HostAddresses:
    """HOST_ADDRESSES for an iceserv scheduler: our compile port's addresses, our clients' families.

    *found* are the host's routable addresses (IPv4 first).  ``family``
    restricts both; the compile port's addresses are those of *found* it is
    bound to (``""``: all; ``0.0.0.0``/``::``: all of that family), none
    without a TCP port.  The clients reach every family the host has a
    routable address of.
    """
    allowed = [
        a
        for a in found
        if (settings.family != "ipv6" if ":" not in a else settings.family != "ipv4")
    ]
    families = tuple(
        name
        for name, six in (("ipv4", False), ("ipv6", True))
        if any((":" in a) == six for a in allowed)
    )
    listen = settings.listen_addresses
    bound = [
        a
        for a in allowed
        if "" in listen or a in listen or ("::" if ":" in a else "0.0.0.0") in listen  # noqa: S104
    ]
    return HostAddresses(addresses=tuple(bound), families=families)


def _log(level: str, event: str, **fields: object) -> Log:
    return Log(level, event, fields)


class DaemonCore:
    """The daemon's state machine; see the module docstring for the theory of operation."""

    def __init__(self, settings: ServerSettings, *, port: int) -> None:
        self.settings = settings
        self.port = port
        self.slots = Slots(settings.max_kids)
        #: Native environments: ready, being built, queued (prebuilds at start, issue 17).
        self.natives = NativeBook(settings.max_native_builds)
        #: Native environments pushed ahead to idle hosts (iceserv schedulers only, issue 17).
        self.pushes = PushBook(enabled=settings.push_ahead)
        self.load = 0
        self.scheduler_up = False
        self.scheduler_protocol = 0
        #: The scheduler marked its CS_CONF as iceserv's: SLOTS_QUERY may go to it (None: no
        #: CS_CONF yet on this connection).
        self.scheduler_iceserv: bool | None = None
        self.own_ip = ""
        #: The scheduler link is sealed (issue 14 item 4): our pushes are sealed too.
        self.scheduler_sealed = False
        #: This host's routable addresses at the last login (SchedulerUp), for HOST_ADDRESSES.
        self.found_addresses: tuple[str, ...] = ()
        self.pong = _DEFAULT_PONG
        self._next_forced = 0.0
        #: The scheduler being woken, and until when (None: until the handshake + 2 s).
        self._waking: tuple[str, int] | None = None
        self._wake_until: float | None = None
        self._clients: dict[int, _Client] = {}
        self._install_queue: collections.deque[int] = collections.deque()
        #: Job tickets already spent here (issue 14): each one is good for one connection.
        self.tickets = TicketLedger()
        #: Jobs and transfers served with a ticket, and without one (``auth = prefer``).
        self.ticketed = 0
        self.unticketed = 0
        #: Clients whose SLOTS_QUERY went to the scheduler, in order (it answers in order).
        self._slots_queries: collections.deque[int] = collections.deque()
        self._flow_dirty = False  # a queued job's buffer changed: check pauses
        self._events: dict[type, Callable[[Any, float], list[Effect]]] = {
            ClientConnected: self._on_connected,
            Received: self._on_received,
            ClientGone: self._on_gone,
            TimerExpired: self._on_timer,
            NativeEnvBuilt: self._on_native,
            NativesFound: self._on_natives_found,
            NativeResolved: self._on_native_resolved,
            EnvPushed: self._on_pushed,
            UnpackFailed: self._on_unpack_failed,
            Unpacked: self._on_unpacked,
            EnvVerified: self._on_verified,
            CompileFinished: self._on_compile_finished,
            SchedulerConnecting: self._on_scheduler_connecting,
            SchedulerUp: self._on_scheduler_up,
            SchedulerDown: self._on_scheduler_down,
            FromScheduler: self._on_from_scheduler,
            LoadSampled: self._on_load,
            Stop: self._on_stop,
        }
        self._messages = (
            Dispatch[[_Client, float], list[Effect]]("client")
            .on(GetNativeEnv, self._get_native_env)
            .on(GetCS, self._get_cs)
            .on(JobLocalBegin, self._job_local_begin)
            .on(JobDone, self._job_done)
            .on(BlacklistHostEnv, self._blacklist)
            .on(End, self._end)
            .on(EnvTransfer, self._transfer_env)
            .on(FileChunk, self._file_chunk)
            .on(VerifyEnv, self._verify_env)
            .on(CompileFile, self._compile_file)
            .on(SlotsQuery, self._slots_query)
            .on(JobTicket, self._client_ticket)
        )
        self._from_scheduler = (
            Dispatch[[float], list[Effect]]("scheduler")
            .on(UseCS, self._scheduler_answer)
            .on(NoCS, self._scheduler_answer)
            .on(ConfCS, self._conf_cs)
            .on(GetInternalStatus, self._internals)
            .on(Ping, self._ping)
            .on(SlotsAnswer, self._slots_answer)
            .on(PushTargets, self._push_targets)
            .on(JobTicket, self._scheduler_ticket)
        )

    # --- queries ---------------------------------------------------------------------

    @property
    def client_count(self) -> int:
        """Connected clients (1.4's ``clients.size()``), counting ended ones still compiling."""
        return len(self._clients)

    def state_of(self, conn_id: int) -> State | None:
        """Return client *conn_id*'s state (None: not a client, or already ended)."""
        client = self._clients.get(conn_id)
        return None if client is None or client.gone else client.state

    @property
    def buffered(self) -> int:
        """Source bytes received for compile jobs and not yet handed to a compiler."""
        return sum(c.job.source.pending for c in self._clients.values() if c.job is not None)

    def source_received(self, conn_id: int) -> int:
        """Source bytes client *conn_id*'s compile job received so far (0 without a job)."""
        client = self._clients.get(conn_id)
        job = client.job if client is not None else None
        return job.source.in_uncompressed if job is not None else 0

    def describe(self) -> tuple[str, ...]:
        """One line per client, for GET_INTERNALS."""
        return tuple(
            f"client {c.conn_id}: {c.peer} {c.state.value}" for c in self._clients.values()
        )

    def reconfigure(self, settings: ServerSettings, *, port: int, now: float) -> list[Effect]:
        """Apply reloaded *settings* (slots at once); return the grants that became possible."""
        self.settings = settings
        self.port = port
        self.slots.max_kids = settings.max_kids
        self.natives.max_builds = max(1, settings.max_native_builds)
        self.pushes.set_enabled(enabled=settings.push_ahead)
        effects = self._schedule(now)
        if self.scheduler_up and self.scheduler_iceserv:
            effects += self._push_queries(self.pushes.scheduler_ready())
        return effects

    # --- the entry point -------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Apply *event* at time *now*; return what the shell must do, in order."""
        effects = self._events[type(event)](event, now)
        if self._flow_dirty:
            self._flow_dirty = False
            effects += self._flow(now)
        if self.pushes.running is None and self.pushes.queued:
            effects += self._next_push(now)
        return effects

    # --- memory: how much queued source the daemon reads -----------------------------

    def _flow(self, now: float) -> list[Effect]:
        """Pause the clients whose queued source reached a limit, resume the others."""
        over = self.buffered >= self.settings.source_budget
        effects: list[Effect] = []
        for client in self._clients.values():
            job = client.job
            if client.gone or job is None:
                continue
            pause = (
                client.state is State.TO_COMPILE
                and not job.source.ended
                and (over or job.source.pending >= self.settings.source_buffer_limit)
            )
            if pause is client.paused:
                continue
            client.paused = pause
            if pause:
                effects.append(PauseReading(client.conn_id))
                effects.append(
                    _log(
                        "debug",
                        "client_read_paused",
                        client_id=client.conn_id,
                        buffered=job.source.pending,
                        total=self.buffered,
                    )
                )
            else:
                effects.append(ResumeReading(client.conn_id))
            client.last_read = max(client.last_read, now)
            effects += self._arm(client, now)
        return effects

    # --- connections -----------------------------------------------------------------

    def _on_connected(self, event: ClientConnected, now: float) -> list[Effect]:
        client = _Client(event.conn_id, event.peer, event.kind, event.protocol, last_read=now)
        self._clients[event.conn_id] = client
        return self._arm(client, now)

    def _on_received(self, event: Received, now: float) -> list[Effect]:
        client = self._clients.get(event.conn_id)
        if client is None or client.gone:
            return []  # read after the core ended it (the shell closes it)
        client.last_read = now
        msg = event.message
        if type(msg) not in self._messages:
            return self._protocol_error(client, msg, now)
        if not self._admit(client, msg):
            return [
                _log(
                    "warning",
                    "client_request_refused",
                    client_id=client.conn_id,
                    peer=client.peer,
                    request=type(msg).__name__,
                    reason="local-only request from a remote peer",
                ),
                *self._finish_client(client, EXIT_PROTOCOL, now),
            ]
        notes: list[Effect] = []
        if isinstance(msg, _TICKETED) and client.state is State.NEW:
            go_on, notes = self._ticket_gate(client, msg, now)
            if not go_on:
                return notes
        before = client.state
        effects = notes + self._messages(msg, client, now)
        if client.conn_id in self._clients and client.state is not before and not client.gone:
            effects += self._arm(client, now)
        return effects

    def _admit(self, client: _Client, msg: Message) -> bool:
        """Whether *client* (by its connection kind) may send *msg* at all.

        GET_NATIVE_ENV, JOB_LOCAL_BEGIN and GET_CS are a local client's
        requests: from a TCP peer not on loopback they would let any host
        start native builds (which run a compiler it names), hold our slots
        or submit jobs in our name (issue 20).
        """
        return client.kind.local or not isinstance(msg, _LOCAL_ONLY)

    def _on_gone(self, event: ClientGone, now: float) -> list[Effect]:
        client = self._clients.get(event.conn_id)
        if client is None or client.gone:
            return []
        if event.reason is GoneReason.EOF:
            return self._finish_client(client, EXIT_CLIENT_KILLED, now)
        protocol = event.reason is GoneReason.PROTOCOL_ERROR
        fields = {"client_id": client.conn_id, "error": event.detail, "state": client.state.name}
        effects: list[Effect] = [
            Log("warning", "client_protocol_error", fields)
            if protocol
            else Log("info", "client_connection_failed", fields)
        ]
        return effects + self._finish_client(
            client, EXIT_PROTOCOL if protocol else EXIT_CLIENT_KILLED, now
        )

    def _on_timer(self, event: TimerExpired, now: float) -> list[Effect]:
        if event.key == LINK_TIMER:
            return self._link_tick(now)
        if event.key == WAKE_TIMER:
            return self._wake_tick(now)
        client = self._clients.get(event.key)
        if client is None or client.gone:
            return []
        return self._client_timer(client, now)

    def _client_timer(self, client: _Client, now: float) -> list[Effect]:
        deadline = client.last_read + self._timeout(client)
        if now < deadline:
            client.deadline = deadline
            return [ArmTimer(client.conn_id, deadline)]
        if client.state is State.WAIT_SLOTS:
            return self._local_slots(client, "the scheduler did not answer in time", now)
        held = client.held_use_cs
        if held is not None:
            # The push is slow: the client sends the environment itself, as assigned.
            client.held_use_cs = None
            return [
                _log(
                    "info",
                    "compile_server_released",
                    client_id=client.conn_id,
                    reason="the push took too long",
                ),
                *self._forward_use_cs(client, held, now),
            ]
        effects: list[Effect] = [
            _log("warning", "client_timed_out", client_id=client.conn_id, state=client.state.name)
        ]
        job = client.job
        if client.state is State.COMPILING and job is not None and not job.source.ended:
            # No input for the gap time-out while compiling: kill, answer 107 (1.4: out of memory).
            job.abort_code = job.abort_code or EXIT_IO_ERROR
            job.close_after = True
            return [*effects, KillCompile(client.conn_id)]
        return effects + self._finish_client(client, EXIT_IO_ERROR, now)

    def _timeout(self, client: _Client) -> float:
        if client.held_use_cs is not None:
            return _HOLD_MAX
        ended = client.job is not None and client.job.source.ended
        return read_timeout(client.state, self.settings, stream_ended=ended, paused=client.paused)

    def _arm(self, client: _Client, now: float) -> list[Effect]:
        client.deadline = max(client.last_read, now) + self._timeout(client)
        return [ArmTimer(client.conn_id, client.deadline)]

    # --- local clients ---------------------------------------------------------------

    def _get_native_env(self, msg: GetNativeEnv, client: _Client, _: float, /) -> list[Effect]:
        if client.state is not State.NEW:
            return self._wrong_state(client, msg)
        client.state = State.WAIT_NATIVE
        return [ResolveNative(client.conn_id, msg.compiler, tuple(msg.extrafiles), msg.compression)]

    def _on_natives_found(self, event: NativesFound, now: float) -> list[Effect]:
        found = tuple((item.key, item.path) for item in event.found)
        effects: list[Effect] = [
            _log(
                "info",
                "native_envs_found",
                compilers=[item.key.compiler for item in event.found],
                kept=[item.key.compiler for item in event.found if item.path],
                to_build=[item.key.compiler for item in event.found if not item.path],
            )
        ]
        for item in event.found:
            if item.path:
                effects += self._offer_push(item.path)
        return effects + self._native_builds(self.natives.found(found, now), now)

    def _native_builds(self, builds: Sequence[BuildNative], now: float) -> list[Effect]:
        effects: list[Effect] = []
        for build in builds:
            record = self.natives.build_of(build.key)
            waited = now - record.queued if record is not None else 0.0
            effects.append(
                _log(
                    "info",
                    "native_env_build_started",
                    compiler=build.key.compiler,
                    compression=build.key.compression,
                    reason=build.reason,
                    queued_seconds=round(waited, 3),
                )
            )
            effects.append(build)
        return effects

    def _on_native_resolved(self, event: NativeResolved, now: float) -> list[Effect]:
        client = self._clients.get(event.conn_id)
        if client is None or client.gone or client.state is not State.WAIT_NATIVE:
            return []
        if event.key is None:
            return self._native_failed(client, event.error, now)
        ready, builds = self.natives.request(client.conn_id, event.key, event.path, now)
        if ready is not None:
            return self._native_sent(client, ready.path, ready.origin, 0.0, now)
        build = self.natives.build_of(event.key)
        effects: list[Effect] = [
            _log(
                "info",
                "native_env_waiting",
                client_id=client.conn_id,
                compiler=event.key.compiler,
                build=build.reason if build is not None else "",
                running=build is not None and build.started is not None,
            )
        ]
        return effects + self._native_builds(builds, now)

    def _native_sent(
        self, client: _Client, path: str, origin: str, waited: float, now: float
    ) -> list[Effect]:
        client.state = State.NEW
        return [
            _log(
                "info",
                "native_env_sent",
                client_id=client.conn_id,
                path=path,
                origin=origin,
                waited_seconds=round(waited, 3),
            ),
            Send(client.conn_id, UseNativeEnv(path)),
            *self._arm(client, now),
        ]

    def _native_failed(self, client: _Client, error: str, now: float) -> list[Effect]:
        client.exit_override = EXIT_NATIVE_FAILED
        effects: list[Effect] = [
            _log("warning", "native_env_failed", client_id=client.conn_id, error=error),
            Send(client.conn_id, End()),
        ]
        return effects + self._finish_client(client, EXIT_NATIVE_FAILED, now)

    def _on_native(self, event: NativeEnvBuilt, now: float) -> list[Effect]:
        outcome = self.natives.built(event.key, event.path, now)
        effects: list[Effect] = []
        build = outcome.build
        if build is not None and event.path:
            effects.append(
                _log(
                    "info",
                    "native_env_built",
                    compiler=event.key.compiler,
                    compression=event.key.compression,
                    reason=build.reason,
                    seconds=round(outcome.seconds, 3),
                    waiting_clients=len(build.waiters),
                    path=event.path,
                )
            )
            effects += self._offer_push(event.path)
        elif build is not None:
            effects.append(
                _log(
                    "warning",
                    "native_env_build_failed",
                    compiler=event.key.compiler,
                    reason=build.reason,
                    seconds=round(outcome.seconds, 3),
                    error=event.error,
                )
            )
        waiters = build.waiters if build is not None else {}
        for conn_id, since in waiters.items():
            client = self._clients.get(conn_id)
            if client is None or client.gone or client.state is not State.WAIT_NATIVE:
                continue
            if build is not None and event.path:
                effects += self._native_sent(client, event.path, build.reason, now - since, now)
            else:
                effects += self._native_failed(client, event.error, now)
        return effects + self._native_builds(outcome.start, now)

    def _get_cs(self, msg: GetCS, client: _Client, now: float, /) -> list[Effect]:
        if client.state not in (State.NEW, State.JOB_DONE):
            return self._wrong_state(client, msg)
        client.state = State.WAIT_FOR_CS
        if not self.scheduler_up:
            # No scheduler: nobody to ask, so the client compiles itself (1.4 does the same).
            client.job_id = client.conn_id
            return self._pending(
                client,
                UseCS(
                    job_id=client.conn_id,
                    port=self.port,
                    hostname="127.0.0.1",
                    host_platform=msg.target,
                    got_env=True,
                    client_id=1,
                ),
                now,
            )
        client.envs = msg.versions
        forwarded = replace(msg, client_id=client.conn_id, client_count=self.client_count)
        return [ToScheduler(forwarded)]

    def _scheduler_answer(self, msg: UseCS | NoCS, now: float, /) -> list[Effect]:
        client = self._clients.get(msg.client_id)
        if client is None or client.gone:
            return self._to_scheduler(
                JobDone(
                    job_id=msg.job_id,
                    exitcode=EXIT_IO_ERROR,
                    flags=JobDoneFlag.FROM_SUBMITTER,
                    client_count=self.client_count,
                )
            )
        if client.state is not State.WAIT_FOR_CS:
            return [
                _log(
                    "warning",
                    "unexpected_scheduler_answer",
                    client_id=client.conn_id,
                    state=client.state.name,
                )
            ]
        client.job_id = msg.job_id
        if isinstance(msg, NoCS):
            return self._pending(
                client,
                UseCS(
                    job_id=msg.job_id,
                    port=self.port,
                    hostname="127.0.0.1",
                    got_env=True,
                    client_id=1,
                ),
                now,
            )
        if (msg.hostname == self.own_ip and msg.port == self.port) or (
            ":" in msg.hostname and not client.kind.iceserv
        ):
            return self._compile_here(client, msg, now)
        client.state = State.WAIT_COMPILE
        env_from = "scheduler"
        if self._pushed_there(client, msg, now):
            # Placed before the scheduler saw that host's re-LOGIN after our push.
            msg, env_from = replace(msg, got_env=True), "push"
        if self._push_covers(client, msg):
            # Our push of its environment to that host runs: the job goes there once it is
            # installed, without a second transfer (or as assigned, if the push fails).
            client.held_use_cs = msg
            return [
                _log(
                    "info",
                    "compile_server_held",
                    client_id=client.conn_id,
                    job_id=msg.job_id,
                    server=f"{msg.hostname}:{msg.port}",
                    reason="environment being pushed there",
                ),
                *self._arm(client, now),
            ]
        return self._forward_use_cs(client, msg, now, env_from=env_from)

    def _compile_here(self, client: _Client, msg: UseCS, now: float) -> list[Effect]:
        """Have *client* compile here: *msg* names us, or an IPv6 server it may not parse.

        A client that did not come through our iceserv-only endpoint may be
        icecream 1.4's, which cannot parse an IPv6 address and would lose the job.
        """
        effects: list[Effect] = []
        if msg.hostname != self.own_ip:
            effects.append(
                _log(
                    "warning",
                    "compile_server_unusable",
                    client_id=client.conn_id,
                    job_id=msg.job_id,
                    server=f"[{msg.hostname}]:{msg.port}",
                    reason="an IPv6 address for a client that is not iceserv's: compiled here",
                )
            )
        use = UseCS(
            job_id=msg.job_id,
            port=self.port,
            hostname="127.0.0.1",
            host_platform=msg.host_platform,
            got_env=True,
            client_id=1,
            matched_job_id=msg.matched_job_id if msg.hostname == self.own_ip else 0,
        )
        return effects + self._pending(client, use, now)

    def _pushed_there(self, client: _Client, msg: UseCS, now: float) -> bool:
        """Whether our push installed *client*'s environment on *msg*'s host moments ago."""
        host = _SELF_ADDRESS if msg.hostname == "localhost" else msg.hostname
        return not msg.got_env and any(
            e.platform == msg.host_platform and self.pushes.installed(host, msg.port, e.name, now)
            for e in client.envs
        )

    def _push_covers(self, client: _Client, msg: UseCS) -> bool:
        """Whether the running push brings *msg*'s host the environment *client* would send."""
        push = self.pushes.running
        return (
            push is not None
            and not msg.got_env
            and _same_server(push.host, push.port, msg)
            and push.target == msg.host_platform
            and any(e.platform == push.target and e.name == push.name for e in client.envs)
        )

    def _forward_use_cs(
        self, client: _Client, msg: UseCS, now: float, *, env_from: str = "scheduler"
    ) -> list[Effect]:
        """Pass *msg* on to *client*; *env_from* says who vouched for ``got_env``."""
        named = msg
        effects: list[Effect] = []
        ticket, client.ticket = client.ticket, None
        if ticket is not None and ticket.job_id == msg.job_id and client.kind.iceserv:
            # Only our own client (it came in on the iceserv-only endpoint) reads JOB_TICKET.
            effects.append(Send(client.conn_id, replace(ticket, client_id=0)))
        if msg.hostname == _SELF_ADDRESS:
            # Another daemon on this host: clients read 127.0.0.1 as "compile it yourself",
            # so name the same address in a way they connect to (issue 13, one-host clusters).
            msg = replace(msg, hostname="localhost")
        return [
            *effects,
            Send(client.conn_id, msg),
            _log(
                "info",
                "compile_server_assigned",
                client_id=client.conn_id,
                job_id=msg.job_id,
                server=(f"[{named.hostname}]" if ":" in named.hostname else named.hostname)
                + f":{named.port}",
                got_env=msg.got_env,
                env_from=env_from if msg.got_env else "",
            ),
            *self._arm(client, now),
        ]

    def _pending(self, client: _Client, use_cs: UseCS, now: float) -> list[Effect]:
        client.use_cs = use_cs
        client.state = State.PENDING_USE_CS
        self.slots.enqueue(client.conn_id, Work.USE_CS_SELF)
        return self._arm(client, now) + self._schedule(now)

    def _job_local_begin(self, msg: JobLocalBegin, client: _Client, now: float, /) -> list[Effect]:
        if client.state not in (State.NEW, State.JOB_DONE):
            return self._wrong_state(client, msg)
        client.outfile = msg.outfile
        client.state = State.LINK_WAIT
        self.slots.enqueue(client.conn_id, Work.LINK)
        return self._schedule(now)

    def _job_done(self, msg: JobDone, client: _Client, now: float, /) -> list[Effect]:
        if client.state is not State.CLIENT_WORK:
            return self._wrong_state(client, msg)
        self.slots.release(client.conn_id)
        client.state = State.JOB_DONE
        client.job_id = 0  # the scheduler will not need it any more
        effects: list[Effect] = []
        if msg.user_msec + msg.sys_msec <= msg.real_msec:  # plausible figures only, as 1.4
            effects.append(CountJobCpu(msg.user_msec + msg.sys_msec))
        effects += self._to_scheduler(replace(msg, client_count=self.client_count))
        effects.append(
            _log(
                "info",
                "job_finished",
                client_id=client.conn_id,
                peer=client.peer,
                job_id=msg.job_id,
                where="client",
                exitcode=msg.exitcode,
                real_msec=msg.real_msec,
                out_bytes=msg.out_uncompressed,
            )
        )
        return effects + self._schedule(now)

    def _blacklist(self, msg: BlacklistHostEnv, _: _Client, __: float, /) -> list[Effect]:
        return self._to_scheduler(msg)

    def _end(self, _: End, client: _Client, now: float, /) -> list[Effect]:
        if client.state is State.INSTALLING:
            return [FinishUnpack(client.conn_id)]
        job = client.job
        if client.state in (State.TO_COMPILE, State.COMPILING) and job is not None:
            if job.source.ended:  # any message after END: the client cancelled
                return self._finish_client(client, EXIT_CLIENT_KILLED, now)
            job.source.end()
            if client.state is State.COMPILING:
                return [FeedCompile(client.conn_id, ended=True), *self._arm(client, now)]
            return self._arm(client, now)
        return self._finish_client(client, EXIT_GOOD_BYE, now)

    # --- remote clients --------------------------------------------------------------

    def _refuse_remote(self, client: _Client, now: float) -> list[Effect] | None:
        if self.settings.chroot_possible:
            return None
        return [
            *self._error_text(client, "this daemon cannot chroot and accepts no remote jobs"),
            *self._finish_client(client, EXIT_GOOD_BYE, now),
        ]

    def _transfer_env(self, msg: EnvTransfer, client: _Client, now: float, /) -> list[Effect]:
        if client.state is not State.NEW:
            return self._wrong_state(client, msg)
        refused = self._refuse_remote(client, now)
        if refused is not None:
            return refused
        return self._begin_install(client, msg.target or self.settings.platform, msg.name, now)

    def _begin_install(self, client: _Client, target: str, name: str, now: float) -> list[Effect]:
        key = f"{target}/{name}"
        try:
            check_name(target, "target")
            check_name(name, "name")
        except EnvInstallError as exc:
            # Refused before an unpacker started: the scheduler still waits for our LOGIN.
            return [*self._reannounce(now), *self._install_failed(client, key, str(exc), now)]
        client.install = key
        if not self._may_install(client):
            host = _host_of(client.peer)
            waiting_here = sum(1 for c in self._waiting_installs() if _host_of(c.peer) == host)
            if len(self._install_queue) >= self.settings.env_transfer_queue or waiting_here >= max(
                1, self.settings.env_transfer_queue // 2
            ):
                return [
                    *self._reannounce(now),
                    *self._install_failed(client, key, "too many transfers waiting", now),
                ]
            # Wait unread: the tarball stays in the kernel (and the sender) meanwhile.
            client.install_target = (target, name)
            client.state = State.INSTALL_WAIT
            self._install_queue.append(client.conn_id)
            return [
                PauseReading(client.conn_id),
                _log(
                    "info",
                    "env_transfer_queued",
                    client_id=client.conn_id,
                    env=key,
                    waiting=len(self._install_queue),
                ),
            ]
        return self._start_install(client, target, name)

    def _start_install(self, client: _Client, target: str, name: str) -> list[Effect]:
        self.slots.start_install(client.conn_id)
        client.state = State.INSTALLING
        return [
            StartUnpack(client.conn_id, target, name),
            _log("info", "env_transfer_started", client_id=client.conn_id, env=client.install),
        ]

    def _may_install(self, client: _Client) -> bool:
        """Whether *client*'s transfer may unpack now.

        At most ``max_env_transfers`` at once, and one host (one peer
        address; all local clients are one) at most half of them, at least
        one: a host that stalls its transfers cannot keep every other host's
        environment from being installed.
        """
        limit = max(1, self.settings.max_env_transfers)
        share = max(1, limit // 2)
        host = _host_of(client.peer)
        here = sum(
            1
            for c in self._clients.values()
            if c.install and c.state is State.INSTALLING and _host_of(c.peer) == host
        )
        return self.slots.installs < limit and here < share

    def _waiting_installs(self) -> list[_Client]:
        return [self._clients[conn_id] for conn_id in self._install_queue]

    def _next_install(self) -> list[Effect]:
        """Start the oldest waiting installs whose hosts are under their share (read them again).

        A host gets at most half of the waiting places, at least one.
        """
        effects: list[Effect] = []
        for client in self._waiting_installs():
            if self._may_install(client):
                self._install_queue.remove(client.conn_id)
                target, name = client.install_target
                # The unpacker first: the shell awaits its start, so the chunks read once the
                # client is read again find it (the other order failed with "installer not
                # started" when a second transfer from one host waited for the first).
                effects += self._start_install(client, target, name)
                effects += [ResumeReading(client.conn_id)]
        return effects

    def _on_unpack_failed(self, event: UnpackFailed, now: float) -> list[Effect]:
        client = self._clients.get(event.conn_id)
        if client is None or client.gone or not client.install:
            return []
        key, client.install = client.install, ""
        self.slots.release(client.conn_id)
        return [
            *self._reannounce(now),
            *self._install_failed(client, key, event.error, now),
            *self._next_install(),
        ]

    def _install_failed(self, client: _Client, key: str, error: str, now: float) -> list[Effect]:
        client.exit_override = EXIT_ENV_FAILED
        text = f"environment {key or '?'} not installed: {error}"
        return [*self._error_text(client, text), *self._finish_client(client, EXIT_ENV_FAILED, now)]

    def _on_unpacked(self, event: Unpacked, now: float) -> list[Effect]:
        client = self._clients.get(event.conn_id)
        if client is None or client.gone or not client.install:
            return []
        key, client.install = client.install, ""
        self.slots.release(client.conn_id)
        client.state = State.NEW
        return [
            _log(
                "info",
                "env_installed",
                client_id=client.conn_id,
                env=key,
                size=event.size,
                cache_size=event.cache_size,
                evicted=list(event.evicted),
            ),
            *self._arm(client, now),
            *self._reannounce(now),
            *self._next_install(),
        ]

    def _reannounce(self, now: float) -> list[Effect]:
        effects: list[Effect] = [AnnounceLogin(reannounce=True)] if self.scheduler_up else []
        return effects + self._schedule(now)

    def _verify_env(self, msg: VerifyEnv, client: _Client, now: float, /) -> list[Effect]:
        if client.state is not State.NEW:
            return self._wrong_state(client, msg)
        refused = self._refuse_remote(client, now)
        if refused is not None:
            return refused
        return [VerifyEnvironment(client.conn_id, msg.target, msg.environment)]

    def _on_verified(self, event: EnvVerified, _: float) -> list[Effect]:
        client = self._clients.get(event.conn_id)
        if client is None or client.gone:
            return []
        return [
            _log("info", "env_verified", client_id=client.conn_id, ok=event.ok),
            Send(client.conn_id, VerifyEnvResult(ok=event.ok)),
        ]

    def _compile_file(self, msg: CompileFile, client: _Client, now: float, /) -> list[Effect]:
        if msg.environment == _CLIENT_ENV:
            if client.state is not State.CLIENT_WORK:
                return self._wrong_state(client, msg)
            # The client compiles itself under our slot: tell the scheduler it began.
            return self._to_scheduler(
                JobBegin(job_id=msg.job_id, stime=int(now), client_count=self.client_count)
            )
        if client.state is not State.NEW:
            return self._wrong_state(client, msg)
        refused = self._refuse_remote(client, now)
        if refused is not None:
            return refused
        # Reading pauses at source_buffer_limit; one more chunk may be on its way then.
        client.job = _Job(msg, SourceBuffer(self.settings.source_buffer_limit + MAX_MESSAGE_SIZE))
        client.state = State.TO_COMPILE
        self._flow_dirty = True
        self.slots.enqueue(client.conn_id, Work.COMPILE)
        return [HoldEnv(msg.target, msg.environment), *self._schedule(now)]

    def _file_chunk(self, msg: FileChunk, client: _Client, now: float, /) -> list[Effect]:
        if client.state is State.INSTALLING:
            return [FeedUnpack(client.conn_id, msg.data)]
        job = client.job
        if job is None or client.state not in (State.TO_COMPILE, State.COMPILING):
            return self._wrong_state(client, msg)
        try:
            job.source.push(msg.data, msg.compressed_size)
        except (SourceTooLargeError, ValueError) as exc:
            job.abort_code = job.abort_code or EXIT_IO_ERROR  # a running compile reports 107
            return [
                *self._error_text(client, str(exc)),
                *self._finish_client(client, EXIT_CLIENT_KILLED, now),
            ]
        if client.state is State.COMPILING:
            return [FeedCompile(client.conn_id, tuple(job.source.take()))]
        self._flow_dirty = True
        return []

    def _start_compile(self, client: _Client, now: float) -> list[Effect]:
        job = client.job
        if job is None:
            self.slots.release(client.conn_id)
            return []
        client.state = State.COMPILING
        self._flow_dirty = True  # its buffer is handed over: room for the others
        msg = job.msg
        return [
            *self._to_scheduler(
                JobBegin(job_id=msg.job_id, stime=int(now), client_count=self.client_count)
            ),
            StartCompile(
                client.conn_id,
                msg,
                client.protocol,
                tuple(job.source.take()),
                ended=job.source.ended,
            ),
            *self._arm(client, now),
        ]

    def _on_compile_finished(self, event: CompileFinished, now: float) -> list[Effect]:
        client = self._clients.get(event.conn_id)
        if client is None or client.job is None or client.state is not State.COMPILING:
            return []
        job, report = client.job, event.report
        client.job = None
        effects: list[Effect] = (
            [AnnounceLogin(reannounce=True)] if (report.env_removed and self.scheduler_up) else []
        )
        result = _Result(
            report.status, report.was_out_of_memory, report.object_data, report.dwo_data
        )
        if report.give_up:
            job.abort_code = job.abort_code or report.give_up_code
            result = _Result(report.give_up_code, report.was_out_of_memory)
            if not client.gone:
                effects += self._error_text(client, report.give_up)
        elif job.abort_code and job.abort_code != EXIT_CLIENT_KILLED:
            result = _Result(job.abort_code, was_out_of_memory=True)
        if not client.gone and not report.give_up and job.abort_code != EXIT_CLIENT_KILLED:
            effects += self._answer(client, report, result)
        exit_code = job.abort_code or result.status
        effects += [
            ReleaseEnv(job.msg.target, job.msg.environment),
            *self._to_scheduler(self._server_job_done(job, exit_code, report, result)),
            _log(
                "info",
                "job_finished",
                client_id=client.conn_id,
                peer=client.peer,
                job_id=job.msg.job_id,
                env=f"{job.msg.target}/{job.msg.environment}",
                where="server",
                exitcode=exit_code,
                in_bytes=job.source.in_uncompressed,
                in_compressed=job.source.in_compressed,
                out_bytes=result.size,
                real_msec=report.real_msec,
                user_msec=report.user_msec,
                sys_msec=report.sys_msec,
                oom=result.was_out_of_memory,
            ),
        ]
        self.slots.release(client.conn_id)
        if client.gone:
            del self._clients[client.conn_id]
        elif report.give_up or job.close_after:
            effects += self._finish_client(client, exit_code, now)
            return effects
        else:
            client.state = State.NEW
            effects += self._arm(client, now)
        return effects + self._schedule(now)

    def _answer(self, client: _Client, report: CompileReport, result: _Result) -> list[Effect]:
        dwo = result.dwo_data
        have_dwo = dwo is not None and client.supports(Feature.COMPILE_RESULT_DWO)
        ok = result.status == 0
        effects: list[Effect] = [
            Send(
                client.conn_id,
                CompileResult(
                    err=report.stderr,
                    out=report.stdout,
                    status=result.status,
                    was_out_of_memory=result.was_out_of_memory,
                    have_dwo=have_dwo and ok,
                ),
            )
        ]
        if ok:
            effects.append(SendFile(client.conn_id, result.object_data))
            if have_dwo and dwo is not None:
                effects.append(SendFile(client.conn_id, dwo))
        return effects

    def _server_job_done(
        self, job: _Job, exit_code: int, report: CompileReport, result: _Result
    ) -> JobDone:
        size = result.size
        return JobDone(
            job_id=job.msg.job_id,
            exitcode=exit_code,
            real_msec=report.real_msec,
            user_msec=report.user_msec,
            sys_msec=report.sys_msec,
            pfaults=report.pfaults,
            in_compressed=job.source.in_compressed,
            in_uncompressed=job.source.in_uncompressed,
            out_compressed=size,
            out_uncompressed=size,
            flags=JobDoneFlag.FROM_SERVER,
            client_count=self.client_count,
        )

    # --- slots -----------------------------------------------------------------------

    def _schedule(self, now: float) -> list[Effect]:
        """Start whatever the free slots allow (reference §5.3)."""
        effects: list[Effect] = []
        for grant in self.slots.schedule(self.load):
            client = self._clients.get(grant.client_id)
            if client is None or client.gone:
                self.slots.release(grant.client_id)
                continue
            effects += self._granted(client, grant.work, now)
        return effects

    def _granted(self, client: _Client, work: Work, now: float) -> list[Effect]:
        if work is Work.USE_CS_SELF and client.use_cs is not None:
            client.state = State.CLIENT_WORK
            return [Send(client.conn_id, client.use_cs), *self._arm(client, now)]
        if work is Work.LINK:
            client.state = State.CLIENT_WORK
            return [
                Send(client.conn_id, JobLocalBegin()),
                *self._to_scheduler(
                    JobLocalBegin(stime=int(now), outfile=client.outfile, id=client.conn_id)
                ),
                *self._arm(client, now),
            ]
        if work is Work.COMPILE:
            return self._start_compile(client, now)
        self.slots.release(client.conn_id)
        return []

    def _on_load(self, event: LoadSampled, now: float) -> list[Effect]:
        self.load = event.load
        return self._schedule(now)  # a lower load may admit waiting compiles

    # --- the end of a client ---------------------------------------------------------

    def _wrong_state(self, client: _Client, msg: Message) -> list[Effect]:
        return self._protocol_error(client, msg, client.last_read)

    def _protocol_error(self, client: _Client, msg: Message, now: float) -> list[Effect]:
        text = f"unexpected {type(msg).__name__} in state {client.state.name}"
        return [
            _log(
                "warning",
                "client_protocol_error",
                client_id=client.conn_id,
                error=text,
                state=client.state.name,
            ),
            *self._finish_client(client, EXIT_PROTOCOL, now),
        ]

    def _error_text(self, client: _Client, text: str) -> list[Effect]:
        """Tell the client why we give up (STATUS_TEXT, protocol >= 23), as 1.4 does."""
        effects: list[Effect] = [
            _log("warning", "client_error_sent", client_id=client.conn_id, text=text)
        ]
        if client.supports(Feature.STATUS_TEXT_FROM_JOB):
            effects.append(Send(client.conn_id, StatusText(text)))
        return effects

    def _finish_client(self, client: _Client, exit_code: int, now: float) -> list[Effect]:
        """End *client* as 1.4's ``handle_end``: report once, free what it held, close."""
        exit_code = client.exit_override or exit_code
        effects: list[Effect] = [Close(client.conn_id)]
        self._flow_dirty = self._flow_dirty or client.job is not None
        job = client.job
        if client.state is State.COMPILING and job is not None:
            # The compile reports its own end; keep the client until CompileFinished.
            code = exit_code if exit_code != EXIT_GOOD_BYE else EXIT_CLIENT_KILLED
            job.abort_code = job.abort_code or code
            client.gone = True
            return [*effects, KillCompile(client.conn_id)]
        if client.state is State.INSTALL_WAIT:
            client.install = ""
            self._install_queue.remove(client.conn_id)
            effects += self._reannounce_only()
        elif client.install:
            client.install = ""
            self.slots.release(client.conn_id)
            effects += [
                AbortUnpack(client.conn_id),
                *self._reannounce_only(),
                *self._next_install(),
            ]
        self.slots.release(client.conn_id)
        # Reported while still counted, as 1.4 does (client_count includes the one ending).
        if client.state is State.TO_COMPILE and job is not None:
            effects += [
                ReleaseEnv(job.msg.target, job.msg.environment),
                *self._to_scheduler(
                    self._server_job_done(job, exit_code, CompileReport(), _Result(exit_code))
                ),
            ]
        else:
            report = end_report(
                client.state,
                exit_code,
                job_id=client.job_id,
                client_id=client.conn_id,
                client_count=self.client_count,
            )
            if report is not None:
                effects += self._to_scheduler(report)
        del self._clients[client.conn_id]
        return effects + self._schedule(now)

    def _reannounce_only(self) -> list[Effect]:
        return [AnnounceLogin(reannounce=True)] if self.scheduler_up else []

    def _on_stop(self, event: Stop, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for client in list(self._clients.values()):
            if client.gone or (client.state is State.COMPILING and not event.compiles_too):
                continue
            effects += self._finish_client(client, event.exit_code, now)
        return effects

    # --- the scheduler link ----------------------------------------------------------

    def _to_scheduler(self, msg: Message) -> list[Effect]:
        return [ToScheduler(msg)] if self.scheduler_up else []

    def _on_scheduler_connecting(self, event: SchedulerConnecting, now: float) -> list[Effect]:
        self._waking = (event.host, event.port)
        self._wake_until = None
        return self._wake_tick(now)

    def _wake_tick(self, now: float) -> list[Effect]:
        """One datagram to the scheduler being connected to, and the next in a second."""
        if self._waking is None:
            return []
        if self._wake_until is not None and now > self._wake_until:
            self._waking = None
            return []
        host, port = self._waking
        return [WakeScheduler(host, port), ArmTimer(WAKE_TIMER, now + _WAKE_INTERVAL)]

    def _on_scheduler_up(self, event: SchedulerUp, now: float) -> list[Effect]:
        if self._waking is not None:
            self._wake_until = now + _WAKE_AFTER_LOGIN
        self.scheduler_up = True
        self.scheduler_iceserv = None  # until its CS_CONF says
        self._slots_queries.clear()
        self.scheduler_protocol = event.protocol
        self.own_ip = event.own_ip
        self.scheduler_sealed = event.sealed
        self.found_addresses = event.addresses
        self.pong = _DEFAULT_PONG
        self._next_forced = now + self.settings.scheduler_idle
        return [AnnounceLogin(reannounce=False), ArmTimer(LINK_TIMER, now + self.pong)]

    def _on_scheduler_down(self, _: SchedulerDown, now: float) -> list[Effect]:
        self._waking = None  # the next connect starts its own
        if not self.scheduler_up:
            return []
        self.scheduler_up = False
        self.scheduler_iceserv = None
        self._slots_queries.clear()
        self.pushes.scheduler_lost()
        self.own_ip = ""
        self.scheduler_sealed = False
        effects: list[Effect] = []
        for client in list(self._clients.values()):
            if client.state is State.WAIT_SLOTS and not client.gone:
                effects += self._local_slots(client, "no scheduler", now)
        # As 1.4: drop every client except running compiles (they finish on their own).
        return effects + self._on_stop(Stop(EXIT_NO_HOSTS), now)

    def _link_tick(self, now: float) -> list[Effect]:
        """Every ``pong`` seconds: STATS if the load changed, and always after a quiet period."""
        if not self.scheduler_up:
            return []
        effects: list[Effect] = []
        force = now >= self._next_forced
        if force:
            self._next_forced = now + self.settings.scheduler_idle
            effects.append(
                _log("debug", "scheduler_stats_forced", period=self.settings.scheduler_idle)
            )
        return [*effects, SendStats(force=force), ArmTimer(LINK_TIMER, now + self.pong)]

    def _on_from_scheduler(self, event: FromScheduler, now: float) -> list[Effect]:
        if not self.scheduler_up:
            return []
        msg = event.message
        if type(msg) not in self._from_scheduler:
            return [DropScheduler(f"unexpected {type(msg).__name__} from the scheduler")]
        return self._from_scheduler(msg, now)

    def _conf_cs(self, msg: ConfCS, _: float, /) -> list[Effect]:
        self.pong = min(max(float(msg.max_scheduler_pong), _MIN_PONG), _MAX_PONG)
        first = self.scheduler_iceserv is None  # CS_CONF also answers every re-LOGIN
        self.scheduler_iceserv = msg.bench_source.startswith(ICESERV_MARK)
        if not self.scheduler_iceserv:
            return []
        told = host_addresses(self.settings, self.found_addresses)
        effects: list[Effect] = [ToScheduler(told)] if first and told.families else []
        return effects + self._push_queries(self.pushes.scheduler_ready())

    # --- job tickets (issue 14; iceserv only) ---------------------------------------

    def _scheduler_ticket(self, msg: JobTicket, _: float, /) -> list[Effect]:
        """Keep the scheduler's ticket for the client waiting for this job's USE_CS."""
        client = self._clients.get(msg.client_id)
        if client is not None and not client.gone and client.state is State.WAIT_FOR_CS:
            client.ticket = msg
        return []

    @property
    def _checks_tickets(self) -> bool:
        return self.settings.auth != "off" and bool(self.settings.keys)

    def _verify_ticket(self, msg: JobTicket, client: _Client, now: float) -> int:
        """Check *msg* for *client* and one of our addresses; return its expiry or raise.

        The scheduler names a dual-stack server by the address of the family
        the submitter reaches (HOST_ADDRESSES), not always the one we logged
        in from: every address we told it counts as ours.
        """
        ring = KeyRing(self.settings.keys)
        peer = ticket_address(_peer_address(client.peer))
        refused: AuthError | None = None
        for own in dict.fromkeys((self.own_ip, *self.found_addresses)):
            try:
                return verify_ticket(
                    ring,
                    msg.ticket,
                    job_id=msg.job_id,
                    client=peer,
                    server=ticket_address(own),
                    now=now,
                )
            except AuthError as exc:
                refused = refused or exc
        assert refused is not None  # noqa: S101 - own_ip is always tried
        raise refused

    def _client_ticket(self, msg: JobTicket, client: _Client, now: float, /) -> list[Effect]:
        """Check and spend a client's JOB_TICKET (its first message after the handshake)."""
        if client.state is not State.NEW or client.ticket_job is not None:
            return self._wrong_state(client, msg)
        if not self._checks_tickets:
            if msg.secret:  # it would seal what follows, and we hold no key to open it
                return self._refuse_job(client, msg.job_id, "cannot encrypt (no key)", now)
            client.ticket_job = msg.job_id  # auth off: 1.4's behaviour, nothing is checked
            return []
        try:
            expires = self._verify_ticket(msg, client, now)
            seal = self._channel_seal(client, msg)
            self.tickets.spend(msg.ticket, expires, now)
        except AuthError as exc:
            return self._refuse_job(client, msg.job_id, exc.reason, now)
        client.ticket_job = msg.job_id
        return [
            _log(
                "debug",
                "job_ticket_accepted",
                client_id=client.conn_id,
                peer=client.peer,
                job_id=msg.job_id,
                encrypted=seal is not None,
            ),
            *([seal] if seal is not None else []),
        ]

    def _channel_seal(self, client: _Client, msg: JobTicket) -> SealChannel | None:
        """Return how a ticketed channel is sealed (issue 14 item 4), or None: it stays clear.

        A client that sends a salt beside its (verified) ticket seals from its
        next message on; we do too.  With ``encrypt = yes`` under ``require`` a
        ticketed job must come sealed.
        """
        if not msg.secret:
            if self.settings.encrypt and self.settings.auth == "require":
                raise AuthError("job not encrypted (encrypt = yes)")  # noqa: EM101
            return None
        try:
            salt = bytes.fromhex(msg.secret)
        except ValueError:
            salt = b""
        if len(salt) != SALT_BYTES:
            raise AuthError("malformed channel salt")  # noqa: EM101
        theirs, ours = channel_keys(job_key(KeyRing(self.settings.keys), msg.ticket), salt)
        return SealChannel(client.conn_id, send=ours, receive=theirs)

    def _ticket_gate(  # noqa: PLR0911 - one answer per case of the table above
        self, client: _Client, msg: Message, now: float
    ) -> tuple[bool, list[Effect]]:
        """Whether a transfer or job may go on (``require`` wants a ticket), and what to log.

        Under ``prefer`` a client without a ticket (icecream 1.4's, or one
        through a 1.4 daemon) is served and counted unauthenticated, once
        per connection.  A ticket allows one COMPILE_FILE, for its own job;
        a push ticket (job 0) only environment transfers.
        """
        if not self._checks_tickets:
            return True, []
        job_id = msg.job_id if isinstance(msg, CompileFile) else None
        if client.ticket_job is None:
            if self.settings.auth == "require":
                return False, self._refuse_job(client, job_id or 0, "no job ticket", now)
            if client.unauthenticated:
                return True, []
            client.unauthenticated = True
            self.unticketed += 1
            note = _log(
                "info",
                "job_unauthenticated",
                client_id=client.conn_id,
                peer=client.peer,
                request=type(msg).__name__,
                job_id=job_id or 0,
            )
            return True, [note]
        if job_id is None:
            return True, []
        if job_id != client.ticket_job or job_id == PUSH_TICKET_JOB:
            return False, self._refuse_job(client, job_id, "ticket for another job", now)
        client.ticket_job = -1  # spent: a second COMPILE_FILE needs a new connection
        self.ticketed += 1
        return True, []

    def _refuse_job(self, client: _Client, job_id: int, reason: str, now: float) -> list[Effect]:
        """One clear line, the reason to the client (STATUS_TEXT), and the end of it."""
        return [
            _log(
                "warning",
                "job_refused",
                client_id=client.conn_id,
                peer=client.peer,
                job_id=job_id,
                reason=reason,
            ),
            *(
                [Send(client.conn_id, StatusText(f"job refused: {reason}"))]
                if client.supports(Feature.STATUS_TEXT_FROM_JOB)
                else []
            ),
            *self._finish_client(client, EXIT_GOOD_BYE, now),
        ]

    # --- push-ahead (iceserv only) ---------------------------------------------------

    def _offer_push(self, path: str) -> list[Effect]:
        """Ask an iceserv scheduler where to push the native environment at *path*, now ready."""
        ask_now = self.scheduler_up and bool(self.scheduler_iceserv)
        return self._push_queries(self.pushes.offer(path, self.settings.platform, ask_now=ask_now))

    def _push_queries(self, names: Sequence[str]) -> list[Effect]:
        return [
            ToScheduler(
                PushQuery(
                    platform=self.pushes.target_of(name),
                    environment=name,
                    required_features=self.pushes.features_of(name),
                )
            )
            for name in names
        ]

    def _push_targets(self, msg: PushTargets, now: float, /) -> list[Effect]:
        queued = self.pushes.targets(msg)
        if not self.pushes.enabled:
            return []
        return [
            _log(
                "debug",
                "native_env_push_queued",
                env=msg.environment,
                named=list(msg.hosts),
                queued=[f"{p.host}:{p.port}" for p in queued],
            ),
            *self._next_push(now),
        ]

    def _busy_for_push(self) -> bool:
        """Return whether a local client waits for or talks to a compile server (it goes first)."""
        return any(
            c.state in (State.WAIT_FOR_CS, State.WAIT_COMPILE) and not c.gone
            for c in self._clients.values()
        )

    def _own_address_for(self, host: str) -> str:
        """Our address of *host*'s family (the one we connect to it from), else ``own_ip``."""
        six = ":" in host
        own = (self.own_ip, *self.found_addresses)
        return next((a for a in own if (":" in a) == six), self.own_ip)

    def _next_push(self, now: float) -> list[Effect]:
        push: PushEnv | None = self.pushes.next(idle=not self._busy_for_push())
        if push is None:
            return []
        if self._checks_tickets and self.own_ip:
            # We hold the key: our push carries a ticket of our own, for environments only.
            ticket = issue_ticket(
                KeyRing(self.settings.keys),
                job_id=PUSH_TICKET_JOB,
                client=ticket_address(self._own_address_for(push.host)),
                server=ticket_address(push.host),
                expires=int(now) + _PUSH_TICKET_LIFETIME,
            )
            secret = ""
            if self.settings.encrypt or self.scheduler_sealed:
                secret = job_key(KeyRing(self.settings.keys), ticket).hex()  # item 4
            push = dataclass_replace(push, ticket=ticket, secret=secret)
        return [push]

    def _on_pushed(self, event: EnvPushed, now: float) -> list[Effect]:
        if self.pushes.finished(ok=not event.error, now=now) is None:
            return []
        released: list[Effect] = []
        for client in self._clients.values():
            held = client.held_use_cs
            if held is None or not _same_server(event.host, event.port, held):
                continue
            client.held_use_cs = None
            if client.gone or client.state is not State.WAIT_COMPILE:
                continue
            got_env = not event.error  # else the client sends it itself, as assigned
            released += self._forward_use_cs(
                client, replace(held, got_env=got_env), now, env_from="push"
            )
        address = f"{event.host}:{event.port}"
        if event.error:
            effect = _log(
                "warning",
                "native_env_push_failed",
                host=address,
                env=event.name,
                reason=event.error,
                seconds=round(event.seconds, 3),
            )
        else:
            effect = _log(
                "info",
                "native_env_pushed",
                host=address,
                env=event.name,
                bytes=event.size,
                seconds=round(event.seconds, 3),
            )
        return [effect, *released, *self._next_push(now)]

    # --- the slot count (iceserv only) -----------------------------------------------

    def _slots_query(self, msg: SlotsQuery, client: _Client, now: float, /) -> list[Effect]:
        if client.state is not State.NEW:
            return self._wrong_state(client, msg)
        if not self.scheduler_up:
            return self._local_slots(client, "no scheduler", now)
        if self.scheduler_iceserv is None:
            return self._local_slots(client, "the scheduler has not confirmed our login yet", now)
        if not self.scheduler_iceserv:
            return self._local_slots(client, "the scheduler is icecream 1.4", now)
        if len(self._slots_queries) >= _MAX_SLOTS_QUERIES:
            # Unanswered queries (the scheduler is slow) are remembered, but not without end.
            return self._local_slots(client, "the scheduler did not answer in time", now)
        client.state = State.WAIT_SLOTS
        self._slots_queries.append(client.conn_id)
        return [ToScheduler(SlotsQuery(platform=self.settings.platform))]

    def _local_slots(self, client: _Client, reason: str, now: float) -> list[Effect]:
        """Answer *client* with this host's own slots, saying why the cluster was not asked."""
        client.state = State.NEW
        capacity = self.slots.capacity
        answer = SlotsAnswer(
            total=capacity, free=max(0, capacity - self.slots.used), hosts=1, source=reason
        )
        return [Send(client.conn_id, answer), *self._arm(client, now)]

    def _slots_answer(self, msg: SlotsAnswer, now: float, /) -> list[Effect]:
        if not self._slots_queries:
            return [DropScheduler("SLOTS_ANSWER without a SLOTS_QUERY")]
        client = self._clients.get(self._slots_queries.popleft())
        if client is None or client.gone or client.state is not State.WAIT_SLOTS:
            return []  # it left, or was answered alone after SLOTS_WAIT
        client.state = State.NEW
        return [Send(client.conn_id, msg), *self._arm(client, now)]

    def _internals(self, _: GetInternalStatus, __: float, /) -> list[Effect]:
        return [AnswerInternals(self.describe())]

    def _ping(self, _: Ping, __: float, /) -> list[Effect]:
        if supports(self.scheduler_protocol, Feature.NO_PINGS):
            return []
        return [ToScheduler(Ping())]
