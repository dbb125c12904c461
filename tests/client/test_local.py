"""Local builds: compiler lookup, modes, the recursion guard, lock files (§8.1-§8.3, §8.9)."""

from __future__ import annotations

import fcntl
import os
import pwd
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from testbed.client_fakes import FAKE_CC, FakeDaemon

from iceserv.client import local
from iceserv.client.env import ClientEnv
from iceserv.client.job import LANG_C, LANG_CXX, LANG_OBJC, CompileJob

if TYPE_CHECKING:
    from client.bed import WrapperBed


def make_exe(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def link(path: Path, target: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


class TestPathLookup:
    def test_first_candidate_after_a_link_to_icecc(self, tmp_path):
        """Candidates before our own link are only a fallback; the first after it wins."""
        make_exe(tmp_path / "early/gcc")
        link(tmp_path / "links/gcc", "/usr/bin/icecc")
        make_exe(tmp_path / "late/gcc")
        env = ClientEnv.from_mapping({"PATH": f"{tmp_path}/early:{tmp_path}/links:{tmp_path}/late"})
        assert local.path_lookup("gcc", env) == f"{tmp_path}/late/gcc"

    def test_first_candidate_without_a_link_to_us(self, tmp_path):
        """Without a link to icecc the first candidate on PATH is used."""
        make_exe(tmp_path / "a/gcc")
        make_exe(tmp_path / "b/gcc")
        env = ClientEnv.from_mapping({"PATH": f"{tmp_path}/missing:{tmp_path}/a:{tmp_path}/b"})
        assert local.path_lookup("gcc", env) == f"{tmp_path}/a/gcc"

    @pytest.mark.parametrize("wrapper", ["ccache", "distcc", "colorgcc", "tbcompiler"])
    def test_other_wrappers_after_ours_are_skipped(self, tmp_path, wrapper):
        """After our link, links to ccache/distcc/colorgcc/tbcompiler are skipped too."""
        link(tmp_path / "ours/gcc", "../../bin/icecc")
        link(tmp_path / "theirs/gcc", f"/usr/bin/{wrapper}")
        make_exe(tmp_path / "real/gcc")
        env = ClientEnv.from_mapping({"PATH": f"{tmp_path}/ours:{tmp_path}/theirs:{tmp_path}/real"})
        assert local.path_lookup("gcc", env) == f"{tmp_path}/real/gcc"

    def test_link_to_our_own_executable_under_another_name(self, tmp_path):
        """A link resolving to the running wrapper counts as ours whatever its target's name."""
        ours = make_exe(tmp_path / "venv/bin/iceserv-icecc")
        link(tmp_path / "links/gcc", str(ours))
        make_exe(tmp_path / "real/gcc")
        env = ClientEnv.from_mapping({"PATH": f"{tmp_path}/links:{tmp_path}/real"})
        assert local.path_lookup("gcc", env, own=str(ours)) == f"{tmp_path}/real/gcc"
        assert local.path_lookup("gcc", env) == f"{tmp_path}/links/gcc"

    def test_directories_are_not_compilers(self, tmp_path):
        """A directory named like the compiler is skipped."""
        (tmp_path / "a/gcc").mkdir(parents=True)
        make_exe(tmp_path / "b/gcc")
        env = ClientEnv.from_mapping({"PATH": f"{tmp_path}/a:{tmp_path}/b"})
        assert local.path_lookup("gcc", env) == f"{tmp_path}/b/gcc"

    def test_given_path_and_nothing_found(self, tmp_path):
        """A name with a slash is used as is; an unknown compiler gives ""."""
        env = ClientEnv.from_mapping({"PATH": str(tmp_path)})
        assert local.path_lookup("gcc", env, "/opt/x/gcc") == "/opt/x/gcc"
        assert local.path_lookup("no-such-cc", env) == ""

    @pytest.mark.parametrize(("lang", "expected"), [(LANG_C, "/cc"), (LANG_CXX, "/cxx"),
                                                    (LANG_OBJC, "/usr/bin/gcc")])  # fmt: skip
    def test_icecc_cc_and_cxx(self, lang, expected):
        """ICECC_CC serves C jobs, ICECC_CXX C++ jobs, neither Objective-C."""
        env = ClientEnv.from_mapping({"PATH": "/usr/bin", "ICECC_CC": "/cc", "ICECC_CXX": "/cxx"})
        job = CompileJob(compiler_name="gcc", lang=lang)
        assert local.find_compiler(job, env) == expected


class TestAgainstReal:
    def test_lookup_skips_earlier_candidates_like_14(self, bed: WrapperBed):
        """Through a symlink dir in the middle of PATH both use the compiler after it."""
        make_exe(bed.root / "early/gcc", FAKE_CC.replace('name=$(basename "$0")', "name=early"))
        results = []
        for which in ("real", "ours"):
            links = bed.root / f"links-{which}"
            if not links.exists():
                link(links / "gcc", bed.program(which, "icecc"))
            path = f"{bed.root}/early:{links}:{bed.compiler.bin}:/usr/bin:/bin"
            done = bed.run([str(links / "gcc"), "-c", "hello.c"],
                           env={"PATH": path, "ICECC": "disable"})  # fmt: skip
            results.append((done.status, done.calls))
        assert results[0] == results[1]
        assert results[1][1][0][0] == "gcc"  # the fake after the links, not "early"

    @pytest.mark.parametrize("argv", [["--version"], ["--help"], ["gcc", "--version"]])
    def test_informational_options(self, bed: WrapperBed, argv):
        """--version names 1.4.0 as the real one does; --help lists the same variables."""
        real = bed.run([bed.program("real", "icecc"), *argv], env={"ICECC": "disable"})
        ours = bed.run([bed.program("ours", "icecc"), *argv], env={"ICECC": "disable"})
        assert ours.status == real.status == 0
        if argv == ["--version"]:
            assert real.stdout == b"ICECC 1.4.0\n"
            assert ours.stdout.startswith(b"ICECC 1.4.0 ")
        elif argv == ["--help"]:
            real_vars = {w for w in real.stdout.split() if w.startswith(b"ICECC")}
            ours_vars = {w for w in ours.stdout.split() if w.startswith(b"ICECC")}
            assert real_vars <= ours_vars
        else:
            assert ours.stdout == real.stdout

    def test_icerun_through_a_symlink(self, bed: WrapperBed):
        """A symlink to icerun runs its name as a custom command, locally, in a daemon slot."""
        results = []
        for which in ("real", "ours"):
            links = bed.root / f"icerun-{which}"
            if not links.exists():
                link(links / "gcc", bed.program(which, "icerun"))
            done = bed.run([str(links / "gcc"), "-c", "hello.c"], daemon=FakeDaemon(bed.root))
            results.append(done)
        assert results[0].local_slot
        assert results[0].daemon == results[1].daemon
        assert results[0].calls == results[1].calls
        assert results[1].calls[0][1] == "1"  # the custom step of the guard

    def test_disabled_never_contacts_the_daemon(self, bed: WrapperBed):
        """ICECC=disable builds without a single connection to the daemon."""
        for which in ("real", "ours"):
            done = bed.run([bed.program(which, "icecc"), "gcc", "-c", "hello.c"],
                           env={"ICECC": "disable"}, daemon=FakeDaemon(bed.root))  # fmt: skip
            assert done.status == 0
            assert done.daemon == []
            assert done.files == {"hello.o": b"fake object of gcc\n"}

    def test_missing_compiler_is_115(self, bed: WrapperBed):
        """A compiler that is nowhere on PATH ends with 115, as 1.4 does."""
        for which in ("real", "ours"):
            done = bed.run([bed.program(which, "icecc"), "no-such-cc", "-c", "hello.c"],
                           env={"ICECC": "disable"})  # fmt: skip
            assert done.status == 115


def hold_slot(seconds: float, program: str, done: Path | None = None) -> subprocess.Popen[bytes]:
    """A wrapper with ICECC=disable running 'sleep': it holds one lock slot meanwhile.

    With *done*, the command creates that file as it ends (before the slot is released).
    """
    env = {"PATH": "/usr/bin:/bin", "ICECC": "disable", "HOME": "/nonexistent"}
    if done is None:
        return subprocess.Popen([program, "sleep", str(seconds)], env=env)
    script = f'sleep {seconds}; : > "{done}"'
    return subprocess.Popen([program, "sh", "-c", script], env=env)


def _every_slot_held(slots: int) -> bool:
    """Whether another process holds every /tmp/.icecream-<user>/local_lock* (fcntl probe)."""
    base = Path("/tmp/.icecream-" + pwd.getpwuid(os.getuid()).pw_name)
    for slot in range(slots):
        path = base / ("local_lock" + (str(slot) if slot else ""))
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held by a holder
        else:
            fcntl.lockf(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)
    return True


class TestLockFiles:
    """Without a daemon we hold one of /tmp/.icecream-<user>/local_lock* (ncpu slots).

    1.4 takes the same locks, but with ``ICECC=disable`` or no daemon it
    execs the compiler in place and its close-on-exec lock file is released
    at that moment: the real client waits for a slot, yet never holds one
    while compiling.  We hold it until the compiler exits, as §8.9 intends.
    """

    @pytest.mark.parametrize("waiter", ["real", "ours"])
    def test_a_build_waits_while_we_hold_every_slot(self, bed: WrapperBed, waiter, tmp_path):
        """While our builds hold every slot, the real client's and ours wait for one to end."""
        slots = os.sysconf("SC_NPROCESSORS_ONLN")
        ends = [tmp_path / f"holder-{i}.done" for i in range(slots)]
        holders = [hold_slot(10.0, bed.program("ours", "icecc"), end) for end in ends]
        try:
            deadline = time.monotonic() + 20
            while not _every_slot_held(slots):  # they have taken their slots
                assert time.monotonic() < deadline, "the holders never took every slot"
                assert all(proc.poll() is None for proc in holders), "a holder ended early"
                time.sleep(0.02)
            look = 'for f in "$@"; do [ -e "$f" ] && echo "$f"; done; exit 0'
            waited = subprocess.run([bed.program(waiter, "icecc"), "sh", "-c", look, "sh",
                                     *map(str, ends)], timeout=30, capture_output=True, text=True,
                                    env={"PATH": "/usr/bin:/bin", "ICECC": "disable"},
                                    check=False)  # fmt: skip
        finally:
            for proc in holders:
                proc.wait(timeout=30)
        # The waiter's command ran only once a holder's command had ended (its mark exists
        # when the waiter looks); without the lock it would have run at once, seeing none.
        assert waited.returncode == 0, waited.stderr
        assert waited.stdout.split(), "the waiter ran while every slot was held"

    def test_host_lock_slot_is_exclusive_across_processes(self):
        """A held HostLock slot makes another process's non-blocking attempt on it fail."""
        lock = local.HostLock()
        assert lock.acquire()
        try:
            slots = os.sysconf("SC_NPROCESSORS_ONLN")
            probe = (
                "import fcntl, os, sys\n"
                f"base = '/tmp/.icecream-' + __import__('pwd').getpwuid(os.getuid()).pw_name\n"
                f"free = 0\n"
                f"for slot in range({slots}):\n"
                "    name = base + '/local_lock' + (str(slot) if slot else '')\n"
                "    fd = os.open(name, os.O_WRONLY)\n"
                "    try:\n"
                "        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); free += 1\n"
                "    except OSError: pass\n"
                "print(free)\n"
            )
            done = subprocess.run(["python3", "-c", probe], capture_output=True, text=True,
                                  timeout=30, check=True)  # fmt: skip
            assert int(done.stdout) <= slots - 1
        finally:
            lock.release()
        assert not lock.held


#: The compiler reports its pid, the POSIX locks that pid holds, and its ignored signals.
REPORTING_CC = """#!/bin/sh
echo "pid $$"
grep -E "POSIX +ADVISORY +WRITE +$$ " /proc/locks | sed 's/^/lock /'
sed -n 's/^SigIgn:[[:space:]]*/ignored /p' /proc/$$/status
echo "socket $(ls -l /proc/$$/fd | grep -c 'socket:')"
"""


def lock_inodes() -> set[int]:
    base = Path("/tmp/.icecream-" + pwd.getpwuid(os.getuid()).pw_name)
    return {path.stat().st_ino for path in base.glob("local_lock*")}


class TestBecomingTheCompiler:
    """Without a daemon the wrapper becomes the compiler (``execve``), as 1.4 does.

    It saves a process start and the interpreter's exit on every call
    (issue 17, P2); unlike 1.4 it keeps its lock slot across the exec.
    """

    def run_reporting(self, tmp_path: Path, **extra: str) -> tuple[int, str]:
        from testbed.client_fakes import write_launcher  # noqa: PLC0415

        compiler = make_exe(tmp_path / "bin/gcc", REPORTING_CC)  # a compiler by its name
        icecc = write_launcher(tmp_path / "icecc", __import__("sys").executable)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ICECC": "disable", **extra}
        proc = subprocess.Popen([str(icecc), str(compiler), "-c", "x.c"], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        return proc.pid, out

    def test_disabled_build_runs_in_the_wrappers_process_holding_a_slot(self, tmp_path):
        """Same pid, a write lock on one local_lock file, and SIGPIPE back at its default."""
        pid, out = self.run_reporting(tmp_path)
        lines = out.splitlines()
        assert f"pid {pid}" in lines, out
        held = [line.split()[6] for line in lines if line.startswith("lock ")]
        assert len(held) == 1, out  # exactly one slot, held by the compiler's process
        inode = int(held[0].rsplit(":", 1)[1])
        assert inode in lock_inodes()
        ignored = int(next(line for line in lines if line.startswith("ignored ")).split()[1], 16)
        assert not ignored & (1 << (13 - 1)), out  # SIGPIPE is not ignored, as for any child
        assert not ignored & (1 << (25 - 1)), out  # nor SIGXFSZ

    def test_a_compile_in_a_daemon_slot_keeps_the_slots_connection(self, tmp_path):
        """Granted a slot, the compiler is the wrapper's process and holds the daemon socket."""
        daemon = FakeDaemon(tmp_path / "d.sock").start()
        try:
            pid, out = self.run_reporting(tmp_path, ICECC="no",
                                          ICECC_TEST_SOCKET=str(tmp_path / "d.sock"))  # fmt: skip
        finally:
            daemon.close()
        assert f"pid {pid}" in out.splitlines()
        assert {type(m).__name__ for c in daemon.messages() for m in c} == {"JobLocalBegin"}
        assert "socket 1" in out.splitlines(), out  # the slot lasts while the compiler runs

    def test_build_summary_keeps_the_wrapper(self, tmp_path):
        """With ICECC_SUMMARY the record is written after the compiler: a child, not exec."""
        pid, out = self.run_reporting(tmp_path, ICECC_SUMMARY=str(tmp_path / "summary"))
        assert f"pid {pid}" not in out.splitlines()
        assert (tmp_path / "summary").exists()


class TestSignals:
    def test_sigterm_is_forwarded_to_the_compiler(self, tmp_path):
        """SIGTERM to a wrapper waiting for a custom command in a slot reaches it; then us too."""
        script = make_exe(
            tmp_path / "bin/slowcc",
            f"#!/bin/sh\ntrap 'echo got-term > {tmp_path}/mark; exit 3' TERM\n"
            f": > {tmp_path}/started\nsleep 10 & wait\n",
        )
        from testbed.client_fakes import write_launcher  # noqa: PLC0415

        icecc = write_launcher(tmp_path / "icecc", __import__("sys").executable)
        daemon = FakeDaemon(tmp_path / "d.sock").start()
        icerun = tmp_path / "icerun"  # a custom command stays the wrapper's child
        icerun.symlink_to(icecc)
        proc = subprocess.Popen(
            [str(icerun), str(script)],
            env={"PATH": "/usr/bin:/bin", "ICECC_TEST_SOCKET": str(tmp_path / "d.sock")},
        )
        try:
            # The compiler runs (and so the wrapper is waiting for it): now the signal.
            deadline = time.monotonic() + 20
            while not (tmp_path / "started").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.terminate()
            status = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
            daemon.close()
        assert (tmp_path / "mark").read_text() == "got-term\n"
        assert status == -15
