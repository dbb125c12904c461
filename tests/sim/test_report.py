"""Tests of iceserv.sim.report and iceserv.sim.svg: figures and the timeline picture."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from sim.helpers import ENV, job, quiet_cluster

from iceserv.sim import HostSpec, format_comparison, render_timeline, replay, summarize
from iceserv.sim.engine import Install, JobRun, SimResult
from iceserv.sim.report import percentile

SVG = "{http://www.w3.org/2000/svg}"


def result() -> SimResult:
    hosts = (HostSpec("a", 1.0, 2), HostSpec("b", 2.0, 1, join=4.0), HostSpec("dev", slots=0))
    runs = (
        JobRun(0, "dev", "a", 0.0, 0.0, 0.0, 4.0, 4.0, 0, "x.c"),
        JobRun(1, "dev", "a", 0.0, 0.0, 1.0, 3.0, 3.5, 1, "y.c"),
        JobRun(2, "dev", "b", 4.0, 4.0, 6.0, 8.0, 8.0, 0, "z.c"),
    )
    return SimResult("test", runs, (Install("b", 4.0, 6.0),), hosts)


class TestSummarize:
    def test_figures(self):
        """Makespan, waits and utilisation follow the definitions in the module docstring."""
        summary = summarize(result())
        assert summary.makespan == 8.0
        assert summary.mean_wait == pytest.approx(1.0)
        assert (summary.p95_wait, summary.max_wait) == (2.0, 2.0)
        assert (summary.remote_jobs, summary.installs) == (3, 1)
        a, b, dev = summary.hosts
        assert (a.jobs, a.busy, a.utilisation) == (2, 6.0, 6.0 / 16)
        assert (b.jobs, b.utilisation) == (1, 2.0 / 4)  # logged in for 4 of the 8 s
        assert (dev.jobs, dev.utilisation) == (0, 0.0)

    def test_percentile(self):
        """Nearest-rank percentiles; no values give 0."""
        assert percentile([5, 1, 3, 2, 4], 0.95) == 5
        assert percentile([5, 1, 3, 2, 4], 0.5) == 3
        assert percentile([], 0.95) == 0.0

    def test_table(self):
        """The comparison table has one column per replay and one row per host."""
        summary = summarize(result())
        table = format_comparison([summary, summary])
        assert table.splitlines()[0].split() == ["test", "test"]
        assert "makespan (s)" in table
        assert "b x2/1" in table


class TestTimeline:
    def test_one_bar_per_job_per_panel(self):
        """The SVG parses, has a panel per replay and a bar (with a tooltip) per job."""
        cluster = quiet_cluster(HostSpec("a", 1.0, 2, envs=(ENV,)), HostSpec("b", 2.0, 2))
        trace = [job(i * 0.5, 1.0, file=f"f{i}.c") for i in range(6)]
        results = [replay(trace, cluster, placement=name) for name in ("iceserv", "1.4")]
        root = ET.fromstring(render_timeline(  # noqa: S314
            results))
        titles = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "title"]
        assert len(titles) == 2
        assert titles[0].startswith("iceserv: makespan")
        bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None
                and r.get("class") != "install"]  # fmt: skip
        assert len(bars) == 12
        tips = [t.text for r in bars for t in r.iter(f"{SVG}title")]
        assert any(tip.startswith("f5.c from laptop") for tip in tips)

    def test_names_are_escaped(self):
        """Host and file names cannot break the XML."""
        hosts = (HostSpec("a<&>", 1.0, 1),)
        runs = (JobRun(0, "d'\"", "a<&>", 0.0, 0.0, 0.0, 1.0, 1.0, 0, "<x>.c"),)
        ET.fromstring(render_timeline(  # noqa: S314
            [SimResult("p&q", runs, (), hosts)]))
