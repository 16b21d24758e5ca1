"""Frozen, slotted value classes, built without the ``dataclasses`` machinery.

The hooks import the model at every call; ``dataclasses`` (inspect, ast, code compiled per class) doubled
their start-up. :func:`frozen` gives what the model used of ``@dataclass(frozen=True, slots=True)``: fields
from annotations (defaults as class attributes), positional or keyword construction, ``__post_init__``,
immutability, ``==``/``hash``/``repr`` over the fields but ``hidden`` ones, ``replace``, pickling. Fields named
``_x`` are private slots: no constructor argument, ``None`` until set with ``object.__setattr__`` (a cache).
"""

from __future__ import annotations


class _ReadOnlyDict(dict):
    """An empty mapping default that no one can fill (a shared ``{}`` default could be)."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("a read-only mapping")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse


EMPTY = _ReadOnlyDict()


class FrozenInstanceError(AttributeError):
    """An attempt to change a field of a frozen value."""


class Value:
    """Base of :func:`frozen` classes; see the module docstring."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()  # constructor arguments, in order
    _compared: tuple[str, ...] = ()
    _setters: tuple = ()  # the slots' setters: fields in order, then private slots
    _defaults: dict = {}  # noqa: RUF012 - replaced per class by frozen(), never mutated

    def __init__(self, *args: object, **kwargs: object) -> None:
        if args:
            if len(args) > len(self._fields) or not kwargs.keys().isdisjoint(self._fields[: len(args)]):
                raise TypeError(f"{type(self).__name__}() got too many or repeated arguments")
            kwargs.update(zip(self._fields, args, strict=False))
        defaults = self._defaults
        for field, set_field in zip(self._fields, self._setters, strict=False):
            if field in kwargs:
                set_field(self, kwargs.pop(field))
            elif field in defaults:
                set_field(self, defaults[field])
            else:
                raise TypeError(f"{type(self).__name__}() missing argument {field!r}")
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got unexpected arguments {sorted(kwargs)}")
        for set_field in self._setters[len(self._fields) :]:
            set_field(self, None)
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _key(self) -> tuple:
        return tuple(getattr(self, field) for field in self._compared)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        shown = ", ".join(f"{field}={getattr(self, field)!r}" for field in self._compared)
        return f"{type(self).__name__}({shown})"

    def __getstate__(self) -> dict:
        return {field: getattr(self, field) for field in self._fields}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def replace(self, **changes: object) -> Value:
        """A copy with ``changes`` applied (like ``dataclasses.replace``)."""
        return type(self)(**{**{field: getattr(self, field) for field in self._fields}, **changes})


def frozen(*, hidden: tuple[str, ...] = ()):
    """Class decorator: rebuild a :class:`Value` subclass with its annotated fields as ``__slots__``."""

    def build(cls: type) -> type:
        names = list(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 - inspect is what this avoids
        namespace = {key: value for key, value in cls.__dict__.items() if key not in names}
        namespace.pop("__dict__", None)
        namespace.pop("__weakref__", None)
        namespace["__slots__"] = tuple(names)
        namespace["_fields"] = tuple(name for name in names if not name.startswith("_"))
        namespace["_compared"] = tuple(n for n in namespace["_fields"] if n not in hidden)
        namespace["_defaults"] = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
        built = type(cls)(cls.__name__, cls.__bases__, namespace)
        # Slot descriptors set a frozen value's fields (object.__setattr__ would look each one up).
        built._setters = tuple(built.__dict__[name].__set__ for name in names)
        return built

    return build
