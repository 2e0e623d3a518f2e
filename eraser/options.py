"""Method options written as text (command line, benchmark configs): ``"ft:lr=0.02,epochs=5"``,
typed by the method's config fields, never ``eval``-ed."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .registry import get_method

__all__ = ["parse_method", "parse_options"]


def _convert(text: str, default: Any, name: str) -> Any:
    """A command-line value as the type of the field's default (no ``eval``)."""
    if isinstance(default, str):  # a word option keeps its word: closure=none means "none"
        return text
    if text.lower() == "none":
        return None
    if isinstance(default, (tuple, list)):  # e.g. templates=a photo of {}|a painting of {}
        return type(default)(p.strip() for p in text.split("|"))
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"option {name} takes true/false; got {text!r}")
        return text.lower() in ("true", "1")
    for kind in (type(default),) if default is not None else (int, float):
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
