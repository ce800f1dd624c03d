"""`@record`: immutable value classes that cost nothing to import.

It reads like `@dataclass(frozen=True, slots=True)` (fields and defaults come
from the class annotations, methods and properties are kept) but builds on
`collections.namedtuple`. `pybuild parse` must finish within three interpreter
start-ups, and importing `dataclasses` alone (it pulls in `inspect`) takes
longer than parsing a whole recipe, so grammar/ does without it.
"""

from __future__ import annotations

from collections import namedtuple

__all__ = ["record"]

_NOT_COPIED = frozenset({"__dict__", "__weakref__"})


def record(cls: type) -> type:
    """Return an immutable, hashable, comparable version of `cls`.

    Fields with a class-level value take it as their default (like dataclass
    fields, defaults must come last). `_replace(**changes)` returns a copy.
    """
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = [cls.__dict__[name] for name in names if name in cls.__dict__]
    base = namedtuple(cls.__name__, names, defaults=defaults or None, module=cls.__module__)
    body = {k: v for k, v in cls.__dict__.items() if k not in _NOT_COPIED and k not in names}
    body["__slots__"] = ()
    made = type(cls.__name__, (base,), body)
    made.__qualname__ = cls.__qualname__
    return made
