"""The real icecream-sundae monitor, in a terminal, watching iceserv's scheduler.

Daemons are played with our codec so the job's life is under the test's
control (a real compile is over before a screen refresh); sundae is the real
program, and what is checked is what a user reads on its screen: the hosts,
the queued job, the running job on its server, and the finished remote job.
"""

from __future__ import annotations

import re
import socket
import time
from typing import TYPE_CHECKING

from testbed import RealSundae, wait_for

from iceserv.protocol import (
    ConfCS,
    EnvEntry,
    GetCS,
    JobBegin,
    JobDone,
    JobDoneFlag,
    Login,
    Stats,
    UseCS,
)
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from testbed import OurScheduler

_JOBS = re.compile(r"Jobs: Maxiumum:(\d+) Active:(\d+) Local:(\d+) Pending:(\d+)")
_TOTAL = re.compile(r"Total: Remote:(\d+) Local:(\d+)")
_SERVERS = re.compile(r"Servers: Total:(\d+) Available:(\d+) Active:(\d+)")


def _frame(sundae: RealSundae) -> str:
    """The last complete screen sundae drew (it redraws from 'Scheduler:' each time)."""
    text = sundae.screen_text()
    start = text.rfind("Scheduler:")
    return text[start:] if start >= 0 else ""


def _numbers(sundae: RealSundae, pattern: re.Pattern[str]) -> tuple[int, ...] | None:
    found = pattern.search(_frame(sundae))
    return tuple(int(g) for g in found.groups()) if found else None


def _daemon(scheduler: OurScheduler, login: Login) -> BlockingChannel:
    channel = BlockingChannel.connect("127.0.0.1", scheduler.port or 0)
    channel.send(login, Stats(load=0, load_avg1=100, free_mem=4096))
    assert isinstance(channel.receive(), ConfCS)
    return channel


class TestSundaeWatchesOurScheduler:
    def test_hosts_queue_running_and_finished_jobs_show_on_screen(self, our_scheduler):
        """Sundae lists both hosts, then shows the job pending, active, and done remotely."""
        listener = socket.create_server(("127.0.0.1", 0))  # the server's port: probes succeed
        port = listener.getsockname()[1]
        server = _daemon(our_scheduler, Login(
            port=port, max_kids=4, nodename="farm1", host_platform="x86_64",
            chroot_possible=True, supported_features=3))  # fmt: skip
        submitter = _daemon(our_scheduler, Login(
            port=0, max_kids=0, nodename="laptop", host_platform="x86_64", noremote=True,
            supported_features=3))  # fmt: skip
        try:
            with RealSundae(scheduler=our_scheduler.address) as sundae:
                sundae.wait_for_text("farm1", timeout=20)
                sundae.wait_for_text("laptop", timeout=10)
                wait_for(lambda: _numbers(sundae, _SERVERS) == (2, 1, 0), 10,
                         "sundae to count two servers, one available")  # fmt: skip

                submitter.send(GetCS(
                    versions=(EnvEntry("x86_64", "envA"),), filename="proj/src/slow.c",
                    count=1, target="x86_64", client_id=7, preferred_host="farm1",
                    minimal_host_version=21, client_count=1))  # fmt: skip
                use = submitter.receive()
                assert isinstance(use, UseCS), use
                assert (use.port, use.client_id) == (port, 7)
                wait_for(lambda: (_numbers(sundae, _JOBS) or (0,) * 4)[3] == 1, 10,
                         "the queued job in sundae's Pending count")  # fmt: skip

                server.send(JobBegin(job_id=use.job_id, stime=int(time.time()), client_count=1))
                wait_for(lambda: (_numbers(sundae, _JOBS) or (0,) * 4)[1:] == (1, 0, 0), 10,
                         "the job to show as active, no longer pending")  # fmt: skip
                farm_row = next(line for line in _frame(sundae).splitlines() if "farm1" in line)
                assert re.search(r"farm1\s+\d+\s+1\s+4\s", farm_row), farm_row  # CUR 1 of MAX 4

                server.send(JobDone(
                    job_id=use.job_id, exitcode=0, real_msec=4200, user_msec=4000,
                    sys_msec=150, pfaults=900, in_compressed=20_000, in_uncompressed=90_000,
                    out_compressed=8_000, out_uncompressed=8_000,
                    flags=JobDoneFlag.FROM_SERVER, client_count=1))  # fmt: skip
                wait_for(
                    lambda: _numbers(sundae, _TOTAL) == (1, 0)
                    and (_numbers(sundae, _JOBS) or (9,) * 4)[1:] == (0, 0, 0),
                    10, "sundae to count one finished remote job and none active",
                )  # fmt: skip
        finally:
            for channel in (server, submitter):
                channel.close()
            listener.close()
