"""The real icecream 1.4 scheduler as a test fixture, and what the real programs do.

Owns ``RealScheduler`` (``/usr/sbin/icecc-scheduler``): start it on a
``hosts.Host`` (loopback by default, or a ``netns.NetnsHost``), wait until it
really serves, talk to its telnet port (``telnet``, ``listcs``), wake its main
loop (``poke``, ``awake``) and stop it with bounded waits.  ``RealDaemon`` is
in ``daemon.py``, ``RealSundae`` in ``sundae.py``; the observations below
cover all of them.  It must not depend on iceserv: the bed has to work before
any of iceserv exists.

What the real programs do (Debian icecc 1.4-1, observed on this test bed):

* Command lines that work (as root, ``ICECC_TESTS=1`` in the environment)::

      icecc-scheduler -p P -n NET -vvv -l DIR/scheduler.log -i lo
      iceccd -N node -p Q -b DIR/envs -m 2 -s 127.0.0.1:P -vvv -l DIR/iceccd.log
             (env ICECC_TEST_SOCKET=DIR/iceccd.socket)

  Both drop to user ``icecc`` (same pid, no fork without ``-d``), so the log
  file, the socket and the ``-b`` directory must be in a directory that user
  can write; pytest's ``tmp_path`` is not (its parents are mode 0700).
* ``ICECC_TESTS`` (any value) does three things in 1.4: broadcasts
  (discovery, scheduler announcements, the daemon's netname probe) go to
  127.0.0.1 only; a daemon that lost its scheduler reconnects after 3 s instead
  of 20..51 s; and a daemon whose node name is ``remoteice2`` claims no xz/zstd
  environment support (upstream's own test trick: never use that name).  The
  bed sets it on loopback and leaves it unset in namespaces, where discovery
  must cross the bridge (so reconnects there are slow).
* ``-i lo`` is right for the scheduler on loopback: it binds TCP P, TCP P+1
  and UDP P to 127.0.0.1 only (nothing listens on the machine's real
  interfaces), and with ``ICECC_TESTS=1`` its own announcement, sent to
  127.0.0.1, still reaches it ("Received scheduler announcement from
  127.0.0.1").  In a namespace the scheduler runs without ``-i``: with ``-i eth0``
  its UDP socket is bound to the host's unicast address and a discovery
  datagram broadcast to 10.x.y.255 from another host got no answer (sent
  unicast it did), so daemons elsewhere could not discover it.
* ``iceccd -i lo`` does **not** start (the reference's unverified item is
  right in substance): it binds 127.0.0.1:Q for "lo", then tries 127.0.0.1:Q
  again for the always-added loopback listener, logs "Failed to bind address to
  TCP listen socket(Error: Address already in use)" five times two seconds
  apart, and exits with status 1 after about 10 s.  During those 10 s the first
  listener accepts connections, so a port check alone would call it ready; the
  Unix socket is never created, and SIGTERM is ignored until the retries are
  over (it then exits 1 all the same).  Without ``-i`` the daemon binds 0.0.0.0:Q.
* The scheduler's delayed accept (reference 7.9) is real: after a daemon's
  connection was accepted, a new telnet connection got its greeting only after
  35 s.  Any datagram to its UDP port wakes the main loop (the UDP socket is
  always polled), and a discovery byte (43) is harmless: the scheduler just
  answers it.  ``RealScheduler.poke`` sends one; ``awake()`` keeps poking from
  a thread; with that the same greeting arrived after 0.5 s.  The telnet
  session ``RealScheduler`` keeps open is also always polled, but a datagram
  needs no session and also works before the telnet port answers.
* A daemon given ``-s`` needs two turns of its main loop, which waits 3 s
  when idle, so it appears in ``listcs`` about 6 s after start.  Any client
  connection on its Unix socket wakes the loop; ``RealDaemon.poke`` connects,
  does the 8-byte handshake and sends END (a bare connect-and-close makes the
  daemon log "Broken pipe"), which brings the login down to about 1.5 s.
* A fresh daemon is listed with ``load=1000`` until its first STATS.
* Some log lines are not flushed at once (the scheduler's "broadcast from
  ..." for a discovery request is written without ``endl``); they appear with
  the next flushed line, so tests should wait for log text, not read it once.

icecream-sundae is in ``sundae.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final, Self

from testbed.errors import TestbedError, WaitTimeoutError
from testbed.hosts import connect, free_scheduler_port
from testbed.procs import clean_env, listening_tcp_ports, require_program
from testbed.program import Program

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

SCHEDULER_PROGRAM: Final = "/usr/sbin/icecc-scheduler"
DEFAULT_SCHEDULER_PORT: Final = 8765
PROTOCOL_VERSION: Final = 43
TELNET_IDLE_LIMIT: Final = 36.0  # the scheduler drops a telnet session idle this long
_TELNET_REUSE_LIMIT: Final = TELNET_IDLE_LIMIT - 6.0  # reconnect before it could be dropped
_AWAKE_MAX_SECONDS: Final = 600.0
_LISTCS_RE: Final = re.compile(
    r"^ (?P<name>\S+) \((?:\[(?P<ip6>[^\]]+)\]|(?P<ip>[^:]+)):(?P<port>\d+)\)"
    r" \[(?P<platform>[^\]]*)\]"
    r" speed=(?P<speed>[-\d.]+) jobs=(?P<jobs>\d+)/(?P<max_jobs>\d+) load=(?P<load>-?\d+)"
    r"(?P<extra>.*)$"
)


@dataclass(frozen=True)
class ListedHost:
    """One daemon as the scheduler's telnet ``listcs`` shows it."""

    name: str
    ip: str
    port: int
    platform: str
    speed: float
    jobs: int
    max_jobs: int
    load: int
    extra: str  # e.g. " busy installing since 3 s", else ""
    job_lines: tuple[str, ...]  # the indented job dumps that followed the host line


def parse_listcs(lines: Sequence[str]) -> list[ListedHost]:
    """Parse ``listcs`` output lines (without ``200 done``) into ``ListedHost``s."""
    hosts: list[ListedHost] = []
    pending: dict[str, str] | None = None
    jobs: list[str] = []
    for line in lines:
        match = _LISTCS_RE.match(line)
        if match:
            if pending is not None:
                hosts.append(_listed(pending, jobs))
            pending, jobs = match.groupdict(), []
        elif line.startswith("   ") and pending is not None:
            jobs.append(line.strip())
        else:
            msg = f"unexpected listcs line {line!r}"
            raise TestbedError(msg)
    if pending is not None:
        hosts.append(_listed(pending, jobs))
    return hosts


def _listed(fields: dict[str, str], jobs: list[str]) -> ListedHost:
    return ListedHost(
        name=fields["name"],
        ip=fields["ip"] or fields["ip6"],  # "[v6]:port" from iceserv's listcs
        port=int(fields["port"]),
        platform=fields["platform"],
        speed=float(fields["speed"]),
        jobs=int(fields["jobs"]),
        max_jobs=int(fields["max_jobs"]),
        load=int(fields["load"]),
        extra=fields["extra"],
        job_lines=tuple(jobs),
    )


def _unique_netname() -> str:
    return f"TB{os.getpid()}X{secrets.token_hex(2).upper()}"


@dataclass(eq=False)
class RealScheduler(Program):
    """A real ``icecc-scheduler`` run as a subprocess on ``host``.

    Options (all optional): ``port`` (None: a free port on loopback, 8765 in a
    namespace, where discovery needs the default), ``netname`` (None: unique),
    ``interface`` ("auto": ``lo`` on loopback, none in a namespace; None: no
    ``-i``), ``icecc_tests`` (None: ``ICECC_TESTS=1`` on loopback only, so
    namespace hosts broadcast on their bridge), ``extra_args``, ``workdir``
    (None: a fresh one, removed by ``stop`` unless ``keep_workdir``).

    ``start`` (or ``with``) returns once the binary port listens and the
    telnet greeting was read on the session this object keeps for ``telnet``.
    """

    program: ClassVar[str] = "icecc-scheduler"
    log_name: ClassVar[str] = "scheduler.log"
    out_name: ClassVar[str | None] = "scheduler.out"

    port: int | None = None
    netname: str | None = None
    interface: str | None = "auto"
    icecc_tests: bool | None = None
    extra_args: Sequence[str] = ()
    greeting: list[str] = field(default_factory=list, init=False)
    _telnet: socket.socket | None = field(default=None, init=False, repr=False)
    _telnet_buffer: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _telnet_used: float = field(default=0.0, init=False, repr=False)
    _poke_sock: socket.socket | None = field(default=None, init=False, repr=False)
    _poke_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def telnet_port(self) -> int:
        """The telnet port (binary port + 1)."""
        return self._port + 1

    @property
    def address(self) -> str:
        """``ip:port`` as a daemon's ``-s`` wants it."""
        return f"{self.host.ip}:{self._port}"

    @property
    def _port(self) -> int:
        if self.port is None:
            msg = "scheduler not started"
            raise TestbedError(msg)
        return self.port

    @property
    def _local_ip(self) -> str:
        """Where to reach the scheduler from inside its own host."""
        return "127.0.0.1" if self.interface in (None, "auto", "lo") else self.host.ip

    def start(self) -> Self:
        """Start the scheduler and wait until it serves both TCP ports."""
        program = require_program(SCHEDULER_PROGRAM)
        self._prepare("sched")
        if self.port is None:
            self.port = (
                free_scheduler_port(self.host) if self.host.is_loopback else DEFAULT_SCHEDULER_PORT
            )
        self.netname = self.netname or _unique_netname()
        interface = self.interface
        if interface == "auto":
            interface = "lo" if self.host.is_loopback else None
        argv = [program, "-p", str(self.port), "-n", self.netname, "-vvv", "-l", str(self.log_path)]
        argv += ["-i", interface] if interface else []
        argv += list(self.extra_args)
        tests = self.host.is_loopback if self.icecc_tests is None else self.icecc_tests
        env = clean_env({"ICECC_TESTS": "1"} if tests else {})
        self._launch(argv, env)
        with self._stopped_on_failure():
            self._wait_ready(
                lambda: self._port in listening_tcp_ports(self._pid),
                f"icecc-scheduler to listen on port {self.port}",
            )
            self._open_telnet(self.start_timeout)
        return self

    # --- waking the main loop ---------------------------------------------------------

    def poke(self, timeout: float = 1.0) -> bool:
        """Wake the scheduler's main loop with a discovery datagram; True if it answered.

        The answer proves the loop ran.  Once a second has passed since the
        last accept, that run re-arms the listening sockets (reference 7.9).
        """
        with self._poke_lock:
            if self._poke_sock is None:
                self._poke_sock = self.host.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock = self._poke_sock
            sock.settimeout(0.0)  # non-blocking
            with contextlib.suppress(BlockingIOError):
                for _ in range(1000):
                    sock.recv(512)  # drop late answers to earlier pokes
            sock.settimeout(timeout)
            sock.sendto(bytes([PROTOCOL_VERSION]), (self._local_ip, self._port))
            try:
                sock.recv(512)
            except TimeoutError:
                return False
            return True

    @contextlib.contextmanager
    def awake(self, interval: float = 0.3) -> Iterator[None]:
        """Keep poking from a thread while the body runs, so new connections are accepted.

        Use around code that opens binary connections to this scheduler and
        blocks on them (for example a handshake right after a daemon logged in).
        """
        stop = threading.Event()

        def loop() -> None:
            deadline = time.monotonic() + _AWAKE_MAX_SECONDS
            while not stop.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    self.poke(timeout=interval)
                stop.wait(interval)

        thread = threading.Thread(target=loop, name="scheduler-awake", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5.0)

    # --- telnet ----------------------------------------------------------------------------

    def _open_telnet(self, timeout: float) -> socket.socket:
        self._close_telnet()
        sock = connect(self.host, (self._local_ip, self.telnet_port), timeout)
        self._telnet = sock
        self._telnet_buffer.clear()
        lines = self._read_lines(lambda line: line.startswith("200 "), timeout)
        if not lines[0].startswith("200-ICECC "):
            msg = f"unexpected telnet greeting {lines!r}"
            raise TestbedError(msg)
        self.greeting = lines
        return sock

    def _close_telnet(self) -> None:
        if self._telnet is not None:
            self._telnet.close()
            self._telnet = None

    def _read_lines(self, last: Callable[[str], bool], timeout: float) -> list[str]:
        """Read lines from the telnet session until one satisfies ``last`` (included)."""
        sock = self._telnet
        if sock is None:
            msg = "no telnet session"
            raise TestbedError(msg)
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._telnet_buffer:
                raw, _, rest = bytes(self._telnet_buffer).partition(b"\n")
                self._telnet_buffer[:] = rest
                line = raw.decode(errors="replace").rstrip("\r")
                lines.append(line)
                if last(line):
                    self._telnet_used = time.monotonic()
                    return lines
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                msg = f"telnet: no complete answer after {timeout:g} s, got {lines!r}\n"
                raise WaitTimeoutError(msg + self.log_tail())
            sock.settimeout(min(0.5, remaining))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                self.check_alive()
                self.poke(timeout=0.2)  # a pending accept may be parked (reference 7.9)
                continue
            if not data:
                msg = f"telnet session closed by the scheduler after {lines!r}"
                raise ConnectionError(msg)
            self._telnet_buffer += data

    def telnet(self, command: str, timeout: float = 10.0) -> list[str]:
        """Send one telnet command; return its output lines without the final ``200 done``.

        Uses the session opened at start, reconnecting if the scheduler may
        have dropped it for idleness (36 s) or did.  For ``quit``/``exit`` the
        result ends before ``200 Good Bye!`` and the session is closed.
        """
        if "\n" in command or "\r" in command:
            msg = "one command per call"
            raise ValueError(msg)
        quitting = command.strip().lower() in ("quit", "exit")
        for attempt in (1, 2):
            sock = self._telnet
            if sock is None or time.monotonic() - self._telnet_used > _TELNET_REUSE_LIMIT:
                sock = self._open_telnet(timeout)
            try:
                sock.sendall(command.encode() + b"\n")
                lines = self._read_lines(
                    lambda line: line in ("200 done", "200 Good Bye!"), timeout
                )
            except ConnectionError:
                self._close_telnet()
                if attempt == 2:
                    raise
                continue
            if lines[-1] == "200 Good Bye!":
                self._close_telnet()
                if not quitting:
                    continue  # the session had timed out just now; ask again on a new one
            return lines[:-1]
        msg = f"telnet command {command!r} got no answer"
        raise TestbedError(msg)

    def listcs(self) -> list[ListedHost]:
        """The daemons the scheduler knows, parsed from telnet ``listcs``."""
        return parse_listcs(self.telnet("listcs"))

    def host_names(self) -> list[str]:
        """Node names of the logged-in daemons, in login order."""
        return [host.name for host in self.listcs()]

    # --- lifetime ------------------------------------------------------------------------

    def stop(self, grace: float = 5.0) -> int | None:
        """Close the telnet session, then stop the scheduler as ``Program.stop`` does."""
        self._close_telnet()
        with self._poke_lock:
            if self._poke_sock is not None:
                self._poke_sock.close()
                self._poke_sock = None
        return self._stop(grace)
