"""Model-family adapters: what the engine needs to know about one kind of model.

An adapter is a row of data: the layer presets a family offers, the components a pipeline of
that family holds (so that its layers are named ``"unet.…"``, ``"transformer.…"``), its text
towers, which layers read text features, and the parameter sets its trainers may train.
``register_family`` hands the presets and components to the plumbing (``eraser.targets``,
``eraser.patch``); everything else reads the adapter. A new family is one module that builds
an adapter and registers it, imported by ``eraser/families/__init__.py``, plus its tests.

The interface is written for MMDiT pipelines too (SD3, FLUX): their ``transformer`` is a
component, their joint-attention context projections (``attn.add_k_proj``/``add_v_proj``,
fed by a ``context_embedder``) are the layers that read text features, and ``text_towers``
lists as many (tokenizer, text encoder) pairs as the pipeline has.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..patch import register_components
from ..targets import Preset, register_preset

__all__ = ["FamilyAdapter", "FAMILY_ADAPTERS", "register_family", "get_family", "pipeline_family", "parameters_where"]


@dataclass(frozen=True)
class FamilyAdapter:
    """One model family (see the module docstring).

    name / summary: the family's id and a line for listings.
    presets: layer presets (name -> regex over layer names, or function model -> names).
    components: attributes of a pipeline of this family that hold its modules, in order.
    text_towers: (tokenizer attribute, text encoder attribute) pairs, in the order the pipeline
        concatenates their features.
    text_reading: regex over layer names (as the pipeline view names them) of the layers whose
        input is the text features (cross-attention K/V; MMDiT context projections).
    train_selections: name -> function (model component -> parameter names) a trainer may train
        (ESD's ``train_method``).
    matches: pipeline -> whether it belongs to this family (for :func:`pipeline_family`; families
        without it are chosen by name only).
    conditioning: how the family turns prompts into the text features its ``text_reading`` layers
        read, when that is not the UNet families' (the towers' hidden states side by side): an
        object with ``tokenize(pipe, prompts, shortest)``, ``encode(pipe, ids, hidden_layer,
        device)``, ``mask(pipe, ids, cp, sl, mode)``, ``default_targets`` and ``methods`` (the
        method ids that support the family), as :mod:`eraser.families.mmdit` defines.
    """

    name: str
    summary: str
    presets: Mapping[str, Preset] = field(default_factory=dict)
    components: tuple[str, ...] = ()
    text_towers: tuple[tuple[str, str], ...] = ()
    text_reading: str | None = None
    train_selections: Mapping[str, Callable[[nn.Module], list[str]]] = field(default_factory=dict)
    matches: Callable[[Any], bool] | None = None
    conditioning: Any = None

    def __post_init__(self) -> None:
        if self.text_reading is not None:
            re.compile(self.text_reading)


FAMILY_ADAPTERS: dict[str, FamilyAdapter] = {}


def parameters_where(keep: Callable[[str], bool]) -> Callable[[nn.Module], list[str]]:
    """A ``train_selections`` entry: the names of a module's parameters for which ``keep(name)`` holds."""
    return lambda module: [n for n, _ in module.named_parameters() if keep(n)]


def register_family(adapter: FamilyAdapter) -> FamilyAdapter:
    """Add ``adapter`` to the table and give the plumbing its presets and components."""
    if adapter.name in FAMILY_ADAPTERS and FAMILY_ADAPTERS[adapter.name] is not adapter:
        raise ValueError(f"model family {adapter.name!r} is already registered")
    taken = {p: f for f in FAMILY_ADAPTERS.values() if f is not adapter for p in f.presets}
    # families with the same layer names share a preset (SD3 and FLUX: transformer.context_embedder)
    clash = sorted(p for p in set(adapter.presets) & set(taken) if taken[p].presets[p] != adapter.presets[p])
    if clash:
        raise ValueError(
            f"presets {clash} of family {adapter.name!r} are already offered by {taken[clash[0]].name!r} "
            "with other layers"
        )
    for name, preset in adapter.presets.items():
        register_preset(name, preset)
    register_components(adapter.components)
    FAMILY_ADAPTERS[adapter.name] = adapter
    return adapter


def get_family(name: str) -> FamilyAdapter:
    """The adapter registered as ``name``."""
    try:
        return FAMILY_ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILY_ADAPTERS)}") from None


def pipeline_family(pipe: Any, default: str = "diffusion") -> FamilyAdapter:
    """The family whose ``matches`` accepts ``pipe`` (first registered first), else ``default``."""
    for adapter in FAMILY_ADAPTERS.values():
        if adapter.matches is not None and adapter.matches(pipe):
            return adapter
    return get_family(default)
