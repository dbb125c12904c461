"""scheduler_link.elect: 1.4's scheduler choice plus the dual-stack preference (issue 15)."""

from __future__ import annotations

from iceserv.daemon.scheduler_link import elect
from iceserv.protocol.discovery import SchedulerInfo

OLD = SchedulerInfo(43, 1000, "lab")
NEW = SchedulerInfo(43, 2000, "lab")
NEWER_VERSION = SchedulerInfo(44, 3000, "lab")


class TestElect:
    def test_ipv4_only_is_1_4s_rule(self):
        """With IPv4 replies only, the earliest start wins, first received on ties."""
        replies = [(("10.0.0.2", 8765), NEW), (("10.0.0.1", 8765), OLD)]
        assert elect(replies, "lab") == (("10.0.0.1", 8765), OLD)
        assert elect([], "lab") is None
        assert elect(replies, "other") is None

    def test_dual_stack_beats_an_older_single_stack_one(self):
        """A scheduler that answered over IPv4 and a routable IPv6 address wins; IPv4 is used."""
        replies = [(("10.0.0.1", 8765), OLD), (("fd00::2", 8765), NEW), (("10.0.0.2", 8765), NEW)]
        assert elect(replies, "lab") == (("10.0.0.2", 8765), NEW)
        assert elect(replies, "lab", ipv6_first=True) == (("fd00::2", 8765), NEW)

    def test_link_local_is_no_evidence(self):
        """An answer from a link-local address does not make a scheduler dual-stack."""
        replies = [(("10.0.0.1", 8765), OLD), (("fe80::2%eth0", 8765), NEW),
                   (("10.0.0.2", 8765), NEW)]  # fmt: skip
        assert elect(replies, "lab") == (("10.0.0.1", 8765), OLD)

    def test_version_comes_first(self):
        """A higher version beats a dual-stack scheduler, as 1.4's rule says."""
        replies = [(("fd00::2", 8765), NEW), (("10.0.0.2", 8765), NEW),
                   (("10.0.0.3", 8765), NEWER_VERSION)]  # fmt: skip
        assert elect(replies, "lab") == (("10.0.0.3", 8765), NEWER_VERSION)

    def test_ipv6_only_scheduler(self):
        """A scheduler heard over IPv6 only is chosen by 1.4's rule and reached over IPv6."""
        replies = [(("fd00::1", 8765), OLD)]
        assert elect(replies, "lab") == (("fd00::1", 8765), OLD)
