"""Hypothesis strategies for protocol messages, shared by the protocol tests.

The strategies build messages that can survive a round trip at a given
protocol version: fields the version does not carry keep their defaults
(``messages.layout`` says which fields are on the wire), strings carry no NUL
and are in the canonical ``surrogateescape`` form, integers fit their wire
type, and below protocol 39 a JOB_DONE's exit code is 200 exactly when its
UNKNOWN_JOB_ID flag is set (the two are one thing on the wire).
"""

from __future__ import annotations

from hypothesis import strategies as st

from iceserv.protocol import messages, records
from iceserv.protocol.wire import EnvEntry

VERSIONS = range(21, 44)
U32_MAX = 2**32 - 1
UNKNOWN_JOB_ID = 2

#: Every message class, in type-code order ('A' .. '`'); written out, not taken from the code.
ALL_CLASSES = (
    messages.Unknown, messages.Ping, messages.End, messages.Timeout,
    messages.GetNativeEnv, messages.UseNativeEnv, messages.GetCS, messages.UseCS,
    messages.CompileFile, messages.FileChunk, messages.CompileResult, messages.JobBegin,
    messages.JobDone, messages.JobLocalBegin, messages.JobLocalDone, messages.Login,
    messages.Stats, messages.MonLogin, messages.MonGetCS, messages.MonJobBegin,
    messages.MonJobDone, messages.MonLocalJobBegin, messages.MonStats, messages.EnvTransfer,
    messages.Text, messages.StatusText, messages.GetInternalStatus, messages.ConfCS,
    messages.VerifyEnv, messages.VerifyEnvResult, messages.BlacklistHostEnv, messages.NoCS,
    messages.SlotsQuery, messages.SlotsAnswer, messages.PushQuery, messages.PushTargets,
    messages.JobTicket,
    messages.HostAddresses,
)  # fmt: skip

#: The classes a Connection may send (type 'A' and 'D' are never valid on a channel).
SENDABLE_CLASSES = tuple(c for c in ALL_CLASSES if c not in (messages.Unknown, messages.Timeout))


def _canonical(text: str) -> str:
    # Escaped bytes that happen to form valid UTF-8 come back as the real characters,
    # so only the decoded form of some byte string is a fixed point of the round trip.
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")


_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0") | st.characters(
    min_codepoint=0xDC80, max_codepoint=0xDCFF
)
wire_strings = st.text(alphabet=_CHARS, max_size=20).map(_canonical)
u32s = st.integers(min_value=0, max_value=U32_MAX)
i32s = st.integers(min_value=-(2**31), max_value=2**31 - 1)
string_lists = st.lists(wire_strings, max_size=4).map(tuple)
env_lists = st.lists(st.builds(EnvEntry, wire_strings, wire_strings), max_size=3).map(tuple)

_BY_KIND = {
    "u32": u32s,
    "i32": i32s,
    "bool": st.booleans(),
    "string": wire_strings,
    "string list": string_lists,
    "environment list": env_lists,
    "argument list(s)": string_lists,
    "compressed blob": st.binary(max_size=3000),
}


def _fix_unknown_job_id(msg: messages.Message, version: int) -> messages.Message:
    if version >= 39 or not isinstance(msg, messages.JobDone | messages.MonJobDone):
        return msg
    if msg.flags & UNKNOWN_JOB_ID:
        return records.replace(msg, exitcode=200)
    if msg.exitcode == 200:
        return records.replace(msg, exitcode=201)
    return msg


def message_of(cls: type, version: int) -> st.SearchStrategy[messages.Message]:
    """Messages of *cls* that round-trip at *version*."""
    fields = {name: _BY_KIND[kind] for name, kind in messages.layout(cls, version)}
    return st.builds(cls, **fields).map(lambda m: _fix_unknown_job_id(m, version))


def any_message(version: int, classes: tuple[type, ...] = SENDABLE_CLASSES) -> st.SearchStrategy:
    """Messages of any of *classes* that round-trip at *version*."""
    return st.one_of([message_of(cls, version) for cls in classes])
