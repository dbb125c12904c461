"""The wrapper's protocol conversations: local daemon, scheduler answer, compile server.

Owns the remote side of 1.4's client (``client/remote.cpp``): asking for the native
environment, GET_CS and its USE_CS answer, the "compile it yourself" path
(USE_CS to 127.0.0.1, §5.1.2), and the remote job of §5.1.1 (environment
transfer and verification, COMPILE_FILE, the preprocessed source, the result
and the object and ``.dwo`` files, §8.7 result handling).

Every failure that 1.4 answers with a local build raises
:class:`~iceserv.client.channel.ClusterError` (its 1.4 error number in
``code``); the caller then
builds locally.  The only failure returned as a status is a preprocessor
that failed for a reason other than gcc's ``-fdirectives-only``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from iceserv.client.channel import Channel, ClusterError
from iceserv.client.job import (
    LANG_OBJC,
    LANG_OBJCXX,
    REMOTE,
    REST,
    colorify,
    colorify_wanted,
    output_needs_workaround,
)
from iceserv.client.local import HostLock, build_local, color_terminal, spawn, wait
from iceserv.client.sockets import connect_tcp
from iceserv.errors import ProtocolError
from iceserv.protocol import (
    CHUNK_SIZE,
    BlacklistHostEnv,
    CompileFile,
    CompileResult,
    End,
    EnvEntry,
    EnvTransfer,
    Feature,
    FileChunk,
    GetCS,
    GetNativeEnv,
    JobDone,
    JobDoneFlag,
    JobTicket,
    UseCS,
    UseNativeEnv,
    VerifyEnv,
    VerifyEnvResult,
)
from iceserv.protocol.features import required_version, supports
from iceserv.protocol.filenames import shorten_filename

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO, Final, NoReturn

    from iceserv.client.env import ClientEnv
    from iceserv.client.environments import Environment
    from iceserv.client.job import CompileJob
    from iceserv.client.log import ClientLog
    from iceserv.protocol import Message

__all__ = ["Remote", "ask_native_env"]

# Time-outs in seconds (reference §7.8).
NATIVE_ENV_TIMEOUT: Final = 240.0
CONNECT_TIMEOUT: Final = 10.0
VERIFY_TIMEOUT: Final = 60.0
RESULT_TIMEOUT: Final = 720.0
CHUNK_TIMEOUT: Final = 40.0
_SELF: Final = "127.0.0.1"
_TIMED_OUT: Final = 14  # ClusterError code of a receive time-out


def ask_native_env(
    daemon: Channel, compiler: str, extrafiles: list[str], env: ClientEnv
) -> str | None:
    """GET_NATIVE_ENV: the daemon's tarball path for *compiler*, or None (§5.4).

    *compiler* is the absolute compiler path; daemons older than protocol 41
    only know "gcc" and "clang".  The daemon may take minutes to build it.
    """
    if not daemon.supports(Feature.NATIVE_ENV_FULL_PATH):
        compiler = "clang" if "clang" in compiler.rpartition("/")[2] else "gcc"
    daemon.send(GetNativeEnv(compiler, tuple(extrafiles), env.env_compression or ""))
    try:
        reply = daemon.receive(NATIVE_ENV_TIMEOUT)
    except ClusterError:
        return None
    if not isinstance(reply, UseNativeEnv) or not os.access(reply.native_version, os.R_OK):
        return None
    return reply.native_version


class Remote:
    """One remote attempt of a job (1.4 ``build_remote`` with a repeat rate of 0)."""

    def __init__(  # noqa: PLR0913
        self,
        job: CompileJob,
        daemon: Channel,
        envs: list[Environment],
        *,
        env: ClientEnv,
        diag: ClientLog,
        cwd: str,
        platform: str,
        own: str | None,
        source: str | None = None,
        output: bool = True,
    ) -> None:
        self.job, self.daemon, self.envs = job, daemon, envs
        self.env, self.diag, self.cwd, self.platform, self.own = env, diag, cwd, platform, own
        self.source = source  # an already preprocessed file to send (repeated jobs)
        self.output = output  # pass the server's stdout/stderr on (and check them)
        self.server: str | None = None  # the compile server that built it, once one did
        self.channel: Channel | None = None  # the open compile-server channel (ICECC_RACE)
        self.result: CompileResult | None = None  # its COMPILE_RESULT, once received
        self.may_compile_here = True  # False while racing: this host builds the job already
        #: JOB_TICKETs our iceserv daemon passed on before USE_CS, by job id (issue 14).
        self.tickets: dict[int, JobTicket] = {}

    def minimal_version(self, features: int) -> int:
        """1.4 ``minimalRemoteVersion`` plus GET_CS's own raise for xz/zstd environments."""
        needed: list[Feature] = []
        if self.env.ignore_unverified:
            needed.append(Feature.VERIFY_ENV)
        if self.job.dwarf_fission:
            needed.append(Feature.SPLIT_DWARF)
        if features:
            needed.append(Feature.ENV_FEATURES)
        return required_version(*needed)

    def get_cs(self) -> GetCS:
        """Build the GET_CS for this job."""
        from iceserv.client.environments import required_features  # noqa: PLC0415
        from iceserv.client.job import absolute  # noqa: PLC0415

        features = required_features(self.env.env_compression)
        minimal = self.minimal_version(features)
        name = self.job.get_cs_filename(absolute(self.job.input_file, self.cwd))
        try:
            nice = max(0, min(20, os.getpriority(os.PRIO_PROCESS, 0)))
        except OSError:
            nice = 0
        return GetCS(
            versions=tuple(EnvEntry(e.platform, e.name) for e in self.envs if e.name),
            filename=shorten_filename(name),
            lang=self.job.lang,
            count=1,
            target=self.platform,
            arg_flags=self.job.arg_flags(),
            client_id=0,
            preferred_host=self.env.preferred_host,
            ignore_unverified=int(supports(minimal, Feature.VERIFY_ENV)),
            minimal_host_version=minimal,
            client_count=0,
            required_features=features,
            niceness=nice,
        )

    def run(self) -> int:
        """Ask for a server and compile there (or here, if told to); return the status."""
        if not any(e.name for e in self.envs):
            raise ClusterError(22, "$ICECC_VERSION needs to point to .tar files")
        request = self.get_cs()
        self.daemon.send(request)
        use = self.wait_for_server()
        if not isinstance(use, UseCS):
            raise ClusterError(1, f"expected use_cs reply, but got {type(use).__name__}")
        if use.hostname == _SELF and not (self.env.test_remotebuild and use.port != 0):
            if not self.may_compile_here:
                raise ClusterError(2, "the scheduler gave the job back to this host")
            return self.compile_here(use)
        return self.compile_there(use)

    def wait_for_server(self) -> Message:
        """Return the daemon's answer to GET_CS within ``ICECC_SERVER_WAIT`` s (else error 14).

        1.4 waits 240 s (an hour for niced jobs), silently, for a job no host can
        take; after the bound we compile locally instead (issue 13).
        """
        wait = self.env.server_wait
        deadline = time.monotonic() + wait
        try:
            answer = self.daemon.receive(wait)
            while isinstance(answer, JobTicket) and self.daemon.iceserv and len(self.tickets) < 8:
                # Our iceserv daemon passes the scheduler's ticket on just before the USE_CS.
                self.tickets[answer.job_id] = answer
                answer = self.daemon.receive(max(0.0, deadline - time.monotonic()))
        except ClusterError as exc:
            if exc.code == _TIMED_OUT and time.monotonic() >= deadline:
                text = f"no compile server within {wait:g} s (ICECC_SERVER_WAIT), compiling here"
                raise ClusterError(_TIMED_OUT, text) from None
            raise
        return answer

    def compile_here(self, use: UseCS) -> int:
        """§5.1.2: tell the daemon, compile locally in its slot, report JOB_DONE."""
        self.diag.debug("building myself, but telling localhost")
        job = self.job
        self.daemon.send(self._compile_file(use.job_id, "__client", self.daemon))
        start = time.monotonic()
        status, user, system, faults = build_local(
            job, self.env, self.diag, daemon=True, own=self.own
        )
        size = sum(_size(path) for path in (job.output_file, job.dwo_file()))
        self.daemon.send(
            JobDone(
                job_id=use.job_id,
                exitcode=status,
                real_msec=int((time.monotonic() - start) * 1000),
                user_msec=int(user * 1000),
                sys_msec=int(system * 1000),
                pfaults=faults,
                out_uncompressed=size,
                flags=JobDoneFlag.FROM_SUBMITTER,
            )
        )
        return status

    def _compile_file(self, job_id: int, environment: str, peer: Channel) -> CompileFile:
        job, args = self.job, tuple(self.job.non_local_flags())
        if not peer.supports(Feature.SINGLE_ARGS_LIST):
            # Below 41, 1.4 sends the remote and the rest arguments as two lists and the
            # server runs remote + rest: the same order, as one list our codec sends.
            args = (*job.flags(REMOTE), *job.flags(REST))
        if job.lang in (LANG_OBJC, LANG_OBJCXX) and not peer.supports(Feature.OBJC_LANG):
            args += ("-x", "objective-c" if job.lang == LANG_OBJC else "objective-c++")
        if not peer.supports(Feature.COMPILER_NAME) and "clang" in job.compiler_name:
            args = ("clang", *args)  # for the compilerwrapper of pre-30 servers
        return CompileFile(
            lang=job.lang,
            job_id=job_id,
            args=args,
            environment=environment,
            target=self.platform,
            compiler_name=job.remote_compiler_name(),
            input_file=job.input_file,
            working_dir=self.cwd,
            output_file=job.output_file,
            dwarf_fission=job.dwarf_fission,
        )

    def compile_there(self, use: UseCS) -> int:
        """§5.1.1 steps 9-14 against the compile server *use* names."""
        self.diag.debug(
            f"Have to use host {use.hostname}:{use.port} - Job ID: {use.job_id} - "
            f"env: {use.host_platform} - has env: {use.got_env}"
        )
        envs = {e.platform: e for e in self.envs}
        chosen = envs.get(use.host_platform)
        if chosen is None:
            raise ClusterError(2, f"no environment for platform {use.host_platform!r}")
        sock = connect_tcp(use.hostname, use.port, CONNECT_TIMEOUT)
        if sock is None:
            raise ClusterError(2, f"no server found at {use.hostname}")
        server = Channel(sock, name=use.hostname, env=self.env)
        self.server, self.channel = use.hostname, server
        try:
            server.open()
            ticket = self.tickets.pop(use.job_id, None)
            if ticket is not None:
                # Only a server the scheduler authenticated gets a ticketed job: it is iceserv.
                _send_ticket(server, ticket)
            if not use.got_env:
                self.transfer_env(server, chosen, use.hostname)
            if not server.supports(Feature.VERIFY_ENV) and self.env.ignore_unverified:
                raise ClusterError(26, f"environment on {use.hostname} cannot be verified")
            server.send(self._compile_file(use.job_id, chosen.name, server))
            if self.source:
                self.send_file(server)
            else:
                status = self.send_source(server)
                if status is not None:
                    return status
            return self.receive_result(server)
        finally:
            server.close()

    def transfer_env(self, server: Channel, chosen: Environment, hostname: str) -> None:
        """TRANFER_ENV + the tarball, then VERIFY_ENV; blacklist the host if it refuses."""
        server.send(EnvTransfer(chosen.name, self.platform))
        try:
            with open(chosen.path, "rb") as tarball:  # noqa: PTH123 - pathlib costs import time
                while piece := tarball.read(CHUNK_SIZE):
                    server.send(FileChunk(piece))
        except OSError as exc:
            raise ClusterError(5, f"unable to read {chosen.path}: {exc}") from None
        server.send(End())
        if not server.supports(Feature.VERIFY_ENV):
            return
        server.send(VerifyEnv(chosen.name, self.platform))
        reply = server.receive(VERIFY_TIMEOUT)
        if not isinstance(reply, VerifyEnvResult):
            raise ClusterError(25, "other error verifying environment on remote")
        if not reply.ok:
            self.diag.warning(f"Host {hostname} did not successfully verify environment.")
            self.daemon.send(BlacklistHostEnv(chosen.name, self.platform, hostname))
            raise ClusterError(24, f"remote {hostname} unable to handle environment")

    def send_source(self, server: Channel) -> int | None:
        """Stream the preprocessor's output; None, or the status of a failed preprocessor."""
        from iceserv.client.local import find_compiler  # noqa: PLC0415

        job = self.job
        argv = job.cpp_argv(
            find_compiler(job, self.env, self.own), self.env, lambda p: os.access(p, os.R_OK)
        )
        self.diag.debug("preparing source to send: " + " ".join(argv))
        lock = HostLock()
        if not lock.acquire():
            self.diag.error("can't lock for local cpp")
            return 100
        try:
            read_fd, write_fd = os.pipe()
            try:
                pid = spawn(argv, self.env.child_environ(2), stdout=write_fd)
            except OSError:
                os.close(read_fd)
                raise ClusterError(18, "cannot start the preprocessor") from None
            finally:
                os.close(write_fd)
            try:
                self._stream(server, read_fd, lock)
            except ClusterError:
                os.kill(pid, 15)  # SIGTERM, as 1.4 does
                wait(pid)
                raise
            finally:
                os.close(read_fd)
        finally:
            lock.release()
        status = wait(pid)[0]
        if status != 0:
            if not job.is_clang and job.rewrite_includes(self.env):
                raise ClusterError(103, "local cpp invocation failed, trying to recompile locally")
            return status
        server.send(End())
        return None

    def send_file(self, server: Channel) -> None:
        """Send the already preprocessed source file, then END."""
        try:
            with open(self.source or "", "rb") as handle:  # noqa: PTH123 - import time
                while piece := handle.read(CHUNK_SIZE):
                    server.send(FileChunk(piece))
        except OSError as exc:
            raise ClusterError(11, f"unable to open preprocessed file: {exc}") from None
        server.send(End())

    @staticmethod
    def _stream(server: Channel, read_fd: int, lock: HostLock) -> None:
        # Full 100 000-byte chunks as 1.4 sends them; the lock limits concurrent
        # preprocessors, so it is given back while the network is busy.
        buffer = bytearray()
        while True:
            data = os.read(read_fd, CHUNK_SIZE - len(buffer))
            buffer += data
            if buffer and (not data or len(buffer) == CHUNK_SIZE):
                lock.release()
                server.send(FileChunk(bytes(buffer)))
                buffer.clear()
                if not lock.acquire():
                    raise ClusterError(32, "lock failed")
            if not data:
                return

    def receive_result(self, server: Channel) -> int:
        """COMPILE_RESULT and the files; §8.7's reasons to redo the job locally raise."""
        job = self.job
        result = server.receive(RESULT_TIMEOUT)
        if not isinstance(result, CompileResult):
            raise ClusterError(13, "did not get compile response message")
        self.result = result
        if result.status and result.was_out_of_memory:
            raise ClusterError(101, "the server ran out of memory, recompiling locally")
        if self.output:
            self.pass_output(result)
        if result.status == 0:
            _receive_file(server, job.output_file)
            if result.have_dwo:
                _receive_file(server, job.dwo_file())
        return result.status

    def pass_output(self, result: CompileResult) -> None:
        """§8.7: redo the job locally for the caret workaround or a missing file, else print."""
        if (result.out or result.err) and output_needs_workaround(self.job, self.env):
            raise ClusterError(102, "command needs stdout/stderr workaround, recompiling locally")
        if "file not found" in result.err:
            raise ClusterError(104, "remote is missing file, recompiling locally")
        _write(sys.stdout.buffer, result.out)
        err = result.err
        if colorify_wanted(self.job, self.env, color_terminal=color_terminal(self.env)):
            err = colorify(err)
        _write(sys.stderr.buffer, err)


def _write(buffer: BinaryIO, text: str) -> None:
    if text:
        buffer.write(text.encode("utf-8", "surrogateescape"))
        buffer.flush()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size  # noqa: PTH116 - pathlib costs import time
    except OSError:
        return 0


def _receive_file(server: Channel, path: str) -> None:
    """FILE_CHUNKs up to END into ``<path>_icetmp``, then renamed to *path*."""
    temporary = path + "_icetmp"
    try:
        fd = os.open(temporary, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o666)
    except OSError as exc:
        raise ClusterError(31, f"can't create {temporary}: {exc}") from None
    try:
        while True:
            msg = server.receive(CHUNK_TIMEOUT)
            if isinstance(msg, End):
                break
            if not isinstance(msg, FileChunk):
                _unexpected()
            view = memoryview(msg.data)
            while view:
                view = view[os.write(fd, view) :]
        os.close(fd)
        fd = -1
        os.rename(temporary, path)  # noqa: PTH104 - pathlib costs import time
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)  # noqa: PTH108 - pathlib costs import time
        raise


def _unexpected() -> NoReturn:
    raise ClusterError(20, "unexpected message")


def _send_ticket(server: Channel, ticket: JobTicket) -> None:
    """Send *ticket* to the compile server; with a job key, seal the channel from here.

    Issue 14 item 4: our daemon passed the job key (``secret``) beside the
    ticket when the scheduler sealed the job.  We send a fresh salt instead
    of the key, and both sides derive the channel's keys from both.  The
    cipher library is imported only here, with a key in hand (the light path
    never pays for it).
    """
    if not ticket.secret:
        server.send(ticket)
        return
    from iceserv.protocol.sealing import (  # noqa: PLC0415 - loads the cipher library
        SALT_BYTES,
        Opener,
        Sealer,
        channel_keys,
    )

    try:
        job = bytes.fromhex(ticket.secret)
        salt = os.urandom(SALT_BYTES)
        ours, theirs = channel_keys(job, salt)
    except (ValueError, ProtocolError):
        raise ClusterError(9, "malformed job key from the local daemon") from None
    server.send(JobTicket(job_id=ticket.job_id, ticket=ticket.ticket, secret=salt.hex()))
    server.conn.seal_output(Sealer(ours))
    server.conn.open_input(Opener(theirs), clear_refusal=True)
