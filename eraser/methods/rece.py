"""RECE: Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024), UCE repeated in closed form.

After a UCE edit (``eraser.methods.uce``) the concept can still be reached: some text embedding c'
makes the edited K/V layers W' produce the original concept's keys and values W c. RECE finds it in
closed form over all K/V layers,

    c' = argmin sum_l |W'_l c' - W_l c|^2 + lambda |c'|^2 = (sum_l W'_l^T W'_l + lambda I)^-1 sum_l W'_l^T W_l c,

adds it to the features to erase, and solves UCE again from the original weights (the guide's and
the preserved prompts' outputs stay those of the original model), for ``rounds`` rounds. lambda is
``adv_ridge`` times the mean eigenvalue of sum_l W'_l^T W'_l (scale-free; the paper's regulariser,
which keeps c' near the embeddings a text encoder produces, is replaced by this ridge). Computed in
float64; the patch is dense like UCE's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..patch import ErasurePatch
from ..registry import register_method
from ..training.diffusion import patch_metadata
from .uce import UCEConfig, kv_projections, uce_features, uce_weights, write_kv

__all__ = ["RECEConfig", "rece", "adversarial_embeddings"]


@dataclass
class RECEConfig(UCEConfig):
    """UCE's settings plus RECE's: ``rounds`` of finding and erasing adversarial embeddings, each
    with the ridge ``adv_ridge`` (relative to the mean eigenvalue of the edited layers' Gram)."""

    rounds: int = 3
    adv_ridge: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise ValueError(f"rounds must be an integer >= 0; got {self.rounds!r}")
        if not self.adv_ridge > 0:
            raise ValueError(f"adv_ridge must be > 0; got {self.adv_ridge!r}")


def adversarial_embeddings(
    original: dict[str, Tensor], edited: dict[str, Tensor], features: Tensor, ridge: float
) -> Tensor:
    """For each row c of ``features`` (P x D), the embedding c' whose outputs through the ``edited``
    weights are closest to c's through the ``original`` ones, over all layers (ridge-regularised)."""
    d = features.shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64)
    cross = torch.zeros(d, d, dtype=torch.float64)
    for name, w in original.items():
        w0, w1 = w.detach().to("cpu", torch.float64), edited[name].detach().to("cpu", torch.float64)
        gram += w1.T @ w1
        cross += w1.T @ w0
    lam = ridge * float(torch.trace(gram)) / d
    rhs = cross @ features.to(torch.float64).T  # D x P
    return torch.linalg.solve(gram + lam * torch.eye(d, dtype=torch.float64), rhs).T


@register_method("rece", config=RECEConfig, training_free=True, family="diffusion")
def rece(
    pipe: Any,
    concepts: Any,
    retain: Any = None,
    *,
    config: RECEConfig | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ErasurePatch:
    """RECE: UCE plus rounds of closed-form adversarial embeddings erased in turn (Gong et al. 2024)."""
    cfg = config or RECEConfig()
    t0 = time.perf_counter()
    words, keep, prompts, concept, guide, preserve = uce_features(pipe, concepts, retain, cfg)
    concept = concept.to("cpu", torch.float64)
    t1 = time.perf_counter()
    mods = kv_projections(pipe.unet)
    original = {n: m.weight.detach() for n, m in mods.items()}
    erase = concept
    new = uce_weights(mods, erase, guide, preserve, cfg, device=device, base=original)
    found = []
    for _ in range(cfg.rounds):
        adv = adversarial_embeddings(original, new, concept, cfg.adv_ridge)
        # how far the edited model's best reply to the concept still is from its original outputs
        found.append(float(adv.norm(dim=1).mean() / concept.norm(dim=1).mean()))
        erase = torch.cat([erase, adv])
        new = uce_weights(mods, erase, guide, preserve, cfg, device=device, base=original)
    meta = patch_metadata(
        pipe,
        "rece",
        cfg,
        words,
        keep,
        prompts=prompts,
        guide=cfg.guide,
        adversarial_norm_ratio=found,
        timing_s={"encode": t1 - t0, "solve": time.perf_counter() - t1},
    )
    return write_kv(pipe, mods, new, meta)
