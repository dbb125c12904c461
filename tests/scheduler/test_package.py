"""The iceserv.scheduler package as a whole: its public names.

What its pure modules may import is checked by import-linter's contracts
(tests/test_quality.py): importing the package itself loads the asyncio shell.
"""

from __future__ import annotations

import iceserv.scheduler


class TestPackage:
    def test_public_names_resolve(self):
        """Every name in __all__ is an attribute of the package."""
        assert all(hasattr(iceserv.scheduler, name) for name in iceserv.scheduler.__all__)

    def test_core_shell_and_facade(self):
        """The package offers the pure core, the asyncio shell and the control facade."""
        assert {"Scheduler", "SchedulerServer", "ClusterControl"} <= set(iceserv.scheduler.__all__)
