"""Test bed for the D-Bus tests: a private system bus, busctl as any user, busctl monitor.

``SystemBus`` runs a private ``dbus-daemon`` with a ``<type>system</type>``
configuration: Debian's default system policy (deny owning names and method
calls unless a service file allows them) plus our real policy files from
``etc/dbus-1/system.d``, with the service user and the admin group renamed
to ones that exist on the test machine (policies name users that must exist
when the bus loads them).  Its socket lives in a world-readable directory so
busctl can connect as ``nobody``.

``busctl`` runs the real busctl (optionally as another uid with ``setpriv``),
``Monitor`` runs ``busctl monitor --json=short`` and collects every message
it prints, ``OurDaemon`` runs our ``iceccd`` on the bus (the test bed's
``OurDaemon`` with the bus address in its environment).  Every wait is
bounded; ``close``/``stop`` end the processes.
"""

from __future__ import annotations

import contextlib
import json
import pwd
import select
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import testbed

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

ROOT: Final = Path(__file__).resolve().parents[1]
POLICY_DIR: Final = ROOT / "etc/dbus-1/system.d"
SERVICE_USER: Final = "icecream"
ADMIN_GROUP: Final = "icecream"
NOBODY: Final = 65534

#: Debian bookworm's /usr/share/dbus-1/system.conf policy, without forking, user or syslog.
_BUS_CONFIG: Final = """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:dir={directory}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <includedir>{directory}/system.d</includedir>
</busconfig>
"""


class SystemBus:
    """A private system-type bus with our policies; *user*/*group* stand in for icecream."""

    def __init__(self, *, user: str, group: str) -> None:
        self.user, self.group = user, group
        self.directory = Path(tempfile.mkdtemp(prefix="iceserv-dbus-"))
        self.directory.chmod(0o755)  # nobody must reach the socket
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self, timeout: float = 10.0) -> SystemBus:
        """Write the configuration, start dbus-daemon, read its address."""
        exe = shutil.which("dbus-daemon")
        if exe is None:
            msg = "dbus-daemon is not installed: run ./bin/setup"
            raise RuntimeError(msg)
        policies = self.directory / "system.d"
        policies.mkdir()
        for path in sorted(POLICY_DIR.glob("*.conf")):
            text = path.read_text()
            text = text.replace(f'user="{SERVICE_USER}"', f'user="{self.user}"')
            text = text.replace(f'group="{ADMIN_GROUP}"', f'group="{self.group}"')
            (policies / path.name).write_text(text)
        config = self.directory / "bus.conf"
        config.write_text(_BUS_CONFIG.format(directory=self.directory))
        with (self.directory / "bus.err").open("w") as err:
            self.proc = subprocess.Popen(
                [exe, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
                stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            msg = f"dbus-daemon printed no address within {timeout} s"
            raise RuntimeError(msg)
        self.address = self.proc.stdout.readline().strip()
        return self

    def log(self) -> str:
        """What dbus-daemon wrote to stderr (refused messages are logged there)."""
        return (self.directory / "bus.err").read_text(errors="replace")

    def close(self) -> None:
        """Stop dbus-daemon and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def as_user(uid: int, gid: int, groups: Sequence[int] = ()) -> list[str]:
    """The ``setpriv`` prefix that runs a command as *uid*:*gid* with *groups*."""
    group_args = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", *group_args, "--"]


def busctl(
    address: str, *args: str, prefix: Sequence[str] = (), timeout: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Run ``busctl --address=ADDRESS ARGS`` (behind *prefix*, e.g. :func:`as_user`)."""
    argv = [*prefix, "busctl", f"--address={address}", "--timeout=10", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


class Monitor:
    """``busctl monitor --json=short`` on a bus, collecting every message as a dict."""

    def __init__(self, address: str) -> None:
        argv = ["busctl", f"--address={address}", "monitor", "--json=short"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)  # fmt: skip
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                with self._lock:
                    self.messages.append(message)

    def signals(self, member: str) -> list[list[Any]]:
        """The payloads of the signals named *member* seen so far, oldest first."""
        with self._lock:
            return [m["payload"]["data"] for m in self.messages
                    if m.get("type") == "signal" and m.get("member") == member]  # fmt: skip

    def wait_for(
        self, member: str, predicate: Callable[[list[Any]], bool], timeout: float, what: str
    ) -> list[Any]:
        """Return the first *member* payload satisfying *predicate*; wait at most *timeout*."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((data for data in self.signals(member) if predicate(data)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                msg = f"no {member} signal with {what} within {timeout} s: {self.signals(member)}"
                raise AssertionError(msg)
            time.sleep(0.05)

    def wait_started(self, address: str, timeout: float = 10.0) -> None:
        """Return once the monitor sees traffic (a Ping it provokes), so nothing is missed."""
        deadline = time.monotonic() + timeout
        while not any(m.get("member") == "GetId" for m in list(self.messages)):
            busctl(address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                   "org.freedesktop.DBus", "GetId")  # fmt: skip
            if time.monotonic() > deadline or self.proc.poll() is not None:
                msg = f"busctl monitor did not start: {self.proc.poll()}"
                raise AssertionError(msg)
            time.sleep(0.1)

    def stop(self) -> None:
        """End busctl monitor and its reader."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def user_ids(name: str) -> tuple[int, int]:
    """Return (uid, primary gid) of user *name*."""
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


class OurDaemon(testbed.OurDaemon):
    """The test bed's ``OurDaemon`` on loopback, ``-s scheduler``, on the bus at ``bus_address``."""

    def __init__(
        self, name: str, scheduler: str, bus_address: str, extra_args: Sequence[str] = ()
    ) -> None:
        super().__init__(name, scheduler, extra_args=extra_args,
                         extra_env={"DBUS_SYSTEM_BUS_ADDRESS": bus_address})  # fmt: skip
        self.bus_address = bus_address
