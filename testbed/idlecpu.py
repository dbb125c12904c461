"""A host whose programs see an idle CPU: ``/proc/stat`` frozen in their own mount namespace.

Owns ``IdleCpuHost``, a ``hosts.Host`` that wraps another one.  Every
program it starts runs under ``unshare --mount --propagation private`` with
a frozen copy of ``/proc/stat`` bind-mounted over the real one, then execs
the program (same pid).  The mount lives only in that private namespace and
disappears with its last process; nothing is mounted on the machine.

Why: the hosts of a ``NetnsBed`` have their own network stacks but share
the machine's CPUs and its one ``/proc/stat``.  Daemons rate their load
from that file (reference §5.2 item 4; upstream ``daemon/load.cpp``,
``updateCPULoad``), so while one host compiles, or anything else runs on the
machine, every other host reports load 1000 and the scheduler gives it no
jobs: a build never spreads.  Real hosts each have their own CPU.  With the
file frozen, no ticks pass between two reads; 1.4 then counts the CPU as
wholly idle (``totalTicks <= 10``), as does our daemon, so every daemon's
load reflects only its memory, like a dedicated machine doing nothing but
its own jobs (which 1.4 counts as idle anyway).

It must not change anything but ``/proc/stat``: memory (``/proc/meminfo``),
load averages and the network are the real ones.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Sequence

    from testbed.hosts import Host

#: ``sh -c SCRIPT STAT ARGV...``: $0 is the frozen file, "$@" the program.
_MOUNT_AND_EXEC: Final = 'mount --bind "$0" /proc/stat && exec "$@"'


@dataclass(eq=False)
class IdleCpuHost:
    """``host``, except that programs started here read ``stat_file`` as ``/proc/stat``.

    ``stat_file`` must be readable by the users the programs drop to (the
    real daemon opens ``/proc/stat`` after switching to ``icecc``).  Use
    ``freeze_proc_stat`` to make one.
    """

    host: Host
    stat_file: Path

    @property
    def name(self) -> str:
        """The wrapped host's name."""
        return self.host.name

    @property
    def ip(self) -> str:
        """The wrapped host's address."""
        return self.host.ip

    @property
    def is_loopback(self) -> bool:
        """Whether the wrapped host is the machine's own network stack."""
        return self.host.is_loopback

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed with the private mount namespace and the bind mount."""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _MOUNT_AND_EXEC,
                str(self.stat_file), *argv]  # fmt: skip

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` on the wrapped host, seeing the frozen ``/proc/stat``."""
        return self.host.popen(self.wrap(argv), **popen_kwargs)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        **run_kwargs: Any,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` to completion on the wrapped host, seeing the frozen ``/proc/stat``."""
        return self.host.run(self.wrap(argv), timeout=timeout, **run_kwargs)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket in the wrapped host's network stack."""
        return self.host.socket(family, kind)


def freeze_proc_stat(path: Path) -> Path:
    """Write the machine's current ``/proc/stat`` to ``path`` (mode 0644) and return it."""
    path.write_bytes(Path("/proc/stat").read_bytes())
    path.chmod(0o644)
    return path
