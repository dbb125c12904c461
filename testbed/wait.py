"""Bounded waiting.

Owns ``wait_for``, the one polling loop every other part of the test bed uses.
It never waits without a deadline, and when the deadline passes it raises
``WaitTimeoutError`` naming what was awaited plus caller-supplied context
(typically the tail of a program's log), so a failed test explains itself.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

from testbed.errors import WaitTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

_MAX_TIMEOUT = 600.0  # a test bed wait longer than this is a bug in the caller


def wait_for(  # noqa: PLR0913 - every knob is keyword-only and optional
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    context: Callable[[], str] | None = None,
    between: Callable[[], object] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    ``what`` completes the sentence "timed out waiting for ...".  ``context``
    is called only on timeout and its text is appended to the error (use it
    for log tails).  ``between`` runs after every unsuccessful attempt, e.g. to
    wake a program's main loop.  Exceptions from ``predicate`` propagate: a
    predicate that can fail transiently must catch that itself.
    """
    if not 0 < timeout <= _MAX_TIMEOUT:
        msg = f"timeout must be in (0, {_MAX_TIMEOUT}] s, got {timeout!r}"
        raise ValueError(msg)
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        if between is not None:
            between()
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    msg = f"timed out after {timeout:g} s ({attempts} attempts) waiting for {what}"
    if context is not None:
        msg += "\n" + context()
    raise WaitTimeoutError(msg)
