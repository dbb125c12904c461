"""``@file`` response files, expanded as GNU libiberty's ``expandargv`` does.

1.4's ``icecc`` expands them before it looks at any argument (``main.cpp``,
``ArgumentExpander``).  Pure: the caller passes the function that reads a
file (or says it cannot).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Final

__all__ = ["expand_response_files"]

_RESPONSE_FILE_LIMIT: Final = 2000
_BLANKS: Final = " \t\n\r\f\v"


def expand_response_files(argv: Sequence[str], read: Callable[[str], str | None]) -> list[str]:
    """Replace each readable ``@file`` by the arguments in it (libiberty ``expandargv``).

    *read(path)* returns the file's text or None (missing, unreadable, a
    directory), in which case the argument stays as it is.  Expanded
    arguments are expanded again, up to 2000 files.
    """
    out = list(argv)
    i, budget = 1, _RESPONSE_FILE_LIMIT
    while i < len(out):
        arg = out[i]
        text = read(arg[1:]) if arg.startswith("@") and budget > 0 else None
        if text is None:
            i += 1
            continue
        budget -= 1
        out[i : i + 1] = _split_response(text)
    return out


def _split_response(text: str) -> list[str]:
    """Split like libiberty's ``buildargv``: blanks separate, quotes group, backslash escapes."""
    words: list[str] = []
    word: list[str] | None = None
    quote = ""  # the open quote character, if any
    escaped = False
    for char in text:
        if word is None:
            if char in _BLANKS:
                continue
            word = []
        if escaped or (quote and char not in (quote, "\\")):
            escaped = False
            word.append(char)
        elif char == "\\":
            escaped = True
        elif quote:  # the closing quote
            quote = ""
        elif char in _BLANKS:
            words.append("".join(word))
            word = None
        elif char in "'\"":
            quote = char
        else:
            word.append(char)
    if word is not None:
        words.append("".join(word))
    return words
