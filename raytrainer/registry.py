"""One registry pattern for trainers, scenarios and protocols.

A config names its trainer, scenario and protocol by a registered name (``"regression"``)
or by an import path (``"my_package.module:MyTrainer"``). Importing a module runs its
``@register`` decorators, so an import path also makes the module's other names known.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from raytrainer.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → object map with import-path fallback.

    Parameters
    ----------
    kind : str
        What the registry holds ("trainer", "scenario", ...), used in error messages.
    builtins : str, optional
        The package whose import registers raytrainer's own entries (``raytrainer.trainers``).
        It is imported on the first lookup or listing, so ``import raytrainer`` stays light.
    """

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._builtins = builtins

    def _load_builtins(self) -> None:
        if self._builtins is not None:
            module, self._builtins = self._builtins, None
            importlib.import_module(module)

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``."""

        def decorator(obj: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not obj:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered as {existing!r}; "
                    "pick another name."
                )
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Look up ``name``, importing ``module:attr`` import paths on demand.

        Raises
        ------
        RegistryError
            If the name is neither registered nor importable.
        """
        if name not in self._entries:
            self._load_builtins()
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            module_name, _, attr = name.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise RegistryError(
                    f"{self.kind} {name!r}: cannot import module {module_name!r} ({exc}). "
                    "Run from the folder that holds it or install it."
                ) from exc
            if name in self._entries:  # the module registered the full path itself
                return self._entries[name]
            try:
                obj = getattr(module, attr)
            except AttributeError as exc:
                raise RegistryError(
                    f"{self.kind} {name!r}: module {module_name!r} has no attribute {attr!r}."
                ) from exc
            return obj
        known = ", ".join(sorted(self._entries)) or "none"
        raise RegistryError(
            f"unknown {self.kind} {name!r}. Registered: {known}. "
            f"Use a registered name or an import path 'module:attr'."
        )

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
