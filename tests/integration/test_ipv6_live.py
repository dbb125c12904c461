"""IPv6 on loopback: ``iceccd -s '[::1]:PORT'`` logs in, is listed, and a compile goes through.

Issue 15's reproduction: ``iceccd -s '[::1]:18965'`` passed ``config check``
and then logged ``scheduler_connect_failed`` forever, because the scheduler
listened on 0.0.0.0 only.  Here our scheduler (``-i lo``: 127.0.0.1 and ::1)
serves two of our daemons that name it ``[::1]:PORT`` and a real icecream 1.4
``iceccd`` that names it ``127.0.0.1:PORT``.  All three are listed, the
telnet port answers on ::1, ``listcs`` prints ``[::1]:port`` for the
daemons that came over IPv6 and plain IPv4 for the 1.4 one, and a real
compile through the ``-m 0`` daemon runs on the other daemon (USE_CS names
a ::1 server ``localhost``, which every client parses) and is identical to
a local build.  One scheduler and one set of daemons serve every test here.
Last, one of our daemons logs in to a real 1.4 scheduler by name: it wakes
the address its connection went to (1.4's scheduler accepts only once woken).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest
from testbed import LOOPBACK, OurDaemon, OurScheduler, RealDaemon, RealScheduler, wait_for
from testbed.faults import telnet_listcs
from testbed.procs import make_workdir
from testbed.project import build_env

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.live]

_REPO: Final = Path(__file__).resolve().parents[2]
_OUR_CLIENT: Final = (
    "#!{python}\nimport sys\nsys.path.insert(0, {repo!r})\n"
    "from iceserv.client.main import main\nsys.exit(main())\n"
)
_SOURCE: Final = """\
#include <stdio.h>
static int square(int x) { return x * x; }
int main(void) { printf("%d\\n", square(7)); return 0; }
"""
_LOGIN_TIMEOUT: Final = 30.0


class Cluster:
    """Our scheduler on lo, two of our daemons over ::1, a real 1.4 daemon over 127.0.0.1."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path) -> None:
        self.workdir = workdir
        self.scheduler = OurScheduler(host=LOOPBACK, loopback_only=True).start()
        stack.callback(self.scheduler.stop)
        port = self.scheduler.port
        assert port is not None
        self.port = port
        netname = self.scheduler.netname
        v6 = f"[::1]:{port}"
        self.submitter = OurDaemon("v6sub", host=LOOPBACK, max_jobs=0, scheduler=v6,
                                   netname=netname).start()  # fmt: skip
        stack.callback(self.submitter.stop)
        self.server = OurDaemon("v6srv", host=LOOPBACK, max_jobs=2, scheduler=v6,
                                netname=netname).start()  # fmt: skip
        stack.callback(self.server.stop)
        self.real = RealDaemon("real4", host=LOOPBACK, max_jobs=0,
                               scheduler=f"127.0.0.1:{port}", netname=netname).start()  # fmt: skip
        stack.callback(self.real.stop)

    def listcs(self, address: str) -> dict[str, tuple[str, int]]:
        """``listcs`` over the telnet port at *address*: name -> (ip, port)."""
        hosts = telnet_listcs(LOOPBACK, (address, self.port + 1))
        return {host.name: (host.ip, host.port) for host in hosts}

    def tails(self) -> str:
        """The programs' log tails, for failure messages."""
        programs = (self.scheduler, self.submitter, self.server, self.real)
        return "\n".join(program.log_tail() for program in programs)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The cluster, with every daemon listed (shared by the tests of this module)."""
    workdir = make_workdir("ipv6")
    try:
        with contextlib.ExitStack() as stack:
            running = Cluster(stack, workdir)
            names = {"v6sub", "v6srv", "real4"}
            wait_for(lambda: names <= set(running.listcs("::1")), _LOGIN_TIMEOUT,
                     "all three daemons in listcs", context=running.tails)  # fmt: skip
            yield running
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False, timeout=60)


class TestLoopbackIpv6:
    def test_daemons_log_in_over_ipv6(self, cluster: Cluster):
        """Our daemons given -s [::1]:PORT log in over IPv6 and say where they connected."""
        for daemon in (cluster.submitter, cluster.server):
            (record,) = daemon.wait_events("scheduler_logged_in", 1)[:1]
            assert record["address"] == f"[::1]:{cluster.port}"
            assert record["connected_to"] == f"[::1]:{cluster.port}"
            assert record["own_ip"] == "::1"
            assert not daemon.events("scheduler_connect_failed"), daemon.log_tail()

    def test_listcs_on_both_families(self, cluster: Cluster):
        """Telnet answers on ::1 and 127.0.0.1; IPv6 daemons print as [::1]:port, 1.4 as IPv4."""
        over_six = cluster.listcs("::1")
        over_four = cluster.listcs("127.0.0.1")
        assert over_six == over_four
        assert over_six["v6srv"] == ("::1", cluster.server.port)
        assert over_six["v6sub"] == ("::1", cluster.submitter.port)
        assert over_six["real4"] == ("127.0.0.1", cluster.real.port)
        with socket.create_connection(("::1", cluster.port + 1), timeout=10) as sock:
            sock.sendall(b"listcs\nquit\n")
            text = b""
            while chunk := sock.recv(65536):
                text += chunk
        assert f"(v6srv ([::1]:{cluster.server.port})".encode()[1:] in text

    def test_scheduler_logs_ipv4_peers_plainly(self, cluster: Cluster):
        """The 1.4 daemon's login is logged with its IPv4 address, never ::ffff:..."""
        logins = cluster.scheduler.wait_events("daemon_logged_in", 3)
        peers = {record["nodename"]: record["peer"] for record in logins}
        assert peers == {"v6sub": "::1", "v6srv": "::1", "real4": "127.0.0.1"}

    def test_compile_through_the_ipv6_daemon(self, cluster: Cluster):
        """icecc through the -m 0 daemon compiles on the other one; the object is identical."""
        work = cluster.workdir / "compile"
        work.mkdir()
        (work / "hello.c").write_text(_SOURCE)
        launcher = work / "icecc"
        launcher.write_text(_OUR_CLIENT.format(python=sys.executable, repo=str(_REPO)))
        launcher.chmod(0o755)
        argv = ["gcc", "-O2", "-c", "hello.c", "-o"]
        subprocess.run([*argv, "local.o"], cwd=work, env=build_env(), check=True, timeout=120)
        env = build_env({"ICECC_TEST_SOCKET": str(cluster.submitter.socket_path),
                         "HOME": str(work)})  # fmt: skip
        done = subprocess.run([str(launcher), *argv, "remote.o"], cwd=work, env=env,
                              capture_output=True, check=False, timeout=180)  # fmt: skip
        assert done.returncode == 0, f"{done.stderr!r}\n{cluster.tails()}"
        assert (work / "remote.o").read_bytes() == (work / "local.o").read_bytes()
        served = cluster.server.wait_events("job_finished", 1, timeout=30)
        assert [r for r in served if r.get("where") == "server"], cluster.tails()
        assigned = cluster.submitter.events("compile_server_assigned")
        assert [r["server"] for r in assigned] == [f"localhost:{cluster.server.port}"]


def test_our_daemon_logs_in_to_a_real_scheduler_by_name() -> None:
    """-s localhost:PORT reaches a 1.4 scheduler (IPv4 only); the wakes go where we connected."""
    with RealScheduler() as scheduler:
        daemon = OurDaemon("named", host=LOOPBACK, max_jobs=1,
                           scheduler=f"localhost:{scheduler.telnet_port - 1}",
                           netname=scheduler.netname).start()  # fmt: skip
        try:
            daemon.wait_listed(scheduler)
            (record,) = daemon.wait_events("scheduler_logged_in", 1)[:1]
            assert record["connected_to"] == f"127.0.0.1:{scheduler.telnet_port - 1}"
        finally:
            daemon.stop()
