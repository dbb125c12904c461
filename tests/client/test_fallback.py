"""ICECC_FALLBACK=fail and ICECC_VERIFY=N against the fake daemon and compile server.

The same scenarios as ``test_remote.py`` (see there), run with our client
only: these variables are iceserv's.  The namespace-cluster versions with
real peers are in ``tests/integration/test_fallback_live.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from test_remote import CASES, LOCAL_OBJ, SERVER_OBJ, Case, run_case

if TYPE_CHECKING:
    from client.bed import WrapperBed

FAIL = {"ICECC_FALLBACK": "fail"}


def case(name: str, **env: str) -> Case:
    """The scenario called *name* in test_remote.py, with *env* added."""
    found = next(c for c in CASES if c.id == name)
    return Case(found.id, found.outcome, found.args, found.compiler, found.server,
                found.got_env, found.host, found.daemon, {**found.env, **env})  # fmt: skip


class TestFail:
    @pytest.mark.parametrize(("name", "kind"), [
        ("server-refuses-connection", "no host"),
        ("environment-refused-blacklists", "environment refused"),
        ("server-hangs-up", "remote failure"),
        ("server-out-of-memory", "remote failure"),
        ("server-status-text", "remote failure"),
        ("daemon-hangs-up-on-get-cs", "remote failure"),
    ])  # fmt: skip
    def test_a_cluster_failure_fails_the_compile(self, bed: WrapperBed, name, kind):
        """The job fails with exit 1 and one line naming what failed; nothing compiles here."""
        done = run_case(bed, "ours", case(name, **FAIL))
        assert done.status == 1
        lines = done.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"icecc: cluster failure ({kind}): Error ")
        assert "hello.o" not in done.files
        assert not [c for c in done.calls if "-E" not in c[2]]  # no local compile

    def test_unset_and_local_keep_the_local_build(self, bed: WrapperBed):
        """Unset, "local" and unknown values all build locally, as 1.4 does."""
        for value in (None, "local", "sometimes"):
            env = {} if value is None else {"ICECC_FALLBACK": value}
            done = run_case(bed, "ours", case("server-hangs-up", **env))
            assert done.status == 0
            assert done.files["hello.o"] == LOCAL_OBJ
            assert b"cluster failure" not in done.stderr

    def test_a_compile_error_stays_the_compilers(self, bed: WrapperBed):
        """A remote compile error is the compiler's status and text, not a cluster failure."""
        done = run_case(bed, "ours", case("remote-compile-error-is-final", **FAIL))
        assert done.status == 1
        assert done.stderr.decode() == "error: no\n"

    @pytest.mark.parametrize("name", ["caret-workaround", "file-not-found-on-server",
                                      "directives-only-cpp-failure-recompiles"])  # fmt: skip
    def test_job_reasons_to_recompile_are_not_failures(self, bed: WrapperBed, name):
        """1.4's recompiles for the job's own sake (caret, missing file, cpp) still happen."""
        done = run_case(bed, "ours", case(name, **FAIL))
        assert done.status == 0
        assert done.files["hello.o"].startswith(b"fake object of ")  # compiled here
        assert b"cluster failure" not in done.stderr

    def test_no_environment(self, bed: WrapperBed):
        """A daemon that cannot make the native environment is "no environment"."""
        done = run_case(bed, "ours", case("remote-ok", **FAIL, ICECC_VERSION=""))
        assert done.status == 1
        assert b"cluster failure (no environment)" in done.stderr


class TestVerify:
    def test_a_mismatch_keeps_the_local_object(self, bed: WrapperBed):
        """Remote and local objects differ: one line names both hosts; the local one stays."""
        done = run_case(bed, "ours", case("remote-ok", ICECC_VERIFY="1"))
        assert done.status == 0
        assert done.files == {"hello.o": LOCAL_OBJ}
        text = done.stderr.decode()
        assert text.startswith("icecc: ICECC_VERIFY: hello.o differs: remote object from "
                               "localhost, local object from ")  # fmt: skip
        assert text.count("\n") == 1

    def test_identical_objects_pass_silently(self, bed: WrapperBed):
        """Identical objects: no message, the object stays, no scratch file is left."""
        job = case("remote-ok", ICECC_VERIFY="1")
        job = Case(job.id, job.outcome, server={"obj": LOCAL_OBJ}, env=job.env)
        done = run_case(bed, "ours", job)
        assert done.status == 0
        assert done.files == {"hello.o": LOCAL_OBJ}
        assert done.stderr == b""

    def test_every_nth_job(self, bed: WrapperBed):
        """ICECC_VERIFY=3 checks one remote job in three (a counter shared by all builds)."""
        checked = 0
        for _ in range(6):
            done = run_case(bed, "ours", case("remote-ok", ICECC_VERIFY="3"))
            assert done.status == 0
            checked += done.files["hello.o"] == LOCAL_OBJ
        assert checked == 2

    def test_self_compiled_jobs_are_not_checked(self, bed: WrapperBed):
        """A job the daemon gave back to us (127.0.0.1) is local already: nothing to compare."""
        done = run_case(bed, "ours", case("self-compile-on-127.0.0.1", ICECC_VERIFY="1"))
        assert done.status == 0
        assert b"ICECC_VERIFY" not in done.stderr
        assert SERVER_OBJ not in done.files.values()


class TestRace:
    """Races need a free lock slot of this user; without one the job simply goes remote."""

    def test_the_remote_wins_over_a_slow_local_compiler(self, bed: WrapperBed):
        """A slow local compiler is killed when the server's object arrives; it is the output."""
        done = run_case(bed, "ours", case("remote-ok", ICECC_RACE="1", FAKE_CC_SLEEP="20"))
        assert done.status == 0
        assert done.files == {"hello.o": SERVER_OBJ}  # nothing else left beside it

    def test_the_local_build_wins_when_the_server_fails(self, bed: WrapperBed):
        """The server hangs up: the local object counts, without a second local compile."""
        done = run_case(bed, "ours", case("server-hangs-up", ICECC_RACE="1"))
        assert done.status == 0
        assert done.files == {"hello.o": LOCAL_OBJ}
        # Raced, it is compiled here once; when every lock slot of this user was busy (other
        # builds on the machine) there was no race and 1.4's fallback compiled it instead.
        assert len([c for c in done.calls if "-E" not in c[2]]) == 1

    def test_a_compile_error_is_the_local_compilers(self, bed: WrapperBed):
        """Both sides fail: the status and messages are the local compiler's."""
        job = case("remote-compile-error-is-final", ICECC_RACE="1", FAKE_CC_STATUS="1")
        done = run_case(bed, "ours", job)
        assert done.status == 1
        assert "hello.o" not in done.files
