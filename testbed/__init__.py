"""Test bed that runs the real icecream 1.4 programs for interoperability tests.

What lives where:

* ``real``    - ``RealScheduler``: the real ``icecc-scheduler`` as a subprocess, its
  telnet ``listcs``, waking its main loop; the observed quirks of all the real
  programs are written down in this module's docstring.
* ``daemon``  - ``RealDaemon``: the real ``iceccd`` as a subprocess.
* ``sundae``  - ``RealSundae``: the real ``icecream-sundae`` monitor in a pty.
* ``ours``    - ``OurScheduler``, ``OurDaemon``: iceserv's programs as subprocesses.
* ``program`` - ``Program``: what the five classes above share: work directory,
  start in a new session, bounded wait until ready, log tails, stop;
  ``DaemonProgram``: what both daemons add (options, socket, ``-b``, address).
* ``cluster`` - ``Cluster``: a scheduler and daemons (real or ours) on a
  ``NetnsBed``, and ``make`` of a real project through it (``BuildResult``).
* ``project`` - the zstd C library from a pinned PyPI sdist, its Makefile and
  the local reference build.
* ``faults``  - faults to inject into a cluster (kill, link down, tmpfs, broken and
  crashing environments), when to strike, telnet ``listcs`` of any scheduler.
* ``monitor`` - ``SchedulerMonitor``: a monitor connection (own decoder) that
  tells which daemons are logged in and where jobs ran.
* ``idlecpu`` - ``IdleCpuHost``: programs on a host see a frozen ``/proc/stat``.
* ``envs``    - ``build_real_env``: tarballs made by the real ``icecc-create-env``.
* ``netns``   - ``NetnsBed``: N hosts as network namespaces on a private bridge.
* ``hosts``   - the ``Host`` seam (loopback or a namespace host) and free ports.
* ``procs``   - stopping process trees, work directories, ``/proc`` socket lookups.
* ``wait``    - ``wait_for``, the bounded poll every wait goes through.
* ``errors``  - ``TestbedError`` and friends.

The pytest fixtures built on this live in ``tests/conftest.py``.  Nothing here
imports iceserv.
"""

from testbed.cluster import BuildResult, ClientPlan, Cluster, DaemonPlan, RunningBuild
from testbed.daemon import RealDaemon
from testbed.envs import RealEnv, build_real_env
from testbed.errors import MissingProgramError, ProgramExitedError, TestbedError, WaitTimeoutError
from testbed.hosts import LOOPBACK, Host, LoopbackHost, connect, free_port, free_scheduler_port
from testbed.idlecpu import IdleCpuHost, freeze_proc_stat
from testbed.monitor import MonitorEvent, Placement, SchedulerMonitor
from testbed.netns import NetnsBed, NetnsHost, list_netns, remove_stale_netns
from testbed.ours import OurDaemon, OurScheduler
from testbed.procs import remove_stale_workdirs, stop_process
from testbed.program import Program
from testbed.project import (
    ZSTD_SDIST,
    Project,
    Reference,
    build_reference,
    fetch_sdist,
    reference_build,
    unpack_project,
)
from testbed.real import ListedHost, RealScheduler, parse_listcs
from testbed.sundae import SUNDAE_PROTOCOL_VERSION, RealSundae
from testbed.wait import wait_for

__all__ = [
    "LOOPBACK",
    "SUNDAE_PROTOCOL_VERSION",
    "ZSTD_SDIST",
    "BuildResult",
    "ClientPlan",
    "Cluster",
    "DaemonPlan",
    "Host",
    "IdleCpuHost",
    "ListedHost",
    "LoopbackHost",
    "MissingProgramError",
    "MonitorEvent",
    "NetnsBed",
    "NetnsHost",
    "OurDaemon",
    "OurScheduler",
    "Placement",
    "Program",
    "ProgramExitedError",
    "Project",
    "RealDaemon",
    "RealEnv",
    "RealScheduler",
    "RealSundae",
    "Reference",
    "RunningBuild",
    "SchedulerMonitor",
    "TestbedError",
    "WaitTimeoutError",
    "build_real_env",
    "build_reference",
    "connect",
    "fetch_sdist",
    "free_port",
    "free_scheduler_port",
    "freeze_proc_stat",
    "list_netns",
    "parse_listcs",
    "reference_build",
    "remove_stale_netns",
    "remove_stale_workdirs",
    "stop_process",
    "unpack_project",
    "wait_for",
]
