"""Gradient surgery (MSU): ascend the part of the forget gradient orthogonal to the retain
gradient, then fine-tune on the retain set with an elastic-net penalty."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..registry import register_method
from ..training import Objective, StepInfo, TrainConfig, accuracy, fit

__all__ = ["GradSurgeryConfig", "project_orthogonal"]


def project_orthogonal(g: Tensor, ref: Tensor) -> Tensor:
    """``g - (g . ref / |ref|^2) ref``: ``g`` without its component along ``ref`` (Gram-Schmidt);
    ``g`` itself when ``ref`` is zero."""
    norm2 = ref.dot(ref)
    if norm2 == 0:
        return g
    return g - (g.dot(ref) / norm2) * ref


def _flat_grad(loss: Tensor, params: list[nn.Parameter]) -> Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])


class OrthogonalAscent(Objective):
    """Ascent on forget batches along the forget gradient made orthogonal to the retain one;
    optionally a unit-length step, and stopping once the model gets none of ``stop_on`` right."""

    streams = ("forget", "retain")

    def __init__(self, normalize: bool = False, stop_on=None) -> None:
        self.normalize, self.stop_on = normalize, stop_on

    def finished(self, model) -> bool:
        return self.stop_on is not None and accuracy(model, self.stop_on) == 0.0

    def backward(self, model: nn.Module, batches, info: StepInfo) -> float:
        (xf, yf), (xr, yr) = batches["forget"], batches["retain"]
        params = [p for p in model.parameters() if p.requires_grad]
        ce = nn.functional.cross_entropy
        loss_f = ce(model(xf), yf)
        g_f = _flat_grad(loss_f, params)
        g_r = _flat_grad(ce(model(xr), yr), params)
        step = project_orthogonal(g_f, g_r)
        if self.normalize:
            step = step / step.norm().clamp_min(1e-12)
        # The optimiser descends p.grad, so -step makes it ascend the forget loss.
        offset = 0
        for p in params:
            p.grad = -step[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        return -float(loss_f.detach())


class ElasticNetCE(Objective):
    """CE on retain batches + l1 * ||theta||_1 + l2 * ||theta||_2^2."""

    streams = ("retain",)

    def __init__(self, l1: float, l2: float) -> None:
        self.l1, self.l2 = l1, l2

    def loss(self, model, batches, info):
        x, y = batches["retain"]
        params = [p for p in model.parameters() if p.requires_grad]
        penalty = sum(self.l1 * p.abs().sum() + self.l2 * p.pow(2).sum() for p in params)
        return nn.functional.cross_entropy(model(x), y) + penalty


@dataclass
class GradSurgeryConfig(TrainConfig):
    """Gradient surgery (MSU): ``ascent_epochs`` passes over the forget set, each step ascending
    the forget-batch CE gradient projected orthogonally to a retain-batch CE gradient (so the
    step does not, to first order, raise the retain loss); then ``epochs`` of fine-tuning on the
    retain set with an elastic net. Both phases share the optimiser settings.

    ascent_epochs: at most this many passes over the forget set in the ascent phase.
    ascent_lr: learning rate of the ascent phase (None: ``lr``).
    ascent_stop: end the ascent once no forget sample is classified correctly (checked after each
        epoch). Ascent is unbounded: on an MNIST CNN (digit 3) two full epochs left 10% retain
        accuracy before fine-tuning and 94.5% after; stopping at 0% forget accuracy, 99.4%.
    ascent_normalize: ascend the unit-length projected gradient (``ascent_lr`` is then the step
        length in weight space). For very confident models whose forget gradient has all but
        vanished (CE ~1e-6), where a raw ascent step does not move.
    l1, l2: elastic-net weights in the fine-tuning phase (weight_decay defaults to 0: l2 is the
        weight penalty here).
    """

    epochs: int = 5
    lr: float = 0.01
    weight_decay: float = 0.0
    ascent_epochs: int = 2
    ascent_lr: float | None = None
    ascent_stop: bool = True
    ascent_normalize: bool = False
    l1: float = 1e-5
    l2: float = 1e-4


@register_method("grad_surgery", config=GradSurgeryConfig, training_free=False, needs_retain=True)
def grad_surgery(model, forget, retain, *, config: GradSurgeryConfig, device=None, progress=False):
    """Gradient surgery: ascend the retain-orthogonal forget gradient, then elastic-net fine-tune on retain."""
    ascent_lr = config.lr if config.ascent_lr is None else config.ascent_lr
    ascent = replace(config, epochs=config.ascent_epochs, lr=ascent_lr)
    surgery = OrthogonalAscent(config.ascent_normalize, forget if config.ascent_stop else None)
    fit(
        model,
        surgery,
        {"forget": forget, "retain": retain},
        ascent,
        device=device,
        progress=progress,
        desc="grad_surgery ascent",
    )
    fit(
        model,
        ElasticNetCE(config.l1, config.l2),
        {"retain": retain},
        config,
        device=device,
        progress=progress,
        desc="grad_surgery finetune",
    )
    return model
