"""CLIP encoders (transformers and open_clip): which module is a tower, a zero-shot classifier, and
a text-erasure view.

A class is erased from CLIP's image path with no retain data and no options by
``eraser.erase_classes(zero_shot_classifier(model, tokenizer, class_prompts), forget_images)``: the
image projection loses the forget images' features from what the forget class's text embedding
reads, while the other classes' text embeddings read exactly what they read before
(Unlink's zero-shot default, in ``eraser.methods.unlink``). Image towers are also erased layer by layer with
``eraser.erase_classes(image_tower(model), images, layers="clip_last_mlp")``
(presets ``clip_mlp``, ``clip_attn``, ``clip_last_mlp`` cover both libraries' names). Text towers of
transformers CLIP are erased with ``eraser.erase_concepts(text_view(model, tokenizer), words,
targets="text_encoder_mlp")``, through the same prompt-feature code as Stable Diffusion's encoders.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import layer_kind
from .base import FamilyAdapter, register_family

__all__ = [
    "CLIP",
    "ImageEncoder",
    "TextView",
    "image_tower",
    "text_view",
    "embedding",
    "ZeroShotClassifier",
    "zero_shot_classifier",
    "class_text_embeddings",
]


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


CLIP = register_family(
    FamilyAdapter(
        name="clip",
        summary="CLIP encoders (transformers, open_clip): presets over the towers' transformer blocks",
        presets={
            "clip_mlp": lambda m: _clip_blocks(m, _CLIP_MLP),
            "clip_attn": lambda m: _clip_blocks(m, _CLIP_ATTN),
            "clip_last_mlp": lambda m: _clip_blocks(m, _CLIP_MLP, last_only=True),
        },
    )
)


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


# ------------------------------------------------------------------------------------------------
# zero-shot classification, and its retain-free erasure


def class_text_embeddings(model: nn.Module, tokenizer: Any, prompts: Sequence[str | Sequence[str]]) -> Tensor:
    """One normalised text embedding per class: ``prompts[c]`` is a prompt, or a list of prompts
    whose normalised embeddings are averaged (prompt ensembling). transformers CLIP: prompts are
    padded to the text tower's length (77 for CLIP), as Stable Diffusion does; open_clip:
    ``tokenizer(prompts)`` gives the token ids."""
    groups = [[p] if isinstance(p, str) else list(p) for p in prompts]
    if not groups or not all(groups) or not all(isinstance(p, str) for g in groups for p in g):
        raise ValueError("prompts must be a non-empty list with one prompt (or a non-empty list of prompts) per class")
    flat = [p for g in groups for p in g]
    param = next(model.parameters())
    with torch.no_grad():
        if hasattr(model, "get_text_features"):
            length = getattr(
                getattr(getattr(model, "config", None), "text_config", None), "max_position_embeddings", 77
            )
            ids = tokenizer(
                flat, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            ).input_ids
            emb = embedding(model.get_text_features(input_ids=ids.to(param.device)))
        elif hasattr(model, "encode_text"):
            emb = model.encode_text(tokenizer(flat).to(param.device))
        else:
            raise TypeError(f"{type(model).__name__} is not a CLIP model (no get_text_features / encode_text)")
        emb = nn.functional.normalize(emb.float(), dim=-1)
        rows, i = [], 0
        for g in groups:
            rows.append(emb[i : i + len(g)].mean(0))
            i += len(g)
    return nn.functional.normalize(torch.stack(rows), dim=-1)


class ZeroShotClassifier(nn.Module):
    """A CLIP model as a zero-shot image classifier: pixels -> image embedding (:class:`ImageEncoder`)
    -> normalised -> ``head``, a bias-free ``nn.Linear`` whose rows are the classes' normalised text
    embeddings times CLIP's logit scale (so the logits are CLIP's scaled cosine similarities).

    ``eraser.erase_classes(classifier, forget_images)`` with no retain data and no ``layers`` /
    ``variant`` edits the image tower's projection (transformers ``visual_projection``), so the
    CLIP model itself (shared, edited in place) no longer embeds the forget images as their class;
    see ``eraser.methods.unlink``. ``layers=["head"]`` edits the head instead (a classifier edit: the
    image embeddings keep the class). Build one with :func:`zero_shot_classifier`.
    """

    def __init__(self, model: nn.Module, class_embeddings: Tensor, logit_scale: float | None = None) -> None:
        super().__init__()
        self.encoder = ImageEncoder(model)
        if not isinstance(class_embeddings, Tensor) or class_embeddings.ndim != 2 or class_embeddings.shape[0] < 2:
            raise ValueError("class_embeddings must be a (classes x dim) tensor with at least two classes")
        if logit_scale is None:
            scale = getattr(model, "logit_scale", None)
            logit_scale = float(scale.detach().exp()) if isinstance(scale, Tensor) else 1.0
        param = next(model.parameters())
        rows = nn.functional.normalize(class_embeddings.detach().float(), dim=-1) * float(logit_scale)
        self.head = nn.Linear(rows.shape[1], rows.shape[0], bias=False, device=param.device, dtype=param.dtype)
        with torch.no_grad():
            self.head.weight.copy_(rows)
        self.head.weight.requires_grad_(False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.head(nn.functional.normalize(self.encoder(pixel_values), dim=-1))

    def get_classifier(self) -> nn.Module:
        """The zero-shot head (the ``"head"`` preset's layer)."""
        return self.head

    def projection_layer(self) -> str | None:
        """The name of the image projection if it is an ``nn.Linear`` (transformers ``visual_projection``;
        open_clip's ``visual.proj`` is a bare parameter: None)."""
        proj = getattr(self.encoder.model, "visual_projection", None)
        if isinstance(proj, nn.Linear) and proj.out_features == self.head.in_features:
            return "encoder.model.visual_projection"
        return None


def zero_shot_classifier(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str | Sequence[str]], logit_scale: float | None = None
) -> ZeroShotClassifier:
    """A :class:`ZeroShotClassifier` over ``prompts`` (one prompt, or a list of prompts, per class;
    see :func:`class_text_embeddings`). It shares ``model``: erasing from it edits ``model``."""
    return ZeroShotClassifier(model, class_text_embeddings(model, tokenizer, prompts), logit_scale)
