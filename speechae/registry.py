"""Name-to-class tables for the extension points (bottleneck, regularizer, semantic objective,
decoder, training task).

A new arm or objective is one file that registers its class plus its config block::

    from speechae.losses.semantic import REGULARIZERS, register_term

    @register_term(REGULARIZERS, "my_reg", default_weight=0.01, options=MyRegOptions)
    class MyRegularizer(nn.Module): ...

(see docs/extending.md).  A module that registers entries is imported by the registry's
``builtins`` or, for a project's own entries, by the experiment config's ``imports:`` list.

Lookups fail with a :class:`~speechae.config.ConfigError` that lists the registered names, so
a typo in a config names the valid choices.  The registries are filled when the module that
defines an entry is imported; each registry imports its built-in entries (``builtins``) on
first use so that ``REGISTRY.get(name)`` works without importing them by hand.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

from speechae.config import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """An explicit name -> entry table for one extension point.

    Args:
        kind: what the entries are, used in error messages ("bottleneck", "task", ...).
        builtins: modules imported on first lookup; they register the built-in entries.
    """

    def __init__(self, kind: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._builtins = builtins
        self._loaded = not builtins

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Register ``entry`` under ``name`` (or use as a decorator); a name is registered once."""
        def add(obj: T) -> T:
            current = self._entries.get(name)
            if current is not None and current is not obj:
                raise ValueError(f"{self.kind} '{name}' is already registered ({current!r})")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            # builtins are named "speechae.<...>"; a copy of the package under another name
            # (bench/bench_step.py --compare-ref imports an old revision as speechae_ref) loads its own
            package = __name__.split(".")[0]
            for module in self._builtins:
                if module.startswith("speechae.") and package != "speechae":
                    module = package + module[len("speechae"):]
                importlib.import_module(module)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; ConfigError naming the choices when there is none."""
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} '{name}'; choose one of {sorted(self._entries)}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
