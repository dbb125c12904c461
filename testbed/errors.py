"""Exceptions raised by the test bed.

Owns the small error hierarchy of ``testbed/``.  Every error derives from
``TestbedError``; the ones a test would otherwise see as a vague hang or crash
also derive from ``AssertionError`` so pytest reports them as failures with
their full message (which always carries context such as a log tail).
"""

from __future__ import annotations


class TestbedError(Exception):
    """Root of every error the test bed raises."""

    __test__ = False  # not a test class, even though the name starts with "Test"


class MissingProgramError(TestbedError):
    """A program or system user the test bed needs is not installed."""


class WaitTimeoutError(TestbedError, AssertionError):
    """A bounded wait ran out of time; the message says what was awaited and shows context."""


class ProgramExitedError(TestbedError, AssertionError):
    """A real program exited while the test bed still needed it."""
