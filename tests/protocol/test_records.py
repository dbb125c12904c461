"""Record classes: what ``@dataclass(frozen=True, slots=True)`` gives, without its import cost."""

from __future__ import annotations

import pickle

import pytest

from iceserv.protocol.records import _HOT, asdict, field, fields, is_record, record, replace


@record
class Point:
    """A test record: two fields with defaults and one left out of comparisons."""

    x: int
    y: int = 0
    note: str = field(default="", compare=False)


class TestRecord:
    def test_construction(self):
        """Positional and keyword arguments, defaults, and a readable repr."""
        assert Point(1, 2) == Point(x=1, y=2)
        assert Point(1).y == 0
        assert repr(Point(1, 2, "n")) == "Point(x=1, y=2, note='n')"

    def test_bad_arguments(self):
        """Missing, unknown, duplicate or surplus arguments are TypeErrors."""
        with pytest.raises(TypeError):
            Point()
        with pytest.raises(TypeError):
            Point(1, z=3)
        with pytest.raises(TypeError):
            Point(1, x=1)
        with pytest.raises(TypeError):
            Point(1, 2, "n", 4)

    def test_frozen_and_slotted(self):
        """Fields cannot be set or deleted, and there is no __dict__."""
        point = Point(1)
        with pytest.raises(AttributeError):
            point.x = 2
        with pytest.raises(AttributeError):
            del point.x
        assert not hasattr(point, "__dict__")

    def test_equality_and_hash_skip_uncompared_fields(self):
        """Fields with compare=False take part in neither equality nor the hash."""
        assert Point(1, 2, "a") == Point(1, 2, "b")
        assert hash(Point(1, 2, "a")) == hash(Point(1, 2, "b"))
        assert Point(1, 2) != Point(2, 1)

    def test_match_args_and_pickle(self):
        """Records work in match statements and survive pickling."""
        match Point(3, 4):
            case Point(x, y):
                assert (x, y) == (3, 4)
        assert pickle.loads(pickle.dumps(Point(3, 4, "n"))) == Point(3, 4, "n")  # noqa: S301


class TestHotRecord:
    """After _HOT constructions a class gets a generated __init__: it must behave the same."""

    @staticmethod
    def _hot_class() -> type:
        @record
        class Hot:
            """Like Point, built fresh so that this test makes it hot itself."""

            x: int
            y: int = 0
            note: str = field(default="", compare=False)

        generic = Hot.__init__
        for n in range(_HOT):
            Hot(n)
        assert Hot.__init__ is not generic  # the generated one is in place
        return Hot

    def test_same_values_and_errors(self):
        """Positional, keyword and default arguments; every bad call is still a TypeError."""
        hot = self._hot_class()
        assert hot(1, 2) == hot(x=1, y=2)
        assert hot(1).y == 0
        assert repr(hot(1, 2, "n")).endswith("Hot(x=1, y=2, note='n')")
        for args, kwargs in (((), {}), ((1,), {"z": 3}), ((1,), {"x": 1}), ((1, 2, "n", 4), {})):
            with pytest.raises(TypeError):
                hot(*args, **kwargs)
        with pytest.raises(TypeError, match="needs a value for field 'x'"):
            hot(y=1)
        with pytest.raises(AttributeError):
            hot(1).x = 2


class TestHelpers:
    def test_fields_asdict_replace(self):
        """fields(), asdict() and replace() stand in for their dataclasses twins."""
        point = Point(1, 2, "n")
        assert is_record(point)
        assert not is_record(object())
        assert fields(point) == ("x", "y", "note")
        assert asdict(point) == {"x": 1, "y": 2, "note": "n"}
        assert replace(point, y=5) == Point(1, 5)
        with pytest.raises(TypeError):
            replace(point, z=1)
