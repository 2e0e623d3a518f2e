"""UCE: Unified Concept Editing (Gandikota et al., WACV 2024), a closed-form edit of cross-attention.

Every cross-attention key/value projection W (``attn2.to_k``/``attn2.to_v``) is replaced by the
minimiser of

    erase_scale * sum_i |W' c_i - W c*_i|^2 + preserve_scale * sum_j |W' c_j - W c_j|^2 + lamb * |W' - W|_F^2

    W' = (erase_scale sum_i W c*_i c_i^T + preserve_scale sum_j W c_j c_j^T + lamb W)
         (erase_scale sum_i c_i c_i^T + preserve_scale sum_j c_j c_j^T + lamb I)^-1

so the concepts' text features c_i produce the keys/values of the guide concept c*, and the
preserve prompts' (the retain prompts') keys/values stay. As in the reference code
(github.com/rohitgandikota/unified-concept-editing, ``trainscripts/uce_sd_erase.py``) one feature
per prompt is used: the hidden state of its last token before end-of-text (for the empty guide
prompt that is the start-of-text token), and no preserve prompts are used unless given. The
paper's first release (``train-scripts/train_erase.py``) used that token and all tokens after it.
Computed in float64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..families.diffusion import encode_ids, expand_concepts, text_towers, tokenize_prompts
from ..patch import ErasurePatch
from ..registry import register_method
from ..training.diffusion import concept_lists, patch_metadata

__all__ = ["UCEConfig", "uce", "uce_features", "uce_weights", "write_kv", "last_token_features", "kv_projections"]


@dataclass
class UCEConfig:
    """UCE's settings (defaults of the reference script ``uce_sd_erase.py``; the paper's first
    release used lamb 0.1 and preserve_scale 0.1).

    guide: the concept every erased concept is mapped to (``""``: nothing; the reference uses
        ``"art"`` for artistic styles).
    erase_scale: weight of the erase terms.
    preserve_scale: weight of the preserve (retain prompt) terms.
    lamb: weight of staying close to the original weights (ridge).
    templates: each concept word is inserted into each (``"{}"``: the bare word, as the reference's
        default; its ``expand_prompts`` adds e.g. ``"painting by {}"``); prompt rows are used as they are.
    hidden_layer: ``auto`` (the pipeline's own), ``last`` or ``penultimate``.
    """

    guide: str = ""
    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    lamb: float = 0.5
    templates: tuple[str, ...] = ("{}",)
    hidden_layer: str = "auto"

    def __post_init__(self) -> None:
        if self.lamb < 0 or self.erase_scale <= 0 or self.preserve_scale < 0:
            raise ValueError(
                f"need lamb >= 0, erase_scale > 0 and preserve_scale >= 0 (got {self.lamb}, "
                f"{self.erase_scale}, {self.preserve_scale})"
            )
        if isinstance(self.templates, str) or not self.templates:
            raise ValueError("templates must be a non-empty list of strings such as ['{}', 'painting by {}']")
        self.templates = tuple(self.templates)


def kv_projections(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The UNet's cross-attention key/value projections by name (``...attn2.to_k`` / ``...attn2.to_v``)."""
    mods = {n: m for n, m in unet.named_modules() if "attn2" in n and n.endswith((".to_k", ".to_v"))}
    if not mods:
        raise ValueError("the UNet has no cross-attention key/value projections (attn2.to_k/to_v) to edit")
    return mods


@torch.no_grad()
def last_token_features(pipe: Any, prompts: list[str], hidden_layer: str = "auto") -> Tensor:
    """The UNet's text conditioning at each prompt's last token before end-of-text (P, D)."""
    ids = tokenize_prompts(pipe, prompts)
    tokenizer = text_towers(pipe)[0][1]
    mask = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).attention_mask
    last = mask.sum(1) - 2  # start-of-text at 0, end-of-text after the last token
    hidden = encode_ids(pipe, ids, hidden_layer=hidden_layer)
    return hidden[torch.arange(len(prompts)), last.to(hidden.device)]


@register_method("uce", config=UCEConfig, training_free=True, family="diffusion")
def uce(
    pipe: Any,
    concepts: Any,
    retain: Any = None,
    *,
    config: UCEConfig | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ErasurePatch:
    """UCE: closed-form edit of cross-attention K/V mapping concepts to a guide concept (Gandikota et al. 2024)."""
    cfg = config or UCEConfig()
    t0 = time.perf_counter()
    words, keep, prompts, erase, guide, preserve = uce_features(pipe, concepts, retain, cfg)
    t1 = time.perf_counter()
    mods = kv_projections(pipe.unet)
    new = uce_weights(mods, erase, guide, preserve, cfg, device=device)
    meta = patch_metadata(
        pipe,
        "uce",
        cfg,
        words,
        keep,
        prompts=prompts,
        guide=cfg.guide,
        timing_s={"encode": t1 - t0, "solve": time.perf_counter() - t1},
    )
    return write_kv(pipe, mods, new, meta)


def uce_features(
    pipe: Any, concepts: Any, retain: Any, cfg: UCEConfig
) -> tuple[list[str], list[str], list[str], Tensor, Tensor, Tensor | None]:
    """UCE's inputs: the concept words, the retain prompts, the erased prompts and the features of
    the erased prompts, of the guide and of the retain prompts (None without retain prompts)."""
    words, verbatim, keep = concept_lists(concepts, retain)
    tokenizer = text_towers(pipe)[0][1]
    prompts = expand_concepts(tokenizer, words, cfg.templates, verbatim).prompts
    erase = last_token_features(pipe, prompts, cfg.hidden_layer)
    guide = last_token_features(pipe, [cfg.guide], cfg.hidden_layer)
    preserve = last_token_features(pipe, keep, cfg.hidden_layer) if keep else None
    return words, keep, prompts, erase, guide, preserve


def uce_weights(
    mods: dict[str, torch.nn.Module],
    erase: Tensor,
    guide: Tensor,
    preserve: Tensor | None,
    cfg: UCEConfig,
    *,
    device: torch.device | str | None = None,
    base: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """UCE's closed-form K/V weights (by layer name) mapping the ``erase`` features (P x D) to
    the ``guide``'s outputs and keeping the ``preserve`` features' (or None), computed on nothing
    but the arguments. ``base``: the weights whose outputs are the targets and the ridge's anchor
    (default: each layer's current weight)."""
    new: dict[str, Tensor] = {}
    for name, mod in mods.items():
        w = mod.weight.detach() if base is None else base[name]
        # float64 needs a device that has it (not MPS): compute there, then move back.
        dev = (
            torch.device(device)
            if device is not None
            else (w.device if w.device.type != "mps" else torch.device("cpu"))
        )
        w64 = w.to(dev, torch.float64)
        c_e, c_g = erase.to(dev, torch.float64), guide.to(dev, torch.float64)
        v_star = (c_g @ w64.T).expand(len(c_e), -1)  # the guide's outputs under the original W
        lhs = cfg.lamb * w64 + cfg.erase_scale * v_star.T @ c_e
        rhs = cfg.lamb * torch.eye(w64.shape[1], dtype=torch.float64, device=dev) + cfg.erase_scale * c_e.T @ c_e
        if preserve is not None and cfg.preserve_scale > 0:
            c_p = preserve.to(dev, torch.float64)
            lhs += cfg.preserve_scale * (w64 @ c_p.T) @ c_p
            rhs += cfg.preserve_scale * c_p.T @ c_p
        # W' = lhs rhs^-1, solved (rhs is symmetric) rather than inverted
        w_new = torch.linalg.solve(rhs, lhs.T).T
        if not torch.isfinite(w_new).all():
            raise ValueError(
                f"UCE produced NaN or Inf for {name!r} (lamb=0 with too few prompts?); the pipeline was not changed."
            )
        new[name] = w_new.to(mod.weight.device, mod.weight.dtype)
    return new


def write_kv(pipe: Any, mods: dict[str, torch.nn.Module], new: dict[str, Tensor], meta: dict[str, Any]) -> ErasurePatch:
    """Write the new K/V weights (all computed beforehand) into the UNet and return the dense patch;
    on any error every weight is put back."""
    before = {n: m.weight.detach().clone() for n, m in mods.items()}
    try:
        with torch.no_grad():  # every new weight was computed before any is assigned
            for name, mod in mods.items():
                mod.weight.copy_(new[name])
        return ErasurePatch.from_changes(pipe, {f"unet.{n}.weight": w for n, w in before.items()}, meta)
    except BaseException:
        with torch.no_grad():
            for name, mod in mods.items():
                mod.weight.copy_(before[name])
        raise
