"""Network-namespace test bed: N isolated hosts on one private bridge.

Owns ``NetnsBed`` (create, tear down), ``NetnsHost`` (one host of a bed, a
``hosts.Host``) and ``remove_stale_netns`` (leftovers of runs that died).

Layout of a bed named ``ictb<pid>-<token>-``::

    namespace ictb<pid>-<token>-br      bridge br0, ports v1..vN
    namespace ictb<pid>-<token>-h1      lo (up), eth0 = 10.a.b.1/24  <-> v1
    ...
    namespace ictb<pid>-<token>-hN      lo (up), eth0 = 10.a.b.N/24  <-> vN

Every link and address lives inside the bed's namespaces; the root namespace
gets nothing, so traffic between hosts (including broadcasts to 10.a.b.255)
never leaves the bed.  The creator's pid in the name lets
``remove_stale_netns`` (called whenever a bed is created) delete the
namespaces of runs that were killed before their teardown ran.

Teardown kills every process in the bed's namespaces (``ip netns pids``),
reaps the ones we started, closes the sockets we made in them and deletes the
namespaces, and it runs even when setup or the test failed.  This module must
not start icecream programs itself; ``real.py`` does that through a host.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

from testbed.errors import TestbedError
from testbed.procs import pid_alive, require_program
from testbed.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType

T = TypeVar("T")

NETNS_PREFIX: Final = "ictb"
_NAME_RE: Final = re.compile(rf"^{NETNS_PREFIX}(\d+)-")
_NETNS_DIR: Final = "/run/netns"
_CLONE_NEWNET: Final = 0x40000000
_MAX_HOSTS: Final = 250
_KILL_GRACE: Final = 3.0
_CMD_TIMEOUT: Final = 20.0


def ip_program() -> str:
    """Return the path of iproute2's ``ip``."""
    return require_program(shutil.which("ip") or "/usr/sbin/ip")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ip_program(), *args], capture_output=True, text=True, timeout=_CMD_TIMEOUT, check=check
    )


def list_netns() -> list[str]:
    """Return the names of all named network namespaces (``ip netns list``)."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    """Return the pids of the processes living in namespace ``netns``."""
    result = _ip("netns", "pids", netns, check=False)
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def kill_netns_processes(netns_names: Sequence[str], grace: float = _KILL_GRACE) -> None:
    """SIGTERM every process in these namespaces, then SIGKILL what survives ``grace`` s."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        pids = [pid for name in netns_names for pid in netns_pids(name)]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not any(netns_pids(name) for name in netns_names):
                return
            time.sleep(0.05)


def delete_netns(names: Sequence[str]) -> None:
    """Kill the processes in these namespaces and delete them (missing ones are ignored)."""
    existing = set(list_netns())
    names = [name for name in names if name in existing]
    kill_netns_processes(names)
    for name in names:
        _ip("netns", "del", name, check=False)


def remove_stale_netns() -> list[str]:
    """Delete test-bed namespaces whose creating process is dead; return their names."""
    stale = []
    for name in list_netns():
        match = _NAME_RE.match(name)
        if match and not pid_alive(int(match.group(1))):
            stale.append(name)
    delete_netns(stale)
    return stale


def enter_netns(netns: str) -> None:
    """Move the calling thread (only it) into namespace ``netns`` for the rest of its life.

    For a helper thread that keeps making sockets there (e.g. an attacker
    host's loops); ``run_in_netns`` is the one-shot form.
    """
    fd = os.open(f"{_NETNS_DIR}/{netns}", os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({netns}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def run_in_netns(netns: str, func: Callable[[], T], timeout: float = 10.0) -> T:
    """Run ``func`` on a helper thread that has entered namespace ``netns``; return its value.

    ``setns(CLONE_NEWNET)`` switches only the calling thread, so the test
    process stays in the root namespace while sockets created by ``func``
    belong to ``netns`` for their whole life.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            enter_netns(netns)
            outcome["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        msg = f"helper thread in namespace {netns} did not finish within {timeout} s"
        raise TestbedError(msg)
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


@dataclass(eq=False)
class NetnsHost:
    """One host of a ``NetnsBed``: its own namespace with ``lo`` and ``eth0``.

    Implements ``hosts.Host``.  ``name`` is the namespace name (unique on the
    machine), ``label`` the short ``h1``, ``h2``, ... and ``ip`` the address of
    ``eth0``.  Processes and sockets made here are tracked and cleaned up by the
    bed's teardown, but callers should still stop what they start.
    """

    name: str
    label: str
    ip: str
    is_loopback: bool = field(default=False, init=False)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _sockets: list[socket.socket] = field(default_factory=list, repr=False)

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside this host via ``ip netns exec`` (which execs, keeping the pid)."""
        proc = subprocess.Popen([ip_program(), "netns", "exec", self.name, *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], *, timeout: float = 60.0, **run_kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` to completion inside this host; ``check`` defaults to True."""
        run_kwargs.setdefault("check", True)
        return subprocess.run(  # noqa: PLW1510 - check is set above
            [ip_program(), "netns", "exec", self.name, *argv], timeout=timeout, **run_kwargs
        )

    def python(
        self, code: str, *args: str, timeout: float = 30.0, **run_kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a Python snippet (``python -c code args...``) inside this host."""
        return self.run([sys.executable, "-c", code, *args], timeout=timeout, **run_kwargs)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """Return a new socket living in this host's namespace (closed at bed teardown)."""
        sock = run_in_netns(self.name, lambda: socket.socket(family, kind))
        self._sockets.append(sock)
        return sock

    def add_address(self, ip: str, prefix: int = 24) -> None:
        """Give ``eth0`` one more address (a host with several addresses, e.g. an attacker's).

        An IPv6 address skips duplicate address detection (``nodad``), so it
        can be bound at once instead of after a second or two of "tentative".
        """
        extra = ["nodad"] if ":" in ip else []
        _ip("-n", self.name, "addr", "add", f"{ip}/{prefix}", "dev", "eth0", *extra)

    def _cleanup(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_KILL_GRACE)
        self._procs.clear()


class NetnsBed:
    """N hosts, each a network namespace, joined by a bridge in a namespace of its own.

    Use as a context manager (or call ``start``/``close``).  Hosts are
    available as ``bed.hosts`` and by iterating or indexing the bed, so
    ``h1, h2 = bed`` works.  ``subnet`` and ``broadcast`` describe the
    private /24, derived from the creator's pid and a random token so
    concurrent beds on one machine usually differ (a clash would be harmless:
    each bed's addresses exist only inside its own namespaces).
    """

    def __init__(self, count: int, *, rng: random.Random | None = None) -> None:
        """Describe a bed of ``count`` hosts; nothing is created before ``start``."""
        if not 1 <= count <= _MAX_HOSTS:
            msg = f"a bed has 1..{_MAX_HOSTS} hosts, not {count}"
            raise ValueError(msg)
        rng = rng or random.Random()  # noqa: S311 - names, not secrets
        token = f"{rng.randrange(16**4):04x}"
        self.prefix = f"{NETNS_PREFIX}{os.getpid()}-{token}-"
        net_hi, net_lo = 100 + os.getpid() % 100, int(token, 16) % 256
        self.subnet = f"10.{net_hi}.{net_lo}.0/24"
        self.broadcast = f"10.{net_hi}.{net_lo}.255"
        self.bridge_netns = self.prefix + "br"
        self.hosts = [
            NetnsHost(name=f"{self.prefix}h{i}", label=f"h{i}", ip=f"10.{net_hi}.{net_lo}.{i}")
            for i in range(1, count + 1)
        ]
        self._started = False

    @property
    def netns_names(self) -> list[str]:
        """All namespaces of this bed (hosts and bridge)."""
        return [host.name for host in self.hosts] + [self.bridge_netns]

    def start(self) -> Self:
        """Remove stale beds, then create this one; on any error tear down what exists."""
        if os.geteuid() != 0:
            msg = "the namespace test bed needs root (ip netns)"
            raise TestbedError(msg)
        remove_stale_netns()
        self._started = True
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        taken = set(list_netns())
        if taken & set(self.netns_names):
            msg = f"namespaces with prefix {self.prefix} already exist"
            raise TestbedError(msg)
        br = self.bridge_netns
        _ip("netns", "add", br)
        _ip("-n", br, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        _ip("-n", br, "link", "set", "br0", "up")
        for number, host in enumerate(self.hosts, start=1):
            port = f"v{number}"
            _ip("netns", "add", host.name)
            _ip("-n", host.name, "link", "set", "lo", "up")
            _ip("-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", host.name)  # fmt: skip
            _ip("-n", br, "link", "set", port, "master", "br0", "up")
            _ip("-n", host.name, "addr", "add", f"{host.ip}/24", "broadcast", self.broadcast,
                "dev", "eth0")  # fmt: skip
            _ip("-n", host.name, "link", "set", "eth0", "up")
        for host in self.hosts:
            wait_for(
                lambda host=host: "state UP" in _ip("-n", host.name, "link", "show", "eth0").stdout,
                5.0,
                f"eth0 of {host.name} to come up",
            )

    def close(self) -> None:
        """Kill everything in the bed's namespaces and delete them; safe to call twice."""
        if not self._started:
            return
        for host in self.hosts:
            for sock in host._sockets:
                sock.close()
        delete_netns(self.netns_names)
        for host in self.hosts:
            host._cleanup()
        left = [name for name in list_netns() if name.startswith(self.prefix)]
        self._started = False
        if left:
            msg = f"namespaces survived teardown: {left}"
            raise TestbedError(msg)

    def __enter__(self) -> Self:
        """Start the bed."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Tear the bed down, whether or not the body failed."""
        self.close()

    def __iter__(self) -> Iterator[NetnsHost]:
        """Iterate over the hosts."""
        return iter(self.hosts)

    def __len__(self) -> int:
        """Number of hosts."""
        return len(self.hosts)

    def __getitem__(self, index: int) -> NetnsHost:
        """The host at ``index`` (0-based)."""
        return self.hosts[index]
