"""Tests for the OpenRC scripts: shellcheck, dash/bash stub harness, and real openrc-run.

The real test (services.md §7.3) builds a minimal Debian bookworm root with
``openrc`` by debootstrap once, caches it under ``/var/cache/iceserv-test/``
keyed by its package list, and runs ``openrc_cycle.sh`` over a tmpfs overlay
of it inside ``unshare --mount --pid``: every process and mount goes away
with the namespace, and the cached root is never modified.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("iceccd", "icecc-scheduler")
CACHE = Path("/var/cache/iceserv-test")
MIRROR = os.environ.get("ICESERV_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
# Runtime libraries of a non-Debian (pyenv) Python; python3 itself when the venv uses Debian's.
PACKAGES = ("openrc", "procps", "libssl3", "libffi8")
ROOT_LAYOUT_VERSION = "1"  # bump when the steps after debootstrap change

# --- static checks and the stub harness ---------------------------------------------

_STUBS = r"""
ebegin() { echo "ebegin $*"; }
eend() { echo "eend $*"; return "$1"; }
einfo() { :; }
ewarn() { :; }
eerror() { :; }
"""
# Commands with a '-' cannot be sh functions: they are scripts on PATH.
_STUB_PROGRAMS = ("checkpath", "supervise-daemon")
#: Installed by the Debian package only (packaging/debian): read before conf.d when both exist.
DEBIAN_ICECC_CONF = "/etc/icecc/icecc.conf"
DEBIAN_ICECC_PATHS = "/usr/share/iceserv/icecc-conf-paths"


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (bin/setup installs it)")
    return path


class TestStatic:
    def test_shellcheck_posix_sh(self):
        """shellcheck -s sh finds nothing in either script."""
        scripts = [str(ROOT / "openrc" / name) for name in SCRIPTS]
        proc = subprocess.run([_tool("shellcheck"), "-s", "sh", *scripts],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert (proc.returncode, proc.stdout) == (0, "")

    @pytest.mark.parametrize("name", SCRIPTS)
    def test_openrc_run_shebang_and_supervisor(self, name):
        """The scripts are openrc-run scripts with supervise-daemon and need net."""
        text = (ROOT / "openrc" / name).read_text()
        assert text.startswith("#!/sbin/openrc-run\n")
        assert "\nsupervisor=supervise-daemon\n" in text
        assert "\tneed net\n" in text
        assert "[[" not in text
        assert "local " not in text


@pytest.mark.parametrize("shell", ["dash", "bash"])
@pytest.mark.parametrize("name", SCRIPTS)
class TestStubHarness:
    @pytest.fixture(autouse=True)
    def _stub_dir(self, tmp_path):
        for program in _STUB_PROGRAMS:
            stub = tmp_path / program
            stub.write_text(f'#!/bin/sh\necho "{program} $*"\n')
            stub.chmod(0o755)
        self.path = f"{tmp_path}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        # Debian icecc's configuration and the package's path reset, made (or not) by a test:
        # the scripts test for them at these paths, never the host's.
        self.icecc_conf = tmp_path / "etc-icecc/icecc.conf"
        self.icecc_paths = tmp_path / "share-iceserv/icecc-conf-paths"
        self.stub = tmp_path / "program"  # stands in for iceccd / icecc-scheduler

    def _run(self, shell, name, body):
        script = (ROOT / "openrc" / name).read_text()
        assert script.count(f'="{DEBIAN_ICECC_CONF}"\n') == 1
        assert script.count(f'="{DEBIAN_ICECC_PATHS}"\n') == 1
        script = script.replace(DEBIAN_ICECC_CONF, str(self.icecc_conf))
        script = script.replace(DEBIAN_ICECC_PATHS, str(self.icecc_paths))
        program = f"RC_SVCNAME={name}\n{_STUBS}\n{script}\n{body}\n"
        proc = subprocess.run([_tool(shell), "-c", program], capture_output=True, text=True,
                              env={"PATH": self.path}, timeout=60, check=False)  # fmt: skip
        assert proc.stderr == ""
        return proc

    def test_command_line(self, shell, name):
        """setpriv runs the program as icecream with --foreground and --confd for the service."""
        out = self._run(shell, name, 'printf "%s\\n" "$command" $command_args "$pidfile"').stdout
        words = out.split()
        assert words[0] == "/usr/bin/setpriv"
        assert "--reuid=icecream" in words
        assert "--regid=icecream" in words
        assert "--no-new-privs" in words
        tail = words[words.index("--") + 1 :]
        assert tail == [f"/usr/bin/{name}", "--foreground", "--confd", f"/etc/conf.d/{name}",
                        f"/run/{name}.pid"]  # fmt: skip
        caps = "-all,+sys_chroot" if name == "iceccd" else "-all"
        assert f"--bounding-set={caps}" in words
        assert f"--ambient-caps={caps}" in words

    def test_descriptor_limit(self, shell, name):
        """rc_ulimit gives the service 65536 descriptors (a conf.d rc_ulimit, read first, wins)."""
        assert self._run(shell, name, 'echo "$rc_ulimit"').stdout == "-n 65536\n"
    def _debian_files(self, *, conf, paths):
        for path, wanted in ((self.icecc_conf, conf), (self.icecc_paths, paths)):
            if wanted:
                path.parent.mkdir(exist_ok=True)
                path.write_text('ICECC_NETNAME="x"\n')

    def _program_args(self, shell, name):
        out = self._run(shell, name, 'printf "%s\\n" $command_args').stdout
        words = out.split()
        return words[words.index("--") + 1 :]

    def test_debian_icecc_conf_is_read_first(self, shell, name):
        """With Debian icecc's icecc.conf and the package's path reset: both, then conf.d."""
        self._debian_files(conf=True, paths=True)
        confd = ["--confd", str(self.icecc_conf), "--confd", str(self.icecc_paths),
                 "--confd", f"/etc/conf.d/{name}"]  # fmt: skip
        assert self._program_args(shell, name) == [f"/usr/bin/{name}", "--foreground", *confd]
        # checkconfig (run by start_pre and reload) checks the same files.
        record = self.stub.with_name("program-args")
        self.stub.write_text(f'#!/bin/sh\necho "$*" > {record}\n')
        self.stub.chmod(0o755)
        var = "iceccd" if name == "iceccd" else "scheduler"
        lines = self._run(shell, name, f"{var}_program={self.stub}; checkconfig").stdout
        assert lines.splitlines()[-1].startswith("eend 0 "), lines
        assert record.read_text().split() == ["--check-config", *confd]

    @pytest.mark.parametrize("conf", [False, True], ids=["no-icecc-conf", "stray-icecc-conf"])
    def test_conf_d_alone_without_the_package(self, shell, name, conf):
        """Gentoo or a pip install (no icecc-conf-paths): only conf.d, even if an icecc.conf
        lies around, as the units without the Debian package's drop-in."""
        self._debian_files(conf=conf, paths=False)
        expected = [f"/usr/bin/{name}", "--foreground", "--confd", f"/etc/conf.d/{name}"]
        assert self._program_args(shell, name) == expected

    def test_reload_sends_hup(self, shell, name):
        """reload checks the configuration, then signals the supervised program with HUP."""
        body = "checkconfig() { echo checkconfig; }; reload"
        lines = self._run(shell, name, body).stdout.splitlines()
        assert lines == ["checkconfig", f"ebegin Reloading {name}",
                         f"supervise-daemon {name} --signal HUP", "eend 0"]  # fmt: skip

    def test_start_pre_creates_directories(self, shell, name):
        """start_pre makes the log (and for iceccd cache and socket) directories for icecream."""
        body = "checkconfig() { echo checkconfig; }; start_pre"
        lines = self._run(shell, name, body).stdout.splitlines()
        assert lines[0].startswith("checkpath --directory --owner icecream:icecream --mode 0755 ")
        assert "/var/log/icecream" in lines[0]
        if name == "iceccd":
            assert lines[0].split()[-3:] == [
                "/var/log/icecream",
                "/var/cache/icecream",
                "/run/icecc",
            ]
        assert lines[-1] == "checkconfig"

    def test_depend(self, shell, name):
        """depend() needs net."""
        body = "need() { echo need $*; }; use() { :; }; after() { :; }; depend"
        assert self._run(shell, name, body).stdout == "need net\n"


# --- real openrc-run in a throwaway root --------------------------------------------


def _packages():
    extra = ("python3",) if Path(sys.base_prefix) == Path("/usr") else ()
    return PACKAGES + extra


def _cached_root():
    """Return the cached bookworm root with OpenRC and the icecream user, building it once."""
    packages = _packages()
    key = hashlib.sha256(
        f"{SUITE} {MIRROR} {','.join(packages)} {ROOT_LAYOUT_VERSION}".encode()
    ).hexdigest()[:12]
    root = CACHE / f"openrc-{SUITE}-{key}"
    if (root / ".iceserv-complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".iceserv-complete").exists():
            return root
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        proc = subprocess.run(
            [_tool("debootstrap"), "--variant=minbase", f"--include={','.join(packages)}",
             SUITE, str(partial), MIRROR],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"debootstrap failed:\n{proc.stdout[-3000:]}{proc.stderr}"
        subprocess.run(
            ["chroot", str(partial), "useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/var/cache/icecream", "--shell", "/usr/sbin/nologin", "icecream"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        (partial / ".iceserv-complete").write_text(" ".join(packages) + "\n")
        partial.rename(root)
    return root


def _free_port(*, pair=False):
    """A free TCP port on 127.0.0.1 (with the next one free too when *pair*)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if not pair or port >= 65535:
                return port
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    pytest.fail("no free port")


def _binds():
    """Directories the chroot needs at their own paths: the repository, the venv, the Python."""
    wanted = {ROOT, Path(sys.prefix).resolve()}
    base = Path(sys.base_prefix).resolve()
    if base != Path("/usr"):
        wanted.add(base)
    ordered = sorted(wanted, key=lambda p: len(p.parts))
    kept = [p for i, p in enumerate(ordered) if not any(p.is_relative_to(q) for q in ordered[:i])]
    return " ".join(str(p) for p in kept)


def _services():
    have_daemon = importlib.util.find_spec("iceserv.app.daemon") is not None
    return ("icecc-scheduler", "iceccd") if have_daemon else ("icecc-scheduler",)


@pytest.fixture(scope="module")
def openrc_run(tmp_path_factory):
    """Run openrc_cycle.sh once; return ({check: value}, log lines, services)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, mounts)")
    unshare = _tool("unshare")
    root = _cached_root()
    work = tmp_path_factory.mktemp("openrc")
    services = _services()
    scheduler_port = _free_port(pair=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "ROOT": str(root), "WORK": str(work), "PY": sys.executable, "BINDS": _binds(),
        "SERVICES": " ".join(services), "SCHEDULER_PORT": str(scheduler_port),
        "DAEMON_PORT": str(_free_port()), "NETNAME": f"ORC{os.getpid()}",
    }  # fmt: skip
    proc = subprocess.run(
        [unshare, "--mount", "--pid", "--fork", "--propagation", "private", "/bin/sh",
         str(ROOT / "tests/service/openrc_cycle.sh")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    checks, logs = {}, []
    for line in proc.stdout.splitlines():
        if line.startswith("CHECK "):
            _, name, *value = line.split(" ", 2)
            checks[name] = value[0] if value else ""
        elif line.startswith("LOG "):
            logs.append(line)
    detail = f"rc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, detail
    return checks, detail, services


@pytest.mark.timeout(1200)
class TestRealOpenrc:
    def test_services_start_as_icecream(self, openrc_run):
        """Both services start under supervise-daemon and run as icecream, no_new_privs set."""
        checks, detail, services = openrc_run
        for svc in services:
            assert f"{svc}.start.timeout" not in checks, detail
            assert checks[f"{svc}.start.status"] == "started", detail
            assert checks[f"{svc}.start.user"] == "icecream", detail
            assert checks[f"{svc}.start.comm"] == svc, detail
            # No Debian icecc.conf here (Gentoo-style): the service's conf.d only.
            assert checks[f"{svc}.start.args"] == f"--foreground --confd /etc/conf.d/{svc}", detail
            assert checks[f"{svc}.start.nonewprivs"] == "1", detail
            assert checks[f"{svc}.start.net"] == "started", detail  # depend() needs net

    def test_capabilities(self, openrc_run):
        """iceccd keeps only CAP_SYS_CHROOT (bit 18); the scheduler keeps none."""
        checks, detail, services = openrc_run
        assert checks["icecc-scheduler.start.capeff"] == "0000000000000000", detail
        if "iceccd" in services:
            assert checks["iceccd.start.capeff"] == "0000000000040000", detail

    def test_reload_applies_change_without_restart(self, openrc_run):
        """rc-service reload sends HUP: same PID, and the changed setting is reported applied."""
        checks, detail, services = openrc_run
        changed = {"icecc-scheduler": "persistent_client_connection", "iceccd": "max_processes"}
        for svc in services:
            assert f"{svc}.reload.timeout" not in checks, detail
            assert checks[f"{svc}.reload.pid"] == checks[f"{svc}.start.pid"], detail
            assert changed[svc] in checks[f"{svc}.reload.changed"], detail

    def test_restart_gives_a_new_process(self, openrc_run):
        """rc-service restart stops the program and starts a new one, still as icecream."""
        checks, detail, services = openrc_run
        for svc in services:
            assert f"{svc}.restart.timeout" not in checks, detail
            assert checks[f"{svc}.restart.pid"] != checks[f"{svc}.start.pid"], detail
            assert checks[f"{svc}.restart.user"] == "icecream", detail

    def test_stop_leaves_nothing(self, openrc_run):
        """rc-service stop ends the program cleanly (service_stopped logged), no process left."""
        checks, detail, services = openrc_run
        for svc in services:
            assert checks[f"{svc}.stop.status"] == "stopped", detail
            assert checks[f"{svc}.stop.left"] == "0", detail
            assert checks[f"{svc}.stop.exit"] == "2", detail  # the first run and the restarted one
