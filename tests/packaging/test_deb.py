"""The Debian package: build it, lintian it, and live with it on a booted Debian 12.

``packaging/build-deb`` builds ``iceserv_*.deb`` twice: from this tree, and
from a copy whose ``/etc/conf.d/iceccd`` and ``/etc/iceserv/iceserv.toml``
samples changed (version ``+upgrade1``).  ``cycle.sh`` boots a copy (tmpfs
overlay) of the cached debootstrap root (``debroot.py``) under a real
systemd with ``systemd-nspawn --boot`` and, inside it: installs with
``apt-get install ./iceserv1.deb``, compiles with ``icecc gcc`` (local
fallback), starts both services (Type=notify), reloads iceccd after a
conf.d change, reads and calls both D-Bus interfaces with ``busctl``, reads
``journalctl -o json``, stops iceccd while a job runs, upgrades, removes,
purges, and replaces Debian's ``icecc``.  ``openrc.sh`` does the same under
OpenRC in another copy of that root (openrc installed from its apt cache,
the real openrc-run and supervise-daemon, PID 1 not openrc-init): install,
``rc-update add`` and ``rc-service start`` both services, the daemon in the
scheduler's listing, stop, purge, then over Debian's ``icecc`` with its
``icecc.conf`` read by the OpenRC scripts.  The tests assert on their
``CHECK`` lines.  Everything runs in ``unshare --mount --pid`` (and
``--net`` for OpenRC): no process or mount outlives it.

Cost (2 cores): cold (no root, empty pip cache) about 5 min for debootstrap
plus 2 x 2-3 min of builds; warm about 6 min (the two builds run in
parallel, lintian about 40 s, the boot cycle about 1 min, the OpenRC cycle
about 1 min).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from debroot import CACHE, cached_root

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUILD_DEB = ROOT / "packaging" / "build-deb"
UPGRADE_VERSION = "0.1.0+upgrade1"
MARKER = "# UPGRADE-MARKER: this sample changed in the upgraded package\n"
FAKE_COMPILER = r"""
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *out = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
    char buf[65536];
    size_t n, total = 0;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) total += n;
    if (!out) return 0;
    FILE *f = fopen(out, "w");
    if (!f) return 3;
    fprintf(f, "OBJ %zu\n", total);
    return fclose(f) != 0;
}
"""
_IGNORE = shutil.ignore_patterns(".venv", ".git", "out", "__pycache__", ".*_cache", ".hypothesis",
                                 "bench")  # fmt: skip

pytestmark = pytest.mark.timeout(2400)


def _need(*tools):
    if os.geteuid() != 0:
        pytest.skip("needs root (dpkg-buildpackage, debootstrap, mounts, systemd-nspawn)")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (bin/setup installs it)")


def _build(source, outdir, version=None, *, cache="pip"):
    argv = [str(BUILD_DEB), "--fast", "--source", str(source), "--outdir", str(outdir)]
    if version:
        argv += ["--version", version]
    # One pip cache per concurrent build: two pips filling one wheel cache race.
    env = dict(os.environ, PIP_CACHE_DIR=str(CACHE / cache))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1500, env=env,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, f"build-deb failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    (deb,) = outdir.glob("iceserv_*.deb")
    return deb


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    """(the package of this tree, the same with changed conffile samples and a newer version)."""
    _need("dpkg-buildpackage", "dh_virtualenv")
    base = tmp_path_factory.mktemp("deb")
    changed = base / "src"
    shutil.copytree(ROOT, changed, ignore=_IGNORE, symlinks=True)
    for sample in ("etc/conf.d/iceccd", "etc/iceserv/iceserv.toml"):
        with (changed / sample).open("a") as file:
            file.write(MARKER)
    (base / "v1").mkdir()
    (base / "v2").mkdir()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_build, ROOT, base / "v1")
        second = pool.submit(_build, changed, base / "v2", UPGRADE_VERSION, cache="pip-2")
        return first.result(), second.result()


@pytest.fixture(scope="module")
def fake_env(tmp_path_factory):
    """A tarball whose usr/bin/gcc (and as, bin/true) is a static fake compiler."""
    workdir = tmp_path_factory.mktemp("fakeenv")
    (workdir / "fake.c").write_text(FAKE_COMPILER)
    subprocess.run(["gcc", "-static", "-O1", str(workdir / "fake.c"), "-o",
                    str(workdir / "gcc")], check=True, timeout=120)  # fmt: skip
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ("usr/bin/gcc", "usr/bin/as", "bin/true"):
            archive.add(workdir / "gcc", arcname=name)
    path = workdir / "fakeenv.tar.gz"
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def cycle(debs, fake_env, tmp_path_factory):
    """Run cycle.sh once; return ({check: value}, detail for failure messages)."""
    _need("debootstrap", "systemd-nspawn", "unshare", "nsenter")
    root = cached_root()
    work = tmp_path_factory.mktemp("cycle")
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "ROOT": str(root), "WORK": str(work), "DEB1": str(debs[0]), "DEB2": str(debs[1]),
        "HELPERS": str(HERE), "FAKEENV": str(fake_env),
    }  # fmt: skip
    proc = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private",
         "/bin/sh", str(HERE / "cycle.sh")],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    checks = _checks(proc.stdout)
    detail = f"rc={proc.returncode}\n{proc.stdout[-12000:]}\n{proc.stderr[-4000:]}"
    assert checks.get("done") == "yes", detail
    return checks, detail


@pytest.fixture(scope="module")
def openrc_cycle(debs, tmp_path_factory):
    """Run openrc.sh once; return ({check: value}, detail for failure messages)."""
    _need("debootstrap", "unshare", "ip")
    root = cached_root()
    work = tmp_path_factory.mktemp("openrc")
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "ROOT": str(root), "WORK": str(work), "DEB1": str(debs[0]), "HELPERS": str(HERE),
    }  # fmt: skip
    proc = subprocess.run(
        ["unshare", "--mount", "--pid", "--net", "--fork", "--propagation", "private",
         "/bin/sh", str(HERE / "openrc.sh")],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    checks = _checks(proc.stdout)
    detail = f"rc={proc.returncode}\n{proc.stdout[-12000:]}\n{proc.stderr[-4000:]}"
    assert checks.get("done") == "yes", detail
    return checks, detail


def _checks(stdout):
    checks = {}
    for line in stdout.splitlines():
        if line.startswith("CHECK "):
            _, name, *value = line.split(" ", 2)
            checks[name] = value[0] if value else ""
    return checks


class TestBuild:
    def test_contents(self, debs):
        """The package holds the programs, links, units, OpenRC scripts and etc/ samples."""
        listing = subprocess.run(["dpkg-deb", "-c", str(debs[0])], capture_output=True,
                                 text=True, check=True, timeout=60).stdout  # fmt: skip
        paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
        for path in ("/usr/bin/iceccd", "/usr/bin/icecc", "/usr/lib/icecc/bin/gcc",
                     "/usr/libexec/icecc/bin/clang++", "/lib/systemd/system/iceccd.service",
                     "/lib/systemd/system/icecc-scheduler.service", "/etc/init.d/iceccd",
                     "/etc/conf.d/icecc-scheduler", "/etc/iceserv/iceserv.toml",
                     "/usr/share/dbus-1/system.d/org.icecream.Scheduler1.conf",
                     "/usr/lib/sysusers.d/iceserv.conf", "/usr/lib/tmpfiles.d/iceserv.conf",
                     "/etc/logrotate.d/iceserv", "/usr/share/man/man5/iceserv-confd.5.gz",
                     "/usr/share/man/man1/icerun.1.gz"):  # fmt: skip
            assert path in paths, path
        assert any(p.endswith("/site-packages/lzo.cpython-311-x86_64-linux-gnu.so") for p in paths)

    def test_fields(self, debs):
        """It replaces Debian's icecc (Conflicts/Replaces/Provides) and needs Debian's python3."""
        fields = subprocess.run(["dpkg-deb", "-f", str(debs[0])], capture_output=True,
                                text=True, check=True, timeout=60).stdout  # fmt: skip
        for line in ("Conflicts: icecc", "Replaces: icecc", "Provides: icecc",
                     "Version: 0.1.0"):  # fmt: skip
            assert f"\n{line}\n" in f"\n{fields}", fields
        assert "liblzo2-2" in fields
        assert "python3 (<< 3.12)" in fields

    def test_conffiles(self, debs, tmp_path):
        """Everything under /etc is a conffile."""
        subprocess.run(["dpkg-deb", "-e", str(debs[0]), str(tmp_path / "ctl")], check=True,
                       timeout=60)  # fmt: skip
        conffiles = set((tmp_path / "ctl/conffiles").read_text().split())
        assert conffiles == {
            "/etc/conf.d/iceccd", "/etc/conf.d/icecc-scheduler", "/etc/iceserv/iceserv.toml",
            "/etc/init.d/iceccd", "/etc/init.d/icecc-scheduler", "/etc/logrotate.d/iceserv",
        }  # fmt: skip

    def test_lintian_clean(self, debs):
        """lintian reports no error and no warning (overrides carry their reasons)."""
        _need("lintian")
        proc = subprocess.run(["lintian", "--fail-on", "error,warning", str(debs[0])],
                              capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not [line for line in proc.stdout.splitlines() if line[:2] in {"E:", "W:"}]


class TestInstall:
    def test_booted(self, cycle):
        checks, detail = cycle
        assert checks["boot.state"] in {"running", "degraded"}, detail
        assert checks["boot.pid1"] == "systemd", detail

    def test_apt_install(self, cycle):
        """apt-get install ./iceserv_*.deb puts every file in place and makes the user."""
        checks, detail = cycle
        assert checks["install.rc"] == "0", detail
        assert checks["install.version"] == "0.1.0", detail
        missing = [k for k, v in checks.items() if k.startswith("install.file:") and v != "yes"]
        assert missing == [], detail
        assert checks["install.user"] == "icecream", detail
        assert checks["install.cacheowner"] == "icecream", detail

    def test_not_enabled_nor_started(self, cycle):
        checks, detail = cycle
        for svc in ("iceccd", "icecc-scheduler"):
            assert checks[f"install.enabled.{svc}"] == "disabled", detail
            assert checks[f"install.active.{svc}"] == "inactive", detail

    def test_programs_work(self, cycle):
        """iceccd --check-config, icecc --version and LZO work from the package."""
        checks, detail = cycle
        assert checks["install.checkconfig"] == "ok", detail
        assert checks["install.version_line"].startswith("ICECC "), detail
        assert checks["install.lzo"] == "True", detail

    def test_compile_falls_back_to_local(self, cycle):
        """icecc gcc (and gcc through /usr/lib/icecc/bin) compile with no daemon running."""
        checks, detail = cycle
        assert (checks["compile.rc"], checks["compile.object"]) == ("0", "1"), detail
        assert (checks["compile.link_rc"], checks["compile.link_object"]) == ("0", "yes"), detail


class TestSystemd:
    def test_start_notify(self, cycle):
        """systemctl start returns with both services active (running) as icecream, Type=notify."""
        checks, detail = cycle
        assert checks["start.rc"] == "0", detail
        for svc in ("icecc-scheduler", "iceccd"):
            assert checks[f"start.state.{svc}"] == "active/running", detail
            assert checks[f"start.type.{svc}"] == "notify", detail
            assert checks[f"start.user.{svc}"] == "icecream", detail
            assert checks[f"start.syslogid.{svc}"] == svc, detail  # not "sh" (the drop-in)
        assert "jobs" in checks["start.daemon_status"], detail

    def test_reload_shows_new_limit(self, cycle):
        """systemctl reload iceccd after a conf.d change: the scheduler lists the new limit."""
        checks, detail = cycle
        assert "listcs.timeout" not in checks, detail
        assert "/2" in checks["listcs.before"], detail
        assert checks["reload.rc"] == "0", detail
        assert "reload.timeout" not in checks, detail
        assert "/3" in checks["reload.listcs"], detail
        assert checks["reload.samepid"] == "yes", detail

    def test_busctl(self, cycle):
        """busctl on the system bus reads both interfaces and calls their methods."""
        checks, detail = cycle
        assert checks["bus.daemon.max"] == "u 3", detail
        assert checks["bus.daemon.draining"] == "b false", detail
        assert checks["bus.scheduler.hosts"] == "u 1", detail
        assert checks["bus.scheduler.netname"] == 's "boot"', detail
        assert "bootnode" in checks["bus.scheduler.listhosts"], detail
        assert checks["bus.setmax.rc"] == "0", detail
        assert checks["bus.daemon.max_after"] == "u 4", detail
        assert checks["bus.owner.daemon"] == "iceccd.service", detail
        assert checks["bus.owner.scheduler"] == "icecc-scheduler.service", detail

    def test_journal_fields(self, cycle):
        """journalctl -o json shows iceserv's key/value pairs as journal fields."""
        checks, detail = cycle
        assert int(checks["journal.records"]) > 0, detail
        fields = set(checks["journal.fields"].split())
        assert {"EVENT", "LOGGER", "LEVEL", "MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"} <= fields
        assert checks["journal.event"] == "service_ready", detail
        assert checks["journal.unit"] == "iceccd.service", detail
        assert checks["journal.priority"] == "6", detail
        assert checks["journal.identifier"] == "iceccd", detail
        assert checks["journal.message"].startswith("event=service_ready "), detail
        assert "max_processes" in checks["journal.reload_changed"], detail

    def test_stop_drains(self, cycle):
        """systemctl stop with a job running: the node leaves the scheduler, no new connection
        is accepted, the job finishes, then the unit stops cleanly."""
        checks, detail = cycle
        for key in ("drain.start_timeout", "drain.running_timeout", "drain.deactivating_timeout",
                    "drain.logout_timeout", "drain.stop_timeout"):  # fmt: skip
            assert key not in checks, detail
        assert checks["drain.jobs_before"] == "u 1", detail
        assert checks["drain.state_while_job"] == "deactivating", detail
        assert checks["drain.listed_while_stopping"] == "0", detail
        assert "accepted" not in checks["drain.new_connection"], detail
        assert checks["drain.result"] == f"0 OBJ {7 * 1001}", detail
        assert checks["drain.final"] == "inactive/success/0", detail
        assert checks["drain.stopped_event"] == "1", detail
        assert checks["stop.scheduler"] == "inactive/success", detail


class TestLifecycle:
    def test_upgrade_keeps_edited_conffile(self, cycle):
        """The admin's conf.d survives (new sample as .dpkg-dist); an unedited one is updated."""
        checks, detail = cycle
        assert checks["upgrade.rc"] == "0", detail
        assert checks["upgrade.version"] == UPGRADE_VERSION, detail
        assert checks["upgrade.kept"] == "1", detail
        assert checks["upgrade.dist"] == "1", detail
        assert checks["upgrade.toml"] == "1", detail
        assert checks["upgrade.enabled"] == "disabled", detail
        assert checks["upgrade.active"] == "inactive", detail

    def test_remove_keeps_configuration(self, cycle):
        checks, detail = cycle
        assert checks["remove.rc"] == "0", detail
        gone = ("/usr/bin/iceccd", "/usr/lib/iceserv", "/usr/lib/icecc/bin/gcc",
                "/lib/systemd/system/iceccd.service")  # fmt: skip
        for path in gone:
            assert checks[f"remove.file:{path}"] == "no", (path, detail)
        for path in ("/etc/conf.d/iceccd", "/etc/iceserv/iceserv.toml", "/var/cache/icecream"):
            assert checks[f"remove.file:{path}"] == "yes", (path, detail)
        assert checks["remove.status"] == "rc", detail

    def test_purge_removes_what_it_made(self, cycle):
        checks, detail = cycle
        assert checks["purge.rc"] == "0", detail
        left = [k for k, v in checks.items() if k.startswith("purge.file:") and v != "no"]
        assert left == [], detail
        assert checks["purge.status"] in {"", "un", "pn"}, detail
        assert checks["purge.systemd_state"] == "0", detail

    def test_replaces_debian_icecc(self, cycle):
        """Installing over Debian's icecc removes it without a conffile prompt; its icecc.conf
        is read by the unit (net name), except the paths the sandbox cannot write."""
        checks, detail = cycle
        assert checks["icecc.install_rc"] == "0", detail
        assert checks["replace.rc"] == "0", detail
        assert checks["replace.icecc_status"] == "rc", detail
        assert checks["replace.initd"] == "#!/sbin/openrc-run", detail
        assert checks["replace.leftover"] == "0", detail
        assert checks["replace.iceccconf"] == "yes", detail
        # icecc's postinst enabled its LSB script; that does not enable our native unit
        # (README.Debian; under OpenRC the runlevel entry is kept: TestOpenrc).
        assert checks["replace.sysvlinks"] == "1", detail
        assert checks["replace.enabled"] == "disabled", detail
        assert checks["replace.start_rc"] == "0", detail
        assert checks["replace.state"] == "active/running", detail
        assert "--confd=/etc/icecc/icecc.conf" in checks["replace.cmdline"], detail
        assert '"debnet"' in checks["replace.netname"], detail
        assert "(not set)" in checks["replace.logfile"] or '""' in checks["replace.logfile"]
        assert "/var/cache/icecream" in checks["replace.basedir"], detail


SERVICES = ("icecc-scheduler", "iceccd")


class TestOpenrc:
    """The package on a Debian 12 whose services OpenRC runs (openrc.sh): openrc-run,
    rc-service and supervise-daemon are real; PID 1 is not openrc-init."""

    def test_install_enables_and_starts_nothing(self, openrc_cycle):
        checks, detail = openrc_cycle
        assert checks["openrc.rc"] == "0", detail
        assert checks["install.rc"] == "0", detail
        assert checks["install.initd"] == "#!/sbin/openrc-run", detail
        for svc in SERVICES:
            assert checks[f"install.runlevel.{svc}"] == "no", detail
            assert checks[f"install.status.{svc}"] == "stopped", detail

    def test_rc_service_start_and_listing(self, openrc_cycle):
        """rc-update add + rc-service start: both started as icecream, the daemon listed."""
        checks, detail = openrc_cycle
        assert checks["enable.rc"] == "0", detail
        for svc in SERVICES:
            assert checks[f"plain.start_rc.{svc}"] == "0", detail
            assert f"plain.ready_timeout.{svc}" not in checks, detail
            assert checks[f"plain.status.{svc}"] == "started", detail
            assert checks[f"plain.user.{svc}"] == "icecream", detail
            assert checks[f"plain.comm.{svc}"] == svc, detail
            # No /etc/icecc/icecc.conf: the service's conf.d only.
            assert checks[f"plain.args.{svc}"] == f"--foreground --confd /etc/conf.d/{svc}"
        assert "plain.listcs_timeout" not in checks, detail
        assert "/2" in checks["plain.listcs"], detail

    def test_rc_service_stop(self, openrc_cycle):
        """rc-service stop: the node leaves the listing, the programs end cleanly."""
        checks, detail = openrc_cycle
        for step in ("plain", "replace"):
            assert f"{step}.logout_timeout" not in checks, detail
            for svc in SERVICES:
                assert checks[f"{step}.stop_rc.{svc}"] == "0", detail
                assert checks[f"{step}.stopped.{svc}"] == "stopped", detail
                assert checks[f"{step}.left.{svc}"] == "0", detail
                assert checks[f"{step}.stopped_event.{svc}"] == "1", detail

    def test_purge_removes_runlevel_entries(self, openrc_cycle):
        """Purge takes the admin's rc-update entries with the scripts (no dangling links)."""
        checks, detail = openrc_cycle
        assert checks["purge.rc"] == "0", detail
        left = [k for k, v in checks.items() if k.startswith("purge.file:") and v != "no"]
        assert left == [], detail

    def test_replaced_icecc_conf_is_read(self, openrc_cycle):
        """Over Debian's icecc, both scripts read its icecc.conf, then icecc-conf-paths, then
        conf.d: the net name, scheduler and limit come from icecc.conf, its log and cache paths
        are reset, and the daemon joins the scheduler on that net."""
        checks, detail = openrc_cycle
        assert checks["icecc.install_rc"] == "0", detail
        assert checks["replace.rc"] == "0", detail
        assert checks["replace.icecc_status"] == "rc", detail
        assert checks["replace.initd"] == "#!/sbin/openrc-run", detail
        for svc in SERVICES:
            assert checks[f"replace.status.{svc}"] == "started", detail
            assert checks[f"replace.user.{svc}"] == "icecream", detail
            assert checks[f"replace.args.{svc}"] == (
                "--foreground --confd /etc/icecc/icecc.conf --confd "
                f"/usr/share/iceserv/icecc-conf-paths --confd /etc/conf.d/{svc}"
            ), detail
        assert "replace.listcs_timeout" not in checks, detail
        assert "/2" in checks["replace.listcs"], detail  # ICECC_MAX_JOBS="2"
        assert '"debnet"' in checks["replace.netname"], detail
        assert "(not set)" in checks["replace.logfile"] or '""' in checks["replace.logfile"]
        assert "/var/cache/icecream" in checks["replace.basedir"], detail
        assert checks["replace.oldlog"] == "nono", detail

    def test_icecc_runlevel_entry_is_kept(self, openrc_cycle):
        """icecc's postinst put its iceccd in the default runlevel (update-rc.d defaults);
        the entry names /etc/init.d/iceccd, now ours, so iceserv's daemon starts at the next
        boot: kept as the admin had it, and said in README.Debian."""
        checks, detail = openrc_cycle
        assert checks["icecc.runlevel"] == "yes", detail
        assert checks["replace.runlevel"] == "yes", detail

    def test_conf_d_overrides_icecc_conf_on_reload(self, openrc_cycle):
        checks, detail = openrc_cycle
        assert checks["reload.rc"] == "0", detail
        assert "reload.timeout" not in checks, detail
        assert "/3" in checks["reload.listcs"], detail
        assert checks["reload.samepid"] == "yes", detail
