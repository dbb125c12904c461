"""Writing loaded settings out: text, TOML and JSON, with or without provenance.

Owns the output of ``iceserv config show`` (every effective setting with
where it came from) and ``iceserv config migrate`` (the settings a conf.d
file makes, as a TOML document for ``/etc/iceserv/iceserv.toml``, written
with tomli-w so it reads back to the same settings).  It returns strings
and must not print or open files.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypeAlias

import tomli_w

from iceserv.config.origin import OriginKind

if TYPE_CHECKING:
    from collections.abc import Mapping

    from iceserv.config.crosswalk import Service
    from iceserv.config.models import DaemonSettings, SchedulerSettings
    from iceserv.config.sources import Loaded

    AnyLoaded: TypeAlias = Loaded[DaemonSettings] | Loaded[SchedulerSettings]

__all__ = ["render_json", "render_migration", "render_text", "render_toml"]


def _values(loaded: AnyLoaded) -> dict[str, object]:
    """Return the settings as TOML/JSON-compatible values (None = not set)."""
    return loaded.settings.model_dump(mode="json")


def _toml_value(value: object) -> str:
    """Return *value* as it would appear on the right of ``=`` in TOML."""
    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


def render_text(loaded_by_service: Mapping[Service, AnyLoaded]) -> str:
    """Return a table of every setting, its value and its source, per service."""
    out: list[str] = []
    for service, loaded in loaded_by_service.items():
        out.append(f"[{service.value}]")
        for name, value in _values(loaded).items():
            shown = "(not set)" if value is None else _toml_value(value)
            out.append(f"  {name:<30} {shown:<26} {loaded.provenance[name]}")
    return "\n".join(out) + "\n"


def render_toml(loaded_by_service: Mapping[Service, AnyLoaded]) -> str:
    """Return every setting as TOML, each line commented with its source."""
    out: list[str] = []
    for service, loaded in loaded_by_service.items():
        if out:
            out.append("")
        out.append(f"[{service.value}]")
        for name, value in _values(loaded).items():
            origin = loaded.provenance[name]
            if value is None:
                out.append(f"# {name} is not set  # {origin}")
            else:
                out.append(f"{name} = {_toml_value(value)}  # {origin}")
    return "\n".join(out) + "\n"


def render_json(loaded_by_service: Mapping[Service, AnyLoaded]) -> str:
    """Return ``{service: {name: {"value": ..., "source": ...}}}`` as JSON."""
    document = {
        service.value: {
            name: {"value": value, "source": str(loaded.provenance[name])}
            for name, value in _values(loaded).items()
        }
        for service, loaded in loaded_by_service.items()
    }
    return json.dumps(document, indent=2) + "\n"


def render_migration(loaded_by_service: Mapping[Service, AnyLoaded], header: str = "") -> str:
    """Return a TOML document with the settings that came from conf.d files.

    Only values whose source is conf.d are written, so defaults stay
    defaults; *header* becomes a leading comment block.
    """
    tables: dict[str, dict[str, object]] = {}
    for service, loaded in loaded_by_service.items():
        values = _values(loaded)
        tables[service.value] = {
            name: values[name]
            for name, origin in loaded.provenance.items()
            if origin.kind is OriginKind.CONFD and values[name] is not None
        }
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return comment + tomli_w.dumps(tables)
