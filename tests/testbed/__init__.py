"""Test bed that runs the real icecream 1.4 programs for interoperability tests.

What lives where:

* ``real``    - ``RealScheduler``: the real ``icecc-scheduler`` as a subprocess, its
  telnet ``listcs``, waking its main loop; the observed quirks of all the real
  programs are written down in this module's docstring.
* ``daemon``  - ``RealDaemon``: the real ``iceccd`` as a subprocess.
* ``sundae``  - ``RealSundae``: the real ``icecream-sundae`` monitor in a pty.
* ``ours``    - ``OurScheduler``: iceserv's scheduler program as a subprocess.
* ``envs``    - ``build_real_env``: tarballs made by the real ``icecc-create-env``.
* ``netns``   - ``NetnsBed``: N hosts as network namespaces on a private bridge.
* ``hosts``   - the ``Host`` seam (loopback or a namespace host) and free ports.
* ``procs``   - stopping process trees, work directories, ``/proc`` socket lookups.
* ``wait``    - ``wait_for``, the bounded poll every wait goes through.
* ``errors``  - ``TestbedError`` and friends.

The pytest fixtures built on this live in ``tests/conftest.py``.  Nothing here
imports iceserv.
"""

from testbed.daemon import RealDaemon
from testbed.envs import RealEnv, build_real_env
from testbed.errors import MissingProgramError, ProgramExitedError, TestbedError, WaitTimeoutError
from testbed.hosts import LOOPBACK, Host, LoopbackHost, connect, free_port, free_scheduler_port
from testbed.netns import NetnsBed, NetnsHost, list_netns, remove_stale_netns
from testbed.ours import OurScheduler
from testbed.procs import remove_stale_workdirs, stop_process
from testbed.real import ListedHost, RealScheduler, parse_listcs
from testbed.sundae import SUNDAE_PROTOCOL_VERSION, RealSundae
from testbed.wait import wait_for

__all__ = [
    "LOOPBACK",
    "SUNDAE_PROTOCOL_VERSION",
    "Host",
    "ListedHost",
    "LoopbackHost",
    "MissingProgramError",
    "NetnsBed",
    "NetnsHost",
    "OurScheduler",
    "ProgramExitedError",
    "RealDaemon",
    "RealEnv",
    "RealScheduler",
    "RealSundae",
    "TestbedError",
    "WaitTimeoutError",
    "build_real_env",
    "connect",
    "free_port",
    "free_scheduler_port",
    "list_netns",
    "parse_listcs",
    "remove_stale_netns",
    "remove_stale_workdirs",
    "stop_process",
    "wait_for",
]
