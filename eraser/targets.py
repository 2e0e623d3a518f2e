"""Choosing the layers to edit: PEFT-style ``target_modules`` patterns and named presets."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import nn

from .layers import layer_kind, supported_kinds

__all__ = ["resolve_targets", "register_preset", "PRESETS", "Preset"]

Targets = str | Sequence[str]


# Named presets: a regular expression over layer names, or a function giving the names for a model.
# The model families' adapters register theirs (``eraser.families``); one name, one preset.
Preset = str | Callable[[nn.Module], list[str]]
PRESETS: dict[str, Preset] = {}


def register_preset(name: str, preset: Preset) -> None:
    """Make ``name`` a preset for ``resolve_targets`` (called by the model-family adapters)."""
    if name in PRESETS and PRESETS[name] is not preset:
        raise ValueError(f"layer preset {name!r} is already registered")
    if isinstance(preset, str):
        re.compile(preset)  # a bad pattern fails at registration, not at a user's call
    elif not callable(preset):
        raise TypeError(f"a preset is a regex string or a function model -> layer names; got {type(preset).__name__}")
    PRESETS[name] = preset


def _suffixes(name: str) -> set[str]:
    """``"a.b.c"`` -> ``{"a.b.c", "b.c", "c"}``: the names a PEFT-style target may give for it."""
    parts = name.split(".")
    return {".".join(parts[i:]) for i in range(len(parts))}


def resolve_targets(model: nn.Module, layers: Targets) -> dict[str, nn.Module]:
    """Map layer names to modules.

    ``layers`` is a preset name (:data:`PRESETS`, registered by the model families: ``"head"``;
    ``"clip_mlp"``, ``"clip_attn"``, ``"clip_last_mlp"`` for CLIP towers; ``"cross_attn_kv"``, ... for
    pipelines), a regular expression matched against whole module names (a string), or a list of
    names, each matching a module whose name equals it or ends in ``"." + name`` (PEFT's
    ``target_modules`` rules).
    """
    modules = dict(model.named_modules())
    preset = PRESETS.get(layers) if isinstance(layers, str) else None
    if isinstance(preset, str):  # a named pattern: resolved as the pattern, errors name the preset
        pattern = re.compile(preset)
        names = [n for n in modules if n and pattern.fullmatch(n)]
    elif preset is not None:
        names = preset(model)
        if not names:
            raise ValueError(
                f"preset {layers!r} found no supported layer in {type(model).__name__} "
                f"(supported kinds: {supported_kinds()}); name the layers explicitly."
            )
    elif isinstance(layers, str):
        try:
            pattern = re.compile(layers)
        except re.error as err:
            raise ValueError(f"layers={layers!r} is not a valid regular expression: {err}") from None
        names = [n for n in modules if n and pattern.fullmatch(n)]
    elif isinstance(layers, Sequence) and layers and all(isinstance(t, str) for t in layers):
        wanted = set(layers)
        names = [n for n in modules if n and _suffixes(n) & wanted]
    else:
        raise TypeError(f"layers must be a preset name, a regex string or a list of names; got {layers!r}")

    if not names:
        available = [n for n, m in modules.items() if n and layer_kind(m) is not None]
        raise ValueError(
            f"layers={layers!r} matches no module of {type(model).__name__}. "
            f"Editable layers include: {available[:12]}{' ...' if len(available) > 12 else ''}"
        )
    unsupported = [n for n in names if layer_kind(modules[n]) is None]
    supported = [n for n in names if layer_kind(modules[n]) is not None]
    if not supported:
        kinds = sorted({type(modules[n]).__name__ for n in unsupported})
        raise ValueError(
            f"layers={layers!r} matches only modules of unsupported kinds {kinds}; "
            f"supported kinds are {supported_kinds()} (Linear, Conv2d, MultiheadAttention)."
        )
    if isinstance(layers, Sequence) and not isinstance(layers, str) and unsupported:
        # An explicit list naming an unsupported module is a mistake worth reporting.
        raise ValueError(f"these targets are not supported layer kinds: {unsupported}")
    return {n: modules[n] for n in supported}
