"""Where a configuration value came from, and warnings about configuration.

Owns the provenance record (:class:`Origin`) attached to every effective
setting and the :class:`ConfigWarning` data returned by the loaders.  It
formats both for humans in the one-line ``path:line: NAME='value'`` style.
It must not log or print: callers decide what to do with warnings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ConfigWarning", "Origin", "OriginKind"]


class OriginKind(enum.StrEnum):
    """The layer a value came from, highest priority first."""

    FLAG = "flag"
    ENV = "env"
    CONFD = "confd"
    TOML = "toml"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one setting's value came from.

    ``name`` is the flag as parsed (``-m``, ``--no-remote``), the variable
    name (conf.d or environment) or the TOML key; ``path`` and ``line`` locate
    a file (``line`` is 0 when unknown); ``table`` is the TOML table.
    """

    kind: OriginKind
    name: str = ""
    path: str = ""
    line: int = 0
    table: str = ""

    @property
    def location(self) -> str:
        """Return the place without the name: ``path:line``, ``env``, ``flag`` or ``default``."""
        if self.kind in (OriginKind.CONFD, OriginKind.TOML):
            return f"{self.path}:{self.line}" if self.line else self.path
        return str(self.kind)

    @property
    def label(self) -> str:
        """Return the name as the user wrote it (``[daemon] key`` for TOML)."""
        if self.kind is OriginKind.TOML:
            return f"[{self.table}] {self.name}"
        return self.name

    def describe(self, raw: object) -> str:
        """Return ``location: NAME='raw'`` for an error message about *raw*."""
        shown = f"{self.label}={raw!r}" if self.label else repr(raw)
        separator = ": " if self.kind in (OriginKind.CONFD, OriginKind.TOML) else " "
        return f"{self.location}{separator}{shown}"

    def __str__(self) -> str:
        """Return e.g. ``/etc/conf.d/iceccd:3: ICECCD_NICE_LEVEL`` or ``flag -m``."""
        if self.kind is OriginKind.DEFAULT:
            return "default"
        separator = ": " if self.kind in (OriginKind.CONFD, OriginKind.TOML) else " "
        return f"{self.location}{separator}{self.label}"


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something in the configuration that works but deserves attention.

    ``where`` is a location as in :attr:`Origin.location` plus name
    (``path:line``, ``env NAME``); ``message`` says what and what to do.
    """

    where: str
    message: str

    def __str__(self) -> str:
        """Return the one-line form ``where: message``."""
        return f"{self.where}: {self.message}" if self.where else self.message
