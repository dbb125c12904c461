"""``iceserv selftest``: talk to a real icecream 1.4 scheduler through iceserv's codec.

It checks the codec against the real thing on the user's machine: it starts
the real ``icecc-scheduler`` on loopback (a free port, its own net name),
then, using only :mod:`iceserv.protocol` for the bytes:

1. broadcasts-equivalent discovery: a 1-byte request to the UDP port, and
   decodes the reply (version, start time, net name);
2. connects to the binary port as a daemon: the 8-byte handshake, LOGIN and
   STATS, and reads the scheduler's CS_CONF;
3. opens the telnet port, reads the banner and runs ``listcs``, where our host
   must appear.

It prints a transcript and returns 0 only if every step succeeded.  The real
scheduler stops accepting for about a second after each accept and only wakes
up on activity (reference §7.9), so the telnet step pokes it with STATS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Final, TextIO

from iceserv.errors import IceservError
from iceserv.protocol import NEED_DATA, ConfCS, Connection, Handshake, Login, Stats
from iceserv.protocol.discovery import decode_reply, encode_request

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

__all__ = ["SelftestError", "register", "run"]

NODE_NAME: Final = "iceserv-selftest"
_STEP_TIMEOUT: Final = 10.0


class SelftestError(IceservError, RuntimeError):
    """A selftest step failed; the message says which and why."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``selftest`` sub-command."""
    parser = subparsers.add_parser(
        "selftest", help="talk to a real icecc-scheduler through iceserv's protocol codec"
    )
    parser.add_argument(
        "--scheduler-binary",
        default=shutil.which("icecc-scheduler") or "/usr/sbin/icecc-scheduler",
        help="the real icecream scheduler to start (default: %(default)s)",
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        run(args.scheduler_binary, sys.stdout)
    except SelftestError as exc:
        sys.stderr.write(f"selftest FAILED: {exc}\n")
        return 1
    sys.stdout.write("selftest passed\n")
    return 0


def _free_port() -> int:
    """Return a port free for both TCP (port and port + 1) and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        try:
            for kind, p in (
                (socket.SOCK_STREAM, port),
                (socket.SOCK_STREAM, port + 1),
                (socket.SOCK_DGRAM, port),
            ):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    msg = "no free port pair on 127.0.0.1"
    raise SelftestError(msg)


@contextlib.contextmanager
def _real_scheduler(binary: str, port: int, netname: str) -> Iterator[subprocess.Popen[bytes]]:
    if not os.access(binary, os.X_OK):
        msg = f"{binary} not found: run ./bin/setup (Debian package icecc)"
        raise SelftestError(msg)
    env = dict(os.environ, ICECC_TESTS="1")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv of a known binary
            [binary, "-p", str(port), "-n", netname, "-vv"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            _wait_listening(port, proc)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _STEP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"icecc-scheduler exited with status {proc.returncode}"
            raise SelftestError(msg)
        # UDP needs no accept(), so probing it does not trip the delayed-accept quirk.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            s.sendto(encode_request(), ("127.0.0.1", port))
            with contextlib.suppress(OSError):
                s.recvfrom(512)
                return
    msg = "icecc-scheduler did not start listening"
    raise SelftestError(msg)


def _discover(port: int, out: TextIO) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(_STEP_TIMEOUT)
        s.sendto(encode_request(), ("127.0.0.1", port))
        data, origin = s.recvfrom(512)
    info = decode_reply(data)
    if info is None:
        msg = f"undecodable discovery reply of {len(data)} bytes"
        raise SelftestError(msg)
    out.write(
        f"discovery: {len(data)}-byte reply from {origin[0]}:{origin[1]}: scheduler protocol "
        f"{info.version}, net name {info.netname!r}, started at {info.start_time}\n"
    )


class _DaemonLink:
    """Our side of a daemon's connection to the scheduler, with blocking reads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=_STEP_TIMEOUT)
        self.conn = Connection()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def next_event(self) -> object:
        while True:
            self.flush()
            event = self.conn.next_event()
            if event is not NEED_DATA:
                self.flush()
                return event
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                msg = "the scheduler did not answer in time"
                raise SelftestError(msg) from None
            self.conn.receive_data(data)


def _login(link: _DaemonLink, out: TextIO) -> None:
    link.flush()
    event = link.next_event()
    if not isinstance(event, Handshake):
        msg = f"expected the version handshake, got {event!r}"
        raise SelftestError(msg)
    out.write(f"handshake: scheduler announced {event.peer_version}, negotiated {event.protocol}\n")
    login = Login(
        port=0,
        max_kids=2,
        nodename=NODE_NAME,
        host_platform=os.uname().machine,
        chroot_possible=False,
        noremote=True,
        supported_features=3,
    )
    link.conn.send(login)
    link.conn.send(Stats(load=250, load_avg1=500, load_avg5=400, load_avg10=300, free_mem=2048))
    event = link.next_event()
    if not isinstance(event, ConfCS):
        msg = f"expected CS_CONF after LOGIN, got {event!r}"
        raise SelftestError(msg)
    out.write(f"login: sent {login!r}\nlogin: scheduler answered {event!r}\n")


def _telnet(port: int, link: _DaemonLink, out: TextIO) -> list[str]:
    with socket.create_connection(("127.0.0.1", port + 1), timeout=1.0) as tel:
        buf = b""
        deadline = time.monotonic() + _STEP_TIMEOUT * 4
        sent = False
        while time.monotonic() < deadline:
            try:
                chunk = tel.recv(65536)
            except TimeoutError:
                # Wake the scheduler's main loop so it accepts us (reference §7.9).
                link.conn.send(
                    Stats(load=250, load_avg1=500, load_avg5=400, load_avg10=300, free_mem=2048)
                )
                link.flush()
                continue
            if not chunk:
                break
            buf += chunk
            if not sent and b"200 Use 'help'" in buf:
                tel.sendall(b"listcs\r\n")
                sent = True
            if sent and buf.endswith(b"200 done\n"):
                lines = buf.decode(errors="replace").splitlines()
                out.writelines(f"telnet: {line}\n" for line in lines)
                return lines
    msg = "the scheduler's telnet interface did not answer listcs"
    raise SelftestError(msg)


def run(binary: str, out: TextIO) -> list[str]:
    """Run every step against a fresh real scheduler; return the telnet lines seen."""
    port = _free_port()
    netname = f"ISELF{os.getpid()}"
    out.write(f"starting {binary} on 127.0.0.1:{port} (net name {netname})\n")
    with _real_scheduler(binary, port, netname):
        _discover(port, out)
        link = _DaemonLink(port)
        try:
            _login(link, out)
            time.sleep(1.1)  # the real scheduler ignores new connections for ~1 s
            lines = _telnet(port, link, out)
        finally:
            link.sock.close()
    if not any(line.startswith(f" {NODE_NAME} (127.0.0.1:0)") for line in lines):
        msg = f"{NODE_NAME} is missing from the scheduler's listcs"
        raise SelftestError(msg)
    return lines
