"""Objectives by name. Each objective module registers its classes with ``@register``."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil

from prefalign.objectives.base import Objective

_REGISTRY: dict[str, type[Objective]] = {}
_LOADED = False


def register(cls: type[Objective]) -> type[Objective]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"objective name '{cls.name}' registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    """Import every module in this package once, so their ``@register`` decorators run."""
    global _LOADED
    if _LOADED:
        return
    import prefalign.objectives as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in ("base", "registry", "combine"):
            importlib.import_module(f"prefalign.objectives.{mod.name}")
    _LOADED = True


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_class(name: str) -> type[Objective]:
    _load_all()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown objective '{name}'{hint}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def hparam_names(name: str) -> list[str]:
    cls = get_class(name)
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def get(name: str, **hparams) -> Objective:
    """Build objective ``name`` with hyperparameters; unknown names or hyperparameters raise ValueError."""
    cls = get_class(name)
    known = hparam_names(name)
    for key in hparams:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(
                f"objective '{name}' has no hyperparameter '{key}'{hint}; known: {', '.join(known) or 'none'}"
            )
    obj = cls(**hparams)
    obj.validate()
    return obj
