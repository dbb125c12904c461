"""How file names are cut before they go on the wire (1.4 ``shorten_filename``)."""

from __future__ import annotations

import pytest

from iceserv.protocol.filenames import shorten_filename


class TestShortenFilename:
    @pytest.mark.parametrize(
        ("name", "short"),
        [
            ("hello.c", "hello.c"),
            ("a/b.c", "a/b.c"),
            ("a/b/c/d.c", "b/c/d.c"),
            ("/p/q/r/s.o", "q/r/s.o"),
            ("/a/b/c.o", "a/b/c.o"),
            ("/-c/-O2/home/me/proj/src/a.c", "proj/src/a.c"),
            ("", ""),
            ("/", ""),
        ],
    )
    def test_last_three_components(self, name, short):
        """The last three "/"-separated components are kept."""
        assert shorten_filename(name) == short

    @pytest.mark.parametrize(
        ("name", "short"),
        [("/a/b", "b"), ("/x/y.c", "y.c"), ("/-c/x.c", "x.c"), ("/-c/d/x.c", "-c/d/x.c")],
    )
    def test_wraps_around_like_1_4(self, name, short):
        """A search that reaches the slash at position 0 starts over from the end, as in 1.4."""
        assert shorten_filename(name) == short
