"""Frozen, slotted record classes for protocol values, without importing ``dataclasses``.

``icecc`` runs once per compile, so the protocol package must import fast.
Building 32 message classes with :mod:`dataclasses` cost about 18 ms per
process (its import pulls in ``inspect`` and ``ast``, and each class is
generated with ``exec``); :func:`record` builds the same kind of class --
immutable, ``__slots__``, keyword or positional construction, field-wise
equality and hash, a readable ``repr``, ``__match_args__`` -- from plain
closures in a fraction of that.  Type checkers see it as a dataclass
transform (PEP 681), so constructors are checked as for ``@dataclass``.

Fields are the class's annotated attributes in order (``ClassVar`` ones
excluded); defaults must be immutable, and a field without one must be given.
:func:`field` marks a field left out of comparisons.  :func:`replace`,
:func:`fields` and :func:`asdict` stand in for their ``dataclasses`` twins.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Final, TypeVar, dataclass_transform

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["asdict", "field", "fields", "is_record", "record", "replace"]

T = TypeVar("T")

_FIELDS = "__record_fields__"
_MISSING: Any = object()  # a field without a default must be given


class _Field:
    __slots__ = ("compare", "default")

    def __init__(self, default: object, *, compare: bool) -> None:
        self.default = default
        self.compare = compare


def field(*, default: Any, compare: bool = True) -> Any:  # noqa: ANN401 - like dataclasses.field
    """Declare a field's *default*; ``compare=False`` leaves it out of ``==`` and ``hash``."""
    return _Field(default, compare=compare)


def _frozen(self: object, name: str, *_value: object) -> None:
    msg = f"cannot assign to field {name!r} of {type(self).__name__}: records are frozen"
    raise AttributeError(msg)


#: Constructions of one record class after which it gets a generated ``__init__``.
_HOT: Final = 256


def _missing(self: object, name: str) -> None:
    msg = f"{type(self).__name__} needs a value for field {name!r}"
    raise TypeError(msg)


def _fast_init(names: tuple[str, ...], defaults: tuple[object, ...]) -> Callable[..., None]:
    """Return an ``__init__`` made for *names* (one ``exec``: for hot classes only).

    It takes the same arguments as the generic one; wrong ones are a
    ``TypeError`` too (with Python's own wording).
    """
    params = ", ".join(f"{n}=_d[{i}]" for i, n in enumerate(names))
    checks = "".join(
        f"    if {n} is _M: _missing(_self, {n!r})\n"
        for n, d in zip(names, defaults, strict=True)
        if d is _MISSING
    )
    sets = "".join(f"    _set(_self, {n!r}, {n})\n" for n in names) or "    pass\n"
    source = f"def __init__(_self, {params}):\n{checks}{sets}"
    scope: dict[str, Any] = {
        "_d": defaults,
        "_M": _MISSING,
        "_missing": _missing,
        "_set": object.__setattr__,
    }
    exec(source, scope)  # noqa: S102 - field names are identifiers of a class we were given
    init: Callable[..., None] = scope["__init__"]
    return init


def _make_init(names: tuple[str, ...], defaults: tuple[object, ...]) -> Callable[..., None]:
    """Return the generic ``__init__``; after :data:`_HOT` uses it installs a generated one.

    ``icecc`` builds a handful of records per run and never pays for the
    ``exec``; a scheduler decoding thousands of messages a second does, once
    per class it uses.
    """
    count = len(names)
    setter = object.__setattr__
    uses = [0]

    def __init__(self: object, *args: object, **kwargs: object) -> None:  # noqa: N807
        uses[0] += 1
        if uses[0] == _HOT:
            type(self).__init__ = _fast_init(names, defaults)  # type: ignore[method-assign]
        if len(args) > count:
            msg = f"{type(self).__name__} takes {count} positional arguments, {len(args)} given"
            raise TypeError(msg)
        for name, value in zip(names, args, strict=False):
            setter(self, name, value)
        for name, default in zip(names[len(args) :], defaults[len(args) :], strict=True):
            value = kwargs.pop(name, default)
            if value is _MISSING:
                _missing(self, name)
            setter(self, name, value)
        if kwargs:
            msg = f"{type(self).__name__} got unexpected or repeated fields {sorted(kwargs)}"
            raise TypeError(msg)

    return __init__


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    """Turn the annotated class *cls* into a frozen, slotted record class."""
    # Not inspect.get_annotations: importing inspect is what this module avoids.
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    names = tuple(
        n for n, a in annotations.items() if not str(a).startswith(("ClassVar", "typing.ClassVar"))
    )
    specs = [cls.__dict__.get(n, _MISSING) for n in names]
    defaults = tuple(s.default if isinstance(s, _Field) else s for s in specs)
    compared = tuple(
        n for n, s in zip(names, specs, strict=True) if not isinstance(s, _Field) or s.compare
    )
    key = operator.attrgetter(*compared) if compared else (lambda _self: ())
    namespace = {
        k: v
        for k, v in cls.__dict__.items()
        if k not in names and k not in ("__dict__", "__weakref__")
    }
    qualname = cls.__qualname__

    def __eq__(self: object, other: object) -> bool:  # noqa: N807
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(key(self) == key(other))

    def __hash__(self: object) -> int:  # noqa: N807
        return hash((self.__class__, key(self)))

    def __repr__(self: object) -> str:  # noqa: N807
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{qualname}({inner})"

    def __reduce__(self: object) -> tuple[object, ...]:  # noqa: N807 - pickling without __dict__
        return (self.__class__, tuple(getattr(self, n) for n in names))

    namespace.update(
        __slots__=names,
        __match_args__=names,
        __init__=_make_init(names, defaults),
        __eq__=__eq__,
        __hash__=__hash__,
        __repr__=__repr__,
        __reduce__=__reduce__,
        __setattr__=_frozen,
        __delattr__=_frozen,
    )
    namespace[_FIELDS] = names
    built = type(cls.__name__, cls.__bases__, namespace)
    built.__qualname__ = qualname
    return built


def is_record(obj: object) -> bool:
    """Return whether *obj* is a record instance (not a record class)."""
    return not isinstance(obj, type) and hasattr(type(obj), _FIELDS)


def fields(obj: object) -> tuple[str, ...]:
    """Return the field names of a record class or instance, in order."""
    names: tuple[str, ...] = getattr(obj if isinstance(obj, type) else type(obj), _FIELDS)
    return names


def asdict(obj: object) -> dict[str, Any]:
    """Return a record's fields as a dict (not recursive)."""
    return {n: getattr(obj, n) for n in fields(obj)}


def replace(obj: T, /, **changes: Any) -> T:  # noqa: ANN401
    """Return a copy of record *obj* with *changes* applied."""
    values = asdict(obj)
    unknown = set(changes) - set(values)
    if unknown:
        msg = f"{type(obj).__name__} has no fields {sorted(unknown)}"
        raise TypeError(msg)
    values.update(changes)
    return type(obj)(**values)
