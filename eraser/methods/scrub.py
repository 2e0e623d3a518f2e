"""SCRUB (Kurmanji et al., NeurIPS 2023): a student moves away from its frozen original (the
teacher) on the forget set while staying close to it, and correct, on the retain set."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..registry import register_method
from ..training import Objective, StepInfo, TrainConfig, fit

__all__ = ["ScrubConfig", "Scrub", "distill_kl"]


def distill_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) of the temperature-softened outputs, times T^2 (Hinton's scaling,
    as SCRUB's ``DistillKL``), averaged over the batch."""
    t = temperature
    log_p = nn.functional.log_softmax(student / t, dim=1)
    q = nn.functional.softmax(teacher / t, dim=1)
    return nn.functional.kl_div(log_p, q, reduction="batchmean") * t * t


class Scrub(Objective):
    """Max-steps (-KL on forget batches) in the first ``msteps`` epochs, then a min-step pass
    (gamma * CE + alpha * KL on retain batches) every epoch."""

    streams = ("retain", "forget")

    def __init__(self, teacher: nn.Module, msteps: int, temperature: float, gamma: float, alpha: float) -> None:
        self.teacher, self.msteps, self.t = teacher, msteps, temperature
        self.gamma, self.alpha = gamma, alpha

    def phases(self, epoch: int) -> list[tuple[str, ...]]:
        return [("forget",), ("retain",)] if epoch < self.msteps else [("retain",)]

    def _kl(self, out: Tensor, x: Tensor) -> Tensor:
        with torch.no_grad():
            target = self.teacher(x)
        return distill_kl(out, target, self.t)

    def loss(self, model: nn.Module, batches, info: StepInfo) -> Tensor:
        if "forget" in batches:  # max-step: push the student's forget outputs away from the teacher
            x, _ = batches["forget"]
            return -self._kl(model(x), x)
        x, y = batches["retain"]
        out = model(x)
        return self.gamma * nn.functional.cross_entropy(out, y) + self.alpha * self._kl(out, x)


@dataclass
class ScrubConfig(TrainConfig):
    """SCRUB: alternate max-steps on the forget set and min-steps on the retain set.

    msteps: number of (first) epochs that run a max-step pass over the forget set before the
        retain pass (named so as not to clash with ``max_steps``, the loop's step limit).
    temperature: softmax temperature T of the teacher-student KL.
    gamma: weight of the retain cross-entropy in the min-step.
    alpha: weight of the retain KL to the teacher in the min-step.
    Defaults are the CIFAR recipe (lr 5e-4, 3 epochs, 2 max-steps, T 4, gamma 0.99, alpha 0.001,
    SGD momentum 0.9, weight decay 5e-4).
    """

    epochs: int = 3
    lr: float = 5e-4
    msteps: int = 2
    temperature: float = 4.0
    gamma: float = 0.99
    alpha: float = 0.001

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.msteps < 0 or self.temperature <= 0:
            raise ValueError(f"need msteps >= 0 and temperature > 0 (got {self.msteps}, {self.temperature})")


@register_method("scrub", config=ScrubConfig, training_free=False, needs_retain=True)
def scrub(model, forget, retain, *, config: ScrubConfig, device=None, progress=False):
    """SCRUB: diverge from the frozen original on forget data, stay close (and correct) on retain."""
    param = next(model.parameters())
    teacher = copy.deepcopy(model).to(device if device is not None else param.device).eval()
    teacher.requires_grad_(False)
    objective = Scrub(teacher, config.msteps, config.temperature, config.gamma, config.alpha)
    fit(model, objective, {"retain": retain, "forget": forget}, config, device=device, progress=progress, desc="scrub")
    return model
