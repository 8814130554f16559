"""One registry type for every "name -> class" table: linear kinds, their typed configs, attention kinds.

The same rules everywhere:
* a name is registered once; registering it again is an error naming the class that holds it
  (``unregister`` first to replace it, e.g. in a test);
* the decorator sets ``cls.kind = name``, so an instance knows the name it is built by;
* looking up an unknown name is a ValueError that lists the valid names;
* reading is a read-only mapping (``name in reg``, ``reg[name]``, ``sorted(reg)``, ``reg.items()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    def __init__(self, what: str, valid_label: str = "valid"):
        self.what = what  # "linear kind", "attention": the words of the error messages
        self.valid_label = valid_label
        self._entries: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            held = self._entries[name]
            raise ValueError(
                f"{self.what} {name!r} is registered twice (it is {_qualname(held)}; "
                f"unregister it first to replace it by {_qualname(obj)})"
            )
        self._entries[name] = obj
        return obj

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: ``@reg.register("name")`` adds the class and sets ``cls.kind = name``."""

        def wrap(cls: type) -> type:
            self.add(name, cls)
            cls.kind = name
            return cls

        return wrap

    def unregister(self, name: str) -> None:
        """Remove ``name`` if present (a kind defined for a test, or one about to be replaced)."""
        self._entries.pop(name, None)

    def get_or_raise(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.what} {name!r}; {self.valid_label}: {', '.join(sorted(self))}") from None

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(sorted(self))})"


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
