"""Our scheduler claiming a higher protocol version, and never a polite standby.

``python -m testbed.rogue.scheduler [--rogue-version N] ARGS...`` runs
``iceserv.app.scheduler`` with ARGS, but every discovery reply, offer and
announcement says version N (default 50): by icecream 1.4's election rules
(highest version first, then the earliest start) it beats every real
scheduler.  And it serves from the start, as 1.4 does, instead of becoming
the standby of a scheduler already serving (iceserv's standby role, which
keeps a well-behaved late scheduler silent).  It is a *rogue iceserv
scheduler*: what an attacker gets by patching two lines.  The module name
ends in ``scheduler`` so that the test bed waits for the usual
``scheduler_ready`` record.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

import iceserv.app.scheduler as app_module
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
    polite = app_module.server_settings

    def always_serving(*args: Any, **kwargs: Any) -> server_module.SchedulerServerSettings:
        return dataclasses.replace(polite(*args, **kwargs), standby=None)

    app_module.server_settings = always_serving  # type: ignore[assignment]
    sys.argv = [sys.argv[0], *argv]
    return main()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
