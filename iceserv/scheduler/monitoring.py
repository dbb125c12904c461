"""The text monitors receive: MON_STATS ``Key:Value`` lines.

This module owns the exact strings of reference §2.2 MON_STATS (as 1.4's
``handle_monitor_stats`` prints them); file names are shortened by
:func:`iceserv.protocol.filenames.shorten_filename`.  It is
pure and must not decide *when* monitors are told anything; that is
:mod:`iceserv.scheduler.handlers`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from iceserv.protocol import EnvFeature
from iceserv.scheduler.placement import server_speed

if TYPE_CHECKING:
    from iceserv.protocol import Stats
    from iceserv.scheduler.state import Host

__all__ = ["OFFLINE", "features_text", "host_stats_text"]

#: The whole MON_STATS text for a daemon that went away.
OFFLINE: Final = "State:Offline\n"


def features_text(features: int) -> str:
    """Return 1.4's ``supported_features_to_string``: ``env_xz env_zstd``, ..., or ``--``."""
    names = [
        name
        for flag, name in ((EnvFeature.ENV_XZ, "env_xz"), (EnvFeature.ENV_ZSTD, "env_zstd"))
        if features & flag
    ]
    return " ".join(names) or "--"


def host_stats_text(host: Host, stats: Stats | None = None) -> str:
    """Return the MON_STATS text for *host*; with *stats*, include its load details."""
    lines = [
        f"Name:{host.nodename}",
        f"IP:{host.ip}",
        f"MaxJobs:{host.max_jobs}",
        f"NoRemote:{'true' if host.noremote else 'false'}",
        f"Platform:{host.platform}",
        f"Version:{host.version}",
        f"Features:{features_text(host.features)}",
        f"Speed:{server_speed(host):f}",
    ]
    if stats is None:
        lines.append(f"Load:{host.load}")
    else:
        lines += [
            f"Load:{stats.load}",
            f"LoadAvg1:{stats.load_avg1}",
            f"LoadAvg5:{stats.load_avg5}",
            f"LoadAvg10:{stats.load_avg10}",
            f"FreeMem:{stats.free_mem}",
        ]
    return "".join(line + "\n" for line in lines)
