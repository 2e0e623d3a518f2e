"""Gradient-ascent baselines: GA, NegGrad+ and the instance-wise NegGrad."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..registry import register_method
from ..training import Objective, TrainConfig, accuracy, fit

__all__ = ["GAConfig", "NegGradPlusConfig", "InstanceConfig", "NegGradConfig", "AscendForget"]


class AscendForget(Objective):
    """-CE on forget batches; optionally stops once the model gets none of ``stop_on`` right."""

    streams = ("forget",)

    def __init__(self, stop_on=None) -> None:
        self.stop_on = stop_on

    def loss(self, model, batches, info):
        x, y = batches["forget"]
        return -nn.functional.cross_entropy(model(x), y)

    def finished(self, model) -> bool:
        return self.stop_on is not None and accuracy(model, self.stop_on) == 0.0


@dataclass
class GAConfig(TrainConfig):
    """GA: gradient ascent on the forget set."""

    epochs: int = 5
    lr: float = 1e-4


@register_method("ga", config=GAConfig, training_free=False)
def ga(model, forget, retain=None, *, config: GAConfig, device=None, progress=False):
    """GA: gradient ascent on the forget set's cross-entropy (ignores retain)."""
    fit(model, AscendForget(), {"forget": forget}, config, device=device, progress=progress, desc="ga")
    return model


class NegGradPlus(Objective):
    """beta * CE(retain) - (1 - beta) * CE(forget), driven by the retain stream."""

    streams = ("retain", "forget")

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def loss(self, model, batches, info):
        (xr, yr), (xf, yf) = batches["retain"], batches["forget"]
        ce = nn.functional.cross_entropy
        return self.beta * ce(model(xr), yr) - (1 - self.beta) * ce(model(xf), yf)


@dataclass
class NegGradPlusConfig(TrainConfig):
    """NegGrad+: descend on retain while ascending on forget, weighted by beta.

    lr 1e-3: the forget term is unbounded, and at 1e-2 it diverged (NaN) on MNIST class forgetting.
    """

    epochs: int = 5
    lr: float = 1e-3
    beta: float = 0.5


@register_method("neggrad_plus", config=NegGradPlusConfig, training_free=False, needs_retain=True)
def neggrad_plus(model, forget, retain, *, config: NegGradPlusConfig, device=None, progress=False):
    """NegGrad+: beta * CE on retain minus (1 - beta) * CE on forget."""
    fit(
        model,
        NegGradPlus(config.beta),
        {"retain": retain, "forget": forget},
        config,
        device=device,
        progress=progress,
        desc="neggrad_plus",
    )
    return model


@dataclass
class InstanceConfig(TrainConfig):
    """The instance-wise recipe (Cha et al.): SGD lr 1e-3, momentum 0.9, weight decay 1e-5,
    batch 128, at most ``epochs`` passes (the methods stop early once their goal is met)."""

    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 128


@dataclass
class NegGradConfig(InstanceConfig):
    """Instance-wise NegGrad (Cha et al.): ascend on the forget samples until none is right."""


@register_method("neggrad", config=NegGradConfig, training_free=False)
def neggrad(model, forget, retain=None, *, config: NegGradConfig, device=None, progress=False):
    """NegGrad (instance-wise): -CE on the forget samples, stopping at 0% forget accuracy."""
    fit(
        model,
        AscendForget(stop_on=forget),
        {"forget": forget},
        config,
        device=device,
        progress=progress,
        desc="neggrad",
    )
    return model
