"""Relabelling baselines: RL (random labels), SalUn (RL inside a saliency mask) and the
instance-wise Correct (relabel each forget sample to the model's runner-up class)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data import forget_share, labeled_tensors
from ..registry import register_method
from ..training import Objective, TrainConfig, accuracy, fit, gradient_stats, logits_of, top_fraction_mask
from .ascent import InstanceConfig

__all__ = ["RLConfig", "SalUnConfig", "CorrectConfig", "saliency_mask"]


def _other_label(y: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """A uniformly random label different from ``y``, per sample."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes


class RandomLabels(Objective):
    """CE towards fresh random wrong labels on forget batches plus CE on retain batches, weighted
    ``w`` and ``1 - w``. With ``w`` = the forget set's share of forget + retain, each step has the
    expected gradient of the reference recipe (one shuffled stream of relabelled forget and retain
    samples) while only the forget set drives the epochs."""

    streams = ("forget", "retain")

    def __init__(self, seed: int, forget_weight: float) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.w = forget_weight

    def loss(self, model, batches, info):
        (xf, yf), (xr, yr) = batches["forget"], batches["retain"]
        out_f = model(xf)
        wrong = _other_label(yf, out_f.shape[1], self.generator)
        ce = nn.functional.cross_entropy
        return self.w * ce(out_f, wrong) + (1 - self.w) * ce(model(xr), yr)


@dataclass
class RLConfig(TrainConfig):
    """RL: random labels on the forget set while training on the retain set.

    forget_weight: weight of the forget term (None: the forget set's share of all samples, as
    when the two sets are shuffled into one stream).
    """

    epochs: int = 10
    lr: float = 0.01
    forget_weight: float | None = None


@register_method("rl", config=RLConfig, training_free=False, needs_retain=True)
def rl(model, forget, retain, *, config: RLConfig, device=None, progress=False):
    """RL: train forget samples towards random wrong labels, alongside the retain set."""
    objective = RandomLabels(config.seed, forget_share(forget, retain, config.forget_weight))
    fit(model, objective, {"forget": forget, "retain": retain}, config, device=device, progress=progress, desc="rl")
    return model


def saliency_mask(model: nn.Module, forget, ratio: float, device=None) -> dict[str, Tensor]:
    """SalUn's weight saliency: True for the ``ratio`` share of weights (over the whole model)
    with the largest |gradient of the forget loss| (exactly ``int(ratio * total)``, ties by position)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"mask ratio must be in (0, 1]; got {ratio}")
    grads = gradient_stats(model, forget, device=device)
    return top_fraction_mask({n: g.abs() for n, g in grads.items()}, ratio)


@dataclass
class SalUnConfig(TrainConfig):
    """SalUn: RL restricted to the weights most salient for the forget loss (``mask_ratio`` of
    them); ``forget_weight`` as in RL."""

    epochs: int = 10
    lr: float = 0.01
    mask_ratio: float = 0.5
    forget_weight: float | None = None


@register_method("salun", config=SalUnConfig, training_free=False, needs_retain=True)
def salun(model, forget, retain, *, config: SalUnConfig, device=None, progress=False):
    """SalUn: random-label training on the top ``mask_ratio`` salient weights only."""
    mask = saliency_mask(model, forget, config.mask_ratio, device=device)
    objective = RandomLabels(config.seed, forget_share(forget, retain, config.forget_weight))
    fit(
        model,
        objective,
        {"forget": forget, "retain": retain},
        config,
        trainable=mask,
        device=device,
        progress=progress,
        desc="salun",
    )
    return model


class ToNewLabels(Objective):
    """CE towards fixed new labels on forget batches (labels come with the data)."""

    streams = ("forget",)

    def __init__(self, relabelled) -> None:
        self.relabelled = relabelled

    def loss(self, model, batches, info):
        x, y = batches["forget"]
        return nn.functional.cross_entropy(model(x), y)

    def finished(self, model) -> bool:
        return accuracy(model, self.relabelled) == 100.0


@dataclass
class CorrectConfig(InstanceConfig):
    """Correct (instance-wise, relabel setting): train each forget sample towards the original
    model's runner-up class until all are relabelled."""


@register_method("correct", config=CorrectConfig, training_free=False)
def correct(model, forget, retain=None, *, config: CorrectConfig, device=None, progress=False):
    """Correct: relabel forget samples to the model's runner-up class (CE), stopping at 100%."""
    x, y = labeled_tensors(forget)
    logits, _ = logits_of(model, (x, y))
    logits[torch.arange(len(y)), y] = float("-inf")
    relabelled = (x, logits.argmax(1))
    fit(
        model, ToNewLabels(relabelled), {"forget": relabelled}, config, device=device, progress=progress, desc="correct"
    )
    return model
