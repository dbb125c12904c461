"""iceserv's placement against the model of 1.4 on the traces shipped in bench/traces.

For each trace and submission mode the median makespan over eleven seeds is
compared (one seed decides little: the makespan of a make -j24 binutils build
hangs on where its five 13-23 CPU-second gold files land).  Where iceserv is
worse the case is an expected failure with the figures in its reason, so it
stays visible and flips to a failure the day it improves.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from iceserv.sim import read_cluster, read_trace, replay, summarize

TRACES = Path(__file__).resolve().parents[2] / "bench" / "traces"
SEEDS = range(1, 12)
# None now: binutils and shared at make -j24 (42.0 s against 1.4's 33.3 s) were
# until placement weighed a short queue on a fast host against a free slow slot.
WORSE: dict[tuple[str, int | None], str] = {}


def _median_makespan(trace: str, placement: str, make_jobs: int | None) -> float:
    jobs = read_trace(TRACES / f"{trace}.jsonl")
    cluster = read_cluster(TRACES / "cluster-lab.json")
    return statistics.median(
        summarize(replay(jobs, cluster, placement=placement, seed=seed,
                         make_jobs=make_jobs)).makespan
        for seed in SEEDS
    )  # fmt: skip


def _cases() -> list[object]:
    cases: list[object] = []
    for trace in ("binutils", "libuv", "shared"):
        for make_jobs in (None, 8, 24):
            reason = WORSE.get((trace, make_jobs))
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            mode = "recorded" if make_jobs is None else f"j{make_jobs}"
            cases.append(pytest.param(trace, make_jobs, marks=marks, id=f"{trace}-{mode}"))
    return cases


@pytest.mark.parametrize(("trace", "make_jobs"), _cases())
def test_not_worse_than_1_4(trace, make_jobs):
    """iceserv's median makespan is at most 1.4's on the shipped trace."""
    ours = _median_makespan(trace, "iceserv", make_jobs)
    theirs = _median_makespan(trace, "1.4", make_jobs)
    assert ours <= theirs, f"iceserv {ours:.2f} s, 1.4 {theirs:.2f} s"
