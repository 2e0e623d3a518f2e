"""The one registry of erasure/unlearning methods (decorator-based, as in timm and torchvision)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

__all__ = ["MethodSpec", "register_method", "list_methods", "get_method", "make_config", "parse_method", "parse_options"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: ``fn(model, forget, retain=None, *, config, device, progress)`` and its
    config type. Calling the spec runs the unlearning contract (see ``__call__``)."""

    name: str
    fn: Callable[..., Any]
    config_cls: type
    training_free: bool
    summary: str
    needs_retain: bool = False
    family: str = "classifier"

    def __call__(
        self,
        model: nn.Module,
        forget: Any,
        retain: Any = None,
        *,
        config: Any = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        **overrides: Any,
    ) -> nn.Module:
        """Unlearn ``forget`` from ``model`` (in place) and return the model.

        ``forget``/``retain``: DataLoaders, Datasets or (inputs, labels) tensor pairs.
        ``overrides`` set fields of the method's config (``lr=0.01``). If anything fails the
        model's weights are restored before the error propagates.
        """
        from .data import num_samples
        from .patch import ErasurePatch

        if self.family == "diffusion":
            from .api import erase_concepts

            return erase_concepts(model, forget, retain=retain, method=self.name, config=config,
                                  device=device, progress=progress, **overrides)
        cfg = make_config(self.config_cls, config, overrides, method=self.name)
        if num_samples(forget) == 0:
            raise ValueError(f"method {self.name!r}: the forget set is empty")
        if self.needs_retain and (retain is None or num_samples(retain) == 0):
            raise ValueError(f"method {self.name!r} needs a non-empty retain set; pass retain=...")
        _check_labels(model, forget, "forget", self.name)
        if retain is not None:
            _check_labels(model, retain, "retain", self.name)
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            out = self.fn(model, forget, retain, config=cfg, device=device, progress=progress)
        except BaseException:
            _restore(model, saved)
            raise
        return model if out is None or isinstance(out, ErasurePatch) else out


FAMILIES = ("classifier", "diffusion")
_METHODS: dict[tuple[str, str], MethodSpec] = {}


def register_method(
    name: str, *, config: type, training_free: bool, needs_retain: bool = False, family: str = "classifier"
) -> Callable:
    """Decorator registering ``fn`` under ``name`` for a model ``family`` (``"classifier"``:
    ``fn(model, forget, retain, ...)``; ``"diffusion"``: ``fn(pipe, concepts, retain, ...) -> ErasurePatch``).
    Its docstring's first line is the summary. One id may serve several families (``unlink``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")

    def deco(fn: Callable) -> Callable:
        if (family, name) in _METHODS:
            raise ValueError(f"method {name!r} is already registered for {family}")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _METHODS[(family, name)] = MethodSpec(name, fn, config, training_free, summary, needs_retain, family)
        return fn

    return deco


def list_methods(training_free: bool | None = None, family: str = "classifier") -> list[str]:
    """Names of the methods registered for ``family`` (optionally only training-free or only trained ones)."""
    return sorted(n for (f, n), s in _METHODS.items()
                  if f == family and (training_free is None or s.training_free == training_free))


def get_method(name: str, family: str = "classifier") -> MethodSpec:
    """The :class:`MethodSpec` registered as ``name`` for ``family``."""
    try:
        return _METHODS[(family, name)]
    except KeyError:
        others = [f for f in FAMILIES if (f, name) in _METHODS]
        hint = f" ({name!r} is a {others[0]} method)" if others else ""
        raise ValueError(f"unknown method {name!r} for {family} models{hint}; available: {list_methods(family=family)}") from None


def make_config(config_cls: type, config: Any = None, overrides: dict[str, Any] | None = None, method: str = "") -> Any:
    """``config`` (default: ``config_cls()``) with ``overrides`` applied; unknown names are an error."""
    cfg = config if config is not None else config_cls()
    overrides = dict(overrides or {})
    known = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown options for method {method!r}: {unknown}; known: {sorted(known)}")
    return replace(cfg, **overrides) if overrides else cfg


def _check_labels(model: nn.Module, data: Any, what: str, method: str) -> None:
    """Labels of an (inputs, labels) pair must be classes of the model (checked on one forward)."""
    from .data import is_labeled_pair

    if not is_labeled_pair(data) or data[1].numel() == 0:
        return
    x, y = data
    param = next(model.parameters())
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:1].to(param.device, param.dtype))
    except RuntimeError as err:
        raise ValueError(f"method {method!r}: the model cannot run on the {what} inputs of shape "
                         f"{tuple(x.shape[1:])} ({err}); check image size and channels") from None
    finally:
        model.train(was)
    n_classes = out.shape[-1]
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"method {method!r}: {what} labels must lie in [0, {n_classes}); got "
                         f"[{int(y.min())}, {int(y.max())}]")


def _restore(model: nn.Module, saved: dict) -> None:
    current = model.state_dict()
    if set(current) == set(saved) and all(current[k].shape == saved[k].shape for k in saved):
        model.load_state_dict(saved)


def _convert(text: str, default: Any, name: str) -> Any:
    """A command-line value as the type of the field's default (no ``eval``)."""
    if text.lower() == "none":
        return None
    if isinstance(default, (tuple, list)):  # e.g. templates=a photo of {}|a painting of {}
        return type(default)(p.strip() for p in text.split("|"))
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"option {name} takes true/false; got {text!r}")
        return text.lower() in ("true", "1")
    for kind in ((type(default),) if default is not None else (int, float)):
        try:
            return kind(text)
        except ValueError:
            if default is not None:
                raise ValueError(f"option {name} takes a {kind.__name__}; got {text!r}") from None
    return text


def parse_options(config_cls: type, items: list[str], where: str = "") -> dict[str, Any]:
    """``["lr=0.02", "epochs=5"]`` -> ``{"lr": 0.02, "epochs": 5}``, typed by ``config_cls``'s
    fields (no ``eval``); unknown names are errors."""
    defaults = {f.name: getattr(config_cls(), f.name) for f in fields(config_cls)}
    options: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in items)):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"in {where!r}: write options as key=value; got {item!r}")
        if key not in defaults:
            raise ValueError(f"in {where!r}: {config_cls.__name__} has no option {key!r}; options: {sorted(defaults)}")
        options[key] = _convert(value, defaults[key], key)
    return options


def parse_method(text: str, family: str = "classifier") -> tuple[str, dict[str, Any]]:
    """``"ft:lr=0.02,epochs=5"`` -> ``("ft", {"lr": 0.02, "epochs": 5})``, typed by the config's
    fields; unknown methods and options are errors."""
    name, _, rest = text.strip().partition(":")
    return name, parse_options(get_method(name, family).config_cls, rest.split(","), where=text)
