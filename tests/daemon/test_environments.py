"""Tests of untrusted environment tarballs and of the environment cache (install, LRU, in use)."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import lzma
import os
import pwd
import shutil
import stat
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import zstandard

from iceserv.daemon.env_transfer import Installer, unpack_server
from iceserv.daemon.environments import TMP_MODE, EnvInstallError, EnvironmentCache, check_name
from iceserv.daemon.sandbox import RunAs
from iceserv.daemon.tarballs import TarballError, UnpackLimits, detect_compression, unpack
from iceserv.protocol import EnvEntry
from iceserv.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Iterator

SH = b"#!/bin/sh\nexit 0\n"


def _member(name: str, *, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "",
            mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _tar(*members: tuple[tarfile.TarInfo, bytes], compression: str = "gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}" if compression else "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def _good(compression: str = "gz") -> bytes:
    return _tar(_member("usr/bin/as", data=SH), _member("./bin/true", data=SH),
                _member("etc", kind=tarfile.DIRTYPE), _member("etc/ld.so.conf", data=b"x\n",
                                                              mode=0o644),
                _member("usr/bin/gcc", kind=tarfile.SYMTYPE, link="as"),
                _member("usr/bin/cc", kind=tarfile.LNKTYPE, link="usr/bin/as"),
                compression=compression)  # fmt: skip


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """An empty destination inside a directory that must stay untouched."""
    dest = tmp_path / "outer" / "env"
    dest.mkdir(parents=True)
    (tmp_path / "outer" / "keep").write_text("untouched")
    return tmp_path / "outer", dest


def _refused(sandbox: tuple[Path, Path], data: bytes, match: str,
             limits: UnpackLimits | None = None) -> None:  # fmt: skip
    outer, dest = sandbox
    before = _tree(outer) - {p for p in _tree(outer) if p.startswith("env")}
    with pytest.raises(TarballError, match=match):
        unpack(io.BytesIO(data), dest, limits)
    after = {p for p in _tree(outer) if not p.startswith("env")}
    assert after == before
    assert (outer / "keep").read_text() == "untouched"


class TestUnpack:
    @pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""])
    def test_valid_environment_in_every_tar_compression(self, sandbox, compression):
        """gzip, bzip2, xz and plain tar unpack; modes kept, links inside allowed."""
        _, dest = sandbox
        size = unpack(io.BytesIO(_good(compression)), dest)
        assert size == 2 * len(SH) + 2  # the hard link and the symlink add no data
        assert os.access(dest / "usr/bin/as", os.X_OK)
        assert (dest / "usr/bin/gcc").readlink() == Path("as")
        assert (dest / "usr/bin/cc").stat().st_ino == (dest / "usr/bin/as").stat().st_ino
        assert stat.S_IMODE((dest / "etc/ld.so.conf").stat().st_mode) == 0o644

    def test_zstd_environment(self, sandbox):
        """zstd (icecc-create-env --compression zstd) unpacks through the zstandard module."""
        _, dest = sandbox
        data = zstandard.ZstdCompressor().compress(_good(""))
        assert detect_compression(data) == "zstd"
        unpack(io.BytesIO(data), dest)
        assert (dest / "bin/true").read_bytes() == SH

    def test_detects_compression_by_magic(self):
        """The compression is recognised from the first bytes, not trusted from a name."""
        assert detect_compression(gzip.compress(b"x")) == "gzip"
        assert detect_compression(bz2.compress(b"x")) == "bzip2"
        assert detect_compression(lzma.compress(b"x")) == "xz"
        assert detect_compression(b"ustar") == "none"

    def test_absolute_member(self, sandbox):
        """A member with an absolute path is refused."""
        _refused(sandbox, _tar(_member("/tmp/iceserv-absolute", data=b"x")), "absolute path")
        assert not Path("/tmp/iceserv-absolute").exists()

    def test_dotdot_member(self, sandbox):
        """A member whose path contains '..' is refused before anything is written for it."""
        _refused(sandbox, _tar(_member("usr/../../escaped", data=b"x")), r"'\.\.'")

    @pytest.mark.parametrize(("link", "match"), [
        ("/etc/passwd", "absolute path"), ("../../keep", "points outside"),
        ("usr/../../..", "points outside"),
    ])  # fmt: skip
    def test_symlink_escapes(self, sandbox, link, match):
        """Symlinks that are absolute or resolve outside the environment are refused."""
        data = _tar(_member("usr", kind=tarfile.DIRTYPE),
                    _member("usr/lnk", kind=tarfile.SYMTYPE, link=link))  # fmt: skip
        _refused(sandbox, data, match)

    def test_symlink_chain_cannot_lead_out(self, sandbox):
        """An innocent link followed by a link through it is checked against the disk."""
        data = _tar(_member("a", kind=tarfile.SYMTYPE, link="."),
                    _member("a/b", kind=tarfile.SYMTYPE, link="../.."))  # fmt: skip
        _refused(sandbox, data, "points outside")

    def test_file_written_through_an_earlier_symlink_stays_inside(self, sandbox):
        """A file member replacing a symlink is written in place of the link, not through it."""
        outer, dest = sandbox
        data = _tar(_member("x", kind=tarfile.SYMTYPE, link="y"), _member("x", data=b"new"))
        unpack(io.BytesIO(data), dest)
        assert (dest / "x").read_bytes() == b"new"
        assert not (dest / "x").is_symlink()
        assert _tree(outer) == {"env", "env/x", "keep"}

    @pytest.mark.parametrize("link", ["../keep", "/etc/passwd", "missing", "lnk"])
    def test_hardlink_escapes(self, sandbox, link):
        """Hard links must point to a regular file already unpacked in the environment."""
        data = _tar(_member("lnk", kind=tarfile.SYMTYPE, link="."),
                    _member("evil", kind=tarfile.LNKTYPE, link=link))  # fmt: skip
        _refused(sandbox, data, "hard link")

    @pytest.mark.parametrize(("kind", "what"), [
        (tarfile.CHRTYPE, "a device"), (tarfile.BLKTYPE, "a device"), (tarfile.FIFOTYPE, "a FIFO"),
    ])  # fmt: skip
    def test_devices_and_fifos(self, sandbox, kind, what):
        """Device nodes and FIFOs have no business in a compiler environment."""
        _refused(sandbox, _tar(_member("dev/null", kind=kind)), what)

    @pytest.mark.parametrize("mode", [0o4755, 0o2755])
    def test_setuid_and_setgid(self, sandbox, mode):
        """setuid and setgid members are refused, not silently stripped."""
        _refused(sandbox, _tar(_member("usr/bin/as", data=SH, mode=mode)), "setuid or setgid")

    def test_declared_size_bomb(self, sandbox):
        """Members whose sizes add up past the limit are refused before their data is read."""
        data = _tar(_member("a", data=b"x" * 600), _member("b", data=b"y" * 600))
        _refused(sandbox, data, "more than 1024 bytes", UnpackLimits(max_bytes=1024))

    def test_compression_bomb(self, sandbox):
        """A small gzip that unpacks to far more than the limit is refused at the limit."""
        bomb = _tar(_member("zeros", data=b"\0" * (8 << 20)))
        assert len(bomb) < 20_000
        _refused(sandbox, bomb, "more than", UnpackLimits(max_bytes=1 << 20))

    def test_huge_header_bomb(self, sandbox):
        """A pax header larger than the limit stops while being read, not after."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(tarfile.TarInfo("n" * (2 << 20)))
        _refused(sandbox, buffer.getvalue(), "unpacks to more than",
                 UnpackLimits(max_bytes=1 << 20))  # fmt: skip

    def test_too_many_members(self, sandbox):
        """More members than allowed are refused."""
        data = _tar(*(_member(f"f{i}", data=b"x") for i in range(20)))
        _refused(sandbox, data, "more than 10 members", UnpackLimits(max_members=10))

    def test_truncated_tarball(self, sandbox):
        """A tarball cut short is reported as invalid, whatever was already unpacked."""
        data = _tar(_member("big", data=os.urandom(50_000)))
        _refused(sandbox, data[: len(data) // 2], "not a valid gzip tar|truncated")

    @pytest.mark.parametrize("compression", ["gz", ""])
    def test_damaged_header_after_the_first_member(self, sandbox, compression):
        """A damaged member header is refused, not taken for the end of the archive."""
        data = bytearray(_tar(_member("usr/bin/as", data=SH), _member("usr/bin/gcc", data=SH),
                              _member("bin/true", data=SH), compression=""))  # fmt: skip
        data[1024:1124] = b"\xff" * 100  # the name field of the second member's header
        damaged = gzip.compress(bytes(data)) if compression else bytes(data)
        _refused(sandbox, damaged, "damaged")

    def test_corrupt_compressed_data_is_refused(self, sandbox):
        """Inverted bytes inside a member's data fail gzip's CRC check at the end of the stream."""
        data = bytearray(_tar(_member("usr/bin/as", data=os.urandom(50_000))))
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        _refused(sandbox, bytes(data), "not a valid gzip tar")

    def test_wrong_compression(self, sandbox):
        """Data behind a gzip magic that is not gzip, or no tar at all, is refused."""
        _refused(sandbox, b"\x1f\x8b" + os.urandom(2000), "not a valid gzip tar")
        _refused(sandbox, b"plain text, not a tarball" * 40, "not a valid uncompressed tar")


class TestCheckName:
    @pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a b", "tab\t", "é", "x" * 256])
    def test_invalid_names(self, bad):
        """Names and targets are printable ASCII without blanks or '/' (and never . or ..)."""
        with pytest.raises(EnvInstallError):
            check_name(bad, "name")

    def test_valid_name(self):
        """An md5 name and a platform pass unchanged."""
        assert check_name("8b59cf5c35b2033fe114a01a619d2eea", "name").startswith("8b59")
        assert check_name("x86_64", "target") == "x86_64"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A scratch directory the job user can reach (pytest's tmp_path parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="iceserv-envtest-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _job_user() -> RunAs:
    entry = pwd.getpwnam("icecc")
    return RunAs("icecc", entry.pw_uid, entry.pw_gid, switch=True)


def _cache(tmp_path: Path, clock: FakeClock, *, limit: int = 1 << 30,
           run_as: RunAs | None = None) -> EnvironmentCache:  # fmt: skip
    run_as = run_as or RunAs("me", os.getuid(), os.getgid(), switch=False)
    cache = EnvironmentCache(tmp_path / "envs", limit, run_as, clock)
    cache.wipe()
    return cache


def _place(cache: EnvironmentCache, name: str, size: int, *, broken: bool = False) -> None:
    """Install a fake environment of *size* bytes without the unpacker."""
    installer = Installer(cache, "x86_64", name)
    (installer.staging / "usr/bin").mkdir(parents=True)
    if not broken:
        (installer.staging / "usr/bin/as").write_bytes(SH)
        (installer.staging / "usr/bin/as").chmod(0o755)
    (installer.staging / "blob").write_bytes(b"\0" * (size - (0 if broken else len(SH))))
    cache.commit(f"x86_64/{name}", installer.final, installer.staging)


_UNPACKERS = unpack_server()


async def _install(cache: EnvironmentCache, name: str, data: bytes, pause: float = 0.0) -> int:
    installer = Installer(cache, "x86_64", name, _UNPACKERS)
    await installer.start()
    try:
        for start in range(0, len(data), 100_000):
            await installer.feed(data[start : start + 100_000])
            await asyncio.sleep(pause)
        return await installer.finish()
    except EnvInstallError:
        await installer.abort()
        raise


class TestInstall:
    def test_install_through_the_unpacker_as_the_job_user(self, open_dir):
        """The real unpacker process installs; files end up read-only for jobs, tmp is 01775."""
        if os.geteuid() != 0:
            pytest.skip("needs root to switch to the icecc user")
        tmp_path = open_dir
        cache = _cache(tmp_path, FakeClock(), run_as=_job_user())
        size = asyncio.run(_install(cache, "good", _good()))
        root = cache.env_dir("x86_64", "good")
        assert size == cache.size > 0
        assert cache.installed() == (EnvEntry("x86_64", "good"),)
        assert (root / "usr/bin/as").stat().st_uid == 0
        assert stat.S_IMODE((root / "tmp").stat().st_mode) == TMP_MODE
        assert (root / "tmp").stat().st_uid == _job_user().uid
        assert not list((tmp_path / "envs" / ".staging").iterdir())

    def test_hostile_tarball_through_the_unpacker(self, tmp_path):
        """The unpacker's refusal reaches the daemon as EnvInstallError; nothing remains."""
        cache = _cache(tmp_path, FakeClock())
        with pytest.raises(EnvInstallError, match=r"'\.\.'"):
            asyncio.run(_install(cache, "evil", _tar(_member("../../evil", data=b"x"))))
        assert cache.installed() == ()
        assert not (tmp_path / "evil").exists()
        assert not list((tmp_path / "envs" / ".staging").iterdir())
        assert not cache.usable("x86_64", "evil")

    def test_data_after_the_end_of_the_archive_is_dropped(self, tmp_path):
        """Record padding after the end marker is fine even when the unpacker already exited."""
        cache = _cache(tmp_path, FakeClock())
        data = _good("") + b"\0" * 500_000
        assert asyncio.run(_install(cache, "padded", data, pause=0.1)) > 0
        assert cache.usable("x86_64", "padded")

    def test_refusal_stops_the_transfer_early(self, tmp_path):
        """Once the unpacker refused the tarball, the next chunk fails: no need to take it all."""
        cache = _cache(tmp_path, FakeClock())
        data = _tar(_member("/abs", data=b"x"), _member("big", data=os.urandom(1_000_000)),
                    compression="")  # fmt: skip

        async def feed_all() -> int:
            installer = Installer(cache, "x86_64", "early", _UNPACKERS)
            await installer.start()
            fed = 0
            try:
                for start in range(0, len(data), 100_000):
                    await installer.feed(data[start : start + 100_000])
                    fed += 1
                    await asyncio.sleep(0.1)
            except EnvInstallError:
                await installer.abort()
                return fed
            return -1

        assert 0 < asyncio.run(feed_all()) < 10

    def test_abort_right_after_start_is_prompt(self, tmp_path):
        """An install aborted as soon as it started (its client was already gone) ends at once.

        The kill used to miss an unpacker that had not made its process group yet, and the
        abort then waited 5 s for it: a daemon stopping meanwhile outlived its grace.
        """
        cache = _cache(tmp_path, FakeClock())

        async def start_and_abort() -> float:
            slowest = 0.0
            for i in range(20):
                installer = Installer(cache, "x86_64", f"gone{i}", _UNPACKERS)
                await installer.start()
                began = time.monotonic()
                await installer.abort()
                slowest = max(slowest, time.monotonic() - began)
            return slowest

        assert asyncio.run(start_and_abort()) < 2.5  # 5 s meant a missed kill
        assert not list((tmp_path / "envs" / ".staging").iterdir())

    def test_wipe_removes_only_our_directories(self, tmp_path):
        """Start-up wipes target=*, native and .staging, and leaves other files alone."""
        base = tmp_path / "envs"
        (base / "target=x86_64" / "old").mkdir(parents=True)
        (base / "native").mkdir()
        (base / "unrelated").write_text("mine")
        _cache(tmp_path, FakeClock())
        assert sorted(p.name for p in base.iterdir()) == ["unrelated"]


class TestEviction:
    def test_least_recently_used_goes_first(self, tmp_path):
        """Over the limit, the environment idle longest (over 200 s) is removed first."""
        clock = FakeClock()
        cache = _cache(tmp_path, clock, limit=2500)
        _place(cache, "old", 1000)
        clock.advance(100)
        _place(cache, "mid", 1000)
        clock.advance(100)
        _place(cache, "new", 1000)
        clock.advance(300)
        cache.acquire("x86_64", "mid")
        cache.release("x86_64", "mid")  # used just now: stays
        assert cache.evict() == ["x86_64/old"]
        assert cache.size == 2000
        assert not cache.env_dir("x86_64", "old").exists()

    def test_environment_in_use_is_never_evicted(self, tmp_path):
        """Even the oldest environment stays while a job uses it; the cache stays over limit."""
        clock = FakeClock()
        cache = _cache(tmp_path, clock, limit=500)
        _place(cache, "busy", 1000)
        cache.acquire("x86_64", "busy")
        clock.advance(10_000)
        assert cache.evict() == []
        assert cache.usable("x86_64", "busy")
        assert not cache.remove("x86_64", "busy")

    def test_recently_used_and_kept_survive(self, tmp_path):
        """Environments used within 200 s and the one just installed are not removed."""
        clock = FakeClock()
        cache = _cache(tmp_path, clock, limit=500)
        _place(cache, "a", 1000)
        clock.advance(150)
        _place(cache, "b", 1000)
        assert cache.evict(keep="x86_64/b") == []
        clock.advance(100)
        assert cache.evict(keep="x86_64/b") == ["x86_64/a"]

    def test_broken_environment_goes_first(self, tmp_path):
        """An environment without an executable usr/bin/as is evicted before any other."""
        clock = FakeClock()
        cache = _cache(tmp_path, clock, limit=1500)
        _place(cache, "old", 1000)
        _place(cache, "broken", 1000, broken=True)
        assert cache.installed() == (EnvEntry("x86_64", "old"),)
        assert cache.evict() == ["x86_64/broken"]
