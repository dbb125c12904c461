"""Our scheduler claiming a higher protocol version in discovery and announcements.

``python -m testbed.rogue.scheduler [--rogue-version N] ARGS...`` runs
``iceserv.app.scheduler`` with ARGS, but every discovery reply, offer and
announcement says version N (default 50): by icecream 1.4's election rules
(highest version first, then the earliest start) it beats every real
scheduler.  It is a *rogue iceserv scheduler*: what an attacker gets by
patching one constant.  The module name ends in ``scheduler`` so that the
test bed waits for the usual ``scheduler_ready`` record.
"""

from __future__ import annotations

import functools
import sys

import iceserv.scheduler.server as server_module
from iceserv.app.scheduler import main

_FLAG = "--rogue-version"


def run(argv: list[str]) -> int:
    """Patch the advertised version, then run the real scheduler with the other arguments."""
    version = 50
    if _FLAG in argv:
        at = argv.index(_FLAG)
        version = int(argv[at + 1])
        del argv[at : at + 2]
    server_module.SchedulerConfig = functools.partial(  # type: ignore[misc]
        server_module.SchedulerConfig, version=version
    )
    sys.argv = [sys.argv[0], *argv]
    return main()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
