"""The iceserv.config package as a whole: its public names and what it may import."""

from __future__ import annotations

import subprocess
import sys

import iceserv.config


class TestPackage:
    def test_public_names_resolve(self):
        """Every name in __all__ is an attribute of the package."""
        assert all(hasattr(iceserv.config, name) for name in iceserv.config.__all__)

    def test_imports_no_service_stack(self):
        """Importing it loads neither the protocol, structlog nor D-Bus."""
        script = "import sys, iceserv.config; print(' '.join(sys.modules))"
        loaded = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
        ).stdout.split()
        assert "pydantic_settings" in loaded
        assert not {"iceserv.protocol", "structlog", "dbus_fast"} & set(loaded)
