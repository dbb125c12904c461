"""Named protocol features and the minimum negotiated version that enables each one.

Every version-dependent behaviour of icecream 1.4 (reference §2.3, §4.3) is a
:class:`Feature`.  Code outside :mod:`iceserv.protocol` asks
``conn.supports(Feature.X)`` (or :func:`supports`) instead of comparing
integers, so a threshold is written down exactly once, here.
"""

from __future__ import annotations

import enum
from types import MappingProxyType
from typing import Final

from iceserv.protocol.constants import MIN_PROTOCOL_VERSION

__all__ = [
    "MIN_VERSION",
    "Feature",
    "features_of",
    "min_version",
    "required_version",
    "supports",
]


class Feature(enum.Enum):
    """A protocol behaviour that depends on the negotiated version."""

    GET_CS_PREFERRED_HOST = "GET_CS carries preferred_host"
    STATUS_TEXT_TO_CLIENT = "remote daemon explains failures to clients with STATUS_TEXT"
    STATUS_TEXT_FROM_JOB = "compile and environment errors are sent as STATUS_TEXT"
    CS_CONF = "scheduler answers LOGIN with CS_CONF"
    STATS_NOT_PONG = "STATS no longer counts as a reply to PING"
    LOGIN_NOREMOTE = "LOGIN carries noremote"
    NO_PINGS = "no application pings; liveness by TCP keepalive"
    USE_CS_MATCHED_JOB_ID = "USE_CS carries matched_job_id"
    MON_GET_CS_SHORT = "MON_GET_CS has the short layout"
    COMPILER_NAME = "COMPILE_FILE carries compiler_name"
    GET_CS_IGNORE_UNVERIFIED = "GET_CS carries the legacy ignore_unverified word"
    VERIFY_ENV = "clients verify transferred environments with VERIFY_ENV"
    NATIVE_ENV_EXTRAFILES = "GET_NATIVE_ENV carries compiler and extrafiles"
    DISCOVERY_REPLY_VERSIONED = "discovery replies carry version and start time"
    GET_CS_MINIMAL_HOST_VERSION = "GET_CS carries minimal_host_version"
    COMPILE_FILE_PATHS = "COMPILE_FILE carries input_file and working_dir"
    SPLIT_DWARF = "COMPILE_FILE carries output_file and dwarf_fission"
    COMPILE_RESULT_DWO = "COMPILE_RESULT carries have_dwo"
    SCHEDULER_ANNOUNCEMENTS = "scheduler announcements and discovery replies of 268 bytes"
    NO_CS = "scheduler may answer NO_CS (compile it yourself)"
    OBJC_LANG = "the compile server passes -x objective-c[++] itself"
    DISCOVERY_REPLY_BIG_ENDIAN = "discovery replies are big-endian"
    CLIENT_COUNT = "GET_CS, JOB_BEGIN and JOB_DONE carry client_count; UnknownJobId flag"
    ZSTD = "compressed blobs carry an algorithm word; senders use zstd"
    SINGLE_ARGS_LIST = "COMPILE_FILE has one argument list; server adds no -gsplit-dwarf"
    NATIVE_ENV_FULL_PATH = "GET_NATIVE_ENV compiler is an absolute path"
    ENV_FEATURES = "LOGIN, GET_CS and GET_NATIVE_ENV carry environment features/compression"
    GET_CS_NICENESS = "GET_CS carries niceness"

    # Members are singletons: hash them by identity, in C.  Enum's ``__hash__`` is a Python
    # call, and the scheduler asks ``supports`` at every re-filing of a host.
    __hash__ = object.__hash__


#: The first negotiated protocol version with each feature (reference §2.3, §4.3).
MIN_VERSION: Final = MappingProxyType(
    {
        Feature.GET_CS_PREFERRED_HOST: 22,
        Feature.STATUS_TEXT_TO_CLIENT: 22,
        Feature.STATUS_TEXT_FROM_JOB: 23,
        Feature.CS_CONF: 24,
        Feature.STATS_NOT_PONG: 25,
        Feature.LOGIN_NOREMOTE: 26,
        Feature.NO_PINGS: 27,
        Feature.USE_CS_MATCHED_JOB_ID: 28,
        Feature.MON_GET_CS_SHORT: 29,
        Feature.COMPILER_NAME: 30,
        Feature.GET_CS_IGNORE_UNVERIFIED: 31,
        Feature.VERIFY_ENV: 31,
        Feature.NATIVE_ENV_EXTRAFILES: 32,
        Feature.DISCOVERY_REPLY_VERSIONED: 33,
        Feature.GET_CS_MINIMAL_HOST_VERSION: 34,
        Feature.COMPILE_FILE_PATHS: 34,
        Feature.SPLIT_DWARF: 35,
        Feature.COMPILE_RESULT_DWO: 35,
        Feature.SCHEDULER_ANNOUNCEMENTS: 36,
        Feature.NO_CS: 37,
        Feature.OBJC_LANG: 38,
        Feature.DISCOVERY_REPLY_BIG_ENDIAN: 38,
        Feature.CLIENT_COUNT: 39,
        Feature.ZSTD: 40,
        Feature.SINGLE_ARGS_LIST: 41,
        Feature.NATIVE_ENV_FULL_PATH: 41,
        Feature.ENV_FEATURES: 42,
        Feature.GET_CS_NICENESS: 43,
    }
)


def min_version(feature: Feature) -> int:
    """Return the first negotiated protocol version with *feature*."""
    return MIN_VERSION[feature]


def required_version(*features: Feature) -> int:
    """Return the oldest protocol version that has every one of *features*.

    With no features it is :data:`~iceserv.protocol.constants.MIN_PROTOCOL_VERSION`,
    the oldest version 1.4 speaks.  The client fills GET_CS's
    ``minimal_host_version`` this way (1.4 ``minimalRemoteVersion``).
    """
    return max((MIN_VERSION[f] for f in features), default=MIN_PROTOCOL_VERSION)


def supports(version: int, feature: Feature) -> bool:
    """Return whether negotiated protocol *version* has *feature*."""
    return version >= MIN_VERSION[feature]


def features_of(version: int) -> frozenset[Feature]:
    """Return every feature that negotiated protocol *version* has."""
    return frozenset(f for f, v in MIN_VERSION.items() if version >= v)
