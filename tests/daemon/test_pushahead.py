"""The daemon's push-ahead bookkeeping: names, queue bounds, one push at a time."""

from __future__ import annotations

import pytest

from iceserv.daemon.effects import PushEnv
from iceserv.daemon.pushahead import (
    MAX_QUEUED,
    MAX_SEEN,
    RECENT,
    PushBook,
    env_features,
    env_name,
)
from iceserv.protocol import PushTargets

TARBALL = "/var/cache/icecc/native/0123abcd.tar.zst"


class TestEnvName:
    @pytest.mark.parametrize(
        ("path", "name"),
        [
            (TARBALL, "0123abcd"),
            ("/x/y/abc.tar.gz", "abc"),
            ("abc.tar.xz", "abc"),
            ("/x/abc.tgz", "abc"),
            ("/x/abc.tar", "abc"),
            ("/x/.tar.zst", ""),
            ("/x/abc.zip", ""),
            ("/x.tar.gz/abc", ""),
        ],
    )
    def test_the_name_clients_use(self, path, name):
        """The base name without its tarball suffix, as the client's env_name; else ""."""
        assert env_name(path) == name


class TestEnvFeatures:
    def test_compression_needs_its_feature(self):
        """zstd and xz need the host's ENV_ZSTD / ENV_XZ; gzip and plain tar need nothing."""
        assert env_features(TARBALL) == 2
        assert env_features("/n/a.tar.xz") == 1
        assert env_features("/n/a.tar.gz") == 0
        assert env_features("/n/a.tar") == 0


class TestPushBook:
    def test_offered_before_the_scheduler_then_asked_once(self):
        """An offer waits for the scheduler; it is asked once per connection."""
        book = PushBook(enabled=True)
        assert book.offer(TARBALL, "x86_64", ask_now=False) == []
        assert book.scheduler_ready() == ["0123abcd"]
        assert book.scheduler_ready() == []
        assert book.offer(TARBALL, "x86_64", ask_now=True) == []  # already asked
        book.scheduler_lost()
        assert book.scheduler_ready() == ["0123abcd"]

    def test_a_tarball_without_a_name_is_not_offered(self):
        """A path that is no tarball gives nothing to push."""
        book = PushBook(enabled=True)
        assert book.offer("/x/abc", "x86_64", ask_now=True) == []
        assert book.scheduler_ready() == []

    def test_queue_is_bounded(self):
        """However many hosts are named, at most MAX_QUEUED pushes wait."""
        book = PushBook(enabled=True)
        book.offer(TARBALL, "x86_64", ask_now=True)
        hosts = tuple(f"10.0.{i // 250}.{i % 250}:10245" for i in range(MAX_QUEUED + 10))
        book.targets(PushTargets("0123abcd", "x86_64", hosts))
        assert len(book.queued) == MAX_QUEUED

    def test_one_at_a_time_and_only_when_idle(self):
        """next() gives nothing while one runs or while the daemon is busy."""
        book = PushBook(enabled=True)
        book.offer(TARBALL, "x86_64", ask_now=True)
        book.targets(PushTargets("0123abcd", "", ("a:1", "b:2")))
        assert book.next(idle=False) is None
        first = book.next(idle=True)
        assert first == PushEnv("a", 1, "0123abcd", "x86_64", TARBALL)  # the offer's target
        assert book.next(idle=True) is None
        assert book.finished(ok=True, now=0.0) == first
        assert book.next(idle=True) == PushEnv("b", 2, "0123abcd", "x86_64", TARBALL)

    def test_disable_drops_the_queue(self):
        """Turned off by a reload: what waits is dropped, nothing new is asked or queued."""
        book = PushBook(enabled=True)
        book.offer(TARBALL, "x86_64", ask_now=True)
        book.targets(PushTargets("0123abcd", "x86_64", ("a:1",)))
        book.set_enabled(enabled=False)
        assert book.queued == ()
        assert book.next(idle=True) is None
        assert book.offer("/n/other.tar.zst", "x86_64", ask_now=True) == []

    def test_hosts_remembered_are_bounded(self):
        """A scheduler naming ever new hosts gets at most MAX_SEEN pushes queued in all."""
        book = PushBook(enabled=True)
        book.offer(TARBALL, "x86_64", ask_now=True)
        queued = 0
        for batch in range(MAX_SEEN // 8 + 4):
            hosts = tuple(f"10.{batch // 250}.{batch % 250}.{i}:10245" for i in range(8))
            queued += len(book.targets(PushTargets("0123abcd", "x86_64", hosts)))
            while book.next(idle=True) is not None:
                book.finished(ok=True, now=0.0)
        assert queued == MAX_SEEN

    def test_an_installed_push_is_remembered_for_a_while(self):
        """A successful push is known for RECENT seconds; a failed one not at all."""
        book = PushBook(enabled=True)
        book.offer(TARBALL, "x86_64", ask_now=True)
        book.targets(PushTargets("0123abcd", "x86_64", ("a:1", "b:2")))
        book.next(idle=True)
        book.finished(ok=True, now=100.0)
        book.next(idle=True)
        book.finished(ok=False, now=100.0)
        assert book.installed("a", 1, "0123abcd", 100.0 + RECENT - 1)
        assert not book.installed("a", 1, "0123abcd", 100.0 + RECENT)
        assert not book.installed("b", 2, "0123abcd", 100.0)
