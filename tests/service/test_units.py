"""Static checks of the systemd units and the etc/ files the services need.

``systemd-analyze verify`` keeps exit status 0 on warnings, so any output
fails; ``systemd-analyze security --offline`` gates on its exit code
(threshold 25 = exposure 2.5) and the parsed score.  Both run on copies
whose ``ExecStart=`` points at an existing binary (services.md §6.5).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("iceccd.service", "icecc-scheduler.service")
_EXPOSURE = re.compile(r"Overall exposure level for \S+: ([0-9.]+)")


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (bin/setup installs it)")
    return path


@pytest.fixture
def unit_copies(tmp_path):
    """The units with ExecStart= pointing at /bin/true, which verify needs to exist."""
    for name in UNITS:
        text = (ROOT / "units" / name).read_text()
        (tmp_path / name).write_text(re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", text))
    return tmp_path


def _sysusers(root):
    """Create the icecream user under *root* with our sysusers.d file."""
    (root / "etc").mkdir(exist_ok=True)
    conf = ROOT / "etc/sysusers.d/iceserv.conf"
    subprocess.run(
        [_tool("systemd-sysusers"), f"--root={root}", str(conf)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip


def _directives(name):
    pairs = []
    for line in (ROOT / "units" / name).read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


class TestUnits:
    def test_verify_prints_nothing(self, unit_copies):
        """systemd-analyze verify has nothing to say about either unit (warnings fail too)."""
        units = [str(unit_copies / name) for name in UNITS]
        proc = subprocess.run(
            [_tool("systemd-analyze"), "verify", "--man=no", *units],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")

    @pytest.mark.parametrize("name", UNITS)
    def test_security_exposure_at_most_2_5(self, unit_copies, name):
        """systemd-analyze security --offline rates the unit at most 2.5 (threshold 25)."""
        proc = subprocess.run(
            [_tool("systemd-analyze"), "security", "--offline=yes", "--threshold=25",
             "--no-pager", str(unit_copies / name)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        match = _EXPOSURE.search(proc.stdout + proc.stderr)
        assert match is not None, proc.stdout + proc.stderr
        assert proc.returncode == 0, proc.stdout
        assert float(match.group(1)) <= 2.5

    @pytest.mark.parametrize("name", UNITS)
    def test_service_contract(self, name):
        """Type=notify, reload by HUP, watchdog, restart on failure, static user, conf.d by flag."""
        directives = dict(_directives(name))
        program = name.removesuffix(".service")
        assert directives["Type"] == "notify"
        assert directives["NotifyAccess"] == "main"
        assert directives["ExecReload"] == "/bin/kill -HUP $MAINPID"
        assert directives["WatchdogSec"]
        assert directives["Restart"] == "on-failure"
        assert directives["RestartPreventExitStatus"] == "78"
        assert (directives["User"], directives["Group"]) == ("icecream", "icecream")
        assert directives["ExecStart"] == (
            f"/usr/bin/{program} --foreground --confd=/etc/conf.d/{program}"
        )
        assert "EnvironmentFile" not in directives
        assert "DynamicUser" not in directives

    def test_daemon_keeps_only_cap_sys_chroot(self):
        """iceccd may chroot (and nothing else); chroot(2) is allowed past @system-service."""
        directives = dict(_directives("iceccd.service"))
        assert directives["CapabilityBoundingSet"] == "CAP_SYS_CHROOT"
        assert directives["AmbientCapabilities"] == "CAP_SYS_CHROOT"
        assert directives["SystemCallFilter"] == "@system-service chroot"
        assert directives["CacheDirectory"] == "icecream"
        assert directives["RuntimeDirectory"] == "icecc"
        # stop drains: SIGTERM to iceccd only, not to the compilers it waits for
        assert directives["KillMode"] == "mixed"

    def test_scheduler_has_no_capabilities(self):
        """The scheduler needs no capability at all."""
        directives = dict(_directives("icecc-scheduler.service"))
        assert directives["CapabilityBoundingSet"] == ""
        assert directives["AmbientCapabilities"] == ""

    @pytest.mark.parametrize("name", UNITS)
    def test_no_inline_comments(self, name):
        """A '#' after a value would become part of it: there is none."""
        for key, value in _directives(name):
            assert " #" not in value, key
            assert " ;" not in value, key


class TestEtcFiles:
    def test_sysusers_creates_icecream(self, tmp_path):
        """systemd-sysusers --root creates the static icecream user and group."""
        _sysusers(tmp_path)
        passwd = (tmp_path / "etc/passwd").read_text()
        assert re.search(r"(?m)^icecream:x:\d+:\d+:Icecream compile cluster:/var/cache/icecream:",
                         passwd)  # fmt: skip
        assert re.search(r"(?m)^icecream:x:\d+:", (tmp_path / "etc/group").read_text())

    def test_tmpfiles_creates_the_directories(self, tmp_path):
        """systemd-tmpfiles --root --create makes /run/icecc and the cache and log dirs."""
        _sysusers(tmp_path)
        proc = subprocess.run(
            [_tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create",
             str(ROOT / "etc/tmpfiles.d/iceserv.conf")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (proc.returncode, proc.stderr) == (0, "")
        for path in ("run/icecc", "var/cache/icecream", "var/log/icecream"):
            assert (tmp_path / path).is_dir(), path
            assert (tmp_path / path).stat().st_mode & 0o777 == 0o755

    def test_logrotate_config(self, tmp_path):
        """logrotate accepts the file, and it rotates by copytruncate."""
        text = (ROOT / "etc/logrotate.d/iceserv").read_text()
        assert "copytruncate" in text
        assert "/var/log/icecream/*.log" in text
        logrotate = shutil.which("logrotate") or shutil.which("/usr/sbin/logrotate")
        if logrotate is None:
            pytest.skip("logrotate is not installed")
        proc = subprocess.run(
            [logrotate, "--debug", "--state", str(tmp_path / "state"),
             str(ROOT / "etc/logrotate.d/iceserv")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "error" not in proc.stderr.lower()

    def test_dbus_policy_is_well_formed(self):
        """Each D-Bus policy parses and lets only icecream and root own its service's name."""
        paths = sorted((ROOT / "etc/dbus-1/system.d").glob("*.conf"))
        assert [path.stem for path in paths] == ["org.icecream.Daemon1", "org.icecream.Scheduler1"]
        for path in paths:
            tree = ET.parse(path)  # noqa: S314 - our own file
            owners = {
                policy.get("user")
                for policy in tree.getroot().iter("policy")
                for allow in policy.iter("allow")
                if allow.get("own") == path.stem
            }
            assert owners == {"icecream", "root"}, path.name
