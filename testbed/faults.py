"""Faults to inject into a namespace-bed cluster, and the probes that tell whether it recovered.

Owns the pieces ``tests/integration/test_faults.py`` builds its cases from:

* what a fault does: ``kill`` (SIGKILL and reap), ``set_link`` (a host's
  ``eth0`` down or up inside its namespace: the cable pulled, nothing told),
  ``tmpfs`` (a small RAM disk mounted for the duration, e.g. as a daemon's
  ``-b`` env directory), ``truncated_copy``/``flipped_copy`` (broken
  environment tarballs) and ``crashing_env`` (an environment whose ``gcc``
  is a tiny static wrapper that dies of SIGSEGV for one source file and runs
  the real compiler for every other);
* when to strike: ``jobs_running_on`` (jobs the monitor saw begin on a node
  and not end), ``client_connections`` (the ``icecc`` processes of a host
  with an established TCP connection to a compile server: local port, bytes
  not yet acknowledged) and ``children`` (e.g. a client's preprocessor);
* how things are afterwards: ``telnet_listcs`` (the ``listcs`` of any
  scheduler, ours included, from inside its namespace).

Restarting a daemon or the scheduler is ``Cluster.restart_daemon`` and
``Cluster.restart_scheduler``.  Every wait is bounded.  Like the rest of the
bed it neither imports iceserv nor decides what a test expects; the mount it
makes is undone when its ``with`` block ends, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from testbed.errors import TestbedError, WaitTimeoutError
from testbed.netns import ip_program, netns_pids
from testbed.real import ListedHost, parse_listcs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from testbed.hosts import Host
    from testbed.monitor import SchedulerMonitor
    from testbed.netns import NetnsHost

_TELNET_TIMEOUT: Final = 10.0
_KILL_TIMEOUT: Final = 10.0
_CMD_TIMEOUT: Final = 20.0
_TCP_ESTABLISHED: Final = "01"
#: The wrapper's C source; CRASH_ON is a C string literal such as "\"lib/a.c\"".
_WRAPPER_SOURCE: Final = r"""
/* /usr/bin/gcc of a test environment (testbed/faults.py, crashing_env): reads the
 * preprocessed source from stdin; if its first line (or, for iceserv's reproducible jobs,
 * which name the source file instead, an argument) names CRASH_ON, dies of SIGSEGV,
 * else runs the real gcc (gcc.real) on the same input and arguments. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char path[] = "/tmp/crashing-gcc-XXXXXX";
    char head[4096], buf[65536];
    size_t kept = 0;
    ssize_t got;
    int fd = mkstemp(path);
    /* CRASH_ON is the quoted name ("lib/x.c"): an argument ending in the name inside counts. */
    size_t name_len = strlen(CRASH_ON) - 2;
    for (int i = 1; i < argc; i++) {
        size_t len = strlen(argv[i]);
        if (len >= name_len && strncmp(argv[i] + len - name_len, CRASH_ON + 1, name_len) == 0)
            raise(SIGSEGV);
    }
    if (fd < 0)
        return 100;
    unlink(path);
    while ((got = read(0, buf, sizeof buf)) > 0) {
        size_t take = sizeof head - 1 - kept;
        if ((size_t)got < take)
            take = (size_t)got;
        memcpy(head + kept, buf, take);
        kept += take;
        for (ssize_t off = 0; off < got;) {
            ssize_t put = write(fd, buf + off, (size_t)(got - off));
            if (put < 0)
                return 100;
            off += put;
        }
    }
    head[kept] = 0;
    char *end = strchr(head, '\n');
    if (end != NULL)
        *end = 0;
    if (strstr(head, CRASH_ON) != NULL)
        raise(SIGSEGV);
    if (lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) != 0)
        return 100;
    close(fd);
    argv[0] = "/usr/bin/gcc";
    execv("/usr/bin/gcc.real", argv);
    return 127;
}
"""


def kill(proc: subprocess.Popen[bytes] | None) -> int | None:
    """SIGKILL ``proc`` (only it: its children live on, as after a crash) and reap it."""
    if proc is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(_KILL_TIMEOUT)


def set_link(host: NetnsHost, *, up: bool) -> None:
    """Set ``eth0`` of ``host`` up or down inside its namespace (its end of the veth pair)."""
    state = "up" if up else "down"
    subprocess.run([ip_program(), "-n", host.name, "link", "set", "eth0", state],
                   check=True, capture_output=True, timeout=_CMD_TIMEOUT)  # fmt: skip


@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    """Mount a ``size_mib`` MiB tmpfs on ``path`` (created) for the body; unmount after it.

    Programs started in a private mount namespace while it is mounted (an
    ``IdleCpuHost``) keep their copy until they exit: stop them first.
    """
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs",
                    str(path)], check=True, capture_output=True, timeout=_CMD_TIMEOUT)  # fmt: skip
    try:
        yield path
    finally:
        done = subprocess.run(["umount", str(path)], check=False, capture_output=True,
                              timeout=_CMD_TIMEOUT)  # fmt: skip
        if done.returncode != 0:  # still busy: detach it now, the kernel frees it when unused
            subprocess.run(["umount", "--lazy", str(path)], check=True, capture_output=True,
                           timeout=_CMD_TIMEOUT)  # fmt: skip


def telnet_listcs(host: Host, address: tuple[str, int],
                  timeout: float = _TELNET_TIMEOUT) -> list[ListedHost]:  # fmt: skip
    """Run ``listcs`` on the telnet port ``address`` (IPv4 or IPv6) of a scheduler on ``host``."""
    sock = host.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        reader = _LineReader(sock, time.monotonic() + timeout)
        reader.until(lambda line: line.startswith("200 "))  # the two-line greeting
        sock.sendall(b"listcs\n")
        lines = reader.until(lambda line: line == "200 done")
        with contextlib.suppress(OSError):
            sock.sendall(b"quit\n")
    finally:
        sock.close()
    return parse_listcs(lines[:-1])


class _LineReader:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""

    def until(self, last: Callable[[str], bool]) -> list[str]:
        """Lines up to and including the first for which ``last(line)`` is true."""
        lines: list[str] = []
        while True:
            while b"\n" in self.buffer:
                raw, _, self.buffer = self.buffer.partition(b"\n")
                lines.append(raw.decode(errors="replace").rstrip("\r"))
                if last(lines[-1]):
                    return lines
            left = self.deadline - time.monotonic()
            if left <= 0:
                msg = f"telnet: no complete answer, got {lines!r}"
                raise WaitTimeoutError(msg)
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                msg = f"telnet session closed by the scheduler after {lines!r}"
                raise ConnectionError(msg)
            self.buffer += chunk


def jobs_running_on(monitor: SchedulerMonitor, name: str, since: int = 0) -> set[int]:
    """Ids of the jobs the monitor saw begin on node ``name`` after ``since`` and not finish."""
    events = monitor.snapshot()[since:]
    ids = {node: host_id for host_id, node in monitor.hosts().items()}
    host_id = ids.get(name)
    begun = {e.job_id for e in events if e.kind == "MON_JOB_BEGIN" and e.host_id == host_id}
    done = {e.job_id for e in events if e.kind == "MON_JOB_DONE"}
    return {job_id for job_id in begun - done if job_id is not None}


@dataclass(frozen=True)
class ClientConnection:
    """An established TCP connection of a process: its local port, the bytes not yet acked."""

    pid: int
    port: int
    unacked: int


def client_connections(host: NetnsHost, server: tuple[str, int],
                       marker: str = "icecc") -> list[ClientConnection]:  # fmt: skip
    """The established TCP connections to ``server`` (ip, port) of the processes on ``host``
    whose command line (program or script) contains ``marker``.
    """
    found = []
    for pid in netns_pids(host.name):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(marker.encode() in arg for arg in argv[:2]):
            continue
        found += [ClientConnection(pid, port, unacked)
                  for port, peer, unacked in _established(pid) if peer == server]  # fmt: skip
    return found


def children(host: NetnsHost, pid: int) -> list[int]:
    """The processes on ``host`` whose parent is ``pid``."""
    found = []
    for candidate in netns_pids(host.name):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{candidate}/stat").read_text()
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(candidate)
    return found


def _established(pid: int) -> list[tuple[int, tuple[str, int], int]]:
    """(local port, (remote ip, remote port), send queue) of ``pid``'s established sockets."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = str(fd.readlink())
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    rows = []
    for table in ("tcp", "tcp6"):  # our programs listen dual-stack: IPv4 peers show in tcp6
        with contextlib.suppress(OSError):
            rows += Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
    found = []
    for row in (line.split() for line in rows):
        if len(row) > 9 and row[3] == _TCP_ESTABLISHED and row[9] in inodes:
            local_port = int(row[1].rsplit(":", 1)[1], 16)
            send_queue = int(row[4].split(":")[0], 16)
            found.append((local_port, _address(row[2]), send_queue))
    return found


def _address(hex_address: str) -> tuple[str, int]:
    """``0100007F:1F90`` (little-endian IPv4 as /proc/net/tcp shows it) -> ("127.0.0.1", 8080).

    An IPv6 address of /proc/net/tcp6 (four little-endian 32-bit words) is decoded too; an
    IPv4-mapped one (``::ffff:a.b.c.d``, an IPv4 peer of a dual-stack socket) as IPv4.
    """
    ip, port = hex_address.split(":")
    if len(ip) == 8:
        return socket.inet_ntoa(int(ip, 16).to_bytes(4, "little")), int(port, 16)
    raw = b"".join(int(ip[i : i + 8], 16).to_bytes(4, "little") for i in range(0, 32, 8))
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntoa(raw[12:]), int(port, 16)
    return socket.inet_ntop(socket.AF_INET6, raw), int(port, 16)


def truncated_copy(source: Path, dest: Path, size: int) -> Path:
    """Write the first ``size`` bytes of ``source`` to ``dest`` (a tarball cut short)."""
    with source.open("rb") as stream:
        dest.write_bytes(stream.read(size))
    return dest


def flipped_copy(source: Path, dest: Path, offset: int, count: int = 64) -> Path:
    """Copy ``source`` to ``dest`` with ``count`` bytes from ``offset`` on inverted."""
    data = bytearray(source.read_bytes())
    if offset + count > len(data):
        msg = f"{source} has {len(data)} bytes, fewer than {offset + count}"
        raise TestbedError(msg)
    for index in range(offset, offset + count):
        data[index] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


def crashing_env(tarball: Path, dest: Path, crash_on: str) -> Path:
    """Repack the gcc environment ``tarball`` as ``dest`` (a ``.tar.gz``) with a crashing gcc.

    Its ``usr/bin/gcc`` becomes a static wrapper that kills itself with
    SIGSEGV when the preprocessed source it reads names ``crash_on`` in its
    first line (``# 0 "lib/x.c"``) and otherwise runs the original, now
    ``usr/bin/gcc.real``, on the same input: every other job compiles as it
    would in the original environment.
    """
    with tempfile.TemporaryDirectory(prefix="crashing-env-") as tmp:
        source = Path(tmp) / "wrapper.c"
        source.write_text(_WRAPPER_SOURCE)
        wrapper = Path(tmp) / "gcc"
        literal = json.dumps(f'"{crash_on}"')  # a C string literal for ASCII text
        subprocess.run(["gcc", "-O2", "-static", f"-DCRASH_ON={literal}", "-o", str(wrapper),
                        str(source)], check=True, capture_output=True,
                       timeout=_CMD_TIMEOUT)  # fmt: skip
        with tarfile.open(tarball) as original, tarfile.open(dest, "w:gz", compresslevel=1) as out:
            seen = False
            for member in original.getmembers():
                data = original.extractfile(member) if member.isfile() else None
                if member.name.lstrip("./") == "usr/bin/gcc":
                    seen = True
                    member.name = "usr/bin/gcc.real"
                    out.addfile(member, data)
                    info = out.gettarinfo(str(wrapper), arcname="usr/bin/gcc")
                    info.uid = info.gid = 0
                    info.uname = info.gname = "root"
                    with wrapper.open("rb") as stream:
                        out.addfile(info, stream)
                    continue
                out.addfile(member, data)
    if not seen:
        msg = f"{tarball} has no usr/bin/gcc"
        raise TestbedError(msg)
    return dest
