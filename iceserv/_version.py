"""The iceserv version, as a constant (``importlib.metadata`` costs ~35 ms)."""

from typing import Final

__all__ = ["VERSION"]

VERSION: Final = "0.1.0"
