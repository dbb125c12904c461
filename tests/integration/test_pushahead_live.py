"""A daemon's prebuilt native environment reaches idle hosts before any job (push-ahead).

Issue 17, item 1: after its prebuild, our ``iceccd`` asks our scheduler
(PUSH_QUERY, iceserv only) which hosts lack the environment and sends it to
them as a client would (TRANFER_ENV, FILE_CHUNKs, VERIFY_ENV).  A three-host
``NetnsBed`` with our scheduler: h1 runs our daemon without slots (``-m 0``,
the developer's machine; it prebuilds gcc), h2 our daemon with two slots and
h3 a real icecream 1.4 ``iceccd`` with two slots (both build nothing
themselves).  Before any job is submitted the test sees, independently of
h1's log, the environment unpacked in h2's and h3's environment directories
(``target=<platform>/<name>/usr/bin/as``), h2's ``env_installed``, and our
scheduler's host list on a private D-Bus (ListHosts) shows it on h2 and h3
(their re-LOGIN after the install) and not on h1.  Then
one compile is sent to each of h2 and h3 (``ICECC_PREFERRED_HOST``): the
client's trace says the host already had the environment (USE_CS
``got_env``), and h1's log says the scheduler said so (learnt from the
targets' re-LOGIN after the install, a real 1.4 daemon's too), our h2
installs nothing more, and the objects equal local gcc's.  It asserts no times.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
from pathlib import Path
from typing import Final

import pytest
from testbed import ClientPlan, Cluster, DaemonPlan, NetnsBed, OurDaemon, RealDaemon
from testbed.dbusbed import SystemBus, busctl
from testbed.wait import wait_for

from iceserv.service.dbus import SCHEDULER_INTERFACE, SCHEDULER_PATH

pytestmark = [pytest.mark.live, pytest.mark.netns]
log = logging.getLogger(__name__)

UNIT_C: Final = (
    "".join(f"int f{i}(int x) {{ return x * {i} + {i % 5}; }}\n" for i in range(60))
    + "int main(void) { return f3(2) == 0; }\n"
)
_PREBUILD_TIMEOUT: Final = 180.0  # icecc-create-env with zstd: ~2 s idle, much more under load
_PUSH_TIMEOUT: Final = 120.0
_NO_PREBUILD: Final = ("--native-compilers", "")
_PUSH: Final = {OurDaemon.PUSH_AHEAD_ENV: "yes"}  # the test bed turns it off by default


def _installed(daemon: OurDaemon | RealDaemon, target: str, name: str) -> bool:
    return (daemon.basedir / f"target={target}" / name / "usr" / "bin" / "as").is_file()


def _scheduler_envs(bus: str) -> dict[str, set[tuple[str, str]]]:
    """Each host's environments as our scheduler knows them (LOGIN lists), from D-Bus."""
    result = busctl(bus, "--json=short", "call", SCHEDULER_INTERFACE, SCHEDULER_PATH,
                    SCHEDULER_INTERFACE, "ListHosts")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["data"][0]
    return {row[0]: {tuple(env) for env in row[12]} for row in rows}


def test_prebuilt_environment_is_pushed_to_idle_hosts_before_the_first_job(
    tmp_path: Path, system_bus: SystemBus
) -> None:
    """Both idle hosts (ours and a real 1.4) have it before any job; their first jobs send none."""
    plans = (
        DaemonPlan("ours", max_jobs=0, extra_env=_PUSH),
        DaemonPlan("ours", max_jobs=2, extra_args=_NO_PREBUILD),
        DaemonPlan("real", max_jobs=2),
    )
    bus = {"DBUS_SYSTEM_BUS_ADDRESS": system_bus.address}
    with NetnsBed(3) as bed, Cluster(bed, "ours", plans, scheduler_env=bus) as cluster:
        local, ours, real = cluster.daemon(0), cluster.daemon(1), cluster.daemon(2)
        assert isinstance(local, OurDaemon)
        assert isinstance(ours, OurDaemon)
        assert isinstance(real, RealDaemon)
        (built,) = local.wait_events("native_env_built", 1, timeout=_PREBUILD_TIMEOUT)
        name = Path(str(built["path"])).name.split(".tar")[0]
        pushed = local.wait_events("native_env_pushed", 2, timeout=_PUSH_TIMEOUT)
        assert not local.events("native_env_push_failed"), local.log_tail()
        assert {e["host"] for e in pushed} == {
            f"{bed[1].ip}:{ours.port}",
            f"{bed[2].ip}:{real.port}",
        }
        assert all(e["env"] == name and e["bytes"] > 0 for e in pushed)
        log.info("pushed: %s", [(e["host"], e["bytes"], e["seconds"]) for e in pushed])

        # Seen on the targets themselves, before any job: unpacked, and (ours) logged.
        target = platform.machine()
        assert _installed(ours, target, name), ours.log_tail()
        assert _installed(real, target, name), real.log_tail()
        (installed,) = ours.events("env_installed")
        assert installed["env"] == f"{target}/{name}"
        assert not ours.events("job_finished")
        # The scheduler learnt it from the targets' re-LOGIN (the real 1.4 one's too).
        env = (target, name)
        wait_for(lambda: all(env in _scheduler_envs(system_bus.address).get(cluster.name(i), ())
                             for i in (1, 2)),
                 30, "the scheduler to list the pushed environment on h2 and h3",
                 context=lambda: str(_scheduler_envs(system_bus.address)))  # fmt: skip
        assert env not in _scheduler_envs(system_bus.address)[cluster.name(0)]

        (tmp_path / "unit.c").write_text(UNIT_C)
        subprocess.run(["gcc", "-O2", "-c", "unit.c", "-o", "local.o"], cwd=tmp_path,
                       check=True, timeout=60)  # fmt: skip
        for index in (1, 2):
            cc, env = cluster.client_command(ClientPlan("ours"), 0)
            env["ICECC_PREFERRED_HOST"] = bed[index].ip
            out = f"unit{index}.o"
            bed[0].run([*cc.split(), "-O2", "-c", "unit.c", "-o", out], cwd=tmp_path, env=env,
                       timeout=120, stdout=subprocess.DEVNULL)  # fmt: skip
            trace = Path(env["ICECC_LOGFILE"]).read_text(errors="replace")
            assert f"Have to use host {bed[index].ip}:" in trace, trace
            assert "has env: True" in trace, trace
            assert (tmp_path / out).read_bytes() == (tmp_path / "local.o").read_bytes()

        # The scheduler itself knew (the targets' re-LOGIN after the install), not only h1.
        assigned = local.events("compile_server_assigned")
        assert [(e["got_env"], e["env_from"]) for e in assigned] == [(True, "scheduler")] * 2
        assert not local.events("compile_server_held")
        (job,) = wait_for(lambda: ours.events("job_finished") or None, 30,
                          "h2's job to finish", context=ours.log_tail)  # fmt: skip
        assert (job["where"], job["exitcode"]) == ("server", 0)
        assert len(ours.events("env_installed")) == 1  # the push's: the job sent none
        assert not local.events("native_env_push_failed")
