"""Fakes that watch a compiler wrapper (ours or the real 1.4 ``icecc``) work.

* ``FakeDaemon``: a local iceccd on a Unix socket (``ICECC_TEST_SOCKET``)
  that records every message of every connection and answers as a daemon
  would: NATIVE_ENV or END for GET_NATIVE_ENV, the configured USE_CS for
  GET_CS, the go signal for JOB_LOCAL_BEGIN.
* ``FakeServer``: a compile server on TCP 127.0.0.1 that records TRANFER_ENV,
  VERIFY_ENV, COMPILE_FILE and the source, and answers with a configurable
  COMPILE_RESULT and object file (or misbehaves on purpose).
* ``FakeCompiler``: a directory of shell scripts named like compilers that
  record their argument vectors (and ``_ICECC_SAFEGUARD``), each call in a
  file of its own, and write the output file; ``-###``, ``-dumpmachine`` and
  ``-v`` are passed to the real one.

Both network fakes are built from ``iceserv.testing.BlockingChannel`` and
``iceserv.protocol``; every wait is bounded and ``close()`` joins the threads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from iceserv.protocol import (
    CompileFile,
    CompileResult,
    ConnectionClosed,
    End,
    EnvTransfer,
    GetCS,
    GetNativeEnv,
    JobLocalBegin,
    JobTicket,
    StatusText,
    UseCS,
    UseNativeEnv,
    VerifyEnv,
    VerifyEnvResult,
    records,
)
from iceserv.protocol.endpoint import iceserv_endpoint
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from iceserv.protocol import Message

TIMEOUT = 20.0

FAKE_CC = r"""#!/bin/sh
name=$(basename "$0")
case " $* " in
  *" -### "*|*" -dumpmachine "*|*" -v "*|*" --version "*) exec "/usr/bin/$name" "$@" ;;
esac
# One record file per call, numbered in arrival order: mkdir is atomic, so parallel
# copies (ICECC_REPEAT_RATE) never share a file and never take the same number.
n=0
while ! mkdir "$FAKE_CC_LOG/$n" 2>/dev/null; do n=$((n + 1)); done
{
  printf 'CALL %s %s\n' "$name" "${_ICECC_SAFEGUARD:-}"
  for a in "$@"; do printf 'ARG %s\n' "$a"; done
} > "$FAKE_CC_LOG/$n/call"
out=""; prev=""; pre=0
for a in "$@"; do
  [ "$prev" = "-o" ] && out="$a"
  [ "$a" = "-E" ] && pre=1
  prev="$a"
done
if [ "$pre" = 1 ]; then printf 'int preprocessed_by_fake;\n'; exit "${FAKE_CC_CPP_STATUS:-0}"; fi
[ -n "${FAKE_CC_SLEEP:-}" ] && sleep "$FAKE_CC_SLEEP"
[ -n "$out" ] && printf 'fake object of %s\n' "$name" > "$out"
exit "${FAKE_CC_STATUS:-0}"
"""
COMPILER_NAMES = ("gcc", "g++", "cc", "c++", "clang", "clang++", "gcc-12", "x86_64-linux-gnu-gcc")


@dataclass
class FakeCompiler:
    """Fake compilers in ``bin``; calls are appended to ``log``."""

    root: Path
    bin: Path = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.bin = self.root / "fakebin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "fakecc.calls"  # one numbered directory per call
        self.log.mkdir(exist_ok=True)
        for name in COMPILER_NAMES:
            script = self.bin / name
            script.write_text(FAKE_CC)
            script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def calls(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(compiler name, safeguard value, arguments) per call, in the order they started."""
        calls: list[tuple[str, str, list[str]]] = []
        numbers = sorted(int(entry.name) for entry in self.log.iterdir())
        for number in numbers:
            for line in (self.log / str(number) / "call").read_text().splitlines():
                kind, _, rest = line.partition(" ")
                if kind == "CALL":
                    name, _, guard = rest.partition(" ")
                    calls.append((name, guard, []))
                else:
                    calls[-1][2].append(rest)
        return [(name, guard, tuple(args)) for name, guard, args in calls]

    def reset(self) -> None:
        """Forget the calls so far."""
        shutil.rmtree(self.log, ignore_errors=True)
        self.log.mkdir()


_WAKE = b"\0testbed acceptor wake-up\0"


def _is_wake(sock: socket.socket) -> bool:
    """True if *sock* is close()'s wake-up connection (it sends _WAKE at once)."""
    sock.settimeout(5)
    try:
        return sock.recv(len(_WAKE), socket.MSG_PEEK | socket.MSG_WAITALL) == _WAKE
    except OSError:
        return False


class _Acceptor:
    """Accepts connections on a listening socket in a thread; one handler call each."""

    def __init__(self, listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
        self.listener = listener
        self._handle = handle
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._main = threading.Thread(target=self._loop, daemon=True)
        self._main.start()

    def _loop(self) -> None:
        self.listener.settimeout(TIMEOUT)
        while True:
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                if self._stop.is_set():
                    return
                continue
            except OSError:
                return
            # Once close() began, a client's connection may still be queued ahead of
            # the wake-up connection: it is served like any other, and only the
            # connection that says _WAKE ends the loop.
            if self._stop.is_set() and _is_wake(sock):
                sock.close()
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError, AssertionError, TimeoutError), sock:
            self._handle(sock)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError), socket.socket(self.listener.family) as wake:
            wake.settimeout(5)
            wake.connect(self.listener.getsockname())
            wake.sendall(_WAKE)
            self._main.join(timeout=5)  # with the wake-up connection still open to peek at
        self._main.join(timeout=5)  # when it could not connect
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT)


@dataclass
class FakeDaemon:
    """A local daemon on ``path``.

    ``use_cs`` answers GET_CS (None: close the connection instead);
    ``native`` is the NATIVE_ENV path (None: answer END); ``go`` False makes
    it close instead of sending the JOB_LOCAL_BEGIN go signal;
    ``reject_first`` closes the first connection at once, ``reject_all`` every one;
    ``silent`` never answers GET_CS (a job no host takes) and keeps the connection.
    ``endpoint`` also listens on the iceserv-only endpoint for ``path``
    (:mod:`iceserv.protocol.endpoint`), as our daemon does; ``ticket`` then
    goes just before USE_CS, to clients that came in there only.
    ``endpoint_connections`` counts those.
    """

    path: Path
    use_cs: UseCS | None = None
    native: str | None = None
    go: bool = True
    reject_first: bool = False
    reject_all: bool = False
    silent: bool = False
    endpoint: bool = False
    ticket: JobTicket | None = None
    connections: list[list[Message]] = field(default_factory=list)
    endpoint_connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _acceptor: _Acceptor | None = field(default=None, init=False)
    _endpoint: _Acceptor | None = field(default=None, init=False)

    def start(self) -> FakeDaemon:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(16)
        self._acceptor = _Acceptor(listener, self._handle)
        if self.endpoint:
            marked = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            marked.bind(iceserv_endpoint(str(self.path)))
            marked.listen(16)
            self._endpoint = _Acceptor(marked, lambda sock: self._handle(sock, iceserv=True))
        return self

    def _handle(self, sock: socket.socket, *, iceserv: bool = False) -> None:
        with self._lock:  # recorded on accept: a client may hang up before the handshake
            seen: list[Message] = []
            self.connections.append(seen)
            self.endpoint_connections += iceserv
            first = len(self.connections) == 1
        if self.reject_all or (first and self.reject_first):
            return
        channel = BlockingChannel(sock, timeout=TIMEOUT)
        while True:
            event = channel.receive()
            if isinstance(event, ConnectionClosed):
                return
            seen.append(event)  # type: ignore[arg-type]
            reply = self._reply(event)
            if reply is False:
                return
            if isinstance(event, GetCS) and isinstance(reply, UseCS):
                if iceserv and self.ticket is not None:
                    channel.send(records.replace(self.ticket, job_id=reply.job_id))
                # One USE_CS per requested copy (ICECC_REPEAT_RATE asks for three).
                for copy in range(event.count):
                    channel.send(records.replace(reply, job_id=reply.job_id + copy))
            elif reply is not None:
                channel.send(reply)

    def _reply(self, msg: object) -> Message | bool | None:
        if isinstance(msg, GetNativeEnv):
            return UseNativeEnv(self.native) if self.native else End()
        if isinstance(msg, GetCS):
            if self.silent:
                return None
            return self.use_cs if self.use_cs is not None else False
        if isinstance(msg, JobLocalBegin):
            return JobLocalBegin() if self.go else False
        return None

    def messages(self) -> list[list[Message]]:
        """Every connection's messages so far."""
        with self._lock:
            return [list(c) for c in self.connections]

    def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
        if self._endpoint is not None:
            self._endpoint.close()


@dataclass
class FakeServer:
    """A compile server on 127.0.0.1.

    ``mode``: "ok" (status ``status``, ``err``/``out`` texts, the object
    ``obj``), "oom" (status 1 + out of memory), "close" (hang up after the
    source), "garbage" (bytes that are no message), "status_text" (STATUS_TEXT
    then hang up), "verify_fail" (refuse the transferred environment),
    "refuse_ticket" (a JOB_TICKET is answered with STATUS_TEXT and the end,
    as our daemon refuses a replayed or altered one).  A JOB_TICKET is
    recorded as the job's ``ticket``.
    """

    mode: str = "ok"
    status: int = 0
    err: str = ""
    out: str = ""
    obj: bytes = b"object from the fake server\n"
    differ: bool = False  # each job id gets its own object (as a broken server would)
    dwo: bytes | None = None
    version: int = 43  # the protocol this server speaks
    jobs: list[dict[str, object]] = field(default_factory=list)
    port: int = 0
    _acceptor: _Acceptor | None = field(default=None, init=False)

    def start(self) -> FakeServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._acceptor = _Acceptor(listener, self._handle)
        return self

    def use_cs(self, *, got_env: bool = True, host: str = "localhost") -> UseCS:
        """The USE_CS that sends a client here."""
        return UseCS(job_id=42, port=self.port, hostname=host, host_platform="x86_64",
                     got_env=got_env, client_id=1)  # fmt: skip

    def _handle(self, sock: socket.socket) -> None:
        channel = BlockingChannel(sock, timeout=TIMEOUT, version=self.version)
        job: dict[str, object] = {"source": b""}
        self.jobs.append(job)
        while True:
            event = channel.receive()
            if isinstance(event, ConnectionClosed):
                return
            if isinstance(event, JobTicket):
                job["ticket"] = event
                if self.mode == "refuse_ticket":
                    channel.send(StatusText("job refused: replayed ticket"))
                    return
            elif isinstance(event, EnvTransfer):
                job["env_transfer"] = event
                job["tarball"], _ = channel.receive_file()
            elif isinstance(event, VerifyEnv):
                job["verify"] = event
                channel.send(VerifyEnvResult(ok=self.mode != "verify_fail"))
            elif isinstance(event, CompileFile):
                job["compile_file"] = event
                job["source"], _ = channel.receive_file()
                self._answer(channel, job)
                return

    def _answer(self, channel: BlockingChannel, job: dict[str, object]) -> None:
        if self.mode == "close":
            return
        if self.mode == "garbage":
            channel.sock.sendall(b"\x00\x00\x00\x08\x00\x00\x00\x41garbage!")
            return
        if self.mode == "status_text":
            channel.send(StatusText("compiler did not start"))
            return
        oom = self.mode == "oom"
        status = 1 if oom else self.status
        channel.send(
            CompileResult(
                err=self.err,
                out=self.out,
                status=status,
                was_out_of_memory=oom,
                have_dwo=self.dwo is not None,
            )
        )
        if not oom and self.status == 0:
            job_id = job["compile_file"].job_id  # type: ignore[attr-defined]
            channel.send_file(self.obj + (b"#%d" % job_id if self.differ else b""))
            if self.dwo is not None:
                channel.send_file(self.dwo)

    def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()


def write_launcher(path: Path, python: str) -> Path:
    """Our ``icecc`` launcher (``#!python -IS``), as ``iceserv install-launcher`` writes it."""
    from iceserv.client.launcher import default_paths, render  # noqa: PLC0415

    path.write_text(render(os.path.realpath(python), default_paths()))
    path.chmod(0o755)
    return path


def write_pip_script(path: Path, python: str) -> Path:
    """The console script pip writes for ``icecc`` (site, ``.pth`` files): the slow start."""
    path.write_text(
        f"#!{python}\nimport sys\nfrom iceserv.client.main import main\nsys.exit(main())\n"
    )
    path.chmod(0o755)
    return path


def fake_tarball(path: Path) -> Path:
    """A file ICECC_VERSION accepts (a regular ``.tar.gz`` of at least 500 bytes)."""
    path.write_bytes(os.urandom(600))
    return path
