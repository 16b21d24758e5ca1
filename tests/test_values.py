"""Frozen, slotted value classes (utils.values): what the model relies on of a frozen slotted dataclass."""

from __future__ import annotations

import copy
import pickle

import pytest

from utils.values import EMPTY, FrozenInstanceError, Value, frozen


@frozen(hidden=("note",))
class Point(Value):
    """A test value: two fields, one with a default, one hidden, one private cache."""

    x: float
    y: float = 0.0
    note: object = EMPTY
    _cache: object

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", float(self.x))


def test_it_builds_from_positional_or_keyword_arguments_with_defaults():
    assert Point(1, 2) == Point(x=1, y=2) and Point(3).y == 0.0
    assert Point(1).x == 1.0 and isinstance(Point(1).x, float)  # __post_init__ ran
    assert Point(1)._cache is None and "_cache" not in Point._fields


@pytest.mark.parametrize(
    "args, kwargs", [((), {}), ((1, 2, EMPTY, 4), {}), ((1,), {"x": 2}), ((), {"x": 1, "z": 2}), ((), {"_cache": 1})]
)
def test_it_refuses_missing_repeated_or_unknown_arguments(args, kwargs):
    with pytest.raises(TypeError):
        Point(*args, **kwargs)


def test_it_is_frozen_and_slotted():
    point = Point(1, 2)
    with pytest.raises(FrozenInstanceError):
        point.x = 5  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del point.y
    assert not hasattr(point, "__dict__") and Point.__slots__ == ("x", "y", "note", "_cache")
    with pytest.raises(TypeError):
        EMPTY["key"] = 1  # type: ignore[index]


def test_it_compares_hashes_and_shows_the_fields_but_hidden_ones():
    assert Point(1, 2, {"a": 1}) == Point(1, 2) and hash(Point(1, 2, {"a": 1})) == hash(Point(1, 2))
    assert Point(1, 2) != Point(1, 3) and Point(1, 2) != (1.0, 2.0)
    assert repr(Point(1, 2.5, {"secret": 1})) == "Point(x=1.0, y=2.5)"


def test_it_replaces_copies_and_pickles():
    point = Point(1, 2, {"a": 1})
    moved = point.replace(y=5)
    assert moved == Point(1, 5) and moved.note == {"a": 1} and point.y == 2
    assert copy.deepcopy(point) == point and pickle.loads(pickle.dumps(point)).note == {"a": 1}
