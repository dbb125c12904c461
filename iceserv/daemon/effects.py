"""What the daemon core hears (events) and what it asks its asyncio shell to do (effects).

This module owns the plain records exchanged between
:class:`iceserv.daemon.core.DaemonCore` and the shell
(:mod:`iceserv.daemon.server`).  Events are decoded messages tagged with
their connection, connection changes, the results of work the shell carried
out (compiles, unpacks, verifications, native environments) and timer
expiries; effects are sends, closes and the work to start.  Both are frozen
data without behaviour; this module does no I/O and does not log.

The shell carries effects out in order.  An effect for a connection that is
already closed is dropped (a compile's answer to a client that left); an
effect whose work produces a result is answered with exactly one event
(``StartCompile`` with ``CompileFinished``, ``StartUnpack``/``FeedUnpack``/
``FinishUnpack`` with ``UnpackFailed`` or, after ``FinishUnpack``,
``Unpacked``, ``VerifyEnvironment`` with ``EnvVerified``, ``ResolveNative``
with ``NativeResolved``, ``BuildNative`` with ``NativeEnvBuilt``,
``PushEnv`` with ``EnvPushed``).  The shell
feeds ``NativesFound`` once, right after start: the compilers it found and
the native environments it kept from the last run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from iceserv.protocol import CompileFile, Message  # noqa: TC001 - dataclass fields are resolved at runtime

__all__ = [
    "LINK_TIMER",
    "WAKE_TIMER",
    "AbortUnpack",
    "AnnounceLogin",
    "AnswerInternals",
    "ArmTimer",
    "BuildNative",
    "ClientConnected",
    "ClientGone",
    "Close",
    "CompileFinished",
    "CompileReport",
    "ConnKind",
    "CountJobCpu",
    "DropScheduler",
    "Effect",
    "EnvPushed",
    "EnvVerified",
    "Event",
    "FeedCompile",
    "FeedUnpack",
    "FinishUnpack",
    "FromScheduler",
    "GoneReason",
    "HoldEnv",
    "KillCompile",
    "LoadSampled",
    "Log",
    "NativeEnvBuilt",
    "NativeFound",
    "NativeKey",
    "NativeResolved",
    "NativesFound",
    "PauseReading",
    "PushEnv",
    "Received",
    "ReleaseEnv",
    "ResolveNative",
    "ResumeReading",
    "SchedulerConnecting",
    "SchedulerDown",
    "SchedulerUp",
    "SealChannel",
    "Send",
    "SendFile",
    "SendStats",
    "StartCompile",
    "StartUnpack",
    "Stop",
    "TimerExpired",
    "ToScheduler",
    "UnpackFailed",
    "Unpacked",
    "VerifyEnvironment",
    "WakeScheduler",
]

#: The timer key of the scheduler link (client timers use their connection id, >= 1).
LINK_TIMER = 0
#: The timer key of the wake datagrams to the scheduler being connected to.
WAKE_TIMER = -1


# --- connections -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnKind:
    """How a client reached us: the Unix socket or TCP, from this host or not.

    GET_NATIVE_ENV, JOB_LOCAL_BEGIN and GET_CS are served only to local
    clients (:attr:`local`).  ``iceserv``: it came through the iceserv-only
    endpoint (:mod:`iceserv.protocol.endpoint`), so it is our client, which
    parses an IPv6 address in USE_CS; icecream 1.4's does not.
    """

    unix: bool
    loopback: bool
    #: It came in on the iceserv-only endpoint (:mod:`iceserv.protocol.endpoint`): it is our
    #: own client, so iceserv-only messages (JOB_TICKET) may be sent to it.
    iceserv: bool = False

    @property
    def local(self) -> bool:
        """Whether the peer runs on this host (Unix socket or loopback TCP)."""
        return self.unix or self.loopback


class GoneReason(enum.Enum):
    """Why the shell stopped reading a client."""

    EOF = "connection closed by the client"
    IO_ERROR = "connection failed"
    PROTOCOL_ERROR = "undecodable data"


# --- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientConnected:
    """A client completed the version handshake on connection *conn_id* (ids start at 1)."""

    conn_id: int
    peer: str
    kind: ConnKind
    protocol: int


@dataclass(frozen=True, slots=True)
class Received:
    """Client *conn_id* sent *message*."""

    conn_id: int
    message: Message


@dataclass(frozen=True, slots=True)
class ClientGone:
    """The shell stopped reading client *conn_id* (EOF, a failed socket, bad framing)."""

    conn_id: int
    reason: GoneReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TimerExpired:
    """The timer armed with key *key* (a connection id, or :data:`LINK_TIMER`) fired."""

    key: int


@dataclass(frozen=True, slots=True)
class NativeKey:
    """What a native environment is built from; a changed compiler is a new key.

    *compiler* is the C compiler (its C++ counterpart goes in too),
    *compression* is never "" (the shell fills in its default), *mtimes*
    holds the modification time of every file that went in.
    """

    compression: str
    compiler: str
    extrafiles: tuple[str, ...] = ()
    mtimes: tuple[tuple[str, float], ...] = ()

    @property
    def name(self) -> str:
        """The cache's name for it (1.4's ``compression:compiler[:extrafile]...``)."""
        return ":".join((self.compression, self.compiler, *self.extrafiles))


@dataclass(frozen=True, slots=True)
class NativeFound:
    """A native environment to have ready: *path* is its tarball kept from before ("": build)."""

    key: NativeKey
    path: str = ""


@dataclass(frozen=True, slots=True)
class NativesFound:
    """At start: the compilers found on this host, to prebuild (or kept from the last run)."""

    found: tuple[NativeFound, ...]


@dataclass(frozen=True, slots=True)
class NativeResolved:
    """Client *conn_id*'s GET_NATIVE_ENV, checked: its *key*, and the tarball on disk if any.

    *key* None with *error*: the request was refused (a path check failed).
    """

    conn_id: int
    key: NativeKey | None
    path: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class NativeEnvBuilt:
    """The native environment *key* was built at *path* ("" with *error*: failed)."""

    key: NativeKey
    path: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class UnpackFailed:
    """The environment install of client *conn_id* failed (already cleaned up)."""

    conn_id: int
    error: str


@dataclass(frozen=True, slots=True)
class Unpacked:
    """The environment install of client *conn_id* is in the cache."""

    conn_id: int
    size: int
    cache_size: int
    evicted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EnvVerified:
    """VERIFY_ENV of client *conn_id*: ``/bin/true`` ran (or not) in the environment."""

    conn_id: int
    ok: bool


@dataclass(frozen=True, slots=True)
class EnvPushed:
    """The push of environment *name* to *host*:*port* ended: *error* "" = installed there.

    *size* bytes of tarball were sent in *seconds* (connect to verified).
    """

    host: str
    port: int
    name: str
    size: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass(frozen=True, slots=True)
class CompileReport:
    """What a compile produced (the shell's ``JobOutcome``, frozen).

    ``give_up`` is set when the job could not run (environment gone,
    compiler did not start): the client is told that text and dropped, and
    ``give_up_code`` is the exit code reported.  ``env_removed`` says the
    shell removed a broken environment (LOGIN must be re-sent).
    """

    status: int = 0
    was_out_of_memory: bool = False
    stdout: str = ""
    stderr: str = ""
    real_msec: int = 0
    user_msec: int = 0
    sys_msec: int = 0
    pfaults: int = 0
    object_data: bytes = b""
    dwo_data: bytes | None = None
    give_up: str = ""
    give_up_code: int = 0
    env_removed: bool = False


@dataclass(frozen=True, slots=True)
class CompileFinished:
    """The compile of client *conn_id* ended (normally, killed, or never started)."""

    conn_id: int
    report: CompileReport


@dataclass(frozen=True, slots=True)
class SchedulerConnecting:
    """The link is about to connect to the scheduler at *host*:*port* (numeric address).

    Whether it was named (``-s``) or discovered; the core answers with
    ``WakeScheduler`` datagrams to it (1.4's scheduler accepts late without them).
    """

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class SchedulerUp:
    """The scheduler handshake completed; *own_ip* is our address on that connection.

    *addresses* are this host's routable addresses of both families when the
    connection was made (for HOST_ADDRESSES, told an iceserv scheduler only).
    """

    own_ip: str
    protocol: int
    addresses: tuple[str, ...] = ()
    #: The link is sealed (issue 14 item 4).
    sealed: bool = False


@dataclass(frozen=True, slots=True)
class SchedulerDown:
    """The scheduler connection is gone (or was given up to log in again)."""


@dataclass(frozen=True, slots=True)
class FromScheduler:
    """The scheduler sent *message*."""

    message: Message


@dataclass(frozen=True, slots=True)
class LoadSampled:
    """The shell evaluated ``/proc``: *load* (0..1000) gates remote compiles."""

    load: int


@dataclass(frozen=True, slots=True)
class Stop:
    """End clients with *exit_code*: all but running compiles, or all (*compiles_too*)."""

    exit_code: int
    compiles_too: bool = False


Event = (
    ClientConnected
    | Received
    | ClientGone
    | TimerExpired
    | NativeEnvBuilt
    | NativesFound
    | NativeResolved
    | EnvPushed
    | UnpackFailed
    | Unpacked
    | EnvVerified
    | CompileFinished
    | SchedulerConnecting
    | SchedulerUp
    | SchedulerDown
    | FromScheduler
    | LoadSampled
    | Stop
)


# --- effects ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send *message* to client *conn_id*."""

    conn_id: int
    message: Message


@dataclass(frozen=True, slots=True)
class SendFile:
    """Send *data* to client *conn_id* as FILE_CHUNKs and END."""

    conn_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Flush what is queued for client *conn_id* (bounded), then close it."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class PauseReading:
    """Stop decoding client *conn_id*'s input: what it sends stays in the kernel (back-pressure)."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class ResumeReading:
    """Decode client *conn_id*'s input again after :class:`PauseReading`."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class ToScheduler:
    """Send *message* to the scheduler (only emitted while logged in)."""

    message: Message


@dataclass(frozen=True, slots=True)
class AnnounceLogin:
    """Send LOGIN (the re-announcement if *reannounce*) with the cached environments, then STATS."""

    reannounce: bool


@dataclass(frozen=True, slots=True)
class DropScheduler:
    """The scheduler broke the protocol: close the link (``SchedulerDown`` follows)."""

    reason: str


@dataclass(frozen=True, slots=True)
class SendStats:
    """Sample ``/proc`` and send STATS if the load changed enough, or always if *force*."""

    force: bool = False


@dataclass(frozen=True, slots=True)
class WakeScheduler:
    """Send one discovery datagram to the scheduler at *host*:*port* (its answer is ignored)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class AnswerInternals:
    """Answer GET_INTERNALS with the daemon's description (clients listed by the core)."""

    clients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Fire ``TimerExpired(key)`` at *deadline* (replacing the timer of that key)."""

    key: int
    deadline: float


@dataclass(frozen=True, slots=True)
class StartCompile:
    """Run client *conn_id*'s compile; *pieces* is the source received so far.

    *protocol* is the client's (it decides the compiler flags and the answer
    layout); *ended* says the source is complete.
    """

    conn_id: int
    job: CompileFile
    protocol: int
    pieces: tuple[bytes, ...] = ()
    ended: bool = False


@dataclass(frozen=True, slots=True)
class FeedCompile:
    """More source for client *conn_id*'s running compile (and/or its end)."""

    conn_id: int
    pieces: tuple[bytes, ...] = ()
    ended: bool = False


@dataclass(frozen=True, slots=True)
class KillCompile:
    """Kill client *conn_id*'s compiler; ``CompileFinished`` follows."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class HoldEnv:
    """Keep environment *target*/*name* from eviction (a job needs it)."""

    target: str
    name: str


@dataclass(frozen=True, slots=True)
class ReleaseEnv:
    """The job that held environment *target*/*name* is over."""

    target: str
    name: str


@dataclass(frozen=True, slots=True)
class StartUnpack:
    """Start an unpacker for client *conn_id*'s environment *target*/*name*."""

    conn_id: int
    target: str
    name: str


@dataclass(frozen=True, slots=True)
class FeedUnpack:
    """Pass one chunk of client *conn_id*'s tarball to its unpacker."""

    conn_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class FinishUnpack:
    """The tarball is complete: install it, evict to the limit; ``Unpacked`` or ``UnpackFailed``."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class AbortUnpack:
    """Kill client *conn_id*'s unpacker and remove what it wrote (no event follows)."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class VerifyEnvironment:
    """Run ``/bin/true`` in environment *target*/*name* for client *conn_id*."""

    conn_id: int
    target: str
    name: str


@dataclass(frozen=True, slots=True)
class ResolveNative:
    """Check the paths of client *conn_id*'s GET_NATIVE_ENV; answer ``NativeResolved``."""

    conn_id: int
    compiler: str
    extrafiles: tuple[str, ...]
    compression: str


@dataclass(frozen=True, slots=True)
class BuildNative:
    """Build the native environment *key*; answer ``NativeEnvBuilt``.

    *reason* is "prebuild" (found at start) or "request" (a client asked).
    """

    key: NativeKey
    reason: str = "request"


@dataclass(frozen=True, slots=True)
class PushEnv:
    """Send native environment tarball *path* to the daemon at *host*:*port* as a client would.

    TRANFER_ENV(*name*, *target*), the tarball, then VERIFY_ENV; answer ``EnvPushed``.
    With ``auth`` prefer/require, *ticket* (our own, for job 0: environments
    only) goes first as JOB_TICKET: the target is then an authenticated
    iceserv daemon, the only kind a keyed scheduler names.
    """

    host: str
    port: int
    name: str
    target: str
    path: str
    ticket: str = ""
    #: Issue 14 item 4: the job key of *ticket* (hex); the pusher then seals the channel.
    secret: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class SealChannel:
    """Seal client *conn_id*'s channel both ways from now on (issue 14 item 4).

    *send* seals what we send, *receive* opens what it sends (bytes already
    received included): its JOB_TICKET was the last clear message.
    """

    conn_id: int
    send: bytes = field(repr=False)
    receive: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CountJobCpu:
    """Count *msec* of CPU a client used under our slot as idle time in the load."""

    msec: int


@dataclass(frozen=True, slots=True)
class Log:
    """Write one log record: *event* (noun_verb) at *level* with *fields*."""

    level: str
    event: str
    fields: dict[str, object] = field(default_factory=dict)


Effect = (
    Send
    | SendFile
    | Close
    | PauseReading
    | ResumeReading
    | ToScheduler
    | AnnounceLogin
    | DropScheduler
    | SendStats
    | WakeScheduler
    | AnswerInternals
    | ArmTimer
    | StartCompile
    | FeedCompile
    | KillCompile
    | HoldEnv
    | ReleaseEnv
    | StartUnpack
    | FeedUnpack
    | FinishUnpack
    | AbortUnpack
    | VerifyEnvironment
    | ResolveNative
    | BuildNative
    | PushEnv
    | SealChannel
    | CountJobCpu
    | Log
)
