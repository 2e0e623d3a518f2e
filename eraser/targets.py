"""Choosing the layers to edit: PEFT-style ``target_modules`` patterns and named presets."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from .layers import layer_kind, supported_kinds

__all__ = ["resolve_targets", "PRESETS"]

Targets = str | Sequence[str]


def _head(model: nn.Module) -> list[str]:
    """The final classifier layer: timm's ``get_classifier()``, else the last supported layer."""
    names = {id(m): n for n, m in model.named_modules()}
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if id(head) in names and layer_kind(head) is not None:
            return [names[id(head)]]
    last = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n]
    return last[-1:]


# Transformer blocks of CLIP towers, in both naming schemes: transformers
# (``encoder.layers.N.mlp.fc1``, ``self_attn.q_proj``) and open_clip (``transformer.resblocks.N.mlp.c_fc``,
# ``attn`` = nn.MultiheadAttention, whose out_proj it calls functionally, so it is left out).
_CLIP_BLOCK = re.compile(r"(?:.*\.)?(?:layers|resblocks)\.(\d+)\.(.+)")
_CLIP_MLP = re.compile(r"mlp\.(?:fc1|fc2|c_fc|c_proj)")
_CLIP_ATTN = re.compile(r"self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|attn")


def _clip_blocks(model: nn.Module, part: re.Pattern, last_only: bool = False) -> list[str]:
    found = []
    for name, mod in model.named_modules():
        m = _CLIP_BLOCK.fullmatch(name)
        if m and part.fullmatch(m.group(2)) and layer_kind(mod) is not None:
            found.append((int(m.group(1)), name))
    if last_only and found:
        last = max(i for i, _ in found)
        found = [(i, n) for i, n in found if i == last]
    return [n for _, n in found]


PRESETS = {
    "head": _head,
    "clip_mlp": lambda m: _clip_blocks(m, _CLIP_MLP),
    "clip_attn": lambda m: _clip_blocks(m, _CLIP_ATTN),
    "clip_last_mlp": lambda m: _clip_blocks(m, _CLIP_MLP, last_only=True),
}


def _suffixes(name: str) -> set[str]:
    """``"a.b.c"`` -> ``{"a.b.c", "b.c", "c"}``: the names a PEFT-style target may give for it."""
    parts = name.split(".")
    return {".".join(parts[i:]) for i in range(len(parts))}


def resolve_targets(model: nn.Module, layers: Targets) -> dict[str, nn.Module]:
    """Map layer names to modules.

    ``layers`` is a preset name (``"head"``; for CLIP towers of transformers or open_clip
    ``"clip_mlp"``, ``"clip_attn"``, ``"clip_last_mlp"``), a regular expression matched against whole module
    names (a string), or a list of names, each matching a module whose name equals it or ends in
    ``"." + name`` (PEFT's ``target_modules`` rules).
    """
    modules = dict(model.named_modules())
    if isinstance(layers, str) and layers in PRESETS:
        names = PRESETS[layers](model)
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
