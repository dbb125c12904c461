"""D-Bus replies marshalled here (``service.dbus.wire``) equal dbus-fast's, byte for byte."""

from __future__ import annotations

from dbus_fast import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from iceserv.service.dbus.wire import PrebuiltReply, job_record, struct_array_body

SIGNATURE = "a(usssstt)"
CALL = Message(destination="org.icecream.Scheduler1", path="/org/icecream/Scheduler1",
               interface="org.icecream.Scheduler1", member="ListJobs", serial=77,
               sender=":1.42")  # fmt: skip
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                max_size=20)  # fmt: skip
_JOB = st.tuples(st.integers(0, 2**32 - 1), _TEXT, _TEXT, _TEXT, _TEXT,
                 st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))  # fmt: skip


def dbus_fast_bytes(jobs: list[tuple[int, str, str, str, str, int, int]]) -> bytes:
    reply = Message.new_method_return(CALL, SIGNATURE, [jobs])
    reply.serial = 5
    return bytes(reply._marshall(negotiate_unix_fd=False))


@settings(max_examples=300, deadline=None)
@given(st.lists(_JOB, max_size=12))
def test_prebuilt_list_jobs_reply_equals_dbus_fast(jobs):
    """Any list of (usssstt) structs, strings of every length modulo 8 and any script:
    header and body equal what dbus-fast marshals for the same reply."""
    reply = PrebuiltReply.to(CALL, SIGNATURE, struct_array_body([job_record(j) for j in jobs]))
    reply.serial = 5
    assert bytes(reply._marshall(negotiate_unix_fd=False)) == dbus_fast_bytes(jobs)


@given(_JOB)
def test_a_record_is_whole_multiples_of_eight(job):
    """Each element ends on an 8-byte boundary: elements join without padding."""
    assert len(job_record(job)) % 8 == 0


def test_the_reply_answers_its_call():
    """Reply serial and destination come from the call (dbus-fast's method return)."""
    reply = PrebuiltReply.to(CALL, SIGNATURE, struct_array_body([]))
    assert (reply.reply_serial, reply.destination, reply.signature) == (77, ":1.42", SIGNATURE)
