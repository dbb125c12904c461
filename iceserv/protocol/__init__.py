"""The icecream wire protocol, sans I/O.

This package owns the byte-level protocol of icecream 1.4 (protocol 43 down to
21): message types and layouts, the version handshake and framing, compressed
file data, discovery datagrams and the telnet line rules.  It must not open
sockets, use asyncio, log, read the clock or the environment: it turns bytes
into events and messages into bytes, and raises
:class:`~iceserv.errors.ProtocolError` subclasses for everything else.
"""

from __future__ import annotations

from iceserv.protocol.connection import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    ConnectionState,
    Event,
    Handshake,
    NeedData,
)
from iceserv.protocol.constants import (
    CHUNK_SIZE,
    DAEMON_PORT,
    ICESERV_MARK,
    MAX_MESSAGE_SIZE,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    SCHEDULER_PORT,
    ArgFlag,
    EnvFeature,
    IceservMsgType,
    JobDoneFlag,
    Lang,
    MsgType,
)
from iceserv.protocol.features import Feature
from iceserv.protocol.messages import *  # noqa: F403 - re-export every message class
from iceserv.protocol.messages import __all__ as _messages_all
from iceserv.protocol.wire import EnvEntry

__all__ = [  # noqa: PLE0604 - the message names come from messages.__all__
    "CHUNK_SIZE",
    "DAEMON_PORT",
    "ICESERV_MARK",
    "MAX_MESSAGE_SIZE",
    "MIN_PROTOCOL_VERSION",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "SCHEDULER_PORT",
    "ArgFlag",
    "Connection",
    "ConnectionClosed",
    "ConnectionState",
    "EnvEntry",
    "EnvFeature",
    "Event",
    "Feature",
    "Handshake",
    "IceservMsgType",
    "JobDoneFlag",
    "Lang",
    "MsgType",
    "NeedData",
    *_messages_all,
]
