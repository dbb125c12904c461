"""The iceserv.service package surface and its import boundary (STYLE: Protocols, not internals)."""

from __future__ import annotations

import subprocess
import sys

import iceserv.service


class TestServicePackage:
    def test_all_names_exist(self):
        """Every name in __all__ is importable from the package."""
        assert all(hasattr(iceserv.service, name) for name in iceserv.service.__all__)
        assert {"Lifecycle", "ManagedService", "ServiceNotifier", "configure_logging",
                "child_environment"} <= set(iceserv.service.__all__)  # fmt: skip

    def test_imports_no_program_internals(self):
        """notify, logging and lifecycle pull in no scheduler, daemon, telnet, config or app."""
        code = (
            "import sys\n"
            "import iceserv.service.notify, iceserv.service.logging, iceserv.service.lifecycle\n"
            "bad = [m for m in sys.modules if m.startswith(('iceserv.scheduler', 'iceserv.daemon',"
            " 'iceserv.telnet', 'iceserv.config', 'iceserv.app', 'iceserv.client', 'pydantic',"
            " 'dbus_fast'))]\n"
            "print(bad)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        assert proc.stdout.strip() == "[]"
