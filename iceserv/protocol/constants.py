"""Wire constants of the icecream protocol: message type codes, limits, ports, time-outs.

This module owns numbers that the reference (``icecream-protocol.md``) fixes and that
every component shares.  It must not hold behaviour; version thresholds live in
:mod:`iceserv.protocol.features`.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "CHUNK_SIZE",
    "DAEMON_PORT",
    "ICESERV_MARK",
    "MAX_MESSAGE_SIZE",
    "MAX_SCHEDULER_PING",
    "MAX_SCHEDULER_PONG",
    "MIN_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "SCHEDULER_PORT",
    "ArgFlag",
    "Compression",
    "EnvFeature",
    "IceservMsgType",
    "JobDoneFlag",
    "Lang",
    "MsgType",
]

#: The protocol version icecream 1.4 (and iceserv) announces in the handshake.
PROTOCOL_VERSION: Final = 43
#: The oldest protocol version a 1.4 peer accepts.
MIN_PROTOCOL_VERSION: Final = 21
#: A handshake value above this closes the channel (reference §1.4).
MAX_HANDSHAKE_VERSION: Final = 1 << 20

#: Largest frame length and largest uncompressed FILE_CHUNK payload (reference §1.5, §3.1).
MAX_MESSAGE_SIZE: Final = 1 << 20
#: Senders split file data into pieces of at most this many uncompressed bytes (§2.2).
CHUNK_SIZE: Final = 100_000

SCHEDULER_PORT: Final = 8765
DAEMON_PORT: Final = 10245

#: Seconds: the daemon's statistics period and the daemons' discovery wait (§7.8).
MAX_SCHEDULER_PONG: Final = 3
#: Seconds: ping period for protocol < 27, telnet idle time-out, keepalive base (§7.8).
MAX_SCHEDULER_PING: Final = 36


class MsgType(enum.IntEnum):
    """Message type codes: consecutive ASCII letters from ``'A'`` (reference §2.1).

    Member names keep upstream's spelling (without the ``M_`` prefix), including
    ``TRANFER_ENV``.
    """

    UNKNOWN = 65  # 'A', never valid
    PING = 66  # 'B'
    END = 67  # 'C'
    TIMEOUT = 68  # 'D', never valid
    GET_NATIVE_ENV = 69  # 'E'
    NATIVE_ENV = 70  # 'F'
    GET_CS = 71  # 'G'
    USE_CS = 72  # 'H'
    COMPILE_FILE = 73  # 'I'
    FILE_CHUNK = 74  # 'J'
    COMPILE_RESULT = 75  # 'K'
    JOB_BEGIN = 76  # 'L'
    JOB_DONE = 77  # 'M'
    JOB_LOCAL_BEGIN = 78  # 'N'
    JOB_LOCAL_DONE = 79  # 'O'
    LOGIN = 80  # 'P'
    STATS = 81  # 'Q'
    MON_LOGIN = 82  # 'R'
    MON_GET_CS = 83  # 'S'
    MON_JOB_BEGIN = 84  # 'T'
    MON_JOB_DONE = 85  # 'U'
    MON_LOCAL_JOB_BEGIN = 86  # 'V'
    MON_STATS = 87  # 'W'
    TRANFER_ENV = 88  # 'X'
    TEXT = 89  # 'Y', text channel only
    STATUS_TEXT = 90  # 'Z'
    GET_INTERNALS = 91  # '['
    CS_CONF = 92  # '\'
    VERIFY_ENV = 93  # ']'
    VERIFY_ENV_RESULT = 94  # '^'
    BLACKLIST_HOST_ENV = 95  # '_'
    NO_CS = 96  # '`'


class IceservMsgType(enum.IntEnum):
    """Message types only iceserv peers exchange: never sent to an icecream 1.4 peer.

    1.4 closes a channel on any type it does not know (reference §1.5), so
    these go out only once the peer is known to be iceserv (:data:`ICESERV_MARK`
    in CS_CONF for the scheduler; the daemon's iceserv-only local endpoint for a
    client).  They are numbered far from 1.4's ``'A'``..``'`'`` (65..96), so a
    future upstream type cannot collide with them.
    """

    SLOTS_QUERY = 0x1CE5_0001
    SLOTS_ANSWER = 0x1CE5_0002
    PUSH_QUERY = 0x1CE5_0003
    PUSH_TARGETS = 0x1CE5_0004
    AUTH_HELLO = 0x1CE5_0005
    AUTH_CHALLENGE = 0x1CE5_0006
    AUTH_PROOF = 0x1CE5_0007
    JOB_TICKET = 0x1CE5_0008
    HOST_ADDRESSES = 0x1CE5_0009
    #: Not a message: the frame that carries one sealed record (:mod:`iceserv.protocol.sealing`).
    SEALED = 0x1CE5_000A


#: The prefix of CS_CONF's ``bench_source`` from an iceserv scheduler ("iceserv/<version>").
#: 1.4 daemons read that string and discard it (upstream ``services/comm.cpp``,
#: ``ConfCSMsg::fill_from_channel``); 1.4 schedulers always send ``""``.
ICESERV_MARK: Final = "iceserv/"


class Lang(enum.IntEnum):
    """Source language of a job (GET_CS, COMPILE_FILE, MON_GET_CS)."""

    C = 0
    CXX = 1
    OBJC = 2
    OBJCXX = 3
    CUSTOM = 4


class JobDoneFlag(enum.IntFlag):
    """Bits of JOB_DONE's ``flags`` field (§2.2)."""

    FROM_SERVER = 0
    FROM_SUBMITTER = 1
    UNKNOWN_JOB_ID = 2


#: Below protocol 39 this exit code stands for the UNKNOWN_JOB_ID flag (§2.2 JOB_DONE).
LEGACY_UNKNOWN_JOB_ID_EXITCODE: Final = 200


class ArgFlag(enum.IntFlag):
    """Bits of GET_CS's ``arg_flags``: 1.4 ``CompileJob::Flag_*``, set from the compiler arguments.

    The client sets at most one of ``G``/``G3`` and one of ``O``/``O2``/``OL2``
    (1.4 ``CompileJob::argumentFlags``); the scheduler's speed estimate and the
    simulator's placement read them (1.4 ``scheduler.cpp``, ``pick_server``).
    """

    NONE = 0
    G = 0x1
    G3 = 0x2
    O = 0x4  # noqa: E741 - upstream's name (Flag_O)
    O2 = 0x8
    OL2 = 0x10


class EnvFeature(enum.IntFlag):
    """Environment tarball features (LOGIN ``supported_features``, GET_CS ``required_features``)."""

    NONE = 0
    ENV_XZ = 1
    ENV_ZSTD = 2


class Compression(enum.IntEnum):
    """The ``algorithm`` word of a compressed blob (protocol >= 40)."""

    LZO = 0
    ZSTD = 1
