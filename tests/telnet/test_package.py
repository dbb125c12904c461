"""The iceserv.telnet package surface and its import boundary (STYLE: never the scheduler)."""

from __future__ import annotations

import subprocess
import sys

import iceserv.telnet


class TestTelnetPackage:
    def test_all_names_exist(self):
        """Every name in __all__ is importable from the package."""
        assert all(hasattr(iceserv.telnet, name) for name in iceserv.telnet.__all__)
        assert {"SchedulerControl", "TelnetServer", "serve_telnet", "run_command"} <= set(
            iceserv.telnet.__all__
        )

    def test_does_not_import_scheduler_or_daemon(self):
        """Importing iceserv.telnet pulls in neither iceserv.scheduler nor iceserv.daemon."""
        code = (
            "import sys, iceserv.telnet\n"
            "bad = [m for m in sys.modules if m.startswith(('iceserv.scheduler', 'iceserv.daemon',"
            " 'iceserv.app'))]\n"
            "print(bad)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        assert proc.stdout.strip() == "[]"
