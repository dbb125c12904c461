"""Tests of iceserv.protocol.constants against the tables of reference §1, §2.1 and §2.2."""

from __future__ import annotations

from iceserv.protocol.constants import (
    CHUNK_SIZE,
    DAEMON_PORT,
    MAX_MESSAGE_SIZE,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    SCHEDULER_PORT,
    ArgFlag,
    Compression,
    EnvFeature,
    JobDoneFlag,
    Lang,
    MsgType,
)

#: §2.1, copied from the reference's table (character, upstream name without M_).
TYPE_TABLE = (
    ("A", "UNKNOWN"), ("B", "PING"), ("C", "END"), ("D", "TIMEOUT"), ("E", "GET_NATIVE_ENV"),
    ("F", "NATIVE_ENV"), ("G", "GET_CS"), ("H", "USE_CS"), ("I", "COMPILE_FILE"),
    ("J", "FILE_CHUNK"), ("K", "COMPILE_RESULT"), ("L", "JOB_BEGIN"), ("M", "JOB_DONE"),
    ("N", "JOB_LOCAL_BEGIN"), ("O", "JOB_LOCAL_DONE"), ("P", "LOGIN"), ("Q", "STATS"),
    ("R", "MON_LOGIN"), ("S", "MON_GET_CS"), ("T", "MON_JOB_BEGIN"), ("U", "MON_JOB_DONE"),
    ("V", "MON_LOCAL_JOB_BEGIN"), ("W", "MON_STATS"), ("X", "TRANFER_ENV"), ("Y", "TEXT"),
    ("Z", "STATUS_TEXT"), ("[", "GET_INTERNALS"), ("\\", "CS_CONF"), ("]", "VERIFY_ENV"),
    ("^", "VERIFY_ENV_RESULT"), ("_", "BLACKLIST_HOST_ENV"), ("`", "NO_CS"),
)  # fmt: skip


class TestMsgType:
    """Message type codes (§2.1)."""

    def test_codes(self):
        """Every type has the reference's character code, and there are no others."""
        assert {m.name: m.value for m in MsgType} == {name: ord(c) for c, name in TYPE_TABLE}


class TestNumbers:
    """Versions, limits and ports."""

    def test_versions(self):
        """1.4 announces 43 and accepts 21 and up."""
        assert (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION) == (21, 43)

    def test_limits(self):
        """Frames are capped at 1 MiB; senders chunk file data at 100 000 bytes."""
        assert MAX_MESSAGE_SIZE == 1_048_576
        assert CHUNK_SIZE == 100_000

    def test_ports(self):
        """The scheduler listens on 8765, daemons on 10245."""
        assert (SCHEDULER_PORT, DAEMON_PORT) == (8765, 10245)


class TestFieldValues:
    """Enumerated field values of §2.2 and §3.1."""

    def test_lang(self):
        """GET_CS lang: 0 C, 1 C++, 2 Objective-C, 3 Objective-C++, 4 custom."""
        assert [int(x) for x in (Lang.C, Lang.CXX, Lang.OBJC, Lang.OBJCXX, Lang.CUSTOM)] == [
            0, 1, 2, 3, 4,
        ]  # fmt: skip

    def test_arg_flags(self):
        """GET_CS arg_flags: 1.4's CompileJob Flag_g, Flag_g3, Flag_O, Flag_O2, Flag_Ol2."""
        bits = (ArgFlag.G, ArgFlag.G3, ArgFlag.O, ArgFlag.O2, ArgFlag.OL2)
        assert [int(x) for x in bits] == [0x1, 0x2, 0x4, 0x8, 0x10]

    def test_job_done_flags(self):
        """JOB_DONE flags: bit 0 FROM_SUBMITTER, bit 1 UnknownJobId."""
        assert (JobDoneFlag.FROM_SERVER, JobDoneFlag.FROM_SUBMITTER) == (0, 1)
        assert JobDoneFlag.UNKNOWN_JOB_ID == 2

    def test_env_features(self):
        """Environment features: 0x1 xz, 0x2 zstd."""
        assert (EnvFeature.ENV_XZ, EnvFeature.ENV_ZSTD) == (1, 2)

    def test_compression(self):
        """The blob algorithm word: 0 LZO, 1 zstd."""
        assert (Compression.LZO, Compression.ZSTD) == (0, 1)
