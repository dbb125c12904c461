"""The remote path and every way the cluster can fail (reference §5.1, §8.7, §8.8).

Each scenario runs the real 1.4 ``icecc`` and ours against the same fake
daemon and fake compile server (see ``bed.py``).  The outcome must be the
scenario's (object from the server, object from a local compile, or a
status), and the two transcripts must be equal: the same messages to the
daemon (including BLACKLIST_HOST_ENV, JOB_DONE, the second connection of a
fallback), the same job and tarball at the server, the same compiler calls,
files, status and stdout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from testbed.client_fakes import FakeDaemon, FakeServer

from iceserv.protocol import (
    BlacklistHostEnv,
    CompileFile,
    End,
    EnvTransfer,
    JobDone,
    JobLocalBegin,
    JobTicket,
    UseCS,
)

if TYPE_CHECKING:
    from client.bed import Transcript, WrapperBed

SERVER_OBJ = b"object from the fake server\n"
LOCAL_OBJ = b"fake object of gcc\n"
UNUSED_PORT = 1  # nothing listens on port 1 of 127.0.0.1


@dataclass(frozen=True)
class Case:
    """A remote scenario and what must come of it."""

    id: str
    outcome: str  # "server", "local" (object from a local compile) or "status"
    args: tuple[str, ...] = ("-c", "hello.c")
    compiler: str = "gcc"
    server: dict[str, object] = field(default_factory=dict)
    got_env: bool = True
    host: str = "localhost"  # USE_CS host; "self" = 127.0.0.1 port 0; "refused" = no server
    daemon: dict[str, object] = field(default_factory=dict)
    env: dict[str, str | None] = field(default_factory=dict)
    status: int = 0


CASES = [
    Case("remote-ok", "server"),
    Case("remote-with-environment-transfer", "server", got_env=False),
    Case("remote-cxx", "server", args=("-c", "hello.cpp"), compiler="g++"),
    Case(
        "remote-output-printed-without-caret-workaround",
        "server",
        server={"out": "remote says hi\n", "err": "hello.c:1: warning: x\n"},
        env={"ICECC_CARET_WORKAROUND": "0"},
    ),
    Case(
        "remote-dwo",
        "server",
        args=("-gsplit-dwarf", "-c", "hello.c", "-o", "hello.o"),
        server={"dwo": b"dwo from the fake server\n"},
    ),
    Case("remote-slow-network", "server", env={"ICECC_SLOW_NETWORK": "1"}, got_env=False),
    Case("remote-compression-level", "server", env={"ICECC_COMPRESSION": "19"}),
    Case(
        "remote-compile-error-is-final",
        "status",
        server={"status": 1, "err": "error: no\n"},
        compiler="clang",
        status=1,
    ),
    Case(
        "protocol-39-server",
        "server",
        args=("-O2", "-DX", "-c", "hello.c"),
        server={"version": 39},
        got_env=False,
    ),
    Case("protocol-30-server", "server", args=("-O2", "-c", "hello.c"), server={"version": 30}),
    Case(
        "unverifiable-server-refused",
        "local",
        server={"version": 30},
        env={"ICECC_IGNORE_UNVERIFIED": "1"},
    ),
    Case("repeat-rate-three-servers-agree", "server", env={"ICECC_REPEAT_RATE": "1000"}),
    Case(
        "repeat-rate-servers-disagree",
        "status",
        server={"differ": True},
        status=255,
        env={"ICECC_REPEAT_RATE": "1000"},
    ),
    Case("repeat-rate-self-compiles", "local", host="self", env={"ICECC_REPEAT_RATE": "1000"}),
    Case(
        "repeat-rate-not-for-clang", "server", compiler="clang", env={"ICECC_REPEAT_RATE": "1000"}
    ),
    Case("self-compile-on-127.0.0.1", "local", host="self"),
    Case(
        "test-remotebuild-treats-127.0.0.1-as-remote",
        "server",
        host="127.0.0.1",
        env={"ICECC_TEST_REMOTEBUILD": "1"},
    ),
    # Failures: each ends in a local compile that succeeds.
    Case("daemon-hangs-up-on-get-cs", "local", daemon={"use_cs": None}),
    Case("server-refuses-connection", "local", host="refused"),
    Case("server-hangs-up", "local", server={"mode": "close"}),
    Case("server-sends-garbage", "local", server={"mode": "garbage"}),
    Case("server-status-text", "local", server={"mode": "status_text"}),
    Case("server-out-of-memory", "local", server={"mode": "oom"}),
    Case("caret-workaround", "local", server={"err": "hello.c:1: warning: x\n"}),
    Case(
        "file-not-found-on-server",
        "local",
        compiler="clang",
        server={"status": 1, "err": "fatal error: 'x.h' file not found\n"},
    ),
    Case("environment-refused-blacklists", "local", server={"mode": "verify_fail"}, got_env=False),
    Case("no-go-signal-uses-lock-files", "local", daemon={"use_cs": None, "go": False}),
    Case("directives-only-cpp-failure-recompiles", "local", env={"FAKE_CC_CPP_STATUS": "1"}),
    Case(
        "clang-cpp-failure-is-final",
        "status",
        compiler="clang",
        env={"FAKE_CC_CPP_STATUS": "1"},
        status=1,
    ),
    Case("test-socket-missing", "status", daemon={"absent": True}, status=119),
    Case("recursion", "status", env={"_ICECC_SAFEGUARD": "2"}, status=111),
]


def run_case(bed: WrapperBed, which: str, case: Case) -> Transcript:
    server = FakeServer(**case.server)  # type: ignore[arg-type]
    if case.host == "self":
        use = UseCS(job_id=7, port=0, hostname="127.0.0.1", host_platform="x86_64",
                    got_env=True, client_id=1)  # fmt: skip
    elif case.host == "refused":
        use = UseCS(job_id=7, port=UNUSED_PORT, hostname="localhost", host_platform="x86_64",
                    got_env=True, client_id=1)  # fmt: skip
    else:  # filled in with the server's port once it listens
        use = UseCS(job_id=7, port=-1, hostname=case.host, host_platform="x86_64",
                    got_env=case.got_env, client_id=1)  # fmt: skip
    options = dict(case.daemon)
    absent = options.pop("absent", False)
    daemon = FakeDaemon(bed.root / "d.sock", **{"use_cs": use, **options})  # type: ignore[arg-type]
    argv = [bed.program(which, "icecc"), case.compiler, *case.args]
    return bed.run(argv, env=case.env, daemon=None if absent else daemon, server=server)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_same_outcome_as_real_icecc(case: Case, bed: WrapperBed):
    """Ours ends as the scenario says, with the real client's transcript."""
    real = run_case(bed, "real", case)
    ours = run_case(bed, "ours", case)
    output = "hello.s" if "-S" in case.args else "hello.o"
    for transcript in (real, ours):
        if case.outcome == "status":
            assert transcript.status == case.status, transcript.stderr.decode()
        else:
            assert transcript.status == 0, transcript.stderr.decode()
            want = SERVER_OBJ if case.outcome == "server" else LOCAL_OBJ
            if case.compiler != "gcc" and case.outcome == "local":
                want = f"fake object of {case.compiler}\n".encode()
            assert transcript.files.get(output) == want, transcript
    assert ours.status == real.status
    if case.env.get("ICECC_REPEAT_RATE"):
        # 1.4 runs the three copies in parallel, we one after the other: same messages
        # and calls, in an order that is not even fixed for 1.4 itself.
        assert [sorted(map(repr, c)) for c in ours.daemon] == [
            sorted(map(repr, c)) for c in real.daemon
        ]
        assert sorted(ours.calls) == sorted(real.calls)
    else:
        assert ours.daemon == real.daemon
        assert ours.calls == real.calls
    assert ours.server == real.server
    assert ours.files == real.files
    assert ours.stdout == real.stdout


class TestDetails:
    """What specific scenarios send, beyond being equal to the real client."""

    def test_blacklist_names_the_refusing_host(self, bed: WrapperBed):
        """A refused environment is reported as BLACKLIST_HOST_ENV(env, target, host)."""
        ours = run_case(bed, "ours", next(c for c in CASES if c.id.startswith("environment-ref")))
        first = ours.daemon[0]
        assert BlacklistHostEnv("fakeenv", "x86_64", "localhost") in first
        assert len(ours.daemon) == 2  # the local build asks on a new connection

    @pytest.mark.parametrize(("wait", "bound"), [("0.5", 0.5), (None, 10.0)])
    def test_no_server_named_compiles_locally_after_the_wait(self, bed: WrapperBed, wait, bound):
        """A GET_CS nobody answers ends in a local build after ICECC_SERVER_WAIT (default 10 s)."""
        daemon = FakeDaemon(bed.root / "d.sock", silent=True)
        started = time.monotonic()
        ours = bed.run([bed.program("ours", "icecc"), "gcc", "-c", "hello.c"], daemon=daemon,
                       env={"ICECC_SERVER_WAIT": wait, "ICECC_DEBUG": "warnings"})  # fmt: skip
        took = time.monotonic() - started
        assert ours.status == 0, ours.stderr.decode()
        assert ours.files["hello.o"] == LOCAL_OBJ
        assert bound <= took < bound + 8.0
        assert b"no compile server within" in ours.stderr
        assert JobLocalBegin in [type(m) for m in ours.daemon[1]]  # in a slot, on a new connection

    def test_environment_transfer_sends_the_tarball(self, bed: WrapperBed):
        """TRANFER_ENV names the environment and target; the tarball arrives intact."""
        ours = run_case(bed, "ours", next(c for c in CASES if c.got_env is False))
        job = ours.server[0]
        assert job["env_transfer"] == EnvTransfer("fakeenv", "x86_64")
        assert job["tarball"] == bed.tarball.read_bytes()

    def test_self_compile_reports_job_done(self, bed: WrapperBed):
        """USE_CS to 127.0.0.1: COMPILE_FILE "__client", JOB_DONE from the submitter, END."""
        ours = run_case(bed, "ours", next(c for c in CASES if c.host == "self"))
        messages = ours.daemon[0]
        compile_file = next(m for m in messages if isinstance(m, CompileFile))
        done = next(m for m in messages if isinstance(m, JobDone))
        assert compile_file.environment == "__client"
        assert (done.job_id, done.exitcode, done.flags) == (7, 0, 1)
        assert done.out_uncompressed == len(LOCAL_OBJ)
        assert messages[-1] == End()

    def test_remote_output_reaches_our_stdout(self, bed: WrapperBed):
        """The server's stdout and stderr are passed through when no workaround applies."""
        case = next(c for c in CASES if c.id.startswith("remote-output"))
        ours = run_case(bed, "ours", case)
        assert ours.stdout == b"remote says hi\n"
        assert b"warning: x" in ours.stderr

    def test_no_temporary_file_left(self, bed: WrapperBed):
        """The object is written as <output>_icetmp and renamed; nothing else remains."""
        ours = run_case(bed, "ours", CASES[0])
        assert set(ours.files) == {"hello.o"}


TICKET = JobTicket(job_id=7, client_id=0, ticket="t1 ticket-text")


def _ticketed(
    bed: WrapperBed,
    *,
    server_mode: str = "ok",
    env: dict[str, str | None] | None = None,
    which: str = "ours",
) -> Transcript:
    use = UseCS(job_id=7, port=-1, hostname="localhost", host_platform="x86_64", got_env=False,
                client_id=1)  # fmt: skip
    daemon = FakeDaemon(bed.root / "d.sock", use_cs=use, endpoint=True, ticket=TICKET)
    argv = [bed.program(which, "icecc"), "gcc", "-c", "hello.c"]
    return bed.run(argv, env=env or {}, daemon=daemon, server=FakeServer(mode=server_mode))


class TestJobTickets:
    """Issue 14 item 3: the ticket our iceserv daemon passes on goes to the server first."""

    def test_ticket_reaches_the_server_before_anything_else(self, bed: WrapperBed):
        """On the daemon's iceserv endpoint the client takes JOB_TICKET and sends it on first."""
        ours = _ticketed(bed)
        assert ours.status == 0, ours.stderr.decode()
        assert ours.files["hello.o"] == SERVER_OBJ
        (job,) = ours.server
        assert job["ticket"] == TICKET
        assert job["env_transfer"] == EnvTransfer("fakeenv", "x86_64")  # after the ticket

    def test_real_client_never_uses_the_endpoint(self, bed: WrapperBed):
        """icecream 1.4's client knows no endpoint: it gets no ticket and sends none."""
        real = _ticketed(bed, which="real")
        assert real.status == 0, real.stderr.decode()
        assert "ticket" not in real.server[0]

    def test_refused_ticket_falls_back_to_a_local_build(self, bed: WrapperBed):
        """A server that refuses the ticket (replayed, altered) sends the job home."""
        ours = _ticketed(bed, server_mode="refuse_ticket")
        assert ours.status == 0, ours.stderr.decode()
        assert ours.files["hello.o"] == LOCAL_OBJ

    def test_refused_ticket_fails_under_fallback_fail(self, bed: WrapperBed):
        """With ICECC_FALLBACK=fail the refusal is a cluster failure, said in one line."""
        ours = _ticketed(bed, server_mode="refuse_ticket", env={"ICECC_FALLBACK": "fail"})
        assert ours.status == 1
        assert b"job refused: replayed ticket" in ours.stderr
        assert "hello.o" not in ours.files
