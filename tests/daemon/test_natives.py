"""The native-environment book on its own: ready, queued and running builds (pure)."""

from __future__ import annotations

from iceserv.daemon.effects import BuildNative, NativeKey
from iceserv.daemon.natives import NativeBook

GCC = NativeKey("zstd", "/usr/bin/gcc", (), (("/usr/bin/gcc", 1.0),))
CLANG = NativeKey("zstd", "/usr/bin/clang", (), (("/usr/bin/clang", 1.0),))
OTHER = NativeKey("gzip", "/usr/bin/gcc", (), (("/usr/bin/gcc", 1.0),))


class TestNativeBook:
    def test_found_compilers_wait_for_a_free_build_slot(self):
        """Two found, one build slot: one starts, the other is queued; kept ones are ready."""
        book = NativeBook(max_builds=1)
        started = book.found(((GCC, ""), (CLANG, ""), (OTHER, "/n/o.tar.gz")), 10.0)
        assert started == [BuildNative(GCC, "prebuild")]
        assert book.queued == (CLANG,)
        assert book.running == 1
        ready = book.ready(OTHER)
        assert ready is not None
        assert (ready.path, ready.origin) == ("/n/o.tar.gz", "cache")

    def test_a_finished_build_records_its_time_and_starts_the_next(self):
        """built() returns the build with its waiters and how long it ran; the queue moves on."""
        book = NativeBook(max_builds=1)
        book.found(((GCC, ""), (CLANG, "")), 10.0)
        assert book.request(7, GCC, "", 11.0) == (None, [])
        outcome = book.built(GCC, "/n/g.tar.zst", 12.5)
        assert outcome.build is not None
        assert outcome.build.waiters == {7: 11.0}
        assert outcome.seconds == 2.5
        assert outcome.start == (BuildNative(CLANG, "prebuild"),)
        ready = book.ready(GCC)
        assert ready is not None
        assert (ready.origin, ready.seconds) == ("prebuild", 2.5)

    def test_a_failed_build_is_not_ready(self):
        """A build that failed leaves nothing ready: the next request builds again."""
        book = NativeBook(max_builds=1)
        book.found(((GCC, ""),), 0.0)
        book.built(GCC, "", 1.0)
        assert book.ready(GCC) is None
        assert book.request(1, GCC, "", 2.0) == (None, [BuildNative(GCC, "request")])

    def test_an_unknown_build_result_is_ignored(self):
        """A result for a key the book never started changes nothing."""
        book = NativeBook(max_builds=1)
        outcome = book.built(GCC, "/n/g.tar.zst", 1.0)
        assert outcome.build is None
        assert book.ready(GCC) is None
