"""ICECC_VERSION parsing and selection, ICECC_EXTRAFILES, platform and feature bits (§5.4)."""

from __future__ import annotations

import pytest

from iceserv.client.environments import (
    Environment,
    env_name,
    find_prefix,
    parse_extrafiles,
    parse_icecc_version,
    required_features,
    usable_tarball,
)


def parse(value: str, prefix: str = "", usable=lambda _p: True) -> list[tuple[str, str, str]]:
    found = parse_icecc_version(value, platform="x86_64", prefix=prefix, usable=usable)
    return [(e.platform, e.name, e.path) for e in found]


class TestIceccVersion:
    def test_plain_tarball_is_for_our_platform(self):
        """A bare path is an environment for the host platform, named without suffix."""
        assert parse("/e/native.tar.gz") == [("x86_64", "native", "/e/native.tar.gz")]

    def test_platform_list_as_in_the_reference(self):
        """The reference's example: with plain gcc, native and aarch64 are offered."""
        value = ("/opt/envs/native.tar.gz,aarch64:/opt/envs/arm.tar.xz,"
                 "i686:/opt/envs/cross.tar.zst=arm-linux")
        assert parse(value) == [("x86_64", "native", "/opt/envs/native.tar.gz"),
                                ("aarch64", "arm", "/opt/envs/arm.tar.xz")]  # fmt: skip

    def test_prefix_selects_the_cross_entries(self):
        """With an arm-linux-gcc only "=arm-linux" entries count (unprefixed ones do not)."""
        value = "/e/native.tar.gz,i686:/e/cross.tar.zst=arm-linux,/e/cross2.tar=arm-linux"
        assert parse(value, prefix="arm-linux") == [
            ("i686", "cross", "/e/cross.tar.zst"), ("x86_64", "cross2", "/e/cross2.tar"),
        ]  # fmt: skip

    def test_without_any_equals_the_prefix_does_not_matter(self):
        """If no entry has "=", every entry is used whatever the compiler's prefix."""
        assert parse("/e/a.tar.bz2", prefix="arm-linux") == [("x86_64", "a", "/e/a.tar.bz2")]

    def test_second_entry_for_a_platform_is_ignored(self):
        """The first entry of a platform wins."""
        assert parse("/e/a.tgz,/e/b.tar.gz") == [("x86_64", "a", "/e/a.tgz")]

    def test_unusable_entries_are_skipped(self):
        """Entries the probe refuses (missing, symlink, small) are dropped, others kept."""
        found = parse("/e/gone.tar.gz,aarch64:/e/ok.tar.gz", usable=lambda p: "ok" in p)
        assert found == [("aarch64", "ok", "/e/ok.tar.gz")]

    def test_unknown_suffix_keeps_its_platform_place(self):
        """A usable file with an unknown suffix still blocks its platform (then has no name)."""
        assert parse("/e/env.zip,/e/env.tar.gz") == [("x86_64", "", "/e/env.zip")]

    def test_empty_parts_are_skipped(self):
        """Leading, trailing and doubled commas are ignored."""
        assert parse(",/e/a.tar,,") == [("x86_64", "a", "/e/a.tar")]

    @pytest.mark.parametrize(("path", "name"), [
        ("/e/x.tar.xz", "x"), ("/e/x.tar.zst", "x"), ("/e/x.tar.bz2", "x"), ("/e/x.tar.gz", "x"),
        ("/e/x.tar", "x"), ("/e/x.tgz", "x"), ("/e/x.zip", None), (".tar", None),
    ])  # fmt: skip
    def test_env_names(self, path, name):
        """The name is the basename without one of 1.4's suffixes."""
        assert env_name(path) == name


class TestProbesAndBits:
    def test_usable_tarball(self, tmp_path):
        """Regular, readable, at least 500 bytes, and not a symlink."""
        big = tmp_path / "big.tar.gz"
        big.write_bytes(b"x" * 500)
        small = tmp_path / "small.tar.gz"
        small.write_bytes(b"x" * 499)
        link = tmp_path / "link.tar.gz"
        link.symlink_to(big)
        assert usable_tarball(str(big))
        assert not usable_tarball(str(small))
        assert not usable_tarball(str(link))
        assert not usable_tarball(str(tmp_path / "none.tar.gz"))
        assert not usable_tarball(str(tmp_path))

    @pytest.mark.parametrize(("name", "prefix"), [("gcc", ""), ("arm-linux-gcc", "arm-linux"),
                                                  ("gcc-12", "gcc"), ("clang++", "")])  # fmt: skip
    def test_find_prefix(self, name, prefix):
        """The text before the last dash."""
        assert find_prefix(name) == prefix

    @pytest.mark.parametrize(("compression", "bits"), [(None, 0), ("gzip", 0), ("xz", 1),
                                                        ("zstd", 2), ("none", 0)])  # fmt: skip
    def test_required_features(self, compression, bits):
        """xz and zstd environments need servers that can unpack them."""
        assert required_features(compression) == bits

    def test_extrafiles(self, tmp_path):
        """Colon-separated, made absolute; the first missing file is reported."""
        (tmp_path / "a").write_text("")
        files, missing = parse_extrafiles("a:/abs", lambda p: p if p.startswith("/") else
                                          f"{tmp_path}/{p}", lambda p: p != "/abs")  # fmt: skip
        assert (files, missing) == ([f"{tmp_path}/a"], "/abs")

    def test_environment_record(self):
        """Environments compare by value."""
        assert Environment("x", "n", "/p") == Environment("x", "n", "/p")
        assert "Environment('x'" in repr(Environment("x", "n", "/p"))
