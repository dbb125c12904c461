"""The MON_STATS text monitors receive, exactly as 1.4's ``handle_monitor_stats`` prints it."""

from __future__ import annotations

import pytest
from scheduler.builders import add_host

from iceserv.protocol import Stats
from iceserv.scheduler.monitoring import OFFLINE, features_text, host_stats_text
from iceserv.scheduler.state import ClusterState


class TestFeaturesText:
    @pytest.mark.parametrize(
        ("bits", "text"), [(3, "env_xz env_zstd"), (1, "env_xz"), (2, "env_zstd"), (0, "--")]
    )
    def test_as_1_4_prints_them(self, bits, text):
        """Features: space-separated names, or "--" for none."""
        assert features_text(bits) == text


class TestHostStatsText:
    def setup_method(self):
        self.host = add_host(ClusterState(), "h1", load=250, features=1, noremote=True)

    def test_login_text(self):
        """Without STATS: the host's fields and its current load, one Key:Value per line."""
        assert host_stats_text(self.host) == (
            "Name:h1\nIP:10.0.0.1\nMaxJobs:4\nNoRemote:true\nPlatform:x86_64\nVersion:43\n"
            "Features:env_xz\nSpeed:0.000000\nLoad:250\n"
        )

    def test_stats_text(self):
        """With STATS: its load and the four load-detail keys replace the current load."""
        text = host_stats_text(self.host, Stats(120, 1500, 1200, 900, 2048))
        assert text.endswith(
            "Speed:0.000000\nLoad:120\nLoadAvg1:1500\nLoadAvg5:1200\nLoadAvg10:900\nFreeMem:2048\n"
        )
        assert "Load:250" not in text

    def test_offline(self):
        """A daemon that went away is the single line State:Offline."""
        assert OFFLINE == "State:Offline\n"
