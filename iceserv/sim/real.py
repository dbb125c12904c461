"""iceserv's real scheduler core as a simulated cluster's scheduler.

This module owns :class:`RealPlacement`, which drives
:class:`iceserv.scheduler.handlers.Scheduler` exactly as the asyncio server
does: a handshake per daemon connection, then LOGIN, STATS, GET_CS,
JOB_BEGIN and JOB_DONE as :mod:`iceserv.protocol` messages, the core's
timers run at their deadlines on the simulated clock, reachability probes
answered as succeeded, and the USE_CS/NO_CS it sends turned into
:class:`~iceserv.sim.placer.Placed`.  No placement rule is re-implemented
here.  It must not use asyncio, sockets or a real clock.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final

from iceserv.protocol import (
    PROTOCOL_VERSION,
    EnvEntry,
    GetCS,
    JobBegin,
    JobDone,
    JobDoneFlag,
    Login,
    NoCS,
    Stats,
    UseCS,
)
from iceserv.scheduler.effects import Close, Send, StartProbe
from iceserv.scheduler.handlers import Scheduler, SchedulerConfig
from iceserv.sim.placer import Placed
from iceserv.sim.trace import SimInputError, arg_flags

if TYPE_CHECKING:
    from iceserv.protocol import Message
    from iceserv.scheduler.effects import Effect
    from iceserv.sim.cluster import HostSpec
    from iceserv.sim.trace import TraceJob

__all__ = ["PLATFORM", "RealPlacement", "host_ip"]

#: Every simulated host runs x86_64 (traces carry one platform).
PLATFORM: Final = "x86_64"
_DAEMON_PORT: Final = 10245
#: A 1.4 daemon announces env_xz and env_zstd (§2.2 LOGIN).
_DAEMON_FEATURES: Final = 0x3


def host_ip(index: int) -> str:
    """Return the made-up address of the *index*-th simulated host (never contacted)."""
    return f"192.0.2.{index + 1}" if index < 254 else f"198.51.100.{index - 253}"


class RealPlacement:
    """iceserv's scheduler core behind the :class:`~iceserv.sim.placer.Placement` seam."""

    name = "iceserv"

    def __init__(self, seed: int, now: float = 0.0) -> None:
        self._core = Scheduler(SchedulerConfig(start_time=int(now)), random.Random(seed), now)  # noqa: S311
        self._conns: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._by_ip: dict[str, str] = {}

    def login(self, host: HostSpec, envs: tuple[str, ...], now: float) -> list[Placed]:
        """LOGIN on a new connection, or the re-LOGIN after an environment install."""
        conn = self._conns.get(host.name)
        if conn is None:
            conn = len(self._conns) + 1
            ip = host_ip(conn - 1)
            self._conns[host.name], self._names[conn], self._by_ip[ip] = conn, host.name, host.name
            self._core.peer_connected(conn, ip, PROTOCOL_VERSION, PROTOCOL_VERSION)
        login = Login(
            port=_DAEMON_PORT,
            max_kids=host.slots,
            envs=tuple(EnvEntry(PLATFORM, env) for env in envs),
            nodename=host.name,
            host_platform=PLATFORM,
            chroot_possible=True,
            supported_features=_DAEMON_FEATURES,
        )
        return self._send(host.name, login, now)

    def stats(self, host: str, load: int, now: float) -> list[Placed]:
        """STATS with *load*."""
        return self._send(host, Stats(load=load), now)

    def get_cs(
        self, submitter: str, client_id: int, job: TraceJob, client_count: int, now: float
    ) -> list[Placed]:
        """GET_CS for one job, as the submitter's daemon forwards it."""
        request = GetCS(
            versions=(EnvEntry(PLATFORM, job.env),),
            filename=job.file or "input.c",
            lang=job.lang_code,
            target=PLATFORM,
            arg_flags=arg_flags(job.flags),
            client_id=client_id,
            minimal_host_version=0,
            client_count=client_count,
        )
        return self._send(submitter, request, now)

    def job_begin(self, host: str, job_id: int, client_count: int, now: float) -> list[Placed]:
        """JOB_BEGIN from the daemon that compiles *job_id*."""
        return self._send(host, JobBegin(job_id, int(now), client_count), now)

    def job_done(  # noqa: PLR0913 - the fields of JOB_DONE the statistics use
        self,
        host: str,
        job_id: int,
        *,
        from_submitter: bool,
        user_msec: int,
        out_size: int,
        client_count: int,
        now: float,
    ) -> list[Placed]:
        """JOB_DONE with the job's statistics."""
        flags = JobDoneFlag.FROM_SUBMITTER if from_submitter else JobDoneFlag.FROM_SERVER
        done = JobDone(
            job_id=job_id,
            real_msec=user_msec,
            user_msec=user_msec,
            out_uncompressed=out_size,
            flags=int(flags),
            client_count=client_count,
        )
        return self._send(host, done, now)

    # --- driving the core -------------------------------------------------------------

    def _send(self, host: str, msg: Message, now: float) -> list[Placed]:
        conn = self._conns.get(host)
        if conn is None:
            text = f"host {host} sent {msg.TYPE.name} before logging in"
            raise SimInputError(text)
        placed = self._run_timers(now)
        return placed + self._collect(self._core.handle_message(conn, msg, now), now)

    def _run_timers(self, now: float) -> list[Placed]:
        """Run every timer due by *now* at its own deadline, as the shell's loop would."""
        placed: list[Placed] = []
        while (deadline := self._core.get_timer()) <= now:
            placed += self._collect(self._core.handle_timer(deadline), deadline)
        return placed

    def _collect(self, effects: list[Effect], now: float) -> list[Placed]:
        placed: list[Placed] = []
        pending = list(effects)
        while pending:
            effect = pending.pop(0)
            if isinstance(effect, StartProbe):
                # Every simulated daemon accepts connections on its compile port.
                pending += self._core.probe_finished(effect.host_id, ok=True, now=now)
            elif isinstance(effect, Close):
                text = f"the scheduler closed connection {effect.conn_id}"
                raise SimInputError(text)
            elif isinstance(effect, Send):
                placed += self._placed(effect)
        return placed

    def _placed(self, effect: Send) -> list[Placed]:
        submitter = self._names[effect.conn_id]
        msg = effect.message
        if isinstance(msg, UseCS):
            return [
                Placed(submitter, msg.client_id, msg.job_id, self._by_ip[msg.hostname], msg.got_env)
            ]
        if isinstance(msg, NoCS):
            return [Placed(submitter, msg.client_id, msg.job_id, submitter, got_env=True)]
        return []  # CS_CONF and the like
