"""CLIP encoders (transformers and open_clip): which module is a tower, a zero-shot classifier, and
a text-erasure view.

A class is erased from CLIP's image path with no retain data and no options by
``eraser.erase_classes(zero_shot_classifier(model, tokenizer, class_prompts), forget_images)``: the
image projection loses the forget images' features from what the forget class's text embedding
reads, while the other classes' text embeddings read exactly what they read before
(:meth:`ZeroShotClassifier.unlink_default`). Image towers are also erased layer by layer with
``eraser.erase_classes(image_tower(model), images, layers="clip_last_mlp")``
(presets ``clip_mlp``, ``clip_attn``, ``clip_last_mlp`` cover both libraries' names). Text towers of
transformers CLIP are erased with ``eraser.erase_concepts(text_view(model, tokenizer), words,
targets="text_encoder_mlp")``, through the same prompt-feature code as Stable Diffusion's encoders.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..subspace import Gram, Subspace, forget_subspace, head_rows_subspace

__all__ = [
    "ImageEncoder", "TextView", "image_tower", "text_view", "embedding",
    "ZeroShotClassifier", "zero_shot_classifier", "class_text_embeddings", "zero_shot_rows_subspace",
]


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

    def unlink_default(self, forget: Any, config: Any, **kwargs: Any) -> None:
        """Unlink's hook: the default ``layers="head"`` has no meaning here (the outputs are
        embeddings, not classes), so it is refused with what to do instead."""
        if config.layers == "head":
            raise ValueError(
                "ImageEncoder outputs image embeddings, not classes, so there is no classifier head for "
                "the default layers='head'. For the retain-free default, erase from "
                "eraser.families.clip.zero_shot_classifier(model, tokenizer, class_prompts); or name the "
                "layers, e.g. layers=['model.visual_projection']. The model was not changed."
            )
        return None


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
            length = getattr(getattr(getattr(model, "config", None), "text_config", None), "max_position_embeddings", 77)
            ids = tokenizer(flat, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
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
    see :meth:`unlink_default`. ``layers=["head"]`` edits the head instead (a classifier edit: the
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

    def unlink_default(self, forget: Any, config: Any, *, device=None, names=None, progress: bool = False):
        """Unlink's retain-free default on this classifier (called by ``eraser.methods.unlink``): the
        image projection ``P`` (else the head) loses the forget images' feature subspace ``U`` (its
        input features; every direction with singular value >= 0.1 x the largest, as the head
        variant) from what the forget classes read, ``W* = P - P V U^T``, with the dual ``V`` chosen
        so that the other classes' rows read through it, ``T_R P``, do not change at all (see
        :func:`zero_shot_rows_subspace`). The forget classes are those the classifier predicts for the
        forget data (as the head variant), or ``classes=[...]``. Returns None (the generic path)
        for explicit layers, the svd/rayleigh variants, ``tail_beta`` (random forgetting), or forget
        data predicted as every class.
        """
        from ..capture import collect_grams
        from ..methods.unlink import (
            _check_weights, _prediction_counts, _stack, _version, forget_classes_from_counts,
        )
        from ..patch import ErasurePatch, LayerEdit
        from ..layers import layer_kind

        if config.layers != "head" or config.variant not in ("auto", "head") or config.tail_beta is not None:
            return None
        layer = self.projection_layer() or "head"
        modules = dict(self.named_modules())
        targets = {layer: modules[layer]}
        _check_weights({**targets, "head": self.head})
        t0 = time.perf_counter()
        with _prediction_counts(self.head if config.classes is None else None) as counts:
            grams = collect_grams(self, targets, forget, device=device, batch_size=config.batch_size,
                                  what="forget data", progress=progress)
        capture_s = time.perf_counter() - t0
        n_classes = self.head.out_features
        classes = list(config.classes) if config.classes is not None else forget_classes_from_counts(counts)
        if classes[-1] >= n_classes:
            raise ValueError(f"classes must be class indices in [0, {n_classes}); got {classes}. The model was not changed.")
        if len(classes) >= n_classes:
            return None  # every class is to be forgotten: nothing to protect (the generic path notes it)
        t1 = time.perf_counter()
        kind = layer_kind(targets[layer])
        weight = kind.weight(targets[layer]).detach()
        head = self.head.weight.detach()
        rows = head if layer == "head" else head.double() @ weight.double()  # the classes' rows on the layer's input
        selectors = {n: getattr(config, n) for n in ("k", "energy", "sv_ratio") if getattr(config, n) is not None}
        try:
            sub, protection = zero_shot_rows_subspace(grams[layer][0], rows, classes, ridge=config.ridge, **selectors)
        except ValueError as err:
            raise ValueError(f"layer {layer!r}: {err} The model was not changed.") from None
        basis, eta, dual = _stack([sub])
        edit = LayerEdit(layer, kind.name, tuple(weight.shape), basis, eta * float(config.strength), dual)
        patch = ErasurePatch({layer: edit}, metadata={
            "method": "unlink",
            "variant": "head",
            "config": asdict(config),
            "names": list(names) if names else [],
            "layers": [layer],
            "base_model": type(self).__name__,
            "library_version": _version(),
            "head_layer": "head",
            "read_through": layer if layer != "head" else None,
            "forget_classes": classes,
            "protected_classes": sorted(set(range(n_classes)) - set(classes)),
            "forget_classes_from": "config" if config.classes is not None else "predictions",
            "protection": protection,
        })
        if counts is not None:
            top = torch.argsort(counts, descending=True, stable=True)
            patch.metadata["forget_predictions"] = [[int(c), int(counts[c])] for c in top if counts[c] > 0]
        t2 = time.perf_counter()
        patch.exact_revert = config.exact_revert
        patch.apply(self, _fresh=True)
        patch.metadata["timing_s"] = {"capture": capture_s, "fit": t2 - t1, "apply": time.perf_counter() - t2}
        return patch


def zero_shot_classifier(model: nn.Module, tokenizer: Any, prompts: Sequence[str | Sequence[str]],
                         logit_scale: float | None = None) -> ZeroShotClassifier:
    """A :class:`ZeroShotClassifier` over ``prompts`` (one prompt, or a list of prompts, per class;
    see :func:`class_text_embeddings`). It shares ``model``: erasing from it edits ``model``."""
    return ZeroShotClassifier(model, class_text_embeddings(model, tokenizer, prompts), logit_scale)


# The exact protection needs a part of the forget rows that the protected rows cannot see; the edit
# grows as that part shrinks (1 / its share of the rows' norm), and with it the float32 rounding of
# the edited weight: below this share the ridge fit is used (a numerical guard, not a tuned value:
# the bundled tiny CLIP's digits are far above it).
EXACT_MIN_SHARE = 1e-3


def zero_shot_rows_subspace(
    forget: Tensor | Gram,
    rows: Tensor,
    forget_rows: Sequence[int],
    ridge: float = 0.1,
    **selectors: Any,
) -> tuple[Subspace, str]:
    """The head variant's edit with the other classes' rows kept exactly when they can be.

    ``rows`` (C x d): what each class's logit reads from the edited layer's input (a zero-shot
    head's text embeddings times the projection); ``U``: the forget subspace of ``forget``
    (``selectors`` as :func:`eraser.subspace.forget_subspace`; default: singular values >= 0.1 x the
    largest). The dual ``V = N W_F^T (W_F N W_F^T)^+ W_F U``, ``N`` the projector onto what the
    protected rows ``W_R`` cannot see (the orthogonal complement of their span), gives
    ``W_R V = 0`` (their logits do not change) and ``W_F V = W_F U`` (the forget rows lose ``U``):
    the limit of :func:`eraser.subspace.head_rows_subspace` as its ridge goes to 0. When the
    protected rows span (all but ``EXACT_MIN_SHARE`` of) every direction the forget rows read, e.g.
    more classes than dimensions, that limit does not exist (or is ill-conditioned) and
    ``head_rows_subspace`` with ``ridge`` is used. Returns the subspace
    and ``"exact"`` or ``"ridge"``.
    """
    from ..methods.unlink import DEFAULT_HEAD_SV_RATIO

    if not selectors:
        selectors = {"sv_ratio": DEFAULT_HEAD_SV_RATIO}
    sub = forget_subspace(forget, **selectors)
    w = rows.detach().to("cpu", torch.float64)
    if w.ndim != 2 or w.shape[1] != sub.basis.shape[0]:
        raise ValueError(f"the rows must be (classes x {sub.basis.shape[0]}); got {tuple(w.shape)}")
    forget_rows = sorted({int(c) for c in forget_rows})
    if not forget_rows or forget_rows[0] < 0 or forget_rows[-1] >= w.shape[0]:
        raise ValueError(f"forget classes must be class indices in [0, {w.shape[0]}); got {forget_rows}.")
    keep = torch.ones(w.shape[0], dtype=torch.bool)
    keep[forget_rows] = False
    if not keep.any():
        raise ValueError("every class is a forget class: there is no class left to protect.")
    w_f, w_r = w[forget_rows], w[keep]
    q, s, _ = torch.linalg.svd(w_r.T, full_matrices=False)
    q = q[:, s > s[0] * max(w.shape) * torch.finfo(torch.float64).eps * 10] if s.numel() and s[0] > 0 else q[:, :0]
    w_fn = w_f - (w_f @ q) @ q.T  # the part of the forget rows the protected rows cannot see
    if float(w_fn.norm()) <= EXACT_MIN_SHARE * float(w_f.norm()):
        return head_rows_subspace(forget, rows, forget_rows, ridge=ridge, **selectors), "ridge"
    dual = w_fn.T @ (torch.linalg.pinv(w_fn @ w_fn.T, hermitian=True) @ (w_f @ sub.basis))
    return Subspace(basis=sub.basis, eta=sub.eta, dual=dual, spectrum=sub.spectrum), "exact"
