"""@file response files, expanded as libiberty's expandargv does."""

from __future__ import annotations

import pytest

from iceserv.client.respfile import expand_response_files


def expand(argv: list[str], files: dict[str, str]) -> list[str]:
    return expand_response_files(argv, files.get)


class TestExpansion:
    @pytest.mark.parametrize(("text", "args"), [
        ("-c a.c", ["-c", "a.c"]),
        ("  -c\n\ta.c  \n", ["-c", "a.c"]),
        ("'two words' \"and more\"", ["two words", "and more"]),
        (r"back\ slash 'it''s'", ["back slash", "its"]),
        (r"'a\'b'", ["a'b"]),
        ('""', [""]),
        ("", []),
        ("   \n", []),
    ])  # fmt: skip
    def test_buildargv_rules(self, text, args):
        """Blanks separate, quotes group, backslash escapes; an empty file adds nothing."""
        assert expand(["cc", "@f", "x"], {"f": text}) == ["cc", *args, "x"]

    def test_nested_files_expand(self):
        """An @file inside an expansion is expanded too."""
        assert expand(["cc", "@a"], {"a": "-O2 @b", "b": "-c x.c"}) == ["cc", "-O2", "-c", "x.c"]

    def test_unreadable_file_stays_an_argument(self):
        """@missing is left for the compiler to complain about."""
        assert expand(["cc", "@missing", "-c"], {}) == ["cc", "@missing", "-c"]

    def test_argv0_is_never_expanded(self):
        """The program name is not an argument."""
        assert expand(["@f"], {"f": "x"}) == ["@f"]

    def test_self_including_file_stops(self):
        """A file that includes itself stops after 2000 expansions."""
        out = expand(["cc", "@loop"], {"loop": "-O2 @loop"})
        assert out[-1] == "@loop"
        assert out.count("-O2") == 2000
