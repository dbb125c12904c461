"""Tests of the STATS arithmetic: /proc parsing, load, free memory, when to send (§5.2.4)."""

from __future__ import annotations

import pytest

from iceserv.daemon.load import (
    DISK_PER_JOB,
    CpuTimes,
    LoadTracker,
    MemInfo,
    memory_limit_mb,
    parse_meminfo,
    parse_proc_stat,
)

PROC_STAT = "cpu  100 20 30 800 50 0 0 0 0 0\ncpu0 50 10 15 400 25 0 0 0 0 0\nintr 1 2 3\n"
MEMINFO = "MemTotal:  1000000 kB\nMemFree:  400000 kB\nBuffers:  50000 kB\nCached:  100000 kB\n"
GB = 1 << 40


def _cpu(idle: int, total: int) -> CpuTimes:
    return CpuTimes(idle=idle, nice=0, total=total)


def _evaluate(tracker: LoadTracker, cpu: CpuTimes, *, free: int = 900_000, disk: int = GB):
    mem = MemInfo(total=1_000_000, free=free, buffers=0, cached=0)
    return tracker.evaluate(cpu=cpu, mem=mem, load_avg=(0.5, 0.25, 0.125), disk_free=disk,
                            free_slots=3)  # fmt: skip


class TestParsing:
    def test_proc_stat_aggregate_line(self):
        """idle counts idle + iowait; total is the sum of the first eight columns."""
        assert parse_proc_stat(PROC_STAT) == CpuTimes(idle=850, nice=20, total=1000)

    def test_proc_stat_without_cpu_line(self):
        """A /proc/stat without the aggregate line is an error, not a silent zero."""
        with pytest.raises(ValueError, match="cpu"):
            parse_proc_stat("intr 1\n")

    def test_meminfo_and_net_free(self):
        """Buffers and cache above 1 % of memory count as free, smaller ones half."""
        mem = parse_meminfo(MEMINFO)
        assert mem == MemInfo(total=1_000_000, free=400_000, buffers=50_000, cached=100_000)
        assert mem.net_free_kb == 400_000 + (50_000 - 10_000) + (100_000 - 10_000)
        small = MemInfo(total=1_000_000, free=0, buffers=5_000, cached=8_000)
        assert small.net_free_kb == 2_500 + 4_000
        assert mem.fill_grade == 1000 - mem.net_free_kb * 1000 // 1_000_000

    def test_memory_limit(self):
        """Free memory is shared by up to four jobs, with at least 100 MiB each."""
        assert memory_limit_mb(8000, 2) == 4000
        assert memory_limit_mb(8000, 16) == 2000
        assert memory_limit_mb(8000, 0) == 8000
        assert memory_limit_mb(200, 4) == 100


class TestLoadTracker:
    def test_first_stats_is_always_sent(self):
        """1.4 starts from -1000, so the first evaluation after a login is significant."""
        tracker = LoadTracker(cpus=2)
        _evaluate(tracker, _cpu(0, 0))
        tracker.reset()
        sample = _evaluate(tracker, _cpu(90, 100))
        assert sample.send
        assert sample.load == 100
        assert sample.load_avg == (500, 250, 125)
        assert sample.free_mem_mb == 900_000 // 1024

    def test_only_significant_changes_are_sent(self):
        """A change under 100 stays quiet; 100 or more, or crossing 1000, is sent."""
        tracker = LoadTracker(cpus=1)
        _evaluate(tracker, _cpu(0, 0))
        assert _evaluate(tracker, _cpu(50, 100)).send  # load 500, first
        assert not _evaluate(tracker, _cpu(105, 200)).send  # 450: -50
        assert _evaluate(tracker, _cpu(105 + 90, 300)).send  # 100: -350
        sample = _evaluate(tracker, _cpu(195, 300), disk=0)
        assert (sample.load, sample.send) == (1000, True)
        assert _evaluate(tracker, _cpu(195 + 5, 400)).load == 950
        assert tracker.current_load == 950

    def test_our_jobs_count_as_idle(self):
        """CPU time of our own finished jobs is claimed as idle, so they do not look like load."""
        tracker = LoadTracker(cpus=1)
        _evaluate(tracker, _cpu(0, 0))
        tracker.add_job_cpu(600)  # 60 ticks
        assert _evaluate(tracker, _cpu(20, 100)).load == 200
        assert _evaluate(tracker, _cpu(40, 200)).load == 800

    def test_memory_pressure_and_disk_force_the_load(self):
        """Load is the worse of CPU and memory, and 1000 when the env disk is nearly full."""
        tracker = LoadTracker(cpus=1)
        _evaluate(tracker, _cpu(0, 0))
        assert _evaluate(tracker, _cpu(100, 100), free=100_000).load == 900
        assert _evaluate(tracker, _cpu(200, 200), disk=3 * DISK_PER_JOB - 1).load == 1000
        assert _evaluate(tracker, _cpu(300, 300), disk=3 * DISK_PER_JOB).load == 100
