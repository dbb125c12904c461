"""Tests of iceserv.protocol.messages: hand-written wire fixtures and Hypothesis round trips.

Every fixture below was written out by hand from the reference's field tables
(``icecream-protocol.md`` §2.2, §2.3, §3.1, §10), never produced by our encoder.
Each string field is ``u32 n`` (length + 1) then the bytes and a NUL.
"""

from __future__ import annotations

import dataclasses

import lzo
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from iceserv.errors import LocalProtocolError, RemoteProtocolError
from iceserv.protocol import messages, records
from iceserv.protocol.compression import DEFAULT_LEVEL
from iceserv.protocol.constants import IceservMsgType, MsgType
from iceserv.protocol.messages import (
    BlacklistHostEnv,
    CompileFile,
    CompileResult,
    ConfCS,
    End,
    EnvTransfer,
    FileChunk,
    GetCS,
    GetInternalStatus,
    GetNativeEnv,
    HostAddresses,
    JobBegin,
    JobDone,
    JobLocalBegin,
    JobLocalDone,
    JobTicket,
    Login,
    MonGetCS,
    MonJobBegin,
    MonJobDone,
    MonLocalJobBegin,
    MonLogin,
    MonStats,
    NoCS,
    Ping,
    PushQuery,
    PushTargets,
    SlotsAnswer,
    SlotsQuery,
    Stats,
    StatusText,
    Text,
    Timeout,
    Unknown,
    UseCS,
    UseNativeEnv,
    VerifyEnv,
    VerifyEnvResult,
    decode,
    encode,
    layout,
)
from iceserv.protocol.wire import EnvEntry

from .strategies import ALL_CLASSES, VERSIONS, message_of

# --- hand-written pieces --------------------------------------------------------------

X86 = "00000007 7838365f363400"  # "x86_64"
E1 = "00000003 653100"  # "e1"
IP = "00000009 31302e302e302e3200"  # "10.0.0.2"
EMPTY = "00000001 00"  # ""
STIME = "6b0642d2"  # the start time of the reference's §4.3 capture, as a u32


def h(text: str) -> bytes:
    """Bytes from hex with any whitespace."""
    return bytes.fromhex(text)


def without(msg, *names):
    """*msg* with the named fields back at their class defaults (absent on the wire)."""
    defaults = records.asdict(type(msg)())
    return records.replace(msg, **{n: defaults[n] for n in names})


@dataclasses.dataclass(frozen=True)
class Fixture:
    """A message, its frame at *versions*, and what decoding that frame gives."""

    name: str
    versions: tuple[int, ...]
    message: object
    frame: str
    decoded: object = None  # None: decoding gives back `message`
    encode: bool = True  # False: a frame 1.4 may send that our encoder never produces

    @property
    def expected(self):
        return self.message if self.decoded is None else self.decoded


# --- every message at protocol 43 -------------------------------------------------------

AT_43 = [
    Fixture("UNKNOWN", (43,), Unknown(), "00000004 00000041"),
    Fixture("PING", (43,), Ping(), "00000004 00000042"),
    Fixture("END", (43,), End(), "00000004 00000043"),
    Fixture("TIMEOUT", (43,), Timeout(), "00000004 00000044"),
    Fixture(
        "GET_NATIVE_ENV",
        (43,),
        GetNativeEnv(compiler="/usr/bin/gcc", extrafiles=("/p.so",), compression="zstd"),
        "0000002c 00000045"
        " 0000000d 2f7573722f62696e2f67636300"  # compiler
        " 00000001 00000006 2f702e736f00"  # extrafiles ["/p.so"]
        " 00000005 7a73746400",  # compression "zstd"
    ),
    Fixture(
        "NATIVE_ENV",
        (43,),
        UseNativeEnv(native_version="/var/e.tgz"),
        "00000013 00000046 0000000b 2f7661722f652e74677a00",
    ),
    Fixture(  # reference §10, verbatim
        "GET_CS (§10)",
        (43,),
        GetCS(
            versions=(EnvEntry("x86_64", "e1"),), filename="src/a.c", lang=0, count=1,
            target="x86_64", arg_flags=0, client_id=3, preferred_host="",
            ignore_unverified=0, minimal_host_version=21, client_count=1,
            required_features=0, niceness=0,
        ),
        "00 00 00 5a 00 00 00 47 00 00 00 01 00 00 00 07 78 38 36 5f 36 34 00 00 00 00 03 65 31 00"
        "00 00 00 08 73 72 63 2f 61 2e 63 00 00 00 00 00 00 00 00 01 00 00 00 07 78 38 36 5f 36 34 00"  # noqa: E501
        "00 00 00 00 00 00 00 03 00 00 00 01 00 00 00 00 00 00 00 00 15 00 00 00 01 00 00 00 00 00 00 00 00",  # noqa: E501
    ),
    Fixture(
        "USE_CS",
        (43,),
        UseCS(job_id=7, port=10245, hostname="10.0.0.2", host_platform="x86_64", got_env=True,
              client_id=3, matched_job_id=5),
        f"00000030 00000048 00000007 00002805 {IP} {X86} 00000001 00000003 00000005",
    ),
    Fixture(  # reference §10, verbatim
        "NO_CS (§10)", (43,), NoCS(job_id=1, client_id=3),
        "00 00 00 0c  00 00 00 60  00 00 00 01  00 00 00 03",
    ),
    Fixture(
        "COMPILE_FILE",
        (43,),
        CompileFile(lang=1, job_id=7, args=("-O2", "-c"), environment="e1", target="x86_64",
                    compiler_name="g++", input_file="a.cc", working_dir="/w", output_file="a.o",
                    dwarf_fission=True),
        "00000055 00000049 00000001 00000007"
        " 00000002 00000004 2d4f3200 00000003 2d6300"  # args ["-O2", "-c"]
        f" {E1} {X86}"
        " 00000004 672b2b00"  # compiler_name "g++"
        " 00000005 612e636300"  # input_file "a.cc"
        " 00000003 2f7700"  # working_dir "/w"
        " 00000004 612e6f00"  # output_file "a.o"
        " 00000001",  # dwarf_fission
    ),
    Fixture(
        "COMPILE_RESULT",
        (43,),
        CompileResult(err="e", out="o", status=1, was_out_of_memory=False, have_dwo=True),
        "0000001c 0000004b 00000002 6500 00000002 6f00 00000001 00000000 00000001",
    ),
    Fixture(
        "COMPILE_RESULT signed status",
        (43,),
        CompileResult(err="", out="", status=-1),
        f"0000001a 0000004b {EMPTY} {EMPTY} ffffffff 00000000 00000000",
    ),
    Fixture(
        "JOB_BEGIN",
        (43,),
        JobBegin(job_id=7, stime=0x6B0642D2, client_count=2),
        f"00000010 0000004c 00000007 {STIME} 00000002",
    ),
    Fixture(
        "JOB_DONE",
        (43,),
        JobDone(job_id=7, exitcode=0, real_msec=1000, user_msec=900, sys_msec=50, pfaults=1234,
                in_compressed=29448, in_uncompressed=117856, out_compressed=1464,
                out_uncompressed=1464, flags=0, client_count=1),
        "00000034 0000004d 00000007 00000000 000003e8 00000384 00000032 000004d2"
        " 00007308 0001cc60 000005b8 000005b8 00000000 00000001",
    ),
    Fixture(
        "JOB_DONE signed exit code",
        (43,),
        JobDone(job_id=7, exitcode=-1, flags=1),
        "00000034 0000004d 00000007 ffffffff" + " 00000000" * 8 + " 00000001 00000000",
    ),
    Fixture(
        "JOB_LOCAL_BEGIN",
        (43,),
        JobLocalBegin(stime=0x6B0642D2, outfile="/w/a.o", id=3),
        f"00000017 0000004e {STIME} 00000007 2f772f612e6f00 00000003",
    ),
    Fixture("JOB_LOCAL_DONE", (43,), JobLocalDone(job_id=9), "00000008 0000004f 00000009"),
    Fixture(  # reference §10, verbatim
        "LOGIN (§10)",
        (43,),
        Login(port=10245, max_kids=2, envs=(), nodename="nodeX", host_platform="x86_64",
              chroot_possible=True, noremote=False, supported_features=3),
        "00 00 00 31 00 00 00 50 00 00 28 05 00 00 00 02 00 00 00 00 00 00 00 06 6e 6f 64 65 58 00"
        "00 00 00 07 78 38 36 5f 36 34 00 00 00 00 01 00 00 00 00 00 00 00 03",
    ),
    Fixture(
        "STATS",
        (43,),
        Stats(load=250, load_avg1=1500, load_avg5=1200, load_avg10=900, free_mem=2048),
        "00000018 00000051 000000fa 000005dc 000004b0 00000384 00000800",
    ),
    Fixture("MON_LOGIN", (43,), MonLogin(), "00000004 00000052"),
    Fixture(
        "MON_GET_CS",
        (43,),
        MonGetCS(filename="src/a.c", lang=1, job_id=9, client_id=2),
        "0000001c 00000053 00000008 7372632f612e6300 00000001 00000009 00000002",
    ),
    Fixture(
        "MON_JOB_BEGIN",
        (43,),
        MonJobBegin(job_id=9, stime=0x6B0642D2, host_id=2),
        f"00000010 00000054 00000009 {STIME} 00000002",
    ),
    Fixture(  # what the scheduler sends for a job it aborts itself (§2.2 MON_JOB_DONE)
        "MON_JOB_DONE",
        (43,),
        MonJobDone(job_id=9, exitcode=255),
        "00000034 00000055 00000009 000000ff" + " 00000000" * 10,
    ),
    Fixture(
        "MON_LOCAL_JOB_BEGIN",
        (43,),
        MonLocalJobBegin(host_id=2, job_id=10, stime=0x6B0642D2, file="a.o"),
        f"00000018 00000056 00000002 0000000a {STIME} 00000004 612e6f00",
    ),
    Fixture(
        "MON_STATS",
        (43,),
        MonStats(host_id=2, statmsg="State:Offline\n"),
        "0000001b 00000057 00000002 0000000f 53746174653a4f66666c696e650a00",
    ),
    Fixture(
        "TRANFER_ENV",
        (43,),
        EnvTransfer(name="e1", target="x86_64"),
        f"00000016 00000058 {E1} {X86}",
    ),
    Fixture("TEXT", (43,), Text(text="listcs"), "0000000f 00000059 00000007 6c697374637300"),
    Fixture(
        "STATUS_TEXT",
        (43,),
        StatusText(text="empty environment"),
        "0000001a 0000005a 00000012 656d70747920656e7669726f6e6d656e7400",
    ),
    Fixture("GET_INTERNALS", (43,), GetInternalStatus(), "00000004 0000005b"),
    Fixture(  # reference §10, verbatim
        "CS_CONF (§10)",
        (43,),
        ConfCS(max_scheduler_pong=3, max_scheduler_ping=36, bench_source=""),
        "00 00 00 11  00 00 00 5c  00 00 00 03  00 00 00 24  00 00 00 01 00",
    ),
    Fixture(
        "VERIFY_ENV",
        (43,),
        VerifyEnv(environment="e1", target="x86_64"),
        f"00000016 0000005d {E1} {X86}",
    ),
    Fixture("VERIFY_ENV_RESULT", (43,), VerifyEnvResult(ok=True), "00000008 0000005e 00000001"),
    Fixture(  # iceserv only: never sent to a 1.4 peer
        "SLOTS_QUERY",
        (43,),
        SlotsQuery(platform="x86_64"),
        f"0000000f 1ce50001 {X86}",
    ),
    Fixture(
        "SLOTS_ANSWER",
        (43,),
        SlotsAnswer(total=10, free=7, hosts=3, source="cluster"),
        "0000001c 1ce50002 0000000a 00000007 00000003 00000008 636c757374657200",
    ),
    Fixture(  # iceserv only: a daemon asks where to push its native environment
        "PUSH_QUERY",
        (43,),
        PushQuery(platform="x86_64", environment="e1", required_features=2),
        f"0000001a 1ce50003 {X86} {E1} 00000002",
    ),
    Fixture(
        "PUSH_TARGETS",
        (43,),
        PushTargets(environment="e1", target="x86_64", hosts=("10.0.0.2:10245",)),
        f"0000002d 1ce50004 {E1} {X86} 00000001 0000000f 31302e302e302e323a313032343500",
    ),
    Fixture(  # iceserv only: a job ticket, scheduler -> daemon -> client -> compile server
        "JOB_TICKET",
        (43,),
        JobTicket(job_id=7, client_id=3, ticket="t1", secret="ab"),  # noqa: S106 - hex salt fixture
        "0000001a 1ce50008 00000007 00000003 00000003 743100 00000003 616200",
    ),
    Fixture(  # iceserv only: a daemon's addresses of both families and its clients' families
        "HOST_ADDRESSES",
        (43,),
        HostAddresses(addresses=("10.0.0.2", "fd00::2"), families=("ipv4", "ipv6")),
        "00000037 1ce50009 00000002 00000009 31302e302e302e3200 00000008 666430303a3a3200"
        " 00000002 00000005 6970763400 00000005 6970763600",
    ),
    Fixture(
        "BLACKLIST_HOST_ENV",
        (43,),
        BlacklistHostEnv(environment="e1", target="x86_64", hostname="10.0.0.2"),
        f"00000023 0000005f {E1} {X86} {IP}",
    ),
]  # fmt: skip

AT_43_BY_NAME = {f.name: f for f in AT_43}

# --- layouts at and just below each version threshold -------------------------------------

GET_CS_FULL = GetCS(
    versions=(EnvEntry("x86_64", "e1"),), filename="a.c", lang=1, count=3, target="x86_64",
    arg_flags=9, client_id=4, preferred_host="h", ignore_unverified=1, minimal_host_version=35,
    client_count=6, required_features=2, niceness=5,
)  # fmt: skip
GET_CS_21 = f"00000001 {X86} {E1} 00000004 612e6300 00000001 00000003 {X86} 00000009 00000004"
GET_CS_LATER = ("preferred_host", "ignore_unverified", "minimal_host_version", "client_count",
                "required_features", "niceness")  # fmt: skip

USE_CS_FULL = UseCS(job_id=7, port=10245, hostname="10.0.0.2", host_platform="x86_64",
                    got_env=True, client_id=3, matched_job_id=5)  # fmt: skip
USE_CS_27 = f"00000007 00002805 {IP} {X86} 00000001 00000003"

LOGIN_FULL = Login(port=10245, max_kids=4, envs=(EnvEntry("x86_64", "e1"),), nodename="n1",
                   host_platform="x86_64", chroot_possible=True, noremote=True,
                   supported_features=3)  # fmt: skip
LOGIN_25 = f"00002805 00000004 00000001 {X86} {E1} 00000003 6e3100 {X86} 00000001"

COMPILE_FILE_FULL = AT_43_BY_NAME["COMPILE_FILE"].message
CF_HEAD = "00000001 00000007"
CF_ARGS = "00000002 00000004 2d4f3200 00000003 2d6300"
CF_ENV = f"{E1} {X86}"
CF_30 = "00000004 672b2b00"
CF_34 = "00000005 612e636300 00000003 2f7700"
CF_35 = "00000004 612e6f00 00000001"

COMPILE_RESULT_FULL = AT_43_BY_NAME["COMPILE_RESULT"].message
JOB_BEGIN_FULL = JobBegin(job_id=7, stime=0x6B0642D2, client_count=2)
JOB_DONE_STATS = "000003e8 00000384 00000032 000004d2 00007308 0001cc60 000005b8 000005b8"
JOB_DONE_UNKNOWN_ID = JobDone(
    job_id=4, exitcode=200, real_msec=1000, user_msec=900, sys_msec=50, pfaults=1234,
    in_compressed=29448, in_uncompressed=117856, out_compressed=1464, out_uncompressed=1464,
    flags=3, client_count=1,
)  # fmt: skip

GET_NATIVE_ENV_FULL = AT_43_BY_NAME["GET_NATIVE_ENV"].message
GNE_32 = "0000000d 2f7573722f62696e2f67636300 00000001 00000006 2f702e736f00"

MON_GET_CS = MonGetCS(filename="a.c", lang=1, job_id=9, client_id=2)
# Below 29: a whole GET_CS body (no envs, the file, the language, count 1, no target,
# arg_flags 0, client 0, and preferred_host from 22 on), then job id and client id.
MON_GET_CS_OLD = f"00000000 00000004 612e6300 00000001 00000001 {EMPTY} 00000000 00000000"

THRESHOLDS = [
    # GET_CS: 22 preferred_host, 31 ignore_unverified, 34 minimal_host_version,
    # 39 client_count, 42 required_features, 43 niceness.
    Fixture("GET_CS 21", (21,), GET_CS_FULL, f"0000003d 00000047 {GET_CS_21}",
            without(GET_CS_FULL, *GET_CS_LATER)),
    Fixture("GET_CS 22..30", (22, 30), GET_CS_FULL, f"00000043 00000047 {GET_CS_21} 00000002 6800",
            without(GET_CS_FULL, *GET_CS_LATER[1:])),
    Fixture("GET_CS 31..33", (31, 33), GET_CS_FULL,
            f"00000047 00000047 {GET_CS_21} 00000002 6800 00000001",
            without(GET_CS_FULL, *GET_CS_LATER[2:])),
    Fixture("GET_CS 34..38", (34, 38), GET_CS_FULL,
            f"0000004b 00000047 {GET_CS_21} 00000002 6800 00000001 00000023",
            without(GET_CS_FULL, *GET_CS_LATER[3:])),
    Fixture("GET_CS 39..41", (39, 41), GET_CS_FULL,
            f"0000004f 00000047 {GET_CS_21} 00000002 6800 00000001 00000023 00000006",
            without(GET_CS_FULL, *GET_CS_LATER[4:])),
    Fixture("GET_CS 42", (42,), GET_CS_FULL,
            f"00000053 00000047 {GET_CS_21} 00000002 6800 00000001 00000023 00000006 00000002",
            without(GET_CS_FULL, "niceness")),
    Fixture("GET_CS 43", (43,), GET_CS_FULL,
            f"00000057 00000047 {GET_CS_21} 00000002 6800 00000001 00000023 00000006 00000002"
            " 00000005"),
    # USE_CS: 28 matched_job_id.
    Fixture("USE_CS 21..27", (21, 27), USE_CS_FULL, f"0000002c 00000048 {USE_CS_27}",
            without(USE_CS_FULL, "matched_job_id")),
    Fixture("USE_CS 28", (28,), USE_CS_FULL, f"00000030 00000048 {USE_CS_27} 00000005"),
    # LOGIN: 26 noremote, 42 supported_features.
    Fixture("LOGIN 21..25", (21, 25), LOGIN_FULL, f"00000038 00000050 {LOGIN_25}",
            without(LOGIN_FULL, "noremote", "supported_features")),
    Fixture("LOGIN 26..41", (26, 41), LOGIN_FULL, f"0000003c 00000050 {LOGIN_25} 00000001",
            without(LOGIN_FULL, "supported_features")),
    Fixture("LOGIN 42", (42,), LOGIN_FULL, f"00000040 00000050 {LOGIN_25} 00000001 00000003"),
    # COMPILE_FILE: two lists below 41; 30 compiler_name; 34 input_file, working_dir;
    # 35 output_file, dwarf_fission.
    Fixture("COMPILE_FILE 21..29", (21, 29), COMPILE_FILE_FULL,
            f"00000035 00000049 {CF_HEAD} {CF_ARGS} 00000000 {CF_ENV}",
            without(COMPILE_FILE_FULL, "compiler_name", "input_file", "working_dir",
                    "output_file", "dwarf_fission")),
    Fixture("COMPILE_FILE 30..33", (30, 33), COMPILE_FILE_FULL,
            f"0000003d 00000049 {CF_HEAD} {CF_ARGS} 00000000 {CF_ENV} {CF_30}",
            without(COMPILE_FILE_FULL, "input_file", "working_dir", "output_file",
                    "dwarf_fission")),
    Fixture("COMPILE_FILE 34", (34,), COMPILE_FILE_FULL,
            f"0000004d 00000049 {CF_HEAD} {CF_ARGS} 00000000 {CF_ENV} {CF_30} {CF_34}",
            without(COMPILE_FILE_FULL, "output_file", "dwarf_fission")),
    Fixture("COMPILE_FILE 35..40", (35, 40), COMPILE_FILE_FULL,
            f"00000059 00000049 {CF_HEAD} {CF_ARGS} 00000000 {CF_ENV} {CF_30} {CF_34} {CF_35}"),
    Fixture("COMPILE_FILE 41", (41,), COMPILE_FILE_FULL,
            f"00000055 00000049 {CF_HEAD} {CF_ARGS} {CF_ENV} {CF_30} {CF_34} {CF_35}"),
    Fixture("COMPILE_FILE 40, remote + rest joined", (35, 40),
            records.replace(COMPILE_FILE_FULL, args=("-c", "-O2")),
            f"00000059 00000049 {CF_HEAD}"
            " 00000001 00000003 2d6300"  # remote ["-c"]
            " 00000001 00000004 2d4f3200"  # rest ["-O2"]
            f" {CF_ENV} {CF_30} {CF_34} {CF_35}",
            encode=False),
    # COMPILE_RESULT: 35 have_dwo.
    Fixture("COMPILE_RESULT 21..34", (21, 34), COMPILE_RESULT_FULL,
            "00000018 0000004b 00000002 6500 00000002 6f00 00000001 00000000",
            without(COMPILE_RESULT_FULL, "have_dwo")),
    Fixture("COMPILE_RESULT 35", (35,), COMPILE_RESULT_FULL,
            "0000001c 0000004b 00000002 6500 00000002 6f00 00000001 00000000 00000001"),
    # JOB_BEGIN: 39 client_count.
    Fixture("JOB_BEGIN 21..38", (21, 38), JOB_BEGIN_FULL, f"0000000c 0000004c 00000007 {STIME}",
            without(JOB_BEGIN_FULL, "client_count")),
    Fixture("JOB_BEGIN 39", (39,), JOB_BEGIN_FULL,
            f"00000010 0000004c 00000007 {STIME} 00000002"),
    # JOB_DONE: 39 client_count; below 39 exit code 200 is the UNKNOWN_JOB_ID flag.
    Fixture("JOB_DONE 39 flags", (39,), records.replace(JOB_DONE_UNKNOWN_ID, exitcode=0),
            f"00000034 0000004d 00000004 00000000 {JOB_DONE_STATS} 00000003 00000001"),
    Fixture("JOB_DONE 38 flag sent as exit code 200", (21, 38),
            records.replace(JOB_DONE_UNKNOWN_ID, exitcode=0),
            f"00000030 0000004d 00000004 000000c8 {JOB_DONE_STATS} 00000003",
            without(JOB_DONE_UNKNOWN_ID, "client_count")),
    Fixture("JOB_DONE 38 exit code 200 read as flag", (21, 38),
            records.replace(JOB_DONE_UNKNOWN_ID, flags=1),
            f"00000030 0000004d 00000004 000000c8 {JOB_DONE_STATS} 00000001",
            without(JOB_DONE_UNKNOWN_ID, "client_count"), encode=False),
    Fixture("JOB_DONE 39 exit code 200 is just an exit code", (39,),
            records.replace(JOB_DONE_UNKNOWN_ID, flags=1, client_count=0),
            f"00000034 0000004d 00000004 000000c8 {JOB_DONE_STATS} 00000001 00000000"),
    Fixture("JOB_DONE 38 plain", (38,), JobDone(job_id=4, exitcode=1),
            "00000030 0000004d 00000004 00000001" + " 00000000" * 9),
    Fixture("MON_JOB_DONE 38 flag sent as exit code 200", (38,),
            MonJobDone(job_id=9, exitcode=0, flags=2),
            "00000030 00000055 00000009 000000c8" + " 00000000" * 8 + " 00000002",
            MonJobDone(job_id=9, exitcode=200, flags=2)),
    Fixture("MON_JOB_DONE 39", (39,), MonJobDone(job_id=9, exitcode=0, flags=2, client_count=1),
            "00000034 00000055 00000009 00000000" + " 00000000" * 8 + " 00000002 00000001"),
    # MON_GET_CS: short from 29, a GET_CS body before.
    Fixture("MON_GET_CS 21", (21,), MON_GET_CS,
            "0000002d 00000053 00000000 00000004 612e6300 00000001 00000001 00000001 00"
            " 00000000 00000000 00000009 00000002"),
    Fixture("MON_GET_CS 22..28", (22, 28), MON_GET_CS,
            f"00000032 00000053 {MON_GET_CS_OLD} {EMPTY} 00000009 00000002"),
    Fixture("MON_GET_CS 28 full GET_CS body", (28,), MON_GET_CS,
            f"0000004b 00000053 00000001 {X86} {E1} 00000004 612e6300 00000001 00000003 {X86}"
            " 00000009 00000004 00000002 6800 00000009 00000002", encode=False),
    Fixture("MON_GET_CS 29", (29,), MON_GET_CS,
            "00000018 00000053 00000004 612e6300 00000001 00000009 00000002"),
    # GET_NATIVE_ENV: 32 compiler + extrafiles, 42 compression.
    Fixture("GET_NATIVE_ENV 21..31", (21, 31), GET_NATIVE_ENV_FULL, "00000004 00000045",
            GetNativeEnv()),
    Fixture("GET_NATIVE_ENV 32..41", (32, 41), GET_NATIVE_ENV_FULL,
            f"00000023 00000045 {GNE_32}", without(GET_NATIVE_ENV_FULL, "compression")),
    Fixture("GET_NATIVE_ENV 42", (42,), GET_NATIVE_ENV_FULL,
            f"0000002c 00000045 {GNE_32} 00000005 7a73746400"),
]  # fmt: skip

FIXTURES = [(f, v) for f in AT_43 + THRESHOLDS for v in f.versions]
ENCODABLE = [(f, v) for f, v in FIXTURES if f.encode]


def _id(param):
    fixture, version = param
    return f"{fixture.name}@{version}"


class TestFixtures:
    """Hand-written frames, both ways."""

    def test_every_class_has_a_fixture_at_43(self):
        """Each of the 32 1.4 message classes and iceserv's 6 has a fixture (FILE_CHUNK: below)."""
        assert {type(f.message) for f in AT_43} | {FileChunk} == set(ALL_CLASSES)
        assert len(ALL_CLASSES) == 32 + 6

    @pytest.mark.parametrize("param", FIXTURES, ids=[_id(p) for p in FIXTURES])
    def test_fixture_is_well_formed(self, param):
        """The fixture's length word counts the bytes after it (guards against typos here)."""
        fixture, _ = param
        frame = h(fixture.frame)
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4

    @pytest.mark.parametrize("param", ENCODABLE, ids=[_id(p) for p in ENCODABLE])
    def test_encode(self, param):
        """Encoding the message gives exactly the hand-written frame."""
        fixture, version = param
        assert encode(fixture.message, version) == h(fixture.frame)

    @pytest.mark.parametrize("param", FIXTURES, ids=[_id(p) for p in FIXTURES])
    def test_decode(self, param):
        """Decoding the hand-written frame's payload gives the message."""
        fixture, version = param
        frame = h(fixture.frame)
        msg_type = int.from_bytes(frame[4:8], "big")
        assert decode(msg_type, frame[8:], version) == fixture.expected


# --- FILE_CHUNK ---------------------------------------------------------------------------

HELLO_LZO = "1668656c6c6f110000"  # LZO1X: 17+5 literals "hello", then the end marker 11 00 00
HELLO_ZSTD = "28b52ffd 20 05 290000 68656c6c6f"  # magic, single segment + 1-byte size, raw block


class TestFileChunk:
    """FILE_CHUNK: a compressed blob, LZO below 40, zstd with an algorithm word from 40."""

    @pytest.mark.parametrize(
        ("version", "frame", "packed"),
        [
            (39, f"00000015 0000004a 00000005 00000009 {HELLO_LZO}", 9),
            (21, f"00000015 0000004a 00000005 00000009 {HELLO_LZO}", 9),
            (40, f"0000001e 0000004a 00000005 0000000e 00000001 {HELLO_ZSTD}", 14),
            (43, f"0000001e 0000004a 00000005 0000000e 00000001 {HELLO_ZSTD}", 14),
            (43, f"00000019 0000004a 00000005 00000009 00000000 {HELLO_LZO}", 9),
        ],
        ids=["lzo@39", "lzo@21", "zstd@40", "zstd@43", "lzo-word@43"],
    )
    def test_decode_hand_written(self, version, frame, packed):
        """A hand-made LZO or zstd chunk decodes to its data and records the packed size."""
        raw = h(frame)
        msg = decode(0x4A, raw[8:], version)
        assert msg == FileChunk(b"hello")
        assert msg.compressed_size == packed

    @pytest.mark.parametrize("version", [21, 39])
    def test_encode_lzo_below_40(self, version):
        """Below 40 the header is sizes only and the data is raw LZO1X."""
        data = b"hello, hello, hello world" * 40
        frame = encode(FileChunk(data), version)
        packed_len = int.from_bytes(frame[12:16], "big")
        assert frame[4:8] == h("0000004a")
        assert int.from_bytes(frame[8:12], "big") == len(data)
        assert int.from_bytes(frame[:4], "big") == 4 + 8 + packed_len == len(frame) - 4
        assert lzo.decompress(frame[16:], False, len(data)) == data  # noqa: FBT003
        assert packed_len < len(data)

    @pytest.mark.parametrize("version", [40, 43])
    def test_encode_zstd_from_40(self, version):
        """From 40 the header carries algorithm 1 and the data is one zstd frame."""
        data = b"hello, hello, hello world" * 40
        frame = encode(FileChunk(data), version)
        packed_len = int.from_bytes(frame[12:16], "big")
        assert frame[4:8] == h("0000004a")
        assert int.from_bytes(frame[8:12], "big") == len(data)
        assert frame[16:20] == h("00000001")
        assert int.from_bytes(frame[:4], "big") == 4 + 12 + packed_len == len(frame) - 4
        assert frame[20:24] == h("28b52ffd")
        assert zstandard.ZstdDecompressor().decompress(frame[20:]) == data

    def test_compressed_size_is_not_compared(self):
        """Two chunks with the same data are equal whatever their recorded packed size."""
        assert FileChunk(b"x", compressed_size=3) == FileChunk(b"x", compressed_size=9)


# --- codec entry points ---------------------------------------------------------------------


class TestIceservTypes:
    """iceserv's own message types stay clear of 1.4's."""

    def test_numbered_outside_1_4s_range(self):
        """1.4 knows 'A'..'`' (65..96); ours are far above, so no future 1.4 type collides."""
        assert all(t > 0xFFFF for t in IceservMsgType)
        assert not set(IceservMsgType) & {int(t) for t in MsgType}

    def test_unknown_type_near_ours_is_refused(self):
        """A type next to ours that we never defined is still a protocol error."""
        with pytest.raises(RemoteProtocolError):
            decode(IceservMsgType.SLOTS_ANSWER + 1, b"", 43)


class TestCodec:
    """encode, decode and layout as functions."""

    def test_encode_refuses_non_messages(self):
        """Encoding an object that is not a message is our mistake."""
        with pytest.raises(LocalProtocolError):
            encode("PING", 43)  # type: ignore[arg-type]

    @pytest.mark.parametrize("msg_type", [0, 64, 97, 0x4000_0041, 2**32 - 1])
    def test_decode_unknown_type(self, msg_type):
        """A type code outside 'A'..'`' is the peer's error and names the type."""
        with pytest.raises(RemoteProtocolError) as info:
            decode(msg_type, b"", 43)
        assert info.value.msg_type == msg_type

    def test_decode_needs_exact_length(self):
        """Missing or extra payload bytes are rejected (§1.5)."""
        with pytest.raises(RemoteProtocolError):
            decode(0x4F, h("000009"), 43)
        with pytest.raises(RemoteProtocolError):
            decode(0x4F, h("00000009 00"), 43)
        with pytest.raises(RemoteProtocolError):
            decode(0x42, h("00"), 43)

    def test_layout_follows_the_version(self):
        """layout lists only the fields on the wire at that version, in wire order."""
        assert layout(UseCS, 27) == (
            ("job_id", "u32"), ("port", "u32"), ("hostname", "string"),
            ("host_platform", "string"), ("got_env", "bool"), ("client_id", "u32"),
        )  # fmt: skip
        assert layout(UseCS, 28)[-1] == ("matched_job_id", "u32")
        assert layout(Ping, 43) == ()

    def test_escaped_bytes_come_back_canonical(self):
        """Escaped bytes that form valid UTF-8 decode as the character they spell."""
        frame = encode(StatusText("\udcc3\udca9"), 43)
        assert frame[8:] == h("00000003 c3a900")
        assert decode(0x5A, frame[8:], 43) == StatusText("é")

    def test_invalid_utf8_round_trips(self):
        """Bytes that are not UTF-8 survive decode and encode unchanged."""
        payload = h("00000004 ff61fe00")
        msg = decode(0x5A, payload, 43)
        assert msg == StatusText("\udcffa\udcfe")
        assert encode(msg, 43)[8:] == payload


# --- Hypothesis round trips -----------------------------------------------------------------

ROUND_TRIP_CASES = [(cls, v) for cls in ALL_CLASSES for v in VERSIONS]


class TestRoundTrip:
    """decode(encode(m, v), v) == m for every class at every version 21..43."""

    @pytest.mark.parametrize(
        ("cls", "version"), ROUND_TRIP_CASES, ids=[f"{c.__name__}@{v}" for c, v in ROUND_TRIP_CASES]
    )
    @settings(max_examples=12, deadline=None)
    @given(data=st.data())
    def test_round_trip(self, cls, version, data):
        """A message with only on-the-wire fields set survives encode then decode."""
        msg = data.draw(message_of(cls, version))
        frame = encode(msg, version)
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4
        assert int.from_bytes(frame[4:8], "big") == cls.TYPE
        assert decode(cls.TYPE, frame[8:], version) == msg


# --- hot layouts: the generated codec ---------------------------------------------------------

#: Layouts the generated codec takes: every class at every version but the special ones.
HOT_CASES = [
    (cls, v)
    for cls in ALL_CLASSES
    for v in VERSIONS
    if messages._make_decoder(int(cls.TYPE), v) is not messages._never
]


def _outcome(call, *args):
    """What *call* gives: ("ok", repr of the result) or ("error", type, text, msg_type)."""
    try:
        result = call(*args)
    except Exception as exc:  # noqa: BLE001 - the outcome of any call is compared
        return ("error", type(exc), str(exc), getattr(exc, "msg_type", None))
    return ("ok", repr(result))


@st.composite
def _mangled(draw, payload: bytes) -> bytes:
    """*payload* cut short, lengthened, with a word overwritten, or random bytes instead."""
    how = draw(st.sampled_from(("cut", "extend", "word", "random")))
    if how == "cut" and payload:
        return payload[: draw(st.integers(0, len(payload) - 1))]
    if how == "extend":
        return payload + draw(st.binary(min_size=1, max_size=12))
    if how == "word" and len(payload) >= 4:
        at = draw(st.integers(0, len(payload) - 4))
        word = draw(st.sampled_from((0, 1, 3, 0xFFFF_FFFF, 0x8000_0000)) | st.integers(0, 64))
        return payload[:at] + word.to_bytes(4, "big") + payload[at + 4 :]
    return draw(st.binary(max_size=40))


class TestHotCodec:
    """A hot layout's generated codec gives the table walk's bytes, messages and errors."""

    def test_special_layouts_get_none(self):
        assert messages._make_decoder(int(MsgType.FILE_CHUNK), 43) is messages._never
        assert messages._make_decoder(int(MsgType.COMPILE_FILE), 43) is messages._never
        assert messages._make_decoder(int(MsgType.MON_GET_CS), 28) is messages._never
        assert messages._make_decoder(int(MsgType.JOB_DONE), 38) is messages._never
        assert messages._make_encoder(JobDone, 38) is messages._never
        assert messages._make_decoder(999, 43) is messages._never
        assert messages._make_decoder(int(MsgType.GET_CS), 43) is not messages._never

    def test_a_layout_gets_hot_after_its_codings(self, monkeypatch):
        monkeypatch.setattr(messages, "_DECODERS", {})
        monkeypatch.setattr(messages, "_ENCODERS", {})
        monkeypatch.setattr(messages, "_SEEN", {})
        msg = JobBegin(7, 8, 9)
        frame = messages._encode_table(msg, 43, DEFAULT_LEVEL)
        for _ in range(messages.HOT_CODEC - 1):
            assert encode(msg, 43) == frame
            assert decode(int(MsgType.JOB_BEGIN), frame[8:], 43) == msg
        assert not messages._DECODERS
        assert not messages._ENCODERS
        assert encode(msg, 43) == frame
        assert decode(int(MsgType.JOB_BEGIN), frame[8:], 43) == msg
        assert messages._DECODERS[(int(MsgType.JOB_BEGIN), 43)] is not messages._never
        assert messages._ENCODERS[(JobBegin, 43)] is not messages._never

    @settings(max_examples=400, deadline=None)
    @given(data=st.data())
    def test_same_bytes_and_messages(self, data):
        cls, version = data.draw(st.sampled_from(HOT_CASES))
        msg = data.draw(message_of(cls, version))
        frame = messages._encode_table(msg, version, DEFAULT_LEVEL)
        assert messages._make_encoder(cls, version)(msg) == frame
        decoded = messages._make_decoder(int(cls.TYPE), version)(frame[8:])
        assert repr(decoded) == repr(messages._decode_table(int(cls.TYPE), frame[8:], version))
        assert repr(decoded) == repr(msg)

    @settings(max_examples=600, deadline=None)
    @given(data=st.data())
    def test_bad_payloads_fail_as_the_table_walk(self, data):
        cls, version = data.draw(st.sampled_from(HOT_CASES))
        payload = encode(data.draw(message_of(cls, version)), version)[8:]
        bad = data.draw(_mangled(payload))
        msg_type = int(cls.TYPE)
        decoder = messages._make_decoder(msg_type, version)
        expected = _outcome(messages._decode_table, msg_type, bad, version)
        got = _outcome(decoder, bad)
        # The generated decoder takes only what the table walk takes, as the same message...
        assert got[0] == "error" or got == expected
        # ... and decode() with it in place answers exactly as the table walk.
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(messages._DECODERS, (msg_type, version), decoder)
            assert _outcome(decode, msg_type, bad, version) == expected

    @pytest.mark.parametrize(
        ("msg", "version"),
        [
            (JobBegin(job_id=-1), 43),
            (JobBegin(job_id=2**32), 43),
            (JobDone(exitcode=2**31), 43),
            (JobDone(exitcode=-(2**31) - 1), 43),
            (JobDone(exitcode="1"), 43),  # type: ignore[arg-type]
            (UseCS(hostname="a\0b"), 43),
            (UseCS(hostname="\ud800"), 43),  # a lone surrogate that is no escaped byte
            (GetCS(versions=(EnvEntry("x\0", "y"),)), 43),
            (GetCS(versions=((1, 2),)), 43),  # type: ignore[arg-type]
            (HostAddresses(addresses=("a", None)), 43),  # type: ignore[arg-type]
            (StatusText(text="x" * (1 << 20)), 43),  # over the frame limit
            (Stats(load=1.5), 43),  # type: ignore[arg-type]
        ],
        ids=repr,
    )
    def test_bad_values_fail_as_the_table_walk(self, msg, version, monkeypatch):
        key = (type(msg), version)
        monkeypatch.setitem(messages._ENCODERS, key, messages._make_encoder(*key))
        expected = _outcome(messages._encode_table, msg, version, DEFAULT_LEVEL)
        assert expected[0] == "error"
        assert _outcome(encode, msg, version) == expected

    def test_true_and_false_stay_bools(self):
        payload = (5).to_bytes(4, "big")
        hot = messages._make_decoder(int(MsgType.VERIFY_ENV_RESULT), 43)(payload)
        assert hot == messages._decode_table(int(MsgType.VERIFY_ENV_RESULT), payload, 43)
        assert hot.ok is True
