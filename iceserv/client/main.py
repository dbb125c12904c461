"""The ``icecc`` entry point: invocation modes and the local-or-remote flow of 1.4's client.

Owns :func:`main` (console scripts ``icecc`` and ``icerun``, and every
compiler symlink pointing at them; reference §8.1) and the order of 1.4's
``client/main.cpp``: response files, ``--help``/``--version``/
``--build-native``, the recursion guard, connecting to the local daemon
*before* analysing the arguments (so the daemon counts us), ``ICECC=disable``
and ``ICECC=no``, extra files, environments, the remote attempt and, on any
cluster failure, a local build in a daemon slot (or under the lock files).

The protocol is imported only once a daemon answered: with
``ICECC=disable`` or no daemon the wrapper runs on the standard library.
"""

import posix
import sys

from iceserv.client.env import ClientEnv
from iceserv.client.log import ClientLog

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Sequence
    from typing import Final

    from iceserv.client.args import Analysis
    from iceserv.client.channel import Channel
    from iceserv.client.environments import Environment
    from iceserv.client.job import CompileJob
    from iceserv.client.remote import Remote

__all__ = ["main"]

ICECC_VERSION: "Final" = "1.4.0"  # what we are compatible with, as "icecc --version" says
EXIT_TEST_SOCKET_ERROR: "Final" = 119
EXIT_CLUSTER_FAILURE: "Final" = 1  # ICECC_FALLBACK=fail
#: 1.4 error numbers that send a job home for the job's own sake, not the cluster's:
#: the caret workaround (102), a failed -fdirectives-only cpp (103), a missing file (104).
_NOT_CLUSTER_FAILURES: "Final" = frozenset({102, 103, 104})
LOCAL_GO_TIMEOUT: "Final" = 2400.0
USAGE: "Final" = """\
Usage:
   icecc [compiler] [compile options] -o OBJECT -c SOURCE
   icecc --build-native [compiler] [file...]
   icecc --slots [--free]
   icecc --help

Options:
   --help                     explain usage and exit
   --version                  show version and exit
   --build-native             create icecc environment
   --slots [--free]           print the cluster's (free) compile slots for -j
Environment Variables:
   ICECC                      If set to "no", just exec the real compiler.
                              If set to "disable", just exec the real compiler, but without
                              notifying the daemon and only run one job at a time.
   ICECC_VERSION              use a specific icecc environment, see icecc-create-env
   ICECC_DEBUG                [info | warning | debug]
                              sets verboseness of icecream client.
   ICECC_LOGFILE              if set, additional debug information is logged to the specified file
   ICECC_REPEAT_RATE          the number of jobs out of 1000 that should be
                              compiled on multiple hosts to ensure that they're
                              producing the same output.  The default is 0.
   ICECC_PREFERRED_HOST       overrides scheduler decisions if set.
   ICECC_CC                   set C compiler name (default gcc).
   ICECC_CXX                  set C++ compiler name (default g++).
   ICECC_REMOTE_CPP           set to 1 or 0 to override remote preprocessing
   ICECC_CLANG_REMOTE_CPP     set to 1 or 0 to override remote preprocessing for clang
   ICECC_IGNORE_UNVERIFIED    if set, hosts where environment cannot be verified are not used.
   ICECC_EXTRAFILES           additional files used in the compilation.
   ICECC_COLOR_DIAGNOSTICS    set to 1 or 0 to override color diagnostics support.
   ICECC_CARET_WORKAROUND     set to 1 or 0 to override gcc show caret workaround.
   ICECC_COMPRESSION          if set, the libzstd compression level (1 to 19, default: 1)
   ICECC_ENV_COMPRESSION      compression type for icecc environments [none|gzip|bzip2|zstd|xz]
   ICECC_SLOW_NETWORK         set to 1 to send network data in smaller chunks
"""
ICERUN_USAGE: "Final" = """\
Usage:
   icerun [command]
   icerun --help

Options:
   --help                     explain usage and exit
   --version                  show version and exit
Environment Variables:
   ICECC                      if set to "no", just exec the real command
   ICECC_DEBUG                [info | warning | debug]
   ICECC_LOGFILE              if set, additional debug information is logged to the specified file

"""


def main(argv: "Sequence[str] | None" = None) -> int:
    """Run the wrapper for *argv* (default ``sys.argv``; ``argv[0]`` picks the mode)."""
    env = ClientEnv.current()
    diag = ClientLog(env.debug_level, env.logfile)
    run = _Run(list(sys.argv if argv is None else argv), env, diag)
    if run.argv[1:2] == ["--summary"] or env.environ.get("ICECC_SUMMARY", "0") not in ("", "0"):
        # Only then: the build summary is off the wrapper's light path.
        from iceserv.client.buildsummary import recorded  # noqa: PLC0415

        return recorded(run)
    return run.run()


class _Run:
    """One wrapper invocation."""

    def __init__(self, argv: list[str], env: ClientEnv, diag: ClientLog) -> None:
        self.argv, self.env, self.diag = argv, env, diag
        self.local_status = 0  # a job built here while racing the cluster (ICECC_RACE)
        # Whether nothing runs after a daemon-less local build, so the wrapper may
        # become the compiler; the build summary, which records afterwards, clears it.
        self.may_replace = True
        self.own = argv[0] if "/" in argv[0] else None  # our own executable, to skip on PATH
        try:
            self.cwd = posix.getcwd()
        except OSError:
            self.cwd = ""

    def run(self) -> int:
        if any(arg.startswith("@") for arg in self.argv[1:]):  # rare: import only then
            from iceserv.client.local import read_response_file  # noqa: PLC0415
            from iceserv.client.respfile import expand_response_files  # noqa: PLC0415

            self.argv = expand_response_files(self.argv, read_response_file)
        argv = self.argv
        self.diag.debug("invoked as: " + " ".join(argv))
        prog = argv[0].rpartition("/")[2]
        compiler, start, icerun = "", 1, False
        if prog in ("icecc", "icerun"):
            icerun = prog == "icerun"
            first = argv[1] if len(argv) > 1 else ""
            early = self.early_option(first, icerun=icerun)
            if early is not None:
                return early
            if first:
                compiler, start = first, 2
        else:
            icerun = _links_to_icerun(argv[0])
        return self.compile(compiler, argv[start:], icerun=icerun, prog=prog)

    def early_option(self, first: str, *, icerun: bool) -> int | None:
        """``--help``, ``--version``, ``--build-native``, ``--slots``: answered first."""
        if first == "--help":
            sys.stdout.write(ICERUN_USAGE if icerun else USAGE)
            return 0
        if first == "--version":
            from iceserv._version import VERSION  # noqa: PLC0415

            name = "ICERUN" if icerun else "ICECC"
            sys.stdout.write(f"{name} {ICECC_VERSION} (iceserv {VERSION})\n")
            return 0
        if first == "--build-native" and not icerun:
            from iceserv.client.createenv import build_native  # noqa: PLC0415

            return build_native(self.argv[2:], self.env, self.diag)
        if first == "--slots" and not icerun:
            from iceserv.client.slotcount import slots_command  # noqa: PLC0415

            return slots_command(self.argv[2:], self.env)
        return None

    def compile(self, compiler: str, args: list[str], *, icerun: bool, prog: str) -> int:
        from iceserv.client.args import analyse  # noqa: PLC0415
        from iceserv.client.local import (  # noqa: PLC0415
            EXIT_RECURSION,
            SAFEGUARD_MAX_LEVEL,
            color_terminal,
            irregular,
            readable,
        )

        env, diag = self.env, self.diag
        if env.safeguard_level >= SAFEGUARD_MAX_LEVEL:
            diag.error("icecream seems to have invoked itself recursively!")
            return EXIT_RECURSION
        found = None
        if not env.disabled:
            from iceserv.client.sockets import TestSocketError, find_local_daemon  # noqa: PLC0415

            try:
                found = find_local_daemon(env)
            except TestSocketError:
                diag.error("test socket error")
                return EXIT_TEST_SOCKET_ERROR
        analysis = analyse(
            args,
            compiler_name=(compiler or prog).rpartition("/")[2],
            compiler_path=compiler,
            icerun=icerun,
            env=env,
            cwd=self.cwd,
            readable=readable,
            irregular=irregular,
            color_terminal=color_terminal(env),
        )
        if analysis.local_reason is not None:
            diag.info(f"building locally: {analysis.local_reason}")
        if found is None:
            if not env.disabled:
                diag.warning("no local daemon found")
                if analysis.local_reason is None and not env.local_only:
                    failed = self.cluster_failure("no daemon", "no local iceccd answered")
                    if failed is not None:
                        return failed
            return self.local(analysis.job, daemon=None, replace=self.may_replace)
        return self.with_daemon(*found, analysis)

    def cluster_failure(self, kind: str, detail: str) -> int | None:
        """``ICECC_FALLBACK=fail``: say what failed in one line and return 1; else None.

        *kind* is one of "no daemon", "no environment", "no host", "environment
        refused" and "remote failure" (icecc(1)).
        """
        if not self.env.fail_on_cluster_errors:
            return None
        sys.stderr.write(f"icecc: cluster failure ({kind}): {detail}\n")
        sys.stderr.flush()
        return EXIT_CLUSTER_FAILURE

    def local(self, job: "CompileJob", daemon: "Channel | None", *, replace: bool = False) -> int:
        """Build *job* here; with *replace* the wrapper may become the compiler (``execve``)."""
        from iceserv.client.local import build_local  # noqa: PLC0415

        return build_local(
            job,
            self.env,
            self.diag,
            daemon=daemon is not None,
            own=self.own,
            usage=False,
            replace=replace,
        )[0]

    def with_daemon(self, sock: "_socket.socket", iceserv: bool, analysis: "Analysis") -> int:  # noqa: FBT001 - find_local_daemon's pair
        """Build with the daemon that answered: remote unless told otherwise, else in a slot.

        *iceserv*: it answered on its iceserv-only endpoint (it may send JOB_TICKET).
        """
        job = analysis.job
        if analysis.local_reason is not None or self.env.local_only:
            return self.light_slot(sock, job)
        from iceserv.client.channel import Channel, ClusterError  # noqa: PLC0415

        try:
            daemon = Channel(sock, name="local daemon", env=self.env, iceserv=iceserv)
        except ClusterError as exc:
            sock.close()
            self.diag.warning(f"local daemon unusable: {exc}")
            failed = self.cluster_failure("no daemon", f"local daemon unusable: {exc}")
            return failed if failed is not None else self.local(job, daemon=None)
        try:
            completed = self.complete(analysis)
            local = completed is None
            job = completed or job
            if not local:
                try:
                    status = self.remote(job, analysis, daemon)
                except ClusterError as exc:
                    self.diag.warning(f"local build forced by remote exception: {exc}")
                    if exc.code not in _NOT_CLUSTER_FAILURES:
                        failed = self.cluster_failure(_failure_kind(exc.code), str(exc))
                        if failed is not None:
                            return failed
                    fresh = self.reconnect(daemon)
                    if fresh is None:
                        return self.local(job, daemon=None)
                    daemon = fresh
                else:
                    if status is not None:
                        return status
            return self.local_in_slot(job, daemon)
        finally:
            daemon.close()

    def reconnect(self, spent: "Channel") -> "Channel | None":
        """Open a new daemon connection for the local build (1.4 does not reuse the old one)."""
        from iceserv.client.channel import Channel, ClusterError  # noqa: PLC0415
        from iceserv.client.sockets import TestSocketError, find_local_daemon  # noqa: PLC0415

        spent.close()
        try:
            found = find_local_daemon(self.env)
        except TestSocketError:
            return None
        if found is None:
            return None
        sock, iceserv = found
        try:
            return Channel(sock, name="local daemon", env=self.env, iceserv=iceserv)
        except ClusterError:
            sock.close()
            return None

    def complete(self, analysis: "Analysis") -> "CompileJob | None":
        """Run the compiler for what the remote job still needs; None means build locally."""
        from iceserv.client.job import REMOTE  # noqa: PLC0415
        from iceserv.client.local import find_compiler, read_command_output  # noqa: PLC0415
        from iceserv.client.native import arch_flags, replace_native  # noqa: PLC0415

        job = analysis.job
        compiler = find_compiler(job, self.env, self.own)
        environ = self.env.child_environ(2)
        if analysis.clang_target:
            target = read_command_output([compiler, "-dumpmachine"], environ).partition("\n")[0]
            if not target:
                self.diag.error("failed to read default clang host platform, building locally")
                return None
            job = job.evolve(args=(*job.args, ("-target", REMOTE), (target, REMOTE)))
        if analysis.native:
            probe = [compiler, "-###", "-E", "-"]
            normal = read_command_output(probe, environ, fd=2)
            flagged = read_command_output([*probe, *analysis.native], environ, fd=2)
            flags = arch_flags(normal, flagged, clang=job.is_clang)
            if flags is None:
                self.diag.error("failed to read -march/cpu/tune=native flags, building locally")
                return None
            job = replace_native(job, flags)
        return job

    def remote(self, job: "CompileJob", analysis: "Analysis", daemon: "Channel") -> int | None:
        """Pick environments and build remotely; None when the job must be local after all."""
        from iceserv.client.remote import Remote  # noqa: PLC0415
        from iceserv.hostfacts import host_platform  # noqa: PLC0415
        from iceserv.protocol import End  # noqa: PLC0415

        platform = host_platform()
        extrafiles = self.extrafiles(analysis)
        if extrafiles is None:
            return None
        envs = self.environments(job, daemon, extrafiles, platform)
        if not envs:  # 1.4: build locally, in a slot of the same daemon connection
            return self.cluster_failure(
                "no environment",
                "no environment to compile with (ICECC_VERSION, or the daemon's native one)",
            )
        remote = Remote(
            job,
            daemon,
            envs,
            env=self.env,
            diag=self.diag,
            cwd=self.cwd,
            platform=platform,
            own=self.own,
        )
        if self.env.repeat_rate > 0:
            status = self.repeated(remote)
        elif self.env.race and not job.dwarf_fission:
            raced = self.raced(remote)
            if raced is None:
                return self.finished_locally()
            status = raced
        else:
            status = remote.run()
        if status == 0:
            daemon.send(End())  # "all fine": the server reports the job, not our daemon
            if self.env.verify and remote.server is not None:
                status = self.verified(job, remote.server)
        return status

    def raced(self, remote: "Remote") -> int | None:
        """``ICECC_RACE=1``: race local and remote if a local slot is free; None: local won."""
        from iceserv.client.race import free_slot, race  # noqa: PLC0415

        lock = free_slot()
        if lock is None:
            return remote.run()
        status, remote_won = race(remote, lock)
        if not remote_won:
            self.local_status = status
            return None
        return status

    def finished_locally(self) -> int:
        """Return the status of the job built here during a race."""
        return self.local_status

    def verified(self, job: "CompileJob", server: str) -> int:
        """``ICECC_VERIFY=N``: on every Nth remote job, compile here too and compare."""
        from iceserv.client import verify  # noqa: PLC0415

        if not verify.due(self.env.verify):
            return 0
        return verify.check(job, self.env, self.diag, server=server, own=self.own)

    def repeated(self, remote: "Remote") -> int:
        """``ICECC_REPEAT_RATE``: maybe compile on three servers and compare."""
        import random  # noqa: PLC0415 - only with a repeat rate

        from iceserv.client.repeat import build_repeated, wants_repeat  # noqa: PLC0415

        rng = random.Random()  # noqa: S311 - sampling, not secrecy
        return build_repeated(remote, rng) if wants_repeat(remote, rng) else remote.run()

    def extrafiles(self, analysis: "Analysis") -> list[str] | None:
        """Return the extra files plus ``ICECC_EXTRAFILES``; None if one of those is missing."""
        from iceserv.client.environments import parse_extrafiles  # noqa: PLC0415
        from iceserv.client.job import absolute  # noqa: PLC0415
        from iceserv.client.local import exists  # noqa: PLC0415

        files = list(analysis.extrafiles)
        if self.env.extrafiles is None:
            return files
        more, missing = parse_extrafiles(
            self.env.extrafiles, lambda p: absolute(p, self.cwd), exists
        )
        if missing is not None:
            self.diag.warning(f"File in ICECC_EXTRAFILES not found: {missing}")
            return None
        return files + more

    def environments(
        self, job: "CompileJob", daemon: "Channel", extrafiles: list[str], platform: str
    ) -> "list[Environment]":
        """``ICECC_VERSION``'s environments, or the native one the daemon makes."""
        from iceserv.client import environments as envs  # noqa: PLC0415
        from iceserv.client.job import absolute  # noqa: PLC0415
        from iceserv.client.local import find_compiler  # noqa: PLC0415
        from iceserv.client.remote import ask_native_env  # noqa: PLC0415
        from iceserv.protocol import Feature  # noqa: PLC0415

        if self.env.version is not None:
            return envs.parse_icecc_version(
                self.env.version,
                platform=platform,
                prefix=envs.find_prefix(job.compiler_name),
                usable=envs.usable_tarball,
                warn=self.diag.error,
            )
        if extrafiles and not daemon.supports(Feature.NATIVE_ENV_EXTRAFILES):
            self.diag.warning("Local daemon is too old to handle extra files.")
            return []
        compiler = absolute(find_compiler(job, self.env, self.own), self.cwd)
        native = ask_native_env(daemon, compiler, extrafiles, self.env)
        if native is None:
            self.diag.warning(
                "daemon can't determine native environment. "
                "Set $ICECC_VERSION to an icecc environment."
            )
            return []
        return [envs.Environment(platform, envs.env_name(native) or "", native)]

    def light_slot(self, sock: "_socket.socket", job: "CompileJob") -> int:
        """Build a job that stays local in a slot, asked for without the protocol package."""
        from iceserv.client.job import absolute  # noqa: PLC0415
        from iceserv.client.slot import local_slot  # noqa: PLC0415

        try:
            granted = local_slot(sock, absolute(job.output_file, self.cwd), LOCAL_GO_TIMEOUT)
            if not granted:
                sock.close()
                return self.local(job, daemon=None)
            return self.local_granted(job, sock)
        finally:
            sock.close()

    def local_granted(self, job: "CompileJob", sock: "_socket.socket") -> int:
        """Compile in the slot the daemon granted (no lock file: the daemon counts us).

        A compiler becomes this process and inherits *sock*: the daemon sees
        the slot end when the compiler exits, as when 1.4's client closes it.
        A custom command (``icerun``) stays a child: whatever it starts in
        the background must not keep the slot.
        """
        from iceserv.client.local import build_local  # noqa: PLC0415

        replace = self.may_replace and not job.is_custom
        slot = sock.fileno()
        return build_local(
            job,
            self.env,
            self.diag,
            daemon=True,
            own=self.own,
            usage=False,
            replace=replace,
            slot=slot,
        )[0]

    def local_in_slot(self, job: "CompileJob", daemon: "Channel") -> int:
        """§5.1.3: JOB_LOCAL_BEGIN, wait for the go, compile; lock files if the daemon fails."""
        import time  # noqa: PLC0415

        from iceserv.client.channel import ClusterError  # noqa: PLC0415
        from iceserv.client.job import absolute  # noqa: PLC0415
        from iceserv.protocol import JobLocalBegin  # noqa: PLC0415

        try:
            outfile = absolute(job.output_file, self.cwd)
            daemon.send(JobLocalBegin(stime=int(time.time()), outfile=outfile, id=0))
            go = daemon.receive(LOCAL_GO_TIMEOUT)
        except ClusterError:
            go = None
        if not isinstance(go, JobLocalBegin):
            daemon.close()
            return self.local(job, daemon=None)
        return self.local(job, daemon=daemon)


def _failure_kind(code: int) -> str:
    """Name what failed, for ``ICECC_FALLBACK=fail``, from 1.4's error number."""
    if code in (24, 25, 26):
        return "environment refused"
    if code == 22:
        return "no environment"
    if code in (1, 2):
        return "no host"
    return "remote failure"


def _links_to_icerun(path: str) -> bool:
    """Whether *path* is a symlink whose target is named ``icerun`` (1.4 ``resolve_link``)."""
    try:
        return posix.readlink(path).rpartition("/")[2] == "icerun"
    except OSError:
        return False
