"""Named tables of plug-ins (strategies, objectives, callbacks, model-folder loaders).

A capability registers itself where it is defined, so adding one means adding a module, never editing a chain of
`if name == ...` elsewhere. The tables live in the layer of the interface they hold; this module only gives them
one shape.

>>> COLOURS: Registry[str] = Registry("colour")
>>> @COLOURS.register("red")
... def red() -> str:
...     return "#f00"
>>> COLOURS.get("red")()
'#f00'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from adaptext.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Items of one kind by name; `get` of an unknown name is a `ConfigError` listing the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator: register the decorated class or function as `name` (refuses a second one unless `replace`)."""

        def add(item: T) -> T:
            self.add(name, item, replace=replace)
            return item

        return add

    def add(self, name: str, item: T, *, replace: bool = False) -> None:
        if name in self._items and not replace:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._items[name] = item

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r}; the {self.kind}s are: {known}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


# The strategy table lives here, low in the layers, so that the config can tell a registered strategy name from a
# typo; its items are `adaptext.training.strategy.Strategy` subclasses, registered where they are defined.
STRATEGIES: Registry[Any] = Registry("strategy")
