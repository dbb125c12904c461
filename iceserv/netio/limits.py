"""The descriptor limit: raise the soft ``RLIMIT_NOFILE`` and fit connection budgets under it.

Both services call :func:`raise_nofile_limit` once at start: the soft limit
(1,024 by default on Linux, even when the hard limit is 524,288) then
matches the hard one, which the unit's ``LimitNOFILE=`` or OpenRC's
``rc_ulimit`` sets.  :func:`fit_budget` keeps a connection budget below the
limit with a reserve for everything else the process opens (log files,
probes, D-Bus, a compile job's files), so that a full budget refuses a
connection before ``accept()`` ever sees ``EMFILE``.  This module only reads
and sets the limit; the caller logs.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Final

__all__ = ["DESCRIPTOR_RESERVE", "NofileLimit", "fit_budget", "raise_nofile_limit"]

#: Descriptors kept free of any connection budget for the process's own files.
DESCRIPTOR_RESERVE: Final = 64
#: Never raise the soft limit above this, even when the hard limit is "unlimited".
_CEILING: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class NofileLimit:
    """The descriptor limit before and after :func:`raise_nofile_limit`.

    ``error`` is the reason the soft limit could not be raised (a seccomp
    filter, say), or empty.
    """

    before: int
    soft: int
    hard: int
    error: str = ""


def raise_nofile_limit() -> NofileLimit:
    """Raise the soft descriptor limit to the hard one (at most 2**20); return both.

    Never raises: if ``setrlimit`` is refused the limit stays and the
    reason is in :attr:`NofileLimit.error`.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _CEILING if hard == resource.RLIM_INFINITY else min(hard, _CEILING)
    if soft != resource.RLIM_INFINITY and soft >= target:
        return NofileLimit(soft, soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        return NofileLimit(soft, soft, hard, error=str(exc))
    return NofileLimit(soft, target, hard)


def fit_budget(wanted: int, available: int, reserve: int = DESCRIPTOR_RESERVE) -> int:
    """Return *wanted*, lowered so that it fits in *available* descriptors minus *reserve*.

    *available* is what the caller can spend on this budget (the soft
    limit, less other budgets).  The answer is at least 1: a service with
    a tiny limit still serves one connection at a time.
    """
    return max(1, min(wanted, available - reserve))
