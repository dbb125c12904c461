"""Reader for the POSIX-sh assignment subset used by ``/etc/conf.d`` files.

Owns turning the text of a conf.d-style file (Gentoo conf.d, SUSE sysconfig,
Debian ``/etc/icecc/icecc.conf``) into the values ``dash`` would assign when
sourcing it with an empty environment: quotes, backslash escapes, comments,
``export``, line continuations and ``$V``/``${V}``/``${V:-w}``-style
references to variables assigned earlier in the same file set.

It never runs a shell and never uses :mod:`shlex` (which splits words and
gets escapes, comments and expansions wrong).  Everything outside the subset
(commands, ``$(...)``, backticks, special parameters, redirections, bash-only
syntax, unquoted ``~``) is rejected with a :class:`ConfigError` reading
``path:line: reason``.  This module knows no setting names and does not read
the process environment.
"""

from __future__ import annotations

import bisect
import dataclasses
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from iceserv.config.origin import ConfigWarning
from iceserv.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

__all__ = ["ConfdFile", "ConfdValue", "parse_confd", "read_confd", "read_confd_files"]

_NAME_START: Final = frozenset(string.ascii_letters + "_")
_NAME_CHARS: Final = _NAME_START | frozenset(string.digits)
_BLANKS: Final = frozenset(" \t")
# Characters that end an unquoted word.
_WORD_END: Final = frozenset(("", "\n", " ", "\t", ";"))
# Unquoted, these start pipelines, lists, redirections or subshells.
_OPERATORS: Final = frozenset("&|<>()")
_SPECIAL_PARAMETERS: Final = frozenset(string.digits + "@*#?-$!")
# Characters a ${V:-word} default may not contain: we only accept literals.
_NOT_LITERAL: Final = frozenset("'\"\\$`~")
_DQUOTE_ESCAPES: Final = frozenset('$`"\\')
_CONTINUATION: Final = "\\\n"
_BOM: Final = "\ufeff"
#: Longest value an assignment may produce: `V=$V$V` doubles a value per line, so
#: without a cap 30 short lines would ask for gigabytes (found by fuzzing).
MAX_VALUE: Final = 64 * 1024
#: Largest conf.d file read; real ones are a few kilobytes.
MAX_FILE: Final = 1024 * 1024
#: Parse errors reported for one file at most (the rest of a garbage file is not read).
MAX_ERRORS: Final = 20
_COMMAND_HINTS: Final = {
    ".": "sourcing another file ('.') is not supported",
    "source": "sourcing another file ('source') is not supported",
    "declare": "bash-only 'declare' is not supported",
    "local": "bash-only 'local' is not supported",
    "typeset": "bash-only 'typeset' is not supported",
    "readonly": "'readonly' is not supported",
    "unset": "'unset' is not supported",
}


@dataclass(frozen=True, slots=True)
class ConfdValue:
    """One variable as assigned by a conf.d file.

    ``line`` is the line where the (last) assignment starts; ``exported`` is
    whether ``export`` marked the variable.
    """

    name: str
    value: str
    path: str
    line: int
    exported: bool = False


@dataclass(frozen=True, slots=True)
class ConfdFile:
    """The variables a file (or a layered set of files) assigns, and warnings."""

    values: Mapping[str, ConfdValue]
    warnings: tuple[ConfigWarning, ...] = ()


def parse_confd(text: str, path: str, scope: Mapping[str, ConfdValue] | None = None) -> ConfdFile:
    """Parse *text* (the contents of *path*) and return what it assigns.

    *scope* holds variables assigned by earlier files of the same set; they
    are visible to ``$V`` references but are not returned unless this file
    exports them.  Raises :class:`ConfigError` (``path:line: reason``) for
    anything outside the accepted subset.
    """
    warnings: list[ConfigWarning] = []
    text = text.removeprefix(_BOM)
    if "\r\n" in text:
        # sh would keep the CR in every value ("1\r"); nobody means that.
        line = text[: text.index("\r\n")].count("\n") + 1
        warnings.append(
            ConfigWarning(f"{path}:{line}", "CRLF line endings; the carriage returns were removed")
        )
        text = text.replace("\r\n", "\n")
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        msg = f"{path}:{line}: NUL byte in file"
        raise ConfigError(msg, source=f"{path}:{line}")
    parser = _Parser(text, path, scope or {})
    return ConfdFile(parser.parse(), tuple(warnings))


def read_confd(path: Path, scope: Mapping[str, ConfdValue] | None = None) -> ConfdFile:
    """Read and parse the file at *path* (UTF-8, an optional BOM is skipped)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE + 1)
    except OSError as exc:
        msg = f"{path}: {exc.strerror or exc}"
        raise ConfigError(msg, source=str(path)) from None
    if len(data) > MAX_FILE:
        msg = f"{path}: larger than {MAX_FILE} bytes; not a conf.d file"
        raise ConfigError(msg, source=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        msg = f"{path}:{line}: not valid UTF-8"
        raise ConfigError(msg, source=f"{path}:{line}") from None
    return parse_confd(text, str(path), scope)


def read_confd_files(
    paths: Iterable[Path], scope: Mapping[str, ConfdValue] | None = None
) -> ConfdFile:
    """Read *paths* in order as one set, as OpenRC sources them.

    Later files override earlier ones and can refer to their variables;
    *scope* holds variables that may be referenced (e.g. from
    ``/etc/rc.conf``) but are not settings of their own.
    """
    visible = dict(scope or {})
    values: dict[str, ConfdValue] = {}
    warnings: list[ConfigWarning] = []
    for path in paths:
        parsed = read_confd(path, visible)
        visible.update(parsed.values)
        values.update(parsed.values)
        warnings.extend(parsed.warnings)
    return ConfdFile(values, tuple(warnings))


class _Parser:
    """A hand-written scanner over the whole text.

    Theory of operation: ``_peek`` transparently drops backslash-newline
    pairs (sh removes them everywhere except inside single quotes and
    comments), so every rule below sees the joined text.  A command is
    either ``export`` followed by names or assignments, or one or more
    ``NAME=value`` words; assignments take effect left to right, except that
    ``export`` expands all its arguments first, as dash does.
    """

    def __init__(self, text: str, path: str, scope: Mapping[str, ConfdValue]) -> None:
        self._text = text
        self._path = path
        self._pos = 0
        self._line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        self._outer = scope
        self._scope = {name: value.value for name, value in scope.items()}
        self._values: dict[str, ConfdValue] = {}
        self._exported: set[str] = set()
        # (first, last) line of the latest quoted string spanning lines: when a
        # later quote is unterminated, the missing quote is usually there.
        self._multiline_quote: tuple[int, int] | None = None

    # -- scanning primitives -------------------------------------------------

    def _line(self, pos: int) -> int:
        return bisect.bisect_right(self._line_starts, pos)

    def _error(self, pos: int, reason: str) -> ConfigError:
        where = f"{self._path}:{self._line(pos)}"
        return ConfigError(f"{where}: {reason}", source=where)

    def _peek(self) -> str:
        while self._text.startswith(_CONTINUATION, self._pos):
            self._pos += 2
        return self._text[self._pos : self._pos + 1]

    def _take(self) -> str:
        char = self._peek()
        self._pos += 1
        return char

    def _skip_blanks(self) -> None:
        while self._peek() in _BLANKS:
            self._pos += 1

    def _read_name(self) -> str:
        name: list[str] = []
        if self._peek() in _NAME_START:
            name.append(self._take())
            while self._peek() in _NAME_CHARS:
                name.append(self._take())
        return "".join(name)

    # -- statements ----------------------------------------------------------

    def parse(self) -> dict[str, ConfdValue]:
        """Parse the whole text and return the assignments it made.

        A command that cannot be parsed is skipped to the end of its line
        and parsing goes on, so one :class:`ConfigError` lists every bad line
        (up to :data:`MAX_ERRORS`), as validation lists every bad value.
        """
        errors: list[ConfigError] = []
        while len(errors) < MAX_ERRORS:
            self._skip_blanks()
            start = self._pos
            try:
                if not self._statement():
                    break
            except ConfigError as exc:
                errors.append(exc)
                self._skip_line(start)
        if errors:
            details = tuple(line for error in errors for line in error.details)
            first = errors[0]
            raise ConfigError(
                "\n".join(details), source=first.source, name=first.name, details=details
            )
        for name in self._exported:
            if name in self._values:
                self._values[name] = dataclasses.replace(self._values[name], exported=True)
            elif name in self._outer:
                self._values[name] = dataclasses.replace(self._outer[name], exported=True)
        return self._values

    def _statement(self) -> bool:
        """Parse a comment, an empty line or a command; return False at the end of the text."""
        char = self._peek()
        if not char:
            return False
        if char == "#":
            end = self._text.find("\n", self._pos)
            self._pos = len(self._text) if end < 0 else end
        elif char == "\n":
            self._pos += 1
        elif char == ";":
            raise self._error(self._pos, "unexpected ';'")
        else:
            self._command()
        return True

    def _skip_line(self, start: int) -> None:
        """Go past the end of the line on which parsing stopped (at least past *start*)."""
        end = self._text.find("\n", max(self._pos, start + 1))
        self._pos = len(self._text) if end < 0 else end + 1

    def _command(self) -> None:
        start = self._pos
        if self._read_name() == "export" and self._peek() in _WORD_END:
            self._export(start)
        else:
            self._pos = start
            self._assignments()
        # Both loops above stop only at the end of the command.
        if self._peek() == ";":
            self._pos += 1
            self._skip_blanks()
            if self._peek() == ";":
                raise self._error(self._pos, "unexpected ';;'")

    def _assignments(self) -> None:
        while True:
            self._skip_blanks()
            if self._peek() in (*_WORD_END, "#"):
                return
            start = self._pos
            name = self._read_name()
            if not name or self._peek() != "=":
                raise self._not_an_assignment(start)
            self._pos += 1
            self._assign(name, self._value(), self._line(start))

    def _export(self, start: int) -> None:
        # All arguments are expanded before export assigns any of them.
        pending: list[tuple[str, str | None, int]] = []
        while True:
            self._skip_blanks()
            if self._peek() in (*_WORD_END, "#"):
                break
            arg = self._pos
            name = self._read_name()
            if name and self._peek() == "=":
                self._pos += 1
                pending.append((name, self._value(), self._line(arg)))
            elif name and self._peek() in _WORD_END:
                pending.append((name, None, self._line(arg)))
            else:
                raise self._error(arg, "'export' takes only NAME or NAME=value arguments")
        if not pending:
            raise self._error(start, "'export' needs a variable name")
        for name, value, line in pending:
            self._exported.add(name)
            if value is not None:
                self._assign(name, value, line)

    def _assign(self, name: str, value: str, line: int) -> None:
        if len(value) > MAX_VALUE:
            where = f"{self._path}:{line}"
            msg = f"{where}: {name} would be {len(value)} characters long (limit {MAX_VALUE})"
            raise ConfigError(msg, source=where, name=name)
        self._scope[name] = value
        self._values[name] = ConfdValue(name, value, self._path, line)

    def _not_an_assignment(self, pos: int) -> ConfigError:
        self._pos = pos
        char = self._peek()
        if char in _OPERATORS:
            return self._error(pos, f"{char!r} is not allowed: only NAME=value assignments")
        name = self._read_name()
        if name and self._text.startswith("+=", self._pos):
            return self._error(pos, "bash-only '+=' is not supported")
        if name and self._text[self._pos :].lstrip(" \t").startswith("="):
            return self._error(pos, f"no blanks allowed between {name!r} and '='")
        word = name
        if not name:
            while self._peek() not in (*_WORD_END, *_OPERATORS):
                word += self._take()
        hint = _COMMAND_HINTS.get(word, f"command {word!r} is not allowed")
        return self._error(pos, f"{hint}: only NAME=value assignments")

    # -- words ---------------------------------------------------------------

    def _value(self) -> str:
        """Read the unquoted word after ``NAME=`` and return its value."""
        out: list[str] = []
        first = True
        while (char := self._peek()) not in _WORD_END:
            pos = self._pos
            self._pos += 1
            if char == "'":
                out.append(self._single_quoted(pos))
            elif char == '"':
                out.append(self._double_quoted(pos))
            elif char == "\\":
                # _peek dropped backslash-newline, so this escapes a real char
                # (or is a lone backslash at the end of the file).
                escaped = self._text[self._pos : self._pos + 1] or "\\"
                self._pos += 1
                out.append(escaped)
            elif char == "$":
                out.append(self._expansion(pos, quoted=False))
            elif char == "`":
                raise self._error(pos, "command substitution with backticks is not allowed")
            elif char == "(" and first:
                raise self._error(pos, "bash-only arrays NAME=(...) are not supported")
            elif char in _OPERATORS:
                raise self._error(pos, f"{char!r} is not allowed: only NAME=value assignments")
            elif char == "~":
                raise self._error(pos, "unquoted '~' (tilde expansion) is not supported")
            else:
                out.append(char)
            first = False
        return "".join(out)

    def _single_quoted(self, start: int) -> str:
        end = self._text.find("'", self._pos)
        if end < 0:
            raise self._unterminated(start, "single")
        content = self._text[self._pos : end]
        self._pos = end + 1
        self._note_quote(start)
        return content

    def _note_quote(self, start: int) -> None:
        first, last = self._line(start), self._line(self._pos - 1)
        if first != last:
            self._multiline_quote = (first, last)

    def _unterminated(self, start: int, kind: str) -> ConfigError:
        reason = f"unterminated {kind} quote"
        if self._multiline_quote is not None:
            first, last = self._multiline_quote
            reason += f" (the quoted string from line {first} to {last} may lack its closing quote)"
        return self._error(start, reason)

    def _double_quoted(self, start: int) -> str:
        out: list[str] = []
        while True:
            char = self._peek()
            if not char:
                raise self._unterminated(start, "double")
            pos = self._pos
            self._pos += 1
            if char == '"':
                self._note_quote(start)
                return "".join(out)
            if char == "\\":
                following = self._text[self._pos : self._pos + 1]
                if following in _DQUOTE_ESCAPES:
                    out.append(following)
                    self._pos += 1
                else:
                    out.append("\\")
            elif char == "$":
                out.append(self._expansion(pos, quoted=True))
            elif char == "`":
                raise self._error(pos, "command substitution with backticks is not allowed")
            else:
                out.append(char)

    def _expansion(self, dollar: int, *, quoted: bool) -> str:
        """Expand what follows a ``$`` at *dollar* (already consumed)."""
        char = self._peek()
        if char == "{":
            self._pos += 1
            return self._braced(dollar)
        if char in _NAME_START:
            return self._scope.get(self._read_name(), "")
        if char == "(":
            raise self._error(dollar, "command substitution $(...) is not allowed")
        if char in _SPECIAL_PARAMETERS:
            raise self._error(dollar, f"special parameter ${char} is not supported")
        if char in ("'", '"') and not quoted:
            raise self._error(dollar, f"bash-only ${char}...{char} quoting is not supported")
        return "$"

    def _braced(self, dollar: int) -> str:
        if self._peek() == "#":
            raise self._error(dollar, "${#NAME} (length) is not supported")
        name = self._read_name()
        if not name:
            raise self._error(dollar, "only ${NAME} references are supported")
        char = self._take()
        if char == "}":
            return self._scope.get(name, "")
        operator = char
        if char == ":":
            operator += self._take()
        if operator not in (":-", "-", ":+", "+"):
            shown = operator.strip() or "end of file"
            msg = f"${{{name}{shown}...}} is not supported (only :- - :+ +)"
            raise self._error(dollar, msg)
        word: list[str] = []
        while (char := self._peek()) != "}":
            if not char:
                raise self._error(dollar, "unterminated ${...}")
            if char in _NOT_LITERAL:
                msg = f"only a literal word is supported in ${{{name}{operator}...}}, not {char!r}"
                raise self._error(dollar, msg)
            word.append(self._take())
        self._pos += 1
        return _apply(operator, self._scope.get(name), "".join(word))


def _apply(operator: str, value: str | None, word: str) -> str:
    """Return the result of ``${V<operator>word}`` when V is *value* (None = unset)."""
    if operator == ":-":
        return value or word
    if operator == "-":
        return word if value is None else value
    if operator == ":+":
        return word if value else ""
    return word if value is not None else ""  # "+"
