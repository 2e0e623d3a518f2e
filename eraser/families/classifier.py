"""Image classifiers (torchvision, timm, any ``nn.Module`` with a final Linear/Conv layer)."""

from __future__ import annotations

from torch import nn

from ..layers import layer_kind
from .base import FamilyAdapter, register_family

__all__ = ["CLASSIFIER", "head_layer"]


def head_layer(model: nn.Module) -> list[str]:
    """The final classifier layer: timm's ``get_classifier()``, else the last supported layer."""
    names = {id(m): n for n, m in model.named_modules()}
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if id(head) in names and layer_kind(head) is not None:
            return [names[id(head)]]
    last = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n]
    return last[-1:]


CLASSIFIER = register_family(
    FamilyAdapter(
        name="classifier",
        summary="CNN/ViT image classifiers (torchvision, timm): the final classifier layer is the 'head' preset",
        presets={"head": head_layer},
    )
)
