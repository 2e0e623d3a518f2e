"""The one table of erasure/unlearning methods (decorator-based, as in timm and torchvision).

A row says what a method is; :mod:`eraser.runner` runs it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["FAMILIES", "RETURNS", "MethodSpec", "register_method", "list_methods", "get_method", "make_config"]


@dataclass(frozen=True)
class MethodSpec:
    """A row of the method table: ``fn(model, forget, retain=None, *, config, device, progress)``,
    its config type and what it gives back (``returns``). ``eraser.run_method`` runs it."""

    name: str
    fn: Callable[..., Any]
    config_cls: type
    training_free: bool
    summary: str
    needs_retain: bool = False
    family: str = "classifier"
    returns: str = "model"


FAMILIES = ("classifier", "diffusion")
# What a method's function gives back: "patch" (it edits the model and returns the ErasurePatch),
# "model" (it edits the model's weights in place; the runner records the change as a patch) or
# "wrapper" (the weights stay; it returns a new module to use instead, e.g. a forget vector).
RETURNS = ("patch", "model", "wrapper")
_METHODS: dict[tuple[str, str], MethodSpec] = {}


def register_method(
    name: str,
    *,
    config: type,
    training_free: bool,
    needs_retain: bool = False,
    family: str = "classifier",
    returns: str | None = None,
) -> Callable:
    """Decorator registering ``fn`` under ``name`` for a model ``family`` (``"classifier"``:
    ``fn(model, forget, retain, ...)``; ``"diffusion"``: ``fn(pipe, concepts, retain, ...) -> ErasurePatch``).
    ``returns``: see ``RETURNS`` (default: "patch" for diffusion methods, else "model"). Its
    docstring's first line is the summary. One id may serve several families (``unlink``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")
    returns = returns or ("patch" if family == "diffusion" else "model")
    if returns not in RETURNS:
        raise ValueError(f"returns must be one of {RETURNS}; got {returns!r}")

    def deco(fn: Callable) -> Callable:
        if (family, name) in _METHODS:
            raise ValueError(f"method {name!r} is already registered for {family}")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _METHODS[(family, name)] = MethodSpec(name, fn, config, training_free, summary, needs_retain, family, returns)
        return fn

    return deco


def list_methods(filter: str = "", training_free: bool | None = None, family: str = "classifier") -> list[str]:
    """Names of the methods registered for ``family``, optionally only those matching the wildcard
    ``filter`` (``"unlink*"``, as timm's ``list_models``) or only training-free / trained ones."""
    return sorted(
        n
        for (f, n), s in _METHODS.items()
        if f == family
        and (not filter or fnmatch.fnmatchcase(n, filter))
        and (training_free is None or s.training_free == training_free)
    )


def get_method(name: str, family: str = "classifier") -> MethodSpec:
    """The :class:`MethodSpec` registered as ``name`` for ``family``."""
    try:
        return _METHODS[(family, name)]
    except KeyError:
        others = [f for f in FAMILIES if (f, name) in _METHODS]
        hint = f" ({name!r} is a {others[0]} method)" if others else ""
        raise ValueError(
            f"unknown method {name!r} for {family} models{hint}; available: {list_methods(family=family)}"
        ) from None


def make_config(config_cls: type, config: Any = None, overrides: dict[str, Any] | None = None, method: str = "") -> Any:
    """``config`` (default: ``config_cls()``) with ``overrides`` applied; unknown names are an error."""
    cfg = config if config is not None else config_cls()
    overrides = dict(overrides or {})
    known = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown options for method {method!r}: {unknown}; known: {sorted(known)}")
    return replace(cfg, **overrides) if overrides else cfg
