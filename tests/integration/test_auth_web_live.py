"""Each host's authentication state in the scheduler's web view, seen by Chromium (issue 14).

Loopback: our scheduler under ``auth = prefer`` with ``--http``, our keyed
daemon (it proves the key: *authenticated*) and a daemon played with our
codec that logs in without a proof, as icecream 1.4 does (*unauthenticated*).
The page's host cards carry a ``key`` badge and an ``unauthenticated`` badge;
the host JSON and ``/metrics`` agree.  Every wait is bounded.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from testbed import OurDaemon, OurScheduler, wait_for
from testbed.hosts import free_port
from web.webbed import browser, get

from iceserv.protocol import ConfCS, Login, Stats
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.live


def _badges(driver: object, host: str) -> list[str]:
    cards = driver.find_elements(By.CSS_SELECTOR, f'[data-host="{host}"] [data-auth]')  # type: ignore[attr-defined]
    return [card.get_attribute("data-auth") + ":" + card.text.lower() for card in cards]


def test_web_view_marks_each_hosts_auth_state(tmp_path: Path) -> None:
    """The keyed daemon shows a key badge, the proofless one an unauthenticated badge."""
    key = tmp_path / "network.key"
    key.write_bytes(secrets.token_bytes(48))
    key.chmod(0o600)
    auth = ["--key-file", str(key), "--auth", "prefer"]
    http = free_port()
    scheduler = OurScheduler(extra_args=[*auth, "--http", f"127.0.0.1:{http}"]).start()
    daemon = OurDaemon("webkeyed", scheduler.address, native_compilers="", extra_args=auth)
    channel = None
    try:
        daemon.start()
        channel = BlockingChannel.connect("127.0.0.1", scheduler.port or 0, timeout=10.0)
        channel.send(Login(port=1, max_kids=1, nodename="webplain", host_platform="x86_64"),
                     Stats(load=0, load_avg1=100, free_mem=4096))  # fmt: skip
        assert isinstance(channel.receive(), ConfCS)
        wait_for(lambda: {e["nodename"] for e in scheduler.events("daemon_logged_in")}
                 >= {"webkeyed", "webplain"}, 30, "both logins")  # fmt: skip
        metrics = get(f"http://127.0.0.1:{http}/metrics")[1].decode()
        assert 'auth="authenticated"' in metrics
        assert 'auth="unauthenticated"' in metrics
        with browser() as driver:
            driver.get(f"http://127.0.0.1:{http}/")
            WebDriverWait(driver, 15).until(
                lambda d: _badges(d, "webkeyed") and _badges(d, "webplain")
            )
            assert _badges(driver, "webkeyed") == ["authenticated:key"]
            assert _badges(driver, "webplain") == ["unauthenticated:unauthenticated"]
    finally:
        if channel is not None:
            channel.close()
        daemon.stop()
        assert scheduler.stop() == 0
