"""Maps the snake_case names users type in YAML to operator classes.

Operator modules live under ``curate.filters``, ``curate.selectors``, ``curate.metrics`` and
``curate.synth``; they are imported lazily the first time the registry is read, so adding an
operator is adding a module, with no list to edit. Operator modules import heavy dependencies
inside methods, never at module import time, so ``curate ops`` works on a core install.

Names users type are stable: an operator whose behaviour changes gets a new name, and the old name is
*retired* rather than removed (as polars deprecates with a version and a pointer to the successor):
``@register("gopher_quality_v2", retired={"gopher_quality": "0.2"})`` keeps ``gopher_quality`` working,
with a ``FutureWarning`` naming the successor and the version that retired it.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import warnings
from typing import TYPE_CHECKING, TypeVar

from curate.core.errors import ConfigError

if TYPE_CHECKING:
    from curate.core.operator import Operator

_REGISTRY: dict[str, type[Operator]] = {}
_OPERATOR_PACKAGES = ("curate.filters", "curate.selectors", "curate.metrics", "curate.synth")
_discovered = False
_BROKEN: dict[str, str] = {}  # module -> import error, reported when a name is not found
_RETIRED: dict[str, tuple[str, str]] = {}  # retired name -> (successor, curate version that retired it)
log = logging.getLogger(__name__)

T = TypeVar("T", bound="type[Operator]")


def register(name: str, *, retired: dict[str, str] | None = None):
    """Class decorator: make an operator available under ``name`` in YAML and ``curate ops``.

    ``retired`` maps former names of this operator to the curate version that retired them; a retired
    name still resolves to this class, with a ``FutureWarning`` naming ``name`` (see :func:`get_operator`).
    A retired name can be neither a current name nor retired for two operators.
    """

    def deco(cls: T) -> T:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"operator name '{name}' is taken by {existing.__module__}.{existing.__qualname__}")
        if name in _RETIRED and _RETIRED[name][0] != name:
            raise ValueError(f"operator name '{name}' was retired in favour of '{_RETIRED[name][0]}'")
        for old, version in (retired or {}).items():
            if old in _REGISTRY and _REGISTRY[old].__qualname__ != cls.__qualname__:
                raise ValueError(f"cannot retire '{old}' for '{name}': it is a current operator name")
            if old in _RETIRED and _RETIRED[old][0] != name:
                raise ValueError(f"'{old}' is already retired in favour of '{_RETIRED[old][0]}'")
            _RETIRED[old] = (name, str(version))
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def retired_names() -> dict[str, tuple[str, str]]:
    """Every retired name -> (its successor, the curate version that retired it)."""
    _discover()
    return dict(sorted(_RETIRED.items()))


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
    """The operator class registered as ``name``; a ConfigError suggesting close names otherwise.

    A retired name returns its successor's class and warns (``FutureWarning``, also logged) with the
    successor's name and the version that retired it.
    """
    _discover()
    if name in _RETIRED and name not in _REGISTRY:
        new, version = _RETIRED[name]
        msg = (f"operator name '{name}' was retired in curate {version}: use '{new}' "
               "(the old name still works for now and will be removed in a later release)")
        warnings.warn(msg, FutureWarning, stacklevel=2)
        log.warning(msg)
        name = new
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
