"""Tests of the iceserv.protocol package as a whole: its import rules and its public names."""

from __future__ import annotations

import subprocess
import sys

import iceserv.protocol

from .strategies import ALL_CLASSES

#: Modules the sans-I/O protocol must never load (STYLE.md, import rules).
FORBIDDEN = {"asyncio", "socket", "logging", "structlog", "pydantic", "pydantic_settings",
             "dbus_fast"}  # fmt: skip
SUBMODULES = ("constants", "features", "wire", "compression", "messages", "connection",
              "discovery", "text", "dispatch", "filenames", "records", "endpoint")  # fmt: skip


def modules_after(code: str) -> set[str]:
    """The names in sys.modules after a fresh interpreter runs *code*."""
    script = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


class TestImportRules:
    """The protocol stays free of I/O, logging and the service stack."""

    def test_package_import(self):
        """Importing iceserv.protocol loads no asyncio, socket, logging, structlog or pydantic."""
        modules = modules_after("import iceserv.protocol")
        assert "iceserv.protocol.connection" in modules  # the probe does see our modules
        assert {m for m in modules if m.split(".")[0] in FORBIDDEN} == set()

    def test_every_submodule_and_use(self):
        """No submodule, nor encoding and decoding a message, loads a forbidden module."""
        imports = "\n".join(f"import iceserv.protocol.{name}" for name in SUBMODULES)
        use = (
            "from iceserv.protocol import messages as m\n"
            "m.decode(0x5A, m.encode(m.StatusText('x'), 43)[8:], 43)\n"
            "m.decode(0x4A, m.encode(m.FileChunk(b'x' * 99), 43)[8:], 43)"
        )
        modules = modules_after(f"{imports}\n{use}")
        assert "zstandard" in modules  # FILE_CHUNK really went through the compressor
        assert {m for m in modules if m.split(".")[0] in FORBIDDEN} == set()

    def test_compression_bindings_are_lazy(self):
        """Importing the protocol loads neither zstandard nor lzo until a FILE_CHUNK needs one."""
        modules = modules_after("import iceserv.protocol")
        assert "zstandard" not in modules
        assert "lzo" not in modules


class TestPublicNames:
    """What ``from iceserv.protocol import ...`` offers."""

    def test_every_message_class_exported(self):
        """All 32 message classes are in __all__ under their own names."""
        for cls in ALL_CLASSES:
            assert cls.__name__ in iceserv.protocol.__all__
            assert getattr(iceserv.protocol, cls.__name__) is cls

    def test_all_names_resolve(self):
        """Every name in __all__ exists."""
        for name in iceserv.protocol.__all__:
            assert hasattr(iceserv.protocol, name), name
