"""scheduler_link: 1.4's scheduler choice plus the dual-stack preference (issue 15); the
one warning per scheduler a keyed daemon refuses (issue 14), on loopback UDP."""

from __future__ import annotations

import asyncio
import random
import socket

import structlog

from iceserv.daemon.scheduler_link import LinkSettings, SchedulerLink, elect
from iceserv.protocol.discovery import SchedulerInfo, encode_reply

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


class _Owner:
    async def scheduler_event(self, event: object) -> None:
        del event


class _PlainScheduler:
    """A UDP socket on loopback answering plain requests as 1.4 does; probes get nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)  # noqa: FBT003 - socket API
        self.port: int = self.sock.getsockname()[1]
        self.probes = 0

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, origin = await loop.sock_recvfrom(self.sock, 1024)
            if len(data) == 1:
                await loop.sock_sendto(self.sock, encode_reply(data[0], OLD), origin)
            else:
                self.probes += 1


class TestUnprovenScheduler:
    def test_a_14_scheduler_is_named_once_then_at_debug_level(self):
        """-s to a scheduler that answers only plain requests: one warning naming it, no login."""
        fake = _PlainScheduler()
        settings = LinkSettings(scheduler=("127.0.0.1", fake.port), netname="lab",
                                discovery_wait=0.3, auth="prefer",
                                keys=(b"k" * 32,))  # fmt: skip
        link = SchedulerLink(settings, _Owner(), random.Random(1))  # noqa: S311 - reconnect jitter only

        async def twice() -> list[tuple[str, int] | None]:
            server = asyncio.get_running_loop().create_task(fake.serve())
            try:
                return [await link._find(), await link._find()]
            finally:
                server.cancel()

        with structlog.testing.capture_logs() as logs, fake.sock:
            assert asyncio.run(twice()) == [None, None]
        unproven = [e for e in logs if e["event"] == "scheduler_unproven"]
        assert [e["log_level"] for e in unproven] == ["warning", "debug"]
        assert unproven[0]["message"] == (
            f"scheduler 127.0.0.1:{fake.port} cannot prove the network key (icecream 1.4?); "
            "not logging in (auth = prefer)"
        )
        assert fake.probes == 2

    def test_silence_is_named_as_such(self):
        """-s to nothing that answers: the warning says so (no 1.4 guess)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
            quiet.bind(("127.0.0.1", 0))
            port = quiet.getsockname()[1]
            settings = LinkSettings(scheduler=("127.0.0.1", port), discovery_wait=0.2,
                                    auth="require", keys=(b"k" * 32,))  # fmt: skip
            link = SchedulerLink(settings, _Owner(), random.Random(1))  # noqa: S311 - reconnect jitter only
            with structlog.testing.capture_logs() as logs:
                assert asyncio.run(link._find()) is None
        (line,) = [e for e in logs if e["event"] == "scheduler_unproven"]
        assert line["log_level"] == "warning"
        assert "no answer to the probe" in line["message"]
        assert line["message"].endswith("not logging in (auth = require)")
