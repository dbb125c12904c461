"""The file names GET_CS and the monitor messages carry (1.4 ``comm.cpp``, ``shorten_filename``).

This module owns how a source path is cut before it goes on the wire: the
client shortens GET_CS's ``filename`` and the scheduler shortens the names it
passes to monitors, both to the last three path components.  Pure text, no
I/O.
"""

from __future__ import annotations

__all__ = ["shorten_filename"]


def shorten_filename(name: str) -> str:
    """Keep the last three "/"-separated components of *name*, as 1.4 does.

    Faithful to 1.4's unsigned wrap-around: a search that reaches the slash at
    position 0 starts over from the end, so ``"/a/b"`` becomes ``"b"`` and
    ``"/x/y.c"`` becomes ``"y.c"`` (monitors show the same names as with 1.4).
    """
    cut = name.rfind("/")
    for _ in range(2):
        if cut > 0:
            cut = name.rfind("/", 0, cut)
        elif cut == 0:
            cut = name.rfind("/")  # C++ rfind(c, npos) after the index wrapped
    return name[cut + 1 :]
