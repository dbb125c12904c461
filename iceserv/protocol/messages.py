"""The 32 icecream message types (and iceserv's own) as typed, immutable objects, and their codec.

Each message is a frozen, slotted record (:func:`~iceserv.protocol.records.record`,
which builds what ``@dataclass(frozen=True, slots=True)`` would, without
importing :mod:`dataclasses`) named after upstream's class
(``GetCS`` for ``GetCSMsg``; ``UseNativeEnv``, ``EnvTransfer``, ``ConfCS`` and
``GetInternalStatus`` keep upstream's names while :class:`MsgType` keeps the
enum spelling).  A table lists each message's fields in wire order with the
:class:`Feature` that must be negotiated for the field to be present
(reference §2.2, §2.3); :func:`encode` and :func:`decode` walk that table, so
a layout is written down once.  The few layouts that are not "append a field
at version N" (COMPILE_FILE below 41, MON_GET_CS below 29, JOB_DONE's exit
code 200 below 39, FILE_CHUNK's blob) are handled explicitly below.

Fields that a negotiated version does not carry keep their defaults when
decoded and are silently not sent when encoded, as 1.4 does.

Hot layouts: once one message type at one protocol version has been decoded
(or encoded) :data:`HOT_CODEC` times, it gets a codec generated from its
layout, with one precompiled :class:`struct.Struct` per run of integer
fields (a scheduler decodes GET_CS, JOB_BEGIN and JOB_DONE thousands of
times a second; ``icecc``, which handles a few messages per run, never pays
for the generation).  The generated codec only takes well-formed input: at
anything it does not expect (a short or long frame, a count that cannot fit,
a value out of range, a NUL in a string) it gives up and the table walk runs
instead, so the bytes and the errors are those of the table walk.
"""

from __future__ import annotations

import enum
import functools
import struct
from typing import TYPE_CHECKING, Any, ClassVar, Final

from iceserv.errors import IceservError, LocalProtocolError, RemoteProtocolError
from iceserv.protocol.compression import DEFAULT_LEVEL, read_blob, write_blob
from iceserv.protocol.constants import (
    LEGACY_UNKNOWN_JOB_ID_EXITCODE,
    MAX_MESSAGE_SIZE,
    IceservMsgType,
    JobDoneFlag,
    MsgType,
)
from iceserv.protocol.features import Feature, supports
from iceserv.protocol.records import field, record, replace
from iceserv.protocol.wire import EnvEntry, Reader, Writer

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "AuthChallenge",
    "AuthHello",
    "AuthProof",
    "BlacklistHostEnv",
    "CompileFile",
    "CompileResult",
    "ConfCS",
    "End",
    "EnvTransfer",
    "FileChunk",
    "GetCS",
    "GetInternalStatus",
    "GetNativeEnv",
    "HostAddresses",
    "JobBegin",
    "JobDone",
    "JobLocalBegin",
    "JobLocalDone",
    "JobTicket",
    "Login",
    "Message",
    "MonGetCS",
    "MonJobBegin",
    "MonJobDone",
    "MonLocalJobBegin",
    "MonLogin",
    "MonStats",
    "NoCS",
    "Ping",
    "PushQuery",
    "PushTargets",
    "SlotsAnswer",
    "SlotsQuery",
    "Stats",
    "StatusText",
    "Text",
    "Timeout",
    "Unknown",
    "UseCS",
    "UseNativeEnv",
    "VerifyEnv",
    "VerifyEnvResult",
    "decode",
    "encode",
    "layout",
]

_HEADER: Final = struct.Struct(">II")

# --- messages without payload -------------------------------------------------------


@record
class Unknown:
    """Type ``'A'``: never valid; a connection refuses to send or accept it."""

    TYPE: ClassVar = MsgType.UNKNOWN


@record
class Ping:
    """scheduler → daemon (only protocol < 27), and the daemon's reply."""

    TYPE: ClassVar = MsgType.PING


@record
class End:
    """End of a FILE_CHUNK stream; client → local daemon "all fine"; a polite close."""

    TYPE: ClassVar = MsgType.END


@record
class Timeout:
    """Type ``'D'``: unused by 1.4; a connection refuses to send or accept it."""

    TYPE: ClassVar = MsgType.TIMEOUT


@record
class MonLogin:
    """monitor → scheduler: the monitor's first and only message."""

    TYPE: ClassVar = MsgType.MON_LOGIN


@record
class GetInternalStatus:
    """scheduler → daemon: ask for the ``internals`` text (answered by STATUS_TEXT)."""

    TYPE: ClassVar = MsgType.GET_INTERNALS


# --- client <-> local daemon ----------------------------------------------------------


@record
class GetNativeEnv:
    """client → local daemon: build (or find) the native environment for this compiler."""

    TYPE: ClassVar = MsgType.GET_NATIVE_ENV
    compiler: str = ""
    extrafiles: tuple[str, ...] = ()
    compression: str = ""


@record
class UseNativeEnv:
    """local daemon → client: absolute path of the native environment tarball."""

    TYPE: ClassVar = MsgType.NATIVE_ENV
    native_version: str = ""


@record
class GetCS:
    """client → local daemon, local daemon → scheduler: ask for a compile server."""

    TYPE: ClassVar = MsgType.GET_CS
    versions: tuple[EnvEntry, ...] = ()
    filename: str = ""
    lang: int = 0
    count: int = 1
    target: str = ""
    arg_flags: int = 0
    client_id: int = 0
    preferred_host: str = ""
    ignore_unverified: int = 0
    minimal_host_version: int = 0
    client_count: int = 0
    required_features: int = 0
    niceness: int = 0


@record
class UseCS:
    """scheduler → local daemon, local daemon → client: compile job ``job_id`` there."""

    TYPE: ClassVar = MsgType.USE_CS
    job_id: int = 0
    port: int = 0
    hostname: str = ""
    host_platform: str = ""
    got_env: bool = False
    client_id: int = 0
    matched_job_id: int = 0


@record
class NoCS:
    """scheduler → local daemon: compile job ``job_id`` yourself."""

    TYPE: ClassVar = MsgType.NO_CS
    job_id: int = 0
    client_id: int = 0


@record
class CompileFile:
    """client → remote daemon (or local daemon with environment ``__client``): the job.

    ``args`` is the one list of protocol >= 41; below 41 it is sent as the
    remote list with an empty rest list, and a received pair is joined (remote
    then rest), which is what a 1.4 receiver does with them.
    """

    TYPE: ClassVar = MsgType.COMPILE_FILE
    lang: int = 0
    job_id: int = 0
    args: tuple[str, ...] = ()
    environment: str = ""
    target: str = ""
    compiler_name: str = ""
    input_file: str = ""
    working_dir: str = ""
    output_file: str = ""
    dwarf_fission: bool = False


@record
class FileChunk:
    """One piece (<= 1 MiB, 1.4 sends <= 100 000 bytes) of a file stream, uncompressed.

    ``compressed_size`` is filled in by :func:`decode` (the job statistics need it)
    and ignored when comparing or encoding.
    """

    TYPE: ClassVar = MsgType.FILE_CHUNK
    data: bytes = b""
    compressed_size: int = field(default=0, compare=False)


@record
class CompileResult:
    """remote daemon → client: the compiler's output and status (files follow on success)."""

    TYPE: ClassVar = MsgType.COMPILE_RESULT
    err: str = ""
    out: str = ""
    status: int = 0
    was_out_of_memory: bool = False
    have_dwo: bool = False


@record
class JobBegin:
    """daemon → scheduler: job ``job_id`` started compiling at ``stime``."""

    TYPE: ClassVar = MsgType.JOB_BEGIN
    job_id: int = 0
    stime: int = 0
    client_count: int = 0


@record
class JobDone:
    """daemon → scheduler, client → local daemon: a job finished, with its statistics."""

    TYPE: ClassVar = MsgType.JOB_DONE
    job_id: int = 0
    exitcode: int = 0
    real_msec: int = 0
    user_msec: int = 0
    sys_msec: int = 0
    pfaults: int = 0
    in_compressed: int = 0
    in_uncompressed: int = 0
    out_compressed: int = 0
    out_uncompressed: int = 0
    flags: int = 0
    client_count: int = 0


@record
class JobLocalBegin:
    """client ↔ local daemon, local daemon → scheduler: a local job (link, -E, ...) starts."""

    TYPE: ClassVar = MsgType.JOB_LOCAL_BEGIN
    stime: int = 0
    outfile: str = ""
    id: int = 0


@record
class JobLocalDone:
    """local daemon → scheduler, scheduler → monitor: a local job finished."""

    TYPE: ClassVar = MsgType.JOB_LOCAL_DONE
    job_id: int = 0


# --- daemon <-> scheduler -------------------------------------------------------------


@record
class Login:
    """daemon → scheduler: first message, and the re-announcement after an install."""

    TYPE: ClassVar = MsgType.LOGIN
    port: int = 0
    max_kids: int = 0
    envs: tuple[EnvEntry, ...] = ()
    nodename: str = ""
    host_platform: str = ""
    chroot_possible: bool = False
    noremote: bool = False
    supported_features: int = 0


@record
class Stats:
    """daemon → scheduler: load (0..1000), load averages times 1000, free memory in MiB."""

    TYPE: ClassVar = MsgType.STATS
    load: int = 0
    load_avg1: int = 0
    load_avg5: int = 0
    load_avg10: int = 0
    free_mem: int = 0


@record
class ConfCS:
    """scheduler → daemon: configuration, sent after every LOGIN (protocol >= 24)."""

    TYPE: ClassVar = MsgType.CS_CONF
    max_scheduler_pong: int = 3
    max_scheduler_ping: int = 36
    bench_source: str = ""


@record
class StatusText:
    """remote daemon → client (error text); daemon → scheduler (internals dump)."""

    TYPE: ClassVar = MsgType.STATUS_TEXT
    text: str = ""


@record
class Text:
    """A line of the telnet text channel; framed only for completeness (never sent framed)."""

    TYPE: ClassVar = MsgType.TEXT
    text: str = ""


# --- scheduler -> monitor -------------------------------------------------------------


@record
class MonGetCS:
    """scheduler → monitor: a job request was queued."""

    TYPE: ClassVar = MsgType.MON_GET_CS
    filename: str = ""
    lang: int = 0
    job_id: int = 0
    client_id: int = 0


@record
class MonJobBegin:
    """scheduler → monitor: job ``job_id`` started on host ``host_id``."""

    TYPE: ClassVar = MsgType.MON_JOB_BEGIN
    job_id: int = 0
    stime: int = 0
    host_id: int = 0


@record
class MonJobDone:
    """scheduler → monitor: a job finished or was aborted (JOB_DONE's layout)."""

    TYPE: ClassVar = MsgType.MON_JOB_DONE
    job_id: int = 0
    exitcode: int = 0
    real_msec: int = 0
    user_msec: int = 0
    sys_msec: int = 0
    pfaults: int = 0
    in_compressed: int = 0
    in_uncompressed: int = 0
    out_compressed: int = 0
    out_uncompressed: int = 0
    flags: int = 0
    client_count: int = 0


@record
class MonLocalJobBegin:
    """scheduler → monitor: a local job started (note: host id first)."""

    TYPE: ClassVar = MsgType.MON_LOCAL_JOB_BEGIN
    host_id: int = 0
    job_id: int = 0
    stime: int = 0
    file: str = ""


@record
class MonStats:
    """scheduler → monitor: ``Key:Value`` lines describing host ``host_id``."""

    TYPE: ClassVar = MsgType.MON_STATS
    host_id: int = 0
    statmsg: str = ""


# --- client <-> remote daemon ---------------------------------------------------------


@record
class EnvTransfer:
    """client → remote daemon: an environment tarball follows as FILE_CHUNKs + END."""

    TYPE: ClassVar = MsgType.TRANFER_ENV
    name: str = ""
    target: str = ""


@record
class VerifyEnv:
    """client → remote daemon: check that the environment just sent works."""

    TYPE: ClassVar = MsgType.VERIFY_ENV
    environment: str = ""
    target: str = ""


@record
class VerifyEnvResult:
    """remote daemon → client: the answer to VERIFY_ENV."""

    TYPE: ClassVar = MsgType.VERIFY_ENV_RESULT
    ok: bool = False


@record
class BlacklistHostEnv:
    """client → local daemon → scheduler: never use this environment on that host."""

    TYPE: ClassVar = MsgType.BLACKLIST_HOST_ENV
    environment: str = ""
    target: str = ""
    hostname: str = ""


# --- iceserv only (never sent to a 1.4 peer) -----------------------------------------


@record
class SlotsQuery:
    """client → local daemon → scheduler: count the slots that can run our native environment.

    ``platform`` is the platform the native environment runs on; the client
    sends ``""`` and the daemon fills in its own.  iceserv only: see
    :class:`~iceserv.protocol.constants.IceservMsgType`.
    """

    TYPE: ClassVar = IceservMsgType.SLOTS_QUERY
    platform: str = ""


@record
class SlotsAnswer:
    """scheduler → daemon → client: the answer to SLOTS_QUERY.

    ``total`` slots on ``hosts`` hosts, ``free`` of them free now.  ``source``
    is ``"cluster"`` when the scheduler counted them; otherwise the daemon
    counted only its own slots and ``source`` says why ("no scheduler", ...).
    """

    TYPE: ClassVar = IceservMsgType.SLOTS_ANSWER
    total: int = 0
    free: int = 0
    hosts: int = 0
    source: str = ""


@record
class PushQuery:
    """daemon → scheduler: ask which hosts should get our native environment ahead of jobs.

    Sent after the daemon built (or kept) a native environment: ``environment``
    is its name (the tarball's base name, as clients name it in GET_CS and
    TRANFER_ENV), ``platform`` the platform it runs on and ``required_features``
    the :class:`~iceserv.protocol.constants.EnvFeature` bits a host needs to
    unpack it (its compression).  iceserv only.
    """

    TYPE: ClassVar = IceservMsgType.PUSH_QUERY
    platform: str = ""
    environment: str = ""
    required_features: int = 0


@record
class PushTargets:
    """scheduler → daemon: the answer to PUSH_QUERY.

    ``hosts`` are ``"address:port"`` of compile servers that may run jobs of
    that ``target``/``environment`` and, as far as the scheduler knows, lack
    it; idle and fast ones first, a bounded number.  iceserv only.
    """

    TYPE: ClassVar = IceservMsgType.PUSH_TARGETS
    environment: str = ""
    target: str = ""
    hosts: tuple[str, ...] = ()


@record
class AuthHello:
    """daemon → scheduler: start the mutual authentication with the network key (issue 14).

    ``nonce`` is the daemon's fresh random nonce (hex); ``key_ids`` name the
    keys it holds, current first (:func:`~iceserv.protocol.auth.key_id`).  Sent
    right after the version handshake, before LOGIN, and only to a scheduler
    whose discovery answer proved the key (:mod:`iceserv.protocol.auth`).
    """

    TYPE: ClassVar = IceservMsgType.AUTH_HELLO
    nonce: str = ""
    key_ids: tuple[str, ...] = ()
    #: Options the daemon can use; ``seal-aesgcm-v1`` (item 4) means it can seal the link.
    options: tuple[str, ...] = ()


@record
class AuthChallenge:
    """scheduler → daemon: the scheduler's nonce and its proof of the key named by ``key_id``."""

    TYPE: ClassVar = IceservMsgType.AUTH_CHALLENGE
    key_id: str = ""
    nonce: str = ""
    proof: str = ""
    #: The options in force: ``seal-aesgcm-v1`` means both directions are sealed from the
    #: next message on (this challenge and the daemon's AUTH_PROOF are the last in clear).
    options: tuple[str, ...] = ()


@record
class AuthProof:
    """daemon → scheduler: the daemon's proof of the key; LOGIN follows."""

    TYPE: ClassVar = IceservMsgType.AUTH_PROOF
    proof: str = ""


@record
class JobTicket:
    """scheduler → daemon → client → compile server: the ticket of one placement (issue 14).

    ``ticket`` is :func:`~iceserv.protocol.tickets.issue_ticket`'s text for
    job ``job_id``; ``client_id`` is the submitting daemon's client (scheduler
    → daemon only, 0 elsewhere).  Sent only to iceserv peers: the scheduler to
    an authenticated daemon, just before the job's USE_CS; that daemon to a
    client on its iceserv-only endpoint, just before the USE_CS; the client to
    the compile server, first after the handshake.
    """

    TYPE: ClassVar = IceservMsgType.JOB_TICKET
    job_id: int = 0
    client_id: int = 0
    ticket: str = ""
    #: Hex, item 4 (sealing): scheduler → daemon → client, the job's session key (only over
    #: a sealed link and the local endpoint); client → server, the channel salt: the
    #: channel is sealed both ways from the next message.  Empty: in clear.
    secret: str = ""


@record
class HostAddresses:
    """daemon → scheduler: the daemon's addresses of both families and what its clients reach.

    Sent once per connection, after a CS_CONF with the iceserv mark.
    ``addresses`` are the routable addresses its compile port listens on
    (IPv4 and IPv6 literals, no link-local ones: their zone would be
    meaningless elsewhere); ``families`` names those its clients can connect
    over (``"ipv4"``, ``"ipv6"``).  The scheduler then names this daemon to
    other hosts' clients by an address of a family they reach, and names
    servers to this daemon's clients likewise.  iceserv only.
    """

    TYPE: ClassVar = IceservMsgType.HOST_ADDRESSES
    addresses: tuple[str, ...] = ()
    families: tuple[str, ...] = ()


Message = (
    Unknown
    | Ping
    | End
    | Timeout
    | GetNativeEnv
    | UseNativeEnv
    | GetCS
    | UseCS
    | CompileFile
    | FileChunk
    | CompileResult
    | JobBegin
    | JobDone
    | JobLocalBegin
    | JobLocalDone
    | Login
    | Stats
    | MonLogin
    | MonGetCS
    | MonJobBegin
    | MonJobDone
    | MonLocalJobBegin
    | MonStats
    | EnvTransfer
    | Text
    | StatusText
    | GetInternalStatus
    | ConfCS
    | VerifyEnv
    | VerifyEnvResult
    | BlacklistHostEnv
    | NoCS
    | SlotsQuery
    | SlotsAnswer
    | PushQuery
    | PushTargets
    | AuthHello
    | AuthChallenge
    | AuthProof
    | JobTicket
    | HostAddresses
)


# --- layouts --------------------------------------------------------------------------


class _Kind(enum.Enum):
    U32 = "u32"
    I32 = "i32"  # signed C int sent as its two's-complement pattern
    BOOL = "bool"
    STR = "string"
    STRS = "string list"
    ENVS = "environment list"
    ARGS = "argument list(s)"  # COMPILE_FILE: one list >= 41, remote + rest below
    BLOB = "compressed blob"


U, N, B, S, L, E = _Kind.U32, _Kind.I32, _Kind.BOOL, _Kind.STR, _Kind.STRS, _Kind.ENVS
F = Feature
_Field = tuple[str, _Kind, Feature | None]

_JOB_DONE_FIELDS: Final[tuple[_Field, ...]] = (
    ("job_id", U, None),
    ("exitcode", N, None),
    ("real_msec", U, None),
    ("user_msec", U, None),
    ("sys_msec", U, None),
    ("pfaults", U, None),
    ("in_compressed", U, None),
    ("in_uncompressed", U, None),
    ("out_compressed", U, None),
    ("out_uncompressed", U, None),
    ("flags", U, None),
    ("client_count", U, F.CLIENT_COUNT),
)

_GET_CS_FIELDS: Final[tuple[_Field, ...]] = (
    ("versions", E, None),
    ("filename", S, None),
    ("lang", U, None),
    ("count", U, None),
    ("target", S, None),
    ("arg_flags", U, None),
    ("client_id", U, None),
    ("preferred_host", S, F.GET_CS_PREFERRED_HOST),
    ("ignore_unverified", U, F.GET_CS_IGNORE_UNVERIFIED),
    ("minimal_host_version", N, F.GET_CS_MINIMAL_HOST_VERSION),
    ("client_count", U, F.CLIENT_COUNT),
    ("required_features", U, F.ENV_FEATURES),
    ("niceness", N, F.GET_CS_NICENESS),
)

_LAYOUTS: Final[Mapping[type, tuple[_Field, ...]]] = {
    Unknown: (),
    Ping: (),
    End: (),
    Timeout: (),
    MonLogin: (),
    GetInternalStatus: (),
    GetNativeEnv: (
        ("compiler", S, F.NATIVE_ENV_EXTRAFILES),
        ("extrafiles", L, F.NATIVE_ENV_EXTRAFILES),
        ("compression", S, F.ENV_FEATURES),
    ),
    UseNativeEnv: (("native_version", S, None),),
    GetCS: _GET_CS_FIELDS,
    UseCS: (
        ("job_id", U, None),
        ("port", U, None),
        ("hostname", S, None),
        ("host_platform", S, None),
        ("got_env", B, None),
        ("client_id", U, None),
        ("matched_job_id", U, F.USE_CS_MATCHED_JOB_ID),
    ),
    NoCS: (("job_id", U, None), ("client_id", U, None)),
    CompileFile: (
        ("lang", U, None),
        ("job_id", U, None),
        ("args", _Kind.ARGS, None),
        ("environment", S, None),
        ("target", S, None),
        ("compiler_name", S, F.COMPILER_NAME),
        ("input_file", S, F.COMPILE_FILE_PATHS),
        ("working_dir", S, F.COMPILE_FILE_PATHS),
        ("output_file", S, F.SPLIT_DWARF),
        ("dwarf_fission", B, F.SPLIT_DWARF),
    ),
    FileChunk: (("data", _Kind.BLOB, None),),
    CompileResult: (
        ("err", S, None),
        ("out", S, None),
        ("status", N, None),
        ("was_out_of_memory", B, None),
        ("have_dwo", B, F.COMPILE_RESULT_DWO),
    ),
    JobBegin: (("job_id", U, None), ("stime", U, None), ("client_count", U, F.CLIENT_COUNT)),
    JobDone: _JOB_DONE_FIELDS,
    JobLocalBegin: (("stime", U, None), ("outfile", S, None), ("id", U, None)),
    JobLocalDone: (("job_id", U, None),),
    Login: (
        ("port", U, None),
        ("max_kids", U, None),
        ("envs", E, None),
        ("nodename", S, None),
        ("host_platform", S, None),
        ("chroot_possible", B, None),
        ("noremote", B, F.LOGIN_NOREMOTE),
        ("supported_features", U, F.ENV_FEATURES),
    ),
    Stats: (
        ("load", U, None),
        ("load_avg1", U, None),
        ("load_avg5", U, None),
        ("load_avg10", U, None),
        ("free_mem", U, None),
    ),
    ConfCS: (
        ("max_scheduler_pong", U, None),
        ("max_scheduler_ping", U, None),
        ("bench_source", S, None),
    ),
    StatusText: (("text", S, None),),
    Text: (("text", S, None),),
    MonGetCS: (
        ("filename", S, None),
        ("lang", U, None),
        ("job_id", U, None),
        ("client_id", U, None),
    ),
    MonJobBegin: (("job_id", U, None), ("stime", U, None), ("host_id", U, None)),
    MonJobDone: _JOB_DONE_FIELDS,
    MonLocalJobBegin: (
        ("host_id", U, None),
        ("job_id", U, None),
        ("stime", U, None),
        ("file", S, None),
    ),
    MonStats: (("host_id", U, None), ("statmsg", S, None)),
    EnvTransfer: (("name", S, None), ("target", S, None)),
    VerifyEnv: (("environment", S, None), ("target", S, None)),
    VerifyEnvResult: (("ok", B, None),),
    BlacklistHostEnv: (("environment", S, None), ("target", S, None), ("hostname", S, None)),
    SlotsQuery: (("platform", S, None),),
    SlotsAnswer: (("total", U, None), ("free", U, None), ("hosts", U, None), ("source", S, None)),
    PushQuery: (("platform", S, None), ("environment", S, None), ("required_features", U, None)),
    PushTargets: (("environment", S, None), ("target", S, None), ("hosts", L, None)),
    AuthHello: (("nonce", S, None), ("key_ids", L, None), ("options", L, None)),
    AuthChallenge: (
        ("key_id", S, None),
        ("nonce", S, None),
        ("proof", S, None),
        ("options", L, None),
    ),
    AuthProof: (("proof", S, None),),
    JobTicket: (
        ("job_id", U, None),
        ("client_id", U, None),
        ("ticket", S, None),
        ("secret", S, None),
    ),
    HostAddresses: (("addresses", L, None), ("families", L, None)),
}

_BY_TYPE: Final[Mapping[int, type]] = {
    int(cls.TYPE): cls  # type: ignore[attr-defined]
    for cls in _LAYOUTS
}


def layout(cls: type, version: int) -> tuple[tuple[str, str], ...]:
    """Return ``(field, kind)`` pairs that *cls* carries on the wire at *version*."""
    return tuple(
        (name, kind.value)
        for name, kind, feature in _LAYOUTS[cls]
        if feature is None or supports(version, feature)
    )


# --- encoding -------------------------------------------------------------------------

_WRITERS: Final[Mapping[_Kind, Callable[[Writer, object], None]]] = {
    _Kind.U32: Writer.u32,  # type: ignore[dict-item]
    _Kind.I32: Writer.i32,  # type: ignore[dict-item]
    _Kind.BOOL: Writer.boolean,  # type: ignore[dict-item]
    _Kind.STR: Writer.string,  # type: ignore[dict-item]
    _Kind.STRS: Writer.strings,  # type: ignore[dict-item]
    _Kind.ENVS: Writer.envs,  # type: ignore[dict-item]
}


@functools.cache
def _write_plan(
    cls: type, version: int
) -> tuple[tuple[str, _Kind, Callable[[Writer, object], None] | None], ...]:
    """Return the fields *cls* carries at *version*, each with its writer (None: BLOB, ARGS)."""
    return tuple(
        (name, kind, _WRITERS.get(kind))
        for name, kind, feature in _LAYOUTS[cls]
        if feature is None or supports(version, feature)
    )


def _write_fields(w: Writer, msg: object, cls: type, version: int, level: int) -> None:
    for name, kind, writer in _write_plan(cls, version):
        value = getattr(msg, name)
        if writer is not None:
            writer(w, value)
        elif kind is _Kind.BLOB:
            write_blob(w, value, version, level)
        else:  # ARGS
            w.strings(value)
            if not supports(version, Feature.SINGLE_ARGS_LIST):
                w.strings(())  # the "rest" list of the two-list layout


def encode(msg: Message, version: int, *, level: int = DEFAULT_LEVEL) -> bytes:
    """Return the complete frame (length, type, payload) of *msg* at protocol *version*.

    *level* is the zstd level for FILE_CHUNK data.  Raises
    :class:`~iceserv.errors.LocalProtocolError` for values the wire cannot carry or
    frames over 1 MiB.
    """
    cls: type = type(msg)
    fast = _ENCODERS.get((cls, version))
    if fast is None:
        _count(_ENCODERS, (cls, version), _make_encoder)
    else:
        try:
            frame = fast(msg)
        except Exception:  # noqa: BLE001, S110 - not the expected input: the table walk decides
            pass
        else:
            if len(frame) <= MAX_MESSAGE_SIZE:
                return frame
    return _encode_table(msg, version, level)


def _encode_table(msg: Message, version: int, level: int) -> bytes:
    """:func:`encode` by the walk over the layout table (what a generated encoder must match)."""
    cls: type = type(msg)
    if cls not in _LAYOUTS:
        msg_text = f"not an icecream message: {cls.__name__}"
        raise LocalProtocolError(msg_text)
    w = Writer()
    if cls is MonGetCS and not supports(version, Feature.MON_GET_CS_SHORT):
        _write_legacy_mon_get_cs(w, msg, version)  # type: ignore[arg-type]
    else:
        if (
            isinstance(msg, JobDone | MonJobDone)
            and not supports(version, Feature.CLIENT_COUNT)
            and msg.flags & JobDoneFlag.UNKNOWN_JOB_ID
        ):
            msg = replace(msg, exitcode=LEGACY_UNKNOWN_JOB_ID_EXITCODE)
        _write_fields(w, msg, cls, version, level)
    payload = w.getvalue()
    if len(payload) + 4 > MAX_MESSAGE_SIZE:
        text = f"{cls.__name__} frame of {len(payload) + 4} bytes exceeds the 1 MiB limit"
        raise LocalProtocolError(text, msg_type=int(msg.TYPE))
    return _HEADER.pack(len(payload) + 4, msg.TYPE) + payload


def _write_legacy_mon_get_cs(w: Writer, msg: MonGetCS, version: int) -> None:
    # Below 29 a monitor gets a whole GET_CS body (with the job's filename and
    # language, everything else at its default) followed by job id and client id.
    _write_fields(w, GetCS(filename=msg.filename, lang=msg.lang), GetCS, version, DEFAULT_LEVEL)
    w.u32(msg.job_id)
    w.u32(msg.client_id)


# --- decoding -------------------------------------------------------------------------

_READERS: Final[Mapping[_Kind, Callable[[Reader], object]]] = {
    _Kind.U32: Reader.u32,
    _Kind.I32: Reader.i32,
    _Kind.BOOL: Reader.boolean,
    _Kind.STR: Reader.string,
    _Kind.STRS: Reader.strings,
    _Kind.ENVS: Reader.envs,
}


@functools.cache
def _read_plan(
    cls: type, version: int
) -> tuple[tuple[str, _Kind, Callable[[Reader], object] | None], ...]:
    """Return the fields *cls* carries at *version*, each with its reader (None: BLOB, ARGS)."""
    return tuple(
        (name, kind, _READERS.get(kind))
        for name, kind, feature in _LAYOUTS[cls]
        if feature is None or supports(version, feature)
    )


def _read_fields(r: Reader, cls: type, version: int) -> dict[str, object]:
    values: dict[str, object] = {}
    for name, kind, reader in _read_plan(cls, version):
        if reader is not None:
            values[name] = reader(r)
        elif kind is _Kind.BLOB:
            values[name], values["compressed_size"] = read_blob(r, version)
        else:  # ARGS
            args = r.strings()
            if not supports(version, Feature.SINGLE_ARGS_LIST):
                args += r.strings()
            values[name] = args
    return values


def decode(msg_type: int, payload: bytes | memoryview, version: int) -> Message:
    """Decode one frame's *payload* of type *msg_type* at protocol *version*.

    Every byte must be consumed (reference §1.5).  Any malformation raises
    :class:`~iceserv.errors.RemoteProtocolError` and nothing else.
    """
    fast = _DECODERS.get((msg_type, version))
    if fast is None:
        _count(_DECODERS, (msg_type, version), _make_decoder)
    elif type(payload) is bytes:
        try:
            return fast(payload)
        except Exception:  # noqa: BLE001, S110 - not the expected input: the table walk decides
            pass
    return _decode_table(msg_type, payload, version)


def _decode_table(msg_type: int, payload: bytes | memoryview, version: int) -> Message:
    """:func:`decode` by the walk over the layout table (what a generated decoder must match)."""
    cls = _BY_TYPE.get(msg_type)
    if cls is None:
        text = f"unknown message type {msg_type}"
        raise RemoteProtocolError(text, msg_type=msg_type)
    r = Reader(payload, msg_type)
    if cls is MonGetCS and not supports(version, Feature.MON_GET_CS_SHORT):
        body = _read_fields(r, GetCS, version)
        values: dict[str, object] = {
            "filename": body["filename"],
            "lang": body["lang"],
            "job_id": r.u32(),
            "client_id": r.u32(),
        }
    else:
        values = _read_fields(r, cls, version)
        if (
            cls in (JobDone, MonJobDone)
            and not supports(version, Feature.CLIENT_COUNT)
            and values["exitcode"] == LEGACY_UNKNOWN_JOB_ID_EXITCODE
        ):
            values["flags"] = int(values["flags"]) | JobDoneFlag.UNKNOWN_JOB_ID  # type: ignore[call-overload]
    r.finish()
    message: Message = cls(**values)
    return message


# --- hot layouts --------------------------------------------------------------------------

#: Codings of one layout (message type and protocol version) after which it gets its own
#: generated codec (see the module docstring).
HOT_CODEC: Final = 64

_U32_WORD: Final = struct.Struct(">I")


class _NotExpected(IceservError, ValueError):  # noqa: N818 - a signal, never seen outside
    """The generated codec does not handle this input: the table walk does."""


def _never(_value: object) -> Message | bytes:
    """Leave every input to the table walk (a layout that gets no codec of its own)."""
    raise _NotExpected


#: Generated codecs by (message type, version) and (class, version); a key's entry is an
#: int (codings seen so far) until it is hot.  Caches of pure functions of their key.
_DECODERS: Final[dict[tuple[int, int], Callable[[bytes], Message]]] = {}
_ENCODERS: Final[dict[tuple[type, int], Callable[[Message], bytes]]] = {}
_SEEN: Final[dict[object, int]] = {}


def _count(table: dict[Any, Any], key: object, make: Callable[[Any, Any], Any]) -> None:
    seen = _SEEN.get(key, 0) + 1
    if seen < HOT_CODEC:
        _SEEN[key] = seen
        return
    _SEEN.pop(key, None)
    table[key] = make(*key)  # type: ignore[misc]


def _pack_text(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise _NotExpected
    return _U32_WORD.pack(len(raw) + 1) + raw + b"\0"


def _pack_texts(values: tuple[str, ...]) -> bytes:
    return _U32_WORD.pack(len(values)) + b"".join([_pack_text(value) for value in values])


def _pack_envs(values: tuple[EnvEntry, ...]) -> bytes:
    return _U32_WORD.pack(len(values)) + b"".join(
        [_pack_text(platform) + _pack_text(name) for platform, name in values]
    )


_INTEGERS: Final = {U: "I", N: "i", B: "I"}


def _generic_layout(cls: type | None, version: int) -> bool:
    """Whether *cls* at *version* is a plain walk of u32/i32/bool/string/list fields."""
    if cls is None:
        return False
    if cls is MonGetCS and not supports(version, Feature.MON_GET_CS_SHORT):
        return False
    if cls in (JobDone, MonJobDone) and not supports(version, Feature.CLIENT_COUNT):
        return False
    return all(kind in _INTEGERS or kind in (S, L, E) for _, kind, _ in _read_plan(cls, version))


def _runs(cls: type, version: int) -> list[tuple[_Kind, list[tuple[str, _Kind]]]]:
    """Group *cls*'s fields at *version*: runs of integers (kind U32) and single others."""
    runs: list[tuple[_Kind, list[tuple[str, _Kind]]]] = []
    for name, kind, _ in _read_plan(cls, version):
        if kind in _INTEGERS and runs and runs[-1][0] is U:
            runs[-1][1].append((name, kind))
        else:
            runs.append((U if kind in _INTEGERS else kind, [(name, kind)]))
    return runs


def _read_text(target: str, indent: str) -> list[str]:
    """Return source that reads a string into *target* (as ``Reader.string``)."""
    return [
        f"{indent}if end - pos < 4:",
        f"{indent}    raise _NotExpected",
        f"{indent}(size,) = _u32(data, pos)",
        f"{indent}pos += 4",
        f"{indent}if size:",
        f"{indent}    stop = pos + size",
        f"{indent}    if stop > end:",
        f"{indent}        raise _NotExpected",
        f"{indent}    nul = data.find(0, pos, stop)",
        f"{indent}    raw = data[pos : stop if nul < 0 else nul]",
        f"{indent}    {target} = raw.decode('utf-8', 'surrogateescape')",
        f"{indent}    pos = stop",
        f"{indent}else:",
        f"{indent}    {target} = ''",
    ]


def _read_list(target: str, kind: _Kind) -> list[str]:
    """Return source that reads a string or environment list into *target*."""
    lines = [
        "    if end - pos < 4:",
        "        raise _NotExpected",
        "    (count,) = _u32(data, pos)",
        "    pos += 4",
        f"    if count * {8 if kind is E else 4} > end - pos:",
        "        raise _NotExpected",
        "    items = []",
        "    for _ in range(count):",
        *_read_text("first", "        "),
    ]
    if kind is E:
        lines += _read_text("second", "        ")
        lines.append("        items.append(_env(_EnvEntry, (first, second)))")
    else:
        lines.append("        items.append(first)")
    return [*lines, f"    {target} = tuple(items)"]


def _make_decoder(msg_type: int, version: int) -> Callable[[bytes], Message]:
    """Generate the decoder of *msg_type* at *version* (see the module docstring)."""
    cls = _BY_TYPE.get(msg_type)
    if cls is None or not _generic_layout(cls, version):
        return _never  # type: ignore[return-value]
    space: dict[str, Any] = {
        "_cls": cls,
        "_NotExpected": _NotExpected,
        "_u32": _U32_WORD.unpack_from,
        "_env": tuple.__new__,
        "_EnvEntry": EnvEntry,
    }
    lines = ["def decode(data):", "    end = len(data)", "    pos = 0"]
    names: list[str] = []
    for kind, group in _runs(cls, version):
        if kind is U:
            struct_name = f"_s{len(space)}"
            layout_struct = struct.Struct(">" + "".join(_INTEGERS[k] for _, k in group))
            space[struct_name] = layout_struct.unpack_from
            size = 4 * len(group)
            values = ", ".join(f"v_{name}" for name, _ in group)
            lines += [
                f"    if end - pos < {size}:",
                "        raise _NotExpected",
                f"    {values}, = {struct_name}(data, pos)",
                f"    pos += {size}",
            ]
            lines += [f"    v_{name} = v_{name} != 0" for name, k in group if k is B]
        elif kind is S:
            lines += _read_text(f"v_{group[0][0]}", "    ")
        else:
            lines += _read_list(f"v_{group[0][0]}", kind)
        names += [name for name, _ in group]
    lines += [
        "    if pos != end:",
        "        raise _NotExpected",
        "    return _cls(" + ", ".join(f"{name}=v_{name}" for name in names) + ")",
    ]
    exec("\n".join(lines), space)  # noqa: S102 - source built from the layout table above
    decoder: Callable[[bytes], Message] = space["decode"]
    return decoder


def _make_encoder(cls: type, version: int) -> Callable[[Message], bytes]:
    """Generate the frame encoder of *cls* at *version* (see the module docstring)."""
    if cls not in _LAYOUTS or not _generic_layout(cls, version):
        return _never  # type: ignore[return-value]
    space: dict[str, Any] = {
        "_pack_text": _pack_text,
        "_pack_texts": _pack_texts,
        "_pack_envs": _pack_envs,
        "_header": _HEADER.pack,
        "_type": int(cls.TYPE),  # type: ignore[attr-defined]
    }
    lines = ["def encode(msg):"]
    parts: list[str] = []
    for kind, group in _runs(cls, version):
        if kind is U:
            struct_name = f"_s{len(space)}"
            space[struct_name] = struct.Struct(">" + "".join(_INTEGERS[k] for _, k in group))
            values = ", ".join(
                f"1 if msg.{name} else 0" if k is B else f"msg.{name}" for name, k in group
            )
            parts.append(f"{struct_name}.pack({values})")
        else:
            packer = {S: "_pack_text", L: "_pack_texts", E: "_pack_envs"}[kind]
            parts.append(f"{packer}(msg.{group[0][0]})")
    lines += [
        "    payload = b''.join([" + ", ".join(parts) + "])",
        "    return _header(len(payload) + 4, _type) + payload",
    ]
    exec("\n".join(lines), space)  # noqa: S102 - source built from the layout table above
    encoder: Callable[[Message], bytes] = space["encode"]
    return encoder
