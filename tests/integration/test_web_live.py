"""The scheduler's HTTP endpoint during a real build on a namespace cluster, seen by Chromium.

One cluster for the module: our scheduler with ``ICECC_SCHEDULER_HTTP`` on
the first host (and on a private system bus), two real 1.4 daemons and one
of ours, our ``icecc`` with ``ICECC_SUMMARY`` building the zstd library.  The
tests run in order and share it: ``/metrics`` parsed with prometheus_client's
parser during the build (counters only grow, the series stay within the
stated bound), the web view in headless Chromium (hosts, each running job
on its server within 1 s of JOB_BEGIN, screenshots in light and dark), the
totals against the telnet port and D-Bus, ``iceserv status`` against D-Bus,
``iceserv summary`` against the monitor, a host leaving, and the page
reconnecting after the scheduler restarts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from testbed import ClientPlan, Cluster, DaemonPlan, NetnsBed, wait_for
from testbed.dbusbed import SystemBus, busctl
from web.webbed import Forward, browser, check_png, get, metrics, value

if TYPE_CHECKING:
    from collections.abc import Iterator

    from testbed import BuildResult, Project, Reference
    from web.webbed import Samples

pytestmark = [pytest.mark.live, pytest.mark.netns]
log = logging.getLogger(__name__)

HTTP_PORT: Final = 8767
ROOT: Final = Path(__file__).resolve().parents[2]
BUS_NAME: Final = "org.icecream.Scheduler1"
BUS_PATH: Final = "/org/icecream/Scheduler1"
#: Series of one scrape: 66 that do not depend on the hosts, 7 per connected host.
FIXED_SERIES: Final = 66
PER_HOST_SERIES: Final = 7
#: A running job must be on the page this soon after the scheduler saw JOB_BEGIN.
SHOW_WITHIN: Final = 1.0
RECORDER: Final = """
window.__seen = new Map();
const record = (node, t) => {
  if (node.nodeType !== 1) return;
  const items = node.matches('[data-job]') ? [node] : node.querySelectorAll('[data-job]');
  for (const li of items) {
    const id = Number(li.dataset.job);
    if (!window.__seen.has(id) && li.dataset.started) {
      const host = li.closest('[data-host]').dataset.host;
      window.__seen.set(id, [host, t, Number(li.dataset.started)]);
    }
  }
};
new MutationObserver((changes) => {
  const t = Date.now() / 1000;
  for (const change of changes) for (const node of change.addedNodes) record(node, t);
}).observe(document.getElementById('hosts'), {childList: true, subtree: true});
"""


@dataclass
class Web:
    """The module's cluster, its HTTP endpoint through a loopback port, the bus, a browser."""

    bed: NetnsBed
    cluster: Cluster
    forward: Forward
    bus: SystemBus
    driver: Any
    workdir: Path
    during: list[Samples]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    """Start the cluster (3 hosts), the port forward and Chromium on the page."""
    workdir = tmp_path_factory.mktemp("web")
    bus = SystemBus(user="daemon", group="staff").start()
    try:
        with NetnsBed(3) as bed:
            plans = [DaemonPlan("real", max_jobs=2), DaemonPlan("real", max_jobs=3),
                     DaemonPlan("ours", max_jobs=2)]  # fmt: skip
            env = {"ICECC_SCHEDULER_HTTP": f"{bed[0].ip}:{HTTP_PORT}",
                   "DBUS_SYSTEM_BUS_ADDRESS": bus.address}  # fmt: skip
            cluster = Cluster(bed, "ours", plans, scheduler_env=env)
            forward = None
            try:
                cluster.start()
                forward = Forward(bed[0], (bed[0].ip, HTTP_PORT))
                with browser() as driver:
                    yield Web(bed, cluster, forward, bus, driver, workdir, [])
            finally:
                if forward is not None:
                    forward.close()
                cluster.stop()
    finally:
        bus.close()


def _counters(samples: Samples) -> dict[tuple[str, Any], float]:
    return {key: v for key, v in samples.items()
            if key[0].endswith(("_total", "_count", "_sum", "_bucket"))}  # fmt: skip


def _shown_hosts(driver: Any) -> set[str]:
    return {card.get_attribute("data-host")
            for card in driver.find_elements(By.CSS_SELECTOR, "[data-host]")}  # fmt: skip


def _busy(driver: Any, finished: int) -> bool:
    """Whether the page shows a busy cluster: 4 jobs running, *finished* on the timeline."""
    return bool(driver.execute_script(
        "return document.querySelectorAll('[data-job]').length >= 4"
        " && Number(document.body.dataset.timeline || 0) >= arguments[0]", finished,
    ))  # fmt: skip


def _screenshots(web: Web) -> list[Path]:
    """Save the busy page in light and dark (toggled with the page's button)."""
    driver = web.driver
    paths = []
    for theme in ("light", "dark"):
        if driver.execute_script("return document.documentElement.dataset.theme") != theme:
            driver.find_element(By.ID, "theme").click()
        WebDriverWait(driver, 5).until(
            lambda d, t=theme: (
                d.execute_script("return document.documentElement.dataset.theme") == t
            )
        )
        path = web.workdir / f"web-view-{theme}.png"
        driver.save_screenshot(str(path))
        paths.append(path)
    driver.find_element(By.ID, "theme").click()
    return paths


class TestWebEndpointLive:
    def test_a_cluster_life_seen_on_the_web(
        self, web: Web, project: Project, zstd: Reference
    ) -> None:
        """One cluster's life in order: a build, its totals, status, a host leaving, a restart.

        The steps share the cluster and each needs the state the one before left (the build's
        totals, three hosts, then two), so they run as one test in this order, whatever order
        the suite runs tests in (pytest-randomly).
        """
        self.check_metrics_and_page_during_a_build(web, project, zstd)
        self.check_totals_agree_with_telnet_and_dbus(web)
        self.check_status_agrees_with_dbus(web)
        self.check_a_host_that_leaves_disappears(web)
        self.check_the_page_reconnects_after_a_scheduler_restart(web)

    def check_metrics_and_page_during_a_build(
        self, web: Web, project: Project, zstd: Reference
    ) -> None:
        """During a build /metrics parses, counters only grow, jobs show on their host in 1 s."""
        driver = web.driver
        driver.get(web.forward.base + "/")
        names = {web.cluster.name(i) for i in range(3)}
        WebDriverWait(driver, 20).until(lambda d: _shown_hosts(d) == names)
        driver.execute_script(RECORDER)
        record = web.workdir / "summary.jsonl"
        client = ClientPlan("ours", extra_env={"ICECC_SUMMARY": str(record)})
        running = web.cluster.start_build(project, zstd.reference, client, on=0, jobs=6)
        shots: list[Path] = []
        deadline = time.monotonic() + 300
        while running.running() and time.monotonic() < deadline:
            status, body = get(web.forward.base + "/metrics")
            assert status == 200
            web.during.append(metrics(body.decode()))
            if not shots and _busy(driver, len(project.sources) // 3):
                shots = _screenshots(web)
            with contextlib.suppress(subprocess.TimeoutExpired):
                running.proc.wait(0.25)  # the sampling period; ends early when make exits
        result = running.finish()
        assert result.returncode == 0, result.output[-2000:] + web.cluster.log_tails()
        assert not result.different, result.summary()
        log.info("%s", result.summary())
        _check_scrapes(web.during)
        _check_page(web)
        assert shots, "the page never showed 4 running jobs with a third of them done"
        for path in shots:
            check_png(path)
            if os.environ.get("ICESERV_UPDATE_SCREENSHOTS"):
                shutil.copy(path, ROOT / "docs" / path.name)
        _check_summary(web, record, result)

    def check_totals_agree_with_telnet_and_dbus(self, web: Web) -> None:
        """After the build /metrics, the telnet greeting and D-Bus report the same totals."""
        assert web.during, "needs the build of the step before"
        props = {name: _property(web, name) for name in
                 ("HostCount", "TotalJobs", "JobsRunning", "JobsQueued")}  # fmt: skip
        telnet = _telnet_greeting(web)

        def settled() -> Samples | None:  # a rendering is reused for up to a second
            samples = metrics(get(web.forward.base + "/metrics")[1].decode())
            placed = value(samples, "iceserv_jobs_placed_total")
            local = value(samples, "iceserv_local_jobs_total")
            return samples if placed + local == props["TotalJobs"] else None

        samples = wait_for(settled, 10, "/metrics to catch up with D-Bus")
        placed = value(samples, "iceserv_jobs_placed_total")
        local = value(samples, "iceserv_local_jobs_total")
        assert value(samples, "iceserv_hosts", state="connected") == props["HostCount"] == 3
        assert telnet["hosts"] == 3
        assert placed + local == props["TotalJobs"] == telnet["total"]
        assert value(samples, "iceserv_jobs_finished_total") == placed
        assert value(samples, "iceserv_jobs", state="running") == props["JobsRunning"] == 0
        assert value(samples, "iceserv_jobs", state="queued") == props["JobsQueued"] == 0
        assert value(samples, "iceserv_placement_wait_seconds_count") == placed
        assert value(samples, "iceserv_job_bytes_total", direction="in") > 0
        assert value(samples, "iceserv_slots", state="total") == 7

    def check_status_agrees_with_dbus(self, web: Web) -> None:
        """``iceserv status`` (D-Bus, and telnet with --scheduler) lists what D-Bus lists."""
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": web.bus.address}
        done = subprocess.run([sys.executable, "-m", "iceserv.app.cli", "status", "--json"],
                              env=env, capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        listed = json.loads(busctl(web.bus.address, "--json=short", "call", BUS_NAME, BUS_PATH,
                                   BUS_NAME, "ListHosts").stdout)["data"][0]  # fmt: skip
        from_bus = [(h[0], h[1], h[3], h[4], h[5], h[6], h[7]) for h in listed]
        shown = [(h["name"], h["ip"], h["platform"], h["protocol"], h["slots"], h["used"],
                  h["load"]) for h in status["hosts"]]  # fmt: skip
        assert shown == from_bus
        assert status["source"].startswith("D-Bus")
        text = subprocess.run([sys.executable, "-m", "iceserv.app.cli", "status"], env=env,
                              capture_output=True, text=True, timeout=60,
                              check=True).stdout  # fmt: skip
        assert "\x1b[" not in text  # no colour when not on a terminal
        assert "3 hosts, 0/7 slots busy, 0 running, 0 queued" in text
        for name, *_ in from_bus:
            assert re.search(rf"^{re.escape(name)}\s", text, re.MULTILINE), text
        # From another machine: the telnet port.
        remote = web.bed[1].run([sys.executable, "-m", "iceserv.app.cli", "status", "--json",
                                 "--scheduler", f"{web.bed[0].ip}:8765"],
                                env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                                text=True, check=False)  # fmt: skip
        assert remote.returncode == 0, remote.stderr
        over_telnet = json.loads(remote.stdout)
        assert [(h["name"], h["ip"], h["slots"], h["load"]) for h in over_telnet["hosts"]] == [
            (h[0], h[1], h[4], h[6]) for h in from_bus
        ]

    def check_a_host_that_leaves_disappears(self, web: Web) -> None:
        """Stopping a daemon takes its card off the page and its series off /metrics."""
        web.driver.get(web.forward.base + "/")
        gone = web.cluster.name(2)
        WebDriverWait(web.driver, 20).until(lambda d: gone in _shown_hosts(d))
        web.cluster.daemons.pop(2).stop()
        WebDriverWait(web.driver, 30).until(lambda d: gone not in _shown_hosts(d))

        def without() -> Samples | None:  # a rendering is reused for up to a second
            samples = metrics(get(web.forward.base + "/metrics")[1].decode())
            return samples if value(samples, "iceserv_hosts", state="connected") == 2 else None

        samples = wait_for(without, 10, "/metrics without the host")
        assert not any(dict(labels).get("host") == gone for _name, labels in samples)

    def check_the_page_reconnects_after_a_scheduler_restart(self, web: Web) -> None:
        """When the scheduler restarts, the page notices, reconnects and says so."""
        driver = web.driver
        hellos = int(driver.execute_script("return document.body.dataset.hellos || '0'"))
        web.cluster.restart_scheduler()
        WebDriverWait(driver, 60).until(
            lambda d: int(d.execute_script("return document.body.dataset.hellos || '0'")) > hellos
        )
        assert driver.find_element(By.ID, "conn").get_attribute("data-state") == "live"
        wait_for(lambda: get(web.forward.base + "/metrics")[0] == 200, 30, "metrics after restart")


def _check_scrapes(during: list[Samples]) -> None:
    """Counters only grow from scrape to scrape; the series stay within the bound."""
    assert len(during) >= 3, "too few scrapes during the build"
    for before, after in itertools.pairwise(during):
        grown = _counters(after)
        for key, count in _counters(before).items():
            assert grown.get(key, count) >= count, key
    for samples in during:
        hosts = value(samples, "iceserv_hosts", state="connected")
        assert len(samples) == FIXED_SERIES + PER_HOST_SERIES * hosts, sorted(samples)


def _check_page(web: Web) -> None:
    """Each job the page showed was on its server, within SHOW_WITHIN of JOB_BEGIN."""
    seen = {int(k): v for k, v in web.driver.execute_script(
        "return Object.fromEntries(window.__seen)").items()}  # fmt: skip
    monitor = web.cluster.monitor
    assert monitor is not None
    servers = monitor.hosts()
    began = {e.job_id: servers[e.host_id] for e in monitor.snapshot()
             if e.kind == "MON_JOB_BEGIN" and e.host_id in servers}  # fmt: skip
    assert seen, "no running job appeared on the page"
    delays = sorted(at - started for _host, at, started in seen.values())
    log.info("page delay after JOB_BEGIN over %d jobs: median %.3f s, max %.3f s",
             len(delays), delays[len(delays) // 2], delays[-1])  # fmt: skip
    for job_id, (host, at, started) in seen.items():
        assert began.get(job_id) == host, (job_id, host, began.get(job_id))
        assert at - started < SHOW_WITHIN, (job_id, at - started)
    assert len(seen) >= len(began) // 2, f"only {len(seen)} of {len(began)} begun jobs shown"


def _check_summary(web: Web, record: Path, result: BuildResult) -> None:
    """``iceserv summary`` of the wrapper's record names the servers the monitor saw."""
    report = subprocess.run([sys.executable, "-m", "iceserv.app.cli", "summary", str(record),
                             "--json"], capture_output=True, text=True, check=True,
                            timeout=60).stdout  # fmt: skip
    entries = json.loads(report)
    assert len(entries) >= result.units
    ips = {web.bed[i].ip: web.cluster.name(i) for i in range(3)}
    remote: dict[str, int] = {}
    for entry in entries:
        if entry["where"] != "local" and ips[entry["where"]] != result.host:
            remote[ips[entry["where"]]] = remote.get(ips[entry["where"]], 0) + 1
    elsewhere = {n: c for n, c in result.placement.began.items() if n != result.host}
    assert remote == elsewhere, (remote, result.placement)
    argv = [sys.executable, "-m", "iceserv.app.cli", "summary", str(record)]
    text = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    assert f"{len(entries)} compiles" in text
    assert "slowest 5:" in text


def _telnet_greeting(web: Web) -> dict[str, int]:
    sock = web.bed[0].socket()
    try:
        sock.settimeout(10)
        sock.connect((web.bed[0].ip, 8766))
        data = b""
        while b"200 Use" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
    finally:
        sock.close()
    match = re.search(rb"(\d+) hosts, (\d+) jobs in queue \((\d+) total\)", data)
    assert match is not None, data
    return {"hosts": int(match[1]), "jobs": int(match[2]), "total": int(match[3])}


def _property(web: Web, name: str) -> int:
    done = busctl(web.bus.address, "--json=short", "get-property", BUS_NAME, BUS_PATH, BUS_NAME,
                  name)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["data"])
