"""Named registries: one place where models, encoders, explainers and datasets are listed.

A :class:`Registry` maps names to entries. Modules register their own entries where they are
defined (a decorator or one call), and everything that offers a choice — the command line, the
benchmarks, the shared tests — reads the registry instead of keeping its own list. Adding a model
or an explainer is therefore one new file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")
C = TypeVar("C")


class Registry(Generic[T]):
    """Entries of one kind (``"model"``, ``"encoder"``, …) by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register ``entry`` as ``name``; a second entry under one name needs ``replace=True``."""
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if name in self._entries and not replace:
            raise ValueError(
                f"{self.kind} {name!r} is already registered (pass replace=True to redefine it)"
            )
        self._entries[name] = entry
        return entry

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator form of :meth:`add`: ``@REGISTRY.register("name")``."""

        def decorate(entry: T) -> T:
            return self.add(name, entry, replace=replace)

        return decorate

    def instance_decorator(self, protocol: type) -> Callable[[type[C]], type[C]]:
        """A class decorator that registers one instance of the class under its ``name``
        attribute, after checking it implements ``protocol`` (a runtime-checkable Protocol)."""

        def decorate(cls: type[C]) -> type[C]:
            instance = cls()
            if not isinstance(instance, protocol):
                raise TypeError(
                    f"{cls.__name__} does not implement the {protocol.__name__} protocol"
                )
            self.add(instance.name, instance)  # type: ignore[attr-defined, arg-type]
            return cls

        return decorate

    def get(self, name: str) -> T:
        """The entry called ``name``; a ``ValueError`` listing the known names otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(self._entries) or "none"
            raise ValueError(f"unknown {self.kind} {name!r}; available: {known}") from None

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def remove(self, name: str) -> None:
        """Forget ``name`` (for tests and plug-ins that unload)."""
        self.get(name)
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:  # an unhashable name (a list from an edited description) is unknown
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
