"""Bounded fuzzing of the network key's handshake messages and datagrams (issue 14).

Runs :func:`fuzz.targets.auth` (the long-running fuzz target of ``fuzz/``)
under Hypothesis: arbitrary bytes, and well-formed frame sequences of the
authentication messages with arbitrary fields, through the scheduler's gate
and a daemon's handshake.  Only iceserv's own (typed) errors may come out,
and the received buffer never exceeds the message cap.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS, auth
from iceserv.protocol import AuthHello, AuthProof, Login, MonLogin
from iceserv.protocol.messages import AuthChallenge, JobTicket, encode

_ROOT = Path(__file__).resolve().parents[2]
_HEX = st.text(alphabet="0123456789abcdefABCDEFxyz ", max_size=80)
_MESSAGES = st.one_of(
    st.builds(AuthHello, _HEX, st.lists(_HEX, max_size=6).map(tuple)),
    st.builds(AuthChallenge, _HEX, _HEX, _HEX),
    st.builds(AuthProof, _HEX),
    st.builds(JobTicket, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), _HEX),
    st.just(MonLogin()),
    st.just(Login(port=10245, max_kids=4, nodename="n1", host_platform="x86_64")),
)


class TestAuthFuzzTarget:
    def test_registered(self):
        """The target is one of fuzz/'s, so `python -m fuzz.run auth` runs it."""
        assert TARGETS["auth"] is auth

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_any_bytes(self, data):
        """Arbitrary bytes: no exception but iceserv's own, none at all from the datagrams."""
        auth(data)

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, 255), st.binary(min_size=2, max_size=2),
           st.lists(_MESSAGES, max_size=6))  # fmt: skip
    def test_well_formed_frames_with_any_fields(self, mode, sizes, messages):
        """Real frames of the handshake messages, any field values, in any order and pieces."""
        frames = b"".join(encode(m, 43) for m in messages)
        auth(bytes([mode]) + sizes + frames)

    @settings(max_examples=50, deadline=None)
    @given(st.integers(9, 1 << 24))
    def test_a_huge_announced_length_is_refused_not_buffered(self, length):
        """A frame announcing more than the cap is a typed error; the buffer stays bounded."""
        auth(bytes([1, 0, 0]) + struct.pack(">I", length) + b"\x1c\xe5\x00\x05" + b"\x00" * 64)

    def test_random_engine_runs_it(self):
        """fuzz.run's own engine runs the target from its seeds with no crash."""
        done = subprocess.run(
            [sys.executable, "-m", "fuzz.run", "auth", "--runs", "400", "--engine", "random"],
            cwd=_ROOT, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "0 crashes" in done.stdout
