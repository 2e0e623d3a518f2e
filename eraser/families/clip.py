"""CLIP encoders (transformers and open_clip): which module is a tower, and a text-erasure view.

Image towers are erased with ``eraser.erase_classes(image_tower(model), images, layers="clip_last_mlp")``
(presets ``clip_mlp``, ``clip_attn``, ``clip_last_mlp`` cover both libraries' names). Text towers of
transformers CLIP are erased with ``eraser.erase_concepts(text_view(model, tokenizer), words,
targets="text_encoder_mlp")``, through the same prompt-feature code as Stable Diffusion's encoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["ImageEncoder", "TextView", "image_tower", "text_view", "embedding"]


def embedding(out: Any) -> Any:
    """The projected embedding from ``get_image_features``/``get_text_features``: transformers 4.x
    returns the tensor, 5.x an output object whose ``pooler_output`` holds it."""
    return getattr(out, "pooler_output", out)


def image_tower(model: nn.Module) -> nn.Module:
    """The image encoder of a CLIP model: transformers ``vision_model``, open_clip ``visual``, or the
    model itself when it already is one."""
    for attr in ("vision_model", "visual"):
        tower = getattr(model, attr, None)
        if isinstance(tower, nn.Module):
            return tower
    return model


class ImageEncoder(nn.Module):
    """A CLIP model's image path as one module (pixels -> image embeddings), so that layers up to and
    including the final projection (transformers ``visual_projection``) can be erased."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not (hasattr(model, "get_image_features") or hasattr(model, "encode_image")):
            raise TypeError(f"{type(model).__name__} is not a CLIP model (no get_image_features / encode_image)")
        self.model = model

    def forward(self, pixel_values):
        if hasattr(self.model, "get_image_features"):
            return embedding(self.model.get_image_features(pixel_values=pixel_values))
        return self.model.encode_image(pixel_values)


@dataclass
class TextView:
    """A transformers CLIP text tower seen as a pipeline's ``text_encoder`` + ``tokenizer``."""

    text_encoder: nn.Module
    tokenizer: Any


def text_view(model: nn.Module, tokenizer: Any) -> TextView:
    """The text tower of a transformers ``CLIPModel`` (or a ``CLIPTextModel``) with its tokenizer,
    ready for ``eraser.erase_concepts(..., targets="text_encoder_mlp")``. The view is cached on the
    model, so patches applied through it stack and revert as on any model."""
    tower = getattr(model, "text_model", None)
    if not isinstance(tower, nn.Module):
        if hasattr(model, "encode_text") and hasattr(model, "transformer"):
            raise TypeError(
                "open_clip text towers are not supported for concept erasure yet; erase the image tower "
                "with eraser.erase_classes(image_tower(model), ...) or use a transformers CLIPModel."
            )
        raise TypeError(f"{type(model).__name__} has no `text_model`: pass a transformers CLIPModel or CLIPTextModel")
    cache = model.__dict__.setdefault("_eraser_text_views", {})
    key = id(tokenizer)
    if key not in cache:
        cache[key] = TextView(tower, tokenizer)
    return cache[key]
