"""The one registry of erasure/unlearning methods (decorator-based, as in timm and torchvision)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MethodSpec", "register_method", "list_methods", "get_method"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: ``fn(model, forget, retain=None, *, config, **kw)`` and its config type."""

    name: str
    fn: Callable[..., Any]
    config_cls: type
    training_free: bool
    summary: str


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, *, config: type, training_free: bool) -> Callable:
    """Decorator registering ``fn`` under ``name``; its docstring's first line is the summary."""

    def deco(fn: Callable) -> Callable:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _METHODS[name] = MethodSpec(name, fn, config, training_free, summary)
        return fn

    return deco


def list_methods(training_free: bool | None = None) -> list[str]:
    """Names of the registered methods (optionally only training-free or only trained ones)."""
    return sorted(n for n, s in _METHODS.items() if training_free is None or s.training_free == training_free)


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` registered as ``name``."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {list_methods()}") from None
