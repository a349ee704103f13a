"""Maps the snake_case names users type in YAML to operator classes.

Operator modules live under ``curate.filters``, ``curate.selectors``, ``curate.metrics`` and
``curate.synth``; they are imported lazily the first time the registry is read, so adding an
operator is adding a module, with no list to edit. Operator modules import heavy dependencies
inside methods, never at module import time, so ``curate ops`` works on a core install.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, TypeVar

from curate.core.errors import ConfigError

if TYPE_CHECKING:
    from curate.core.operator import Operator

_REGISTRY: dict[str, type[Operator]] = {}
_OPERATOR_PACKAGES = ("curate.filters", "curate.selectors", "curate.metrics", "curate.synth")
_discovered = False
_BROKEN: dict[str, str] = {}  # module -> import error, reported when a name is not found

T = TypeVar("T", bound="type[Operator]")


def register(name: str):
    """Class decorator: make an operator available under ``name`` in YAML and ``curate ops``."""

    def deco(cls: T) -> T:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"operator name '{name}' is taken by {existing.__module__}.{existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for pkg_name in _OPERATOR_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            if not mod.name.rsplit(".", 1)[-1].startswith("_"):
                try:
                    importlib.import_module(mod.name)
                except Exception as e:  # noqa: BLE001 - one broken module must not hide every other operator
                    _BROKEN[mod.name] = f"{type(e).__name__}: {e}"


def get_operator(name: str) -> type[Operator]:
    """The operator class registered as ``name``; a ConfigError suggesting close names otherwise."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (run `curate ops` for the list)"
        if _BROKEN:
            hint += "; these operator modules failed to import: " + "; ".join(f"{m}: {e}" for m, e in _BROKEN.items())
        raise ConfigError(f"unknown operator '{name}'{hint}") from None


def all_operators() -> dict[str, type[Operator]]:
    """Every registered operator, sorted by name."""
    _discover()
    return dict(sorted(_REGISTRY.items()))
