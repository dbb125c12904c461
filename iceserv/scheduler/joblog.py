"""One summary per finished job, assembled from the monitor events the core emits.

The core forgets a job when it ends, so by the time MON_JOB_DONE goes out the
submitter, server and file are gone from its state.  :class:`JobSummaries`
follows MON_GET_CS and MON_JOB_BEGIN as they pass, and on MON_JOB_DONE returns
the fields of the ``job_finished`` log event: who asked, who compiled, what,
how long it waited and ran, and the sizes.  Pure: no I/O, time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from iceserv.protocol import MonGetCS, MonJobBegin, MonJobDone

if TYPE_CHECKING:
    from collections.abc import Callable

    from iceserv.protocol import Message

__all__ = ["JobSummaries"]

#: Jobs followed at once; beyond this the oldest are dropped (a leak guard, never hit by
#: a healthy scheduler, where every MON_GET_CS is followed by a MON_JOB_DONE).
MAX_OPEN_JOBS: Final = 100_000


@dataclass(slots=True)
class _Open:
    submitter: str
    filename: str
    queued_at: float
    server: str = ""
    started_at: float | None = None


class JobSummaries:
    """Tracks open jobs from the monitor stream; see the module docstring."""

    def __init__(self) -> None:
        self._open: dict[int, _Open] = {}

    def observe(
        self, message: Message, host_name: Callable[[int], str], now: float
    ) -> dict[str, object] | None:
        """Note *message*; for a MON_JOB_DONE return the job's summary fields."""
        if isinstance(message, MonGetCS):
            if len(self._open) >= MAX_OPEN_JOBS:
                del self._open[next(iter(self._open))]
            self._open[message.job_id] = _Open(host_name(message.client_id), message.filename, now)
        elif isinstance(message, MonJobBegin):
            job = self._open.get(message.job_id)
            if job is not None:
                job.server, job.started_at = host_name(message.host_id), now
        elif isinstance(message, MonJobDone):
            job = self._open.pop(message.job_id, None)
            started = job.started_at if job is not None else None
            return {
                "job_id": message.job_id,
                "submitter": job.submitter if job else "",
                "server": job.server if job else "",
                "file": job.filename if job else "",
                "exitcode": message.exitcode,
                "waited_s": round(started - job.queued_at, 3) if job and started else None,
                "real_msec": message.real_msec,
                "user_msec": message.user_msec,
                "in_bytes": message.in_uncompressed,
                "out_bytes": message.out_uncompressed,
            }
        return None
