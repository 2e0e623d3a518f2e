"""Selective Synaptic Dampening (Foster et al., AAAI 2024): training-free; shrink the weights that
matter far more to the forget set than to the training data as a whole."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data import mixed_batches
from ..registry import register_method
from ..training import gradient_stats

__all__ = ["SSDConfig", "ssd_dampen"]


@torch.no_grad()
def ssd_dampen(
    model: nn.Module, imp_f: dict[str, Tensor], imp_d: dict[str, Tensor], alpha: float, lam: float
) -> dict[str, Tensor]:
    """Multiply every weight with ``imp_f > alpha * imp_d`` by ``min(1, lam * imp_d / imp_f)``
    (in place); returns the boolean selection per parameter name."""
    selected = {}
    for name, p in model.named_parameters():
        if name not in imp_f:
            continue
        f, d = imp_f[name], imp_d[name]
        sel = f > alpha * d  # implies f > 0 where selected
        ratio = lam * d / f.clamp_min(torch.finfo(f.dtype).tiny)
        beta = torch.where(sel, ratio.clamp(max=1.0), torch.ones_like(f))
        p.mul_(beta.to(p.dtype))
        selected[name] = sel
    return selected


@dataclass
class SSDConfig:
    """SSD: importance = diagonal Fisher (mean squared batch gradient of the cross-entropy) on the
    forget set (imp_f) and on the full training data D = forget + retain (imp_D); every weight with
    imp_f > alpha * imp_D is multiplied by min(1, lam * imp_D / imp_f).

    alpha: selection threshold (the paper's alpha, 10).
    lam: dampening constant (the paper's lambda, 1).
    batch_size: batch size of both importance passes (the squared gradient is per batch).
    seed: shuffling of D, whose batches mix forget and retain samples as a shuffled training
        loader does.
    """

    alpha: float = 10.0
    lam: float = 1.0
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.alpha <= 0 or self.lam <= 0 or self.batch_size < 1:
            raise ValueError(
                f"need alpha > 0, lam > 0 and batch_size >= 1 (got {self.alpha}, {self.lam}, {self.batch_size})"
            )


@register_method("ssd", config=SSDConfig, training_free=True, needs_retain=True)
def ssd(model, forget, retain, *, config: SSDConfig, device=None, progress=False):
    """SSD: dampen weights far more important to the forget set than to all training data."""
    if device is not None:
        model.to(device)
    imp_f = gradient_stats(model, forget, power=2, batch_size=config.batch_size, device=device)
    # imp_D runs on shuffled batches of forget + retain, as the reference code's full training
    # loader does. Combining the two sets' own statistics by batch counts is not the same: a
    # pure forget batch's mean gradient is coherent, so that combination keeps imp_D above
    # (n_f / n) * imp_f and with alpha = 10 nothing is ever selected once forget is >= 10% of D.
    # In mixed batches the forget share p enters squared (imp_D ~ p^2 * imp_f on forget-only weights).
    imp_d = gradient_stats(
        model, mixed_batches([forget, retain], config.batch_size, config.seed), power=2, device=device
    )
    ssd_dampen(model, imp_f, imp_d, config.alpha, config.lam)
    return model
