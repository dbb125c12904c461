"""Load and memory figures for STATS, computed from ``/proc`` text the way 1.4 does (§5.2.4).

This module owns the arithmetic of upstream ``daemon/load.cpp``
(``fill_stats``) and ``daemon/main.cpp`` (``Daemon::maybe_stats``): CPU idle
per mille from ``/proc/stat`` deltas, the memory fill grade and free memory
from ``/proc/meminfo``, the per-job memory limit, and when a new load is
worth telling the scheduler.  It is pure: callers read the files, the load
averages and the free disk space and pass the values in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from iceserv.daemon.slots import FULL_LOAD

__all__ = [
    "CpuTimes",
    "LoadTracker",
    "MemInfo",
    "Sample",
    "memory_limit_mb",
    "parse_meminfo",
    "parse_proc_stat",
]

#: Each job slot that could still start wants this much free disk in the env base dir.
DISK_PER_JOB: Final = 25 * 1024 * 1024
#: The smallest per-job memory limit in MiB (1.4's ``min_mem_limit``).
MIN_MEMORY_LIMIT_MB: Final = 100
#: A change of at least this much load is sent to the scheduler.
_SIGNIFICANT: Final = 100


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Aggregate CPU ticks from the ``cpu`` line of ``/proc/stat``."""

    idle: int
    nice: int
    total: int


@dataclass(frozen=True, slots=True)
class MemInfo:
    """The ``/proc/meminfo`` values (kB) the load formula uses."""

    total: int
    free: int
    buffers: int
    cached: int

    @property
    def net_free_kb(self) -> int:
        """Free memory counting part of the buffers and the page cache as free."""
        reserve = self.total // 100

        def usable(amount: int) -> int:
            return amount - reserve if amount > reserve else amount // 2

        return self.free + usable(self.buffers) + usable(self.cached)

    @property
    def fill_grade(self) -> int:
        """Memory use per mille (0 = all free, 1000 = full)."""
        if self.total <= 0:
            return FULL_LOAD
        return max(0, min(FULL_LOAD, FULL_LOAD - self.net_free_kb * FULL_LOAD // self.total))


def parse_proc_stat(text: str) -> CpuTimes:
    """Read the aggregate ``cpu`` line: user nice system idle iowait irq softirq steal."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(value) for value in fields[1:9]]
            ticks += [0] * (8 - len(ticks))
            _, nice, _, idle, iowait = ticks[:5]
            return CpuTimes(idle=idle + iowait, nice=nice, total=sum(ticks))
    msg = "no cpu line in /proc/stat"
    raise ValueError(msg)


def parse_meminfo(text: str) -> MemInfo:
    """Read MemTotal, MemFree, Buffers and Cached (kB)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name.strip()] = int(parts[0])
    return MemInfo(
        total=values.get("MemTotal", 0),
        free=values.get("MemFree", 0),
        buffers=values.get("Buffers", 0),
        cached=values.get("Cached", 0),
    )


def memory_limit_mb(free_mem_mb: int, max_kids: int) -> int:
    """Per-job address-space limit: free memory shared by up to four jobs, at least 100 MiB."""
    return max(free_mem_mb // min(max(max_kids, 1), 4), MIN_MEMORY_LIMIT_MB)


@dataclass(frozen=True, slots=True)
class Sample:
    """One evaluation: the STATS values and whether they should be sent."""

    load: int
    load_avg: tuple[int, int, int]
    free_mem_mb: int
    send: bool


class LoadTracker:
    """Turns successive ``/proc`` samples into STATS values and the "send it?" decision.

    Our own compile jobs must not make the machine look busy, so CPU time
    used by finished jobs (``job_cpu_ms``) counts as idle, as 1.4's
    ``icecream_load`` does.
    """

    def __init__(self, cpus: int) -> None:
        self.cpus = max(1, cpus)
        self.current_load = -FULL_LOAD  # 1.4 starts here so that the first STATS is sent
        self._last: CpuTimes | None = None
        self._job_cpu_ms = 0

    def reset(self) -> None:
        """Forget what was sent (after a new login the first STATS always goes out)."""
        self.current_load = -FULL_LOAD

    def add_job_cpu(self, cpu_ms: int) -> None:
        """Account CPU time of a finished job (user + system ms) as ours."""
        self._job_cpu_ms += max(0, cpu_ms)

    def idle_per_mille(self, cpu: CpuTimes) -> int:
        """Idle per mille since the previous sample, our jobs' CPU counted as idle."""
        last, self._last = self._last, cpu
        if last is None or cpu.total <= last.total:
            return FULL_LOAD
        total = cpu.total - last.total
        idle = cpu.idle - last.idle
        # Ticks are 10 ms (USER_HZ 100), summed over all CPUs.
        ours = self._job_cpu_ms // 10
        self._job_cpu_ms = 0
        return max(0, min(FULL_LOAD, (idle + ours) * FULL_LOAD // total))

    def evaluate(
        self,
        *,
        cpu: CpuTimes,
        mem: MemInfo,
        load_avg: tuple[float, float, float],
        disk_free: int,
        free_slots: int,
    ) -> Sample:
        """Compute the STATS values and decide whether the change is significant.

        *free_slots* is ``max_kids + 1 - running children``; with less than
        25 MiB of free disk per such slot the load is forced to 1000.
        """
        idle = self.idle_per_mille(cpu)
        load = max(FULL_LOAD - idle, mem.fill_grade)
        if disk_free < max(free_slots, 0) * DISK_PER_JOB:
            load = FULL_LOAD
        previous = self.current_load
        send = abs(load - previous) >= _SIGNIFICANT or (load == FULL_LOAD) != (
            previous == FULL_LOAD
        )
        self.current_load = load
        averages = tuple(max(0, int(value * 1000)) for value in load_avg)
        return Sample(
            load=load,
            load_avg=(averages[0], averages[1], averages[2]),
            free_mem_mb=mem.net_free_kb // 1024,
            send=send,
        )
