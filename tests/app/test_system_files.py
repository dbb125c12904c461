"""Tests for ``iceserv install-system-files``, always against a temporary --root."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from iceserv.app import system_files
from iceserv.app.cli import main
from iceserv.app.system_files import Kind, Options, data_root, hidden_by_sandbox, plan


def _install(tmp_path, *extra, capsys=None):
    code = main(["install-system-files", "--root", str(tmp_path), "--prefix", "/usr",
                 "--bindir", "/opt/ice/bin", *extra])  # fmt: skip
    assert code == 0
    return capsys.readouterr().out if capsys is not None else ""


class TestInstall:
    def test_systemd_and_openrc_files(self, tmp_path):
        """--init both installs units and init scripts pointing at --bindir."""
        _install(tmp_path, "--init", "both")
        unit = (tmp_path / "usr/lib/systemd/system/iceccd.service").read_text()
        assert "ExecStart=/opt/ice/bin/iceccd --foreground --confd=/etc/conf.d/iceccd\n" in unit
        script = tmp_path / "etc/init.d/icecc-scheduler"
        assert 'scheduler_program="/opt/ice/bin/icecc-scheduler"\n' in script.read_text()
        assert stat.S_IMODE(script.stat().st_mode) == 0o755
        assert "/usr/bin/setpriv" in script.read_text()  # only our programs are rewritten
        for path in ("etc/conf.d/iceccd", "etc/conf.d/icecc-scheduler",
                     "etc/iceserv/iceserv.toml", "etc/logrotate.d/iceserv",
                     "usr/lib/sysusers.d/iceserv.conf", "usr/lib/tmpfiles.d/iceserv.conf",
                     "etc/dbus-1/system.d/org.icecream.Scheduler1.conf"):  # fmt: skip
            assert (tmp_path / path).is_file(), path
            assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o644, path

    def test_never_overwrites_user_configuration(self, tmp_path, capsys):
        """An existing conf.d or TOML file is kept byte for byte, and the plan says so."""
        confd = tmp_path / "etc/conf.d/iceccd"
        confd.parent.mkdir(parents=True)
        confd.write_text('ICECCD_MAX_PROCESSES="3"\n')
        out = _install(tmp_path, "--init", "systemd", capsys=capsys)
        assert confd.read_text() == 'ICECCD_MAX_PROCESSES="3"\n'
        assert f"keep    {confd} (exists; not overwritten)" in out.splitlines()
        sample = (tmp_path / "etc/conf.d/icecc-scheduler").read_text()
        _install(tmp_path, "--init", "systemd")  # a second run keeps the sample it installed
        assert (tmp_path / "etc/conf.d/icecc-scheduler").read_text() == sample

    def test_dry_run_writes_nothing(self, tmp_path, capsys):
        """--dry-run prints one 'would ...' line per action and creates no file."""
        out = _install(tmp_path, "--init", "openrc", "--dry-run", capsys=capsys)
        assert list(tmp_path.iterdir()) == []
        lines = out.splitlines()
        assert all(line.startswith("would ") for line in lines)
        assert any(line.endswith(f"{tmp_path}/etc/init.d/iceccd (mode 0755)") for line in lines)
        assert not any("systemd" in line for line in lines)

    def test_auto_picks_openrc_when_present(self, tmp_path):
        """auto installs OpenRC scripts on a root that has openrc-run, else systemd units."""
        (tmp_path / "sbin").mkdir()
        (tmp_path / "sbin/openrc-run").write_text("")
        kinds = {a.dest.parent for a in plan(Options(root=tmp_path, prefix=tmp_path / "x"))}
        assert tmp_path / "etc/init.d" in kinds
        assert not any("systemd" in str(k) for k in kinds)
        other = tmp_path / "other"
        dests = {a.dest.parent.name for a in plan(Options(root=other))}
        assert "system" in dests
        assert "init.d" not in dests

    def test_compiler_symlinks(self, tmp_path):
        """--symlinks links the compiler names to icecc in --bindir."""
        _install(tmp_path, "--init", "systemd", "--symlinks", "--symlink-dir", "/usr/lib/icecc/bin")
        link = tmp_path / "usr/lib/icecc/bin/g++"
        assert str(link.readlink()) == "/opt/ice/bin/icecc"
        assert {p.name for p in link.parent.iterdir()} == {
            "cc", "c++", "gcc", "g++", "clang", "clang++"
        }  # fmt: skip

    def test_man_pages(self, tmp_path):
        """Every page in man/ lands in PREFIX/share/man/manN."""
        pages = sorted(p.name for p in (data_root() / "man").glob("*.[1-8]"))
        if not pages:
            pytest.skip("no generated man pages yet")
        _install(tmp_path, "--init", "systemd")
        installed = sorted(p.name for p in (tmp_path / "usr/share/man").glob("man?/*"))
        assert installed == pages

    def test_relative_root_is_refused(self, capsys):
        """--root must be absolute."""
        assert main(["install-system-files", "--root", "relative", "--dry-run"]) == os.EX_USAGE
        assert "--root must be an absolute path" in capsys.readouterr().err

    def test_plan_only_installs_known_kinds(self, tmp_path):
        """Every planned action is an install, keep or link under --root."""
        for action in plan(Options(root=tmp_path, init="both", symlinks=True)):
            assert action.kind in set(Kind)
            assert action.dest.is_relative_to(tmp_path)


class TestSandboxedBindir:
    """ExecStart= must name programs the units' PrivateTmp=/ProtectHome= leave visible."""

    @pytest.mark.parametrize(("path", "setting"), [
        ("/tmp/x/.venv/bin", "PrivateTmp=yes"), ("/var/tmp/v/bin", "PrivateTmp=yes"),
        ("/home/ann/.venv/bin", "ProtectHome=yes"), ("/root/venv/bin", "ProtectHome=yes"),
        ("/run/user/1000/v/bin", "ProtectHome=yes"),
    ])  # fmt: skip
    def test_hidden(self, path, setting):
        assert setting in hidden_by_sandbox(Path(path))

    @pytest.mark.parametrize("path", ["/usr/bin", "/opt/iceserv/bin", "/usr/local/bin",
                                      "/homework/bin"])  # fmt: skip
    def test_visible(self, path):
        assert hidden_by_sandbox(Path(path)) is None

    def test_default_bindir_in_tmp_is_refused(self, tmp_path, monkeypatch, capsys):
        """Without --bindir, a venv under /tmp is refused with the reason and the fix."""
        monkeypatch.setattr(system_files, "default_bindir", lambda: Path("/tmp/v/.venv/bin"))
        code = main(["install-system-files", "--root", str(tmp_path), "--init", "systemd"])
        assert code == os.EX_USAGE
        err = capsys.readouterr().err
        assert "PrivateTmp=yes hides /tmp" in err
        assert "--bindir" in err
        assert not (tmp_path / "usr").exists()

    def test_explicit_bindir_in_home_warns(self, tmp_path, capsys):
        """An explicit --bindir under /home is written, with a warning."""
        code = main(["install-system-files", "--root", str(tmp_path), "--init", "systemd",
                     "--bindir", "/home/ann/.venv/bin", "--no-man"])  # fmt: skip
        assert code == 0
        assert "ProtectHome=yes hides /home" in capsys.readouterr().err
        unit = (tmp_path / "usr/local/lib/systemd/system/iceccd.service").read_text()
        assert "ExecStart=/home/ann/.venv/bin/iceccd " in unit

    def test_default_bindir_under_root_warns(self, tmp_path, monkeypatch, capsys):
        """--root with this Python's venv as the default bindir: a warning to pass --bindir."""
        monkeypatch.setattr(system_files, "default_bindir", lambda: Path("/srv/build/venv/bin"))
        code = main(["install-system-files", "--root", str(tmp_path), "--init", "systemd",
                     "--no-man"])  # fmt: skip
        assert code == 0
        assert "pass --bindir" in capsys.readouterr().err
