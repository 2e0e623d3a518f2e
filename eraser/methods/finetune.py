"""Fine-tuning baselines on the retain set: FT, l1-sparse and Retrain (from scratch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..registry import register_method
from ..training import Objective, StepInfo, TrainConfig, fit, reinitialize

__all__ = ["FTConfig", "L1SparseConfig", "RetrainConfig"]


class RetainCE(Objective):
    """Cross-entropy on retain batches, plus an optional l1 penalty decaying linearly to 0."""

    streams = ("retain",)

    def __init__(self, l1: float = 0.0) -> None:
        self.l1 = l1

    def loss(self, model: nn.Module, batches, info: StepInfo) -> torch.Tensor:
        x, y = batches["retain"]
        loss = nn.functional.cross_entropy(model(x), y)
        if self.l1:
            penalty = sum(p.abs().sum() for p in model.parameters() if p.requires_grad)
            loss = loss + self.l1 * (1.0 - info.progress) * penalty
        return loss


@dataclass
class FTConfig(TrainConfig):
    """FT: fine-tune on the retain set (catastrophic forgetting of the rest)."""

    epochs: int = 10
    lr: float = 0.01


@register_method("ft", config=FTConfig, training_free=False, needs_retain=True)
def ft(model, forget, retain, *, config: FTConfig, device=None, progress=False):
    """FT: fine-tune on the retain set only."""
    fit(model, RetainCE(), {"retain": retain}, config, device=device, progress=progress, desc="ft")
    return model


@dataclass
class L1SparseConfig(TrainConfig):
    """l1-sparse: FT plus an l1 penalty ``alpha * (1 - t/T) * ||theta||_1`` (linear decay)."""

    epochs: int = 10
    lr: float = 0.01
    alpha: float = 5e-4


@register_method("l1_sparse", config=L1SparseConfig, training_free=False, needs_retain=True)
def l1_sparse(model, forget, retain, *, config: L1SparseConfig, device=None, progress=False):
    """l1-sparse: fine-tune on the retain set with a linearly decaying l1 penalty on the weights."""
    fit(
        model, RetainCE(l1=config.alpha), {"retain": retain}, config, device=device, progress=progress, desc="l1_sparse"
    )
    return model


@dataclass
class RetrainConfig(TrainConfig):
    """Retrain: train from scratch on the retain set; pass the original model's recipe here."""

    epochs: int = 20
    lr: float = 0.1
    schedule: str = "cosine"


@register_method("retrain", config=RetrainConfig, training_free=False, needs_retain=True)
def retrain(model, forget, retain, *, config: RetrainConfig, device=None, progress=False):
    """Retrain: re-initialise and train from scratch on the retain set (the gold standard)."""
    reinitialize(model, config.seed)
    fit(model, RetainCE(), {"retain": retain}, config, device=device, progress=progress, desc="retrain")
    return model
