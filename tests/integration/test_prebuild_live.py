"""The first compile through a fresh cluster uses the environment its daemon built at start.

Issue 17, item 1: our ``iceccd`` builds the native environments of the
compilers it finds right after start, so the first ``icecc gcc -c`` does not
wait for ``icecc-create-env``.  A two-host ``NetnsBed`` with our scheduler:
h1's daemon has no slots (``-m 0``: the client's), h2's compiles.  The test
waits (bounded) for h1's ``native_env_built`` log record of gcc's prebuild,
then runs one ``icecc gcc -c`` with our client on h1 and checks, from the
logs, that h1 handed out the prebuilt tarball without a wait
(``native_env_sent`` origin ``prebuild``), that h2 installed it and ran the
job, and that the object equals a local ``gcc -c``.  It asserts no times:
the time taken is logged for the reader (P7 is ``bench/first_compile.py``'s).
A second test stops a daemon after its prebuild and starts it again on the
same environment directory: gcc's environment is kept, nothing is rebuilt.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Final

import pytest
from testbed import ClientPlan, Cluster, DaemonPlan, NetnsBed, OurDaemon

pytestmark = [pytest.mark.live, pytest.mark.netns]
log = logging.getLogger(__name__)

HELLO_C: Final = (
    "".join(f"int f{i}(int x) {{ return x * {i} + {i % 7}; }}\n" for i in range(100))
    + "int main(void) { return f3(2) == 0; }\n"
)
_PREBUILD_TIMEOUT: Final = 120.0  # icecc-create-env with zstd: ~1.5 s on an idle machine


def _gcc_prebuild(daemon: OurDaemon) -> dict[str, object] | None:
    return next(
        (e for e in daemon.events("native_env_built") if e["compiler"].endswith("/gcc")), None
    )


def test_first_compile_uses_the_prebuilt_environment(tmp_path: Path) -> None:
    """After gcc's prebuild, the first compile gets that tarball at once and compiles remotely."""
    plans = (DaemonPlan("ours", max_jobs=0), DaemonPlan("ours", max_jobs=2))
    with NetnsBed(2) as bed, Cluster(bed, "ours", plans) as cluster:
        local, server = cluster.daemon(0), cluster.daemon(1)
        assert isinstance(local, OurDaemon)
        assert isinstance(server, OurDaemon)
        (found,) = local.wait_events("native_envs_found", 1, timeout=_PREBUILD_TIMEOUT)
        assert "/usr/bin/gcc" in found["to_build"]
        local.wait_events("native_env_built", 1, timeout=_PREBUILD_TIMEOUT)
        built = _gcc_prebuild(local)
        assert built is not None, local.log_tail()
        assert (built["reason"], built["compression"]) == ("prebuild", "zstd")

        (tmp_path / "hello.c").write_text(HELLO_C)
        cc, env = cluster.client_command(ClientPlan("ours"), 0)
        argv = [*cc.split(), "-O2", "-c", "hello.c", "-o", "hello.o"]
        started = time.monotonic()
        bed[0].run(argv, cwd=tmp_path, env=env, timeout=120, stdout=subprocess.DEVNULL)
        seconds = time.monotonic() - started
        log.info("first compile through the cluster: %.2f s (prebuild took %s s)",
                 seconds, built["seconds"])  # fmt: skip

        (sent,) = local.events("native_env_sent")
        assert (sent["origin"], sent["waited_seconds"], sent["path"]) == (
            "prebuild",
            0,
            built["path"],
        )
        (job,) = server.wait_events("job_finished", 1)
        assert (job["where"], job["exitcode"]) == ("server", 0)
        assert server.events("env_installed"), server.log_tail()
        subprocess.run(["gcc", "-O2", "-c", "hello.c", "-o", "local.o"], cwd=tmp_path,
                       check=True, timeout=60)  # fmt: skip
        assert (tmp_path / "hello.o").read_bytes() == (tmp_path / "local.o").read_bytes()


def test_a_restarted_daemon_keeps_its_environment() -> None:
    """Stopped and started again on the same env directory: gcc's is kept, nothing rebuilt."""
    first = OurDaemon("ourkeep", None, keep_workdir=True).start()
    try:
        first.wait_events("native_env_built", 1, timeout=_PREBUILD_TIMEOUT)
        built = _gcc_prebuild(first)
        assert built is not None, first.log_tail()
        assert first.stop() == 0
        again = OurDaemon("ourkeep", None, workdir=first.workdir).start()
        try:
            (_, found) = again.wait_events("native_envs_found", 2, timeout=_PREBUILD_TIMEOUT)
            assert (found["kept"], found["to_build"]) == (["/usr/bin/gcc"], [])
            assert len(again.events("native_env_build_started")) == 1  # the first run's
            assert Path(str(built["path"])).is_file()
        finally:
            assert again.stop() == 0
    finally:
        first.remove_workdir()
