"""``iceserv install-symlinks`` / ``uninstall-symlinks``: the compiler symlink directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iceserv.app import symlinks
from iceserv.app.cli import main as iceserv_main

ICESERV = Path(sys.executable).with_name("iceserv")
LAUNCHER = "#!{python}\nimport sys\nfrom iceserv.client.main import main\nsys.exit(main())\n"


@pytest.fixture
def icecc(tmp_path: Path) -> Path:
    """Our icecc launcher, as a console script would be installed."""
    path = tmp_path / "venv" / "bin" / "icecc"
    path.parent.mkdir(parents=True)
    path.write_text(LAUNCHER.format(python=sys.executable))
    path.chmod(0o755)
    return path


class TestInstall:
    def test_default_names_point_at_the_resolved_icecc(self, tmp_path, icecc):
        """gcc g++ cc c++ clang clang++ become links to the resolved entry point."""
        alias = tmp_path / "alias-icecc"
        alias.symlink_to(icecc)
        directory = tmp_path / "libexec/icecc/bin"
        made, skipped = symlinks.install(directory, symlinks.DEFAULT_NAMES, alias)
        assert (made, skipped) == (list(symlinks.DEFAULT_NAMES), [])
        for name in symlinks.DEFAULT_NAMES:
            assert (directory / name).readlink() == icecc.resolve()

    def test_foreign_files_are_kept_unless_forced(self, tmp_path, icecc):
        """An existing file or another program's link is not replaced without --force."""
        directory = tmp_path / "bin"
        directory.mkdir()
        (directory / "gcc").symlink_to("/usr/bin/icecc")  # e.g. shadowman's link
        made, skipped = symlinks.install(directory, ["gcc", "cc"], icecc)
        assert (made, skipped) == (["cc"], ["gcc"])
        assert (directory / "gcc").readlink() == Path("/usr/bin/icecc")
        made, _ = symlinks.install(directory, ["gcc"], icecc, force=True)
        assert made == ["gcc"]
        assert (directory / "gcc").readlink() == icecc.resolve()

    def test_a_missing_target_is_an_error(self, tmp_path):
        """Linking to nothing is refused."""
        with pytest.raises(symlinks.SymlinkError):
            symlinks.install(tmp_path / "bin", ["gcc"], tmp_path / "no-icecc")

    def test_auto_names_follow_shadowman(self, tmp_path):
        """--names auto picks cc/c99/c++, [prefix-]gcc/g++[-N] and clang[++][-N] from PATH."""
        bin_dir = tmp_path / "usr-bin"
        bin_dir.mkdir()
        wanted = ["c++", "c99", "cc", "clang++-14", "clang-14", "g++", "gcc", "gcc-12",
                  "x86_64-pc-linux-gnu-gcc-12", "x86_64-pc-linux-gnu-g++"]  # fmt: skip
        for name in [*wanted, "gcc-ar", "gcov", "ld", "gccgo-12x", "clang-format"]:
            (bin_dir / name).write_text("#!/bin/sh\n")
            (bin_dir / name).chmod(0o755)
        names = symlinks.auto_names(f"{bin_dir}:/nonexistent", skip=tmp_path / "links")
        assert names == sorted(wanted)


class TestUninstall:
    def test_removes_only_recorded_links(self, tmp_path, icecc):
        """Links we made go; foreign ones, and our names re-pointed elsewhere, stay."""
        directory = tmp_path / "bin"
        directory.mkdir()
        (directory / "clang").symlink_to("/usr/bin/icecc")
        symlinks.install(directory, ["gcc", "g++", "cc", "clang"], icecc)
        (directory / "cc").unlink()
        (directory / "cc").symlink_to("/somewhere/else")  # changed by someone since
        removed = symlinks.uninstall(directory)
        assert sorted(removed) == ["g++", "gcc"]
        assert sorted(p.name for p in directory.iterdir()) == ["cc", "clang"]

    def test_a_directory_we_created_goes_when_empty(self, tmp_path, icecc):
        """The directory is removed only if install created it and nothing else is in it."""
        directory = tmp_path / "new/bin"
        symlinks.install(directory, ["gcc"], icecc)
        symlinks.install(directory, ["g++"], icecc)  # a second run keeps the record
        assert symlinks.uninstall(directory) in (["gcc", "g++"], ["g++", "gcc"])
        assert not directory.exists()

    def test_nothing_recorded_nothing_removed(self, tmp_path):
        """Without a record, uninstall removes nothing."""
        directory = tmp_path / "bin"
        directory.mkdir()
        (directory / "gcc").symlink_to("/usr/bin/icecc")
        assert symlinks.uninstall(directory) == []
        assert (directory / "gcc").is_symlink()


class TestCommandLine:
    def test_round_trip_through_iceserv(self, tmp_path, icecc, capsys):
        """The sub-commands are registered in 'iceserv' and report what they did."""
        directory = tmp_path / "icecc-bin"
        status = iceserv_main(["install-symlinks", "--dir", str(directory),
                               "--target", str(icecc), "--names", "gcc,cc"])  # fmt: skip
        assert status == 0
        assert f"{directory / 'gcc'} -> {icecc.resolve()}" in capsys.readouterr().out
        assert iceserv_main(["uninstall-symlinks", "--dir", str(directory)]) == 0
        assert not directory.exists()

    def test_links_build_with_the_real_compiler(self, tmp_path, icecc):
        """With the directory first on PATH, 'gcc' is our wrapper and finds the real gcc."""
        directory = tmp_path / "icecc-bin"
        done = subprocess.run([str(ICESERV), "install-symlinks", "--dir", str(directory),
                               "--target", str(icecc)], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        (tmp_path / "hello.c").write_text("int main(void) { return 0; }\n")
        env = {"PATH": f"{directory}:/usr/bin:/bin", "ICECC": "disable", "HOME": str(tmp_path)}
        built = subprocess.run(["gcc", "-c", "hello.c", "-o", "hello.o"], cwd=tmp_path, env=env,
                               capture_output=True, timeout=60, check=False)  # fmt: skip
        assert built.returncode == 0, built.stderr
        assert (tmp_path / "hello.o").read_bytes()[:4] == b"\x7fELF"


class TestLauncher:
    def test_install_launcher_replaces_pip_scripts(self, icecc, capsys):
        """install-launcher writes #!python -IS launchers over pip's icecc and icerun."""
        from iceserv.client.launcher import is_launcher  # noqa: PLC0415

        assert not is_launcher(str(icecc))
        assert iceserv_main(["install-launcher", "--dir", str(icecc.parent)]) == 0
        assert capsys.readouterr().out.split() == [str(icecc), str(icecc.with_name("icerun"))]
        assert is_launcher(str(icecc))
        assert icecc.read_text().partition("\n")[0].endswith(" -IS")

    def test_install_symlinks_upgrades_the_default_target(self, tmp_path):
        """Without --target, the icecc the links point at becomes a launcher first."""
        from iceserv.client.launcher import is_launcher  # noqa: PLC0415

        bin_dir = tmp_path / "venv-bin"
        bin_dir.mkdir()
        for name in ("iceserv", "icecc"):
            (bin_dir / name).write_text(LAUNCHER.format(python=sys.executable))
            (bin_dir / name).chmod(0o755)
        directory = tmp_path / "icecc-bin"
        code = (
            "import sys; from iceserv.app.cli import main; "
            "sys.argv[0] = sys.argv[1]; sys.exit(main(sys.argv[2:]))"
        )
        done = subprocess.run([sys.executable, "-c", code, str(bin_dir / "iceserv"),
                               "install-symlinks", "--dir", str(directory), "--names", "gcc"],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert is_launcher(str(bin_dir / "icecc"))
        assert (directory / "gcc").readlink() == (bin_dir / "icecc").resolve()
