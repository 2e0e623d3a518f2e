"""Boundary Unlearning (Chen et al., CVPR 2023): move the decision space of the forget samples
instead of the parameters' values. Boundary Shrink relabels each forget sample to its nearest
wrong class (found by an adversarial step) and fine-tunes on that; Boundary Expanding trains the
forget samples into an extra "shadow" class and then deletes the shadow output unit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data import labeled_tensors, to_model
from ..layers import KeptModes
from ..registry import register_method
from ..targets import resolve_targets
from ..training import Objective, StepInfo, TrainConfig, fit

__all__ = ["BoundaryShrinkConfig", "BoundaryExpandingConfig", "nearest_wrong_labels", "ForgetCE"]


class ForgetCE(Objective):
    """Cross-entropy towards the labels that come with the (relabelled) forget batches."""

    streams = ("forget",)

    def loss(self, model: nn.Module, batches, info: StepInfo) -> Tensor:
        x, y = batches["forget"]
        return nn.functional.cross_entropy(model(x), y)


def nearest_wrong_labels(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, batch_size: int = 256, device=None
) -> Tensor:
    """The class each sample crosses into under an untargeted FGSM step of size ``eps`` (L-inf):
    argmax of the model's logits at ``x + eps * sign(grad_x CE)`` over the classes other than
    ``y`` (so the runner-up when the step does not flip the prediction). Eval mode; the
    parameters' ``.grad`` and train/eval mode are left as they were; inputs are not clamped
    (they may be normalised images). Labels come back on the CPU."""
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    modes = KeptModes(model)
    model.eval()
    out = []
    try:
        for start in range(0, len(x), batch_size):
            xb = to_model(x[start : start + batch_size], param, device).requires_grad_(True)
            yb = y[start : start + batch_size].to(device)
            (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(xb), yb, reduction="sum"), xb)
            with torch.no_grad():
                logits = model(xb + eps * grad.sign())
                logits[torch.arange(len(yb), device=device), yb] = float("-inf")
                out.append(logits.argmax(1).cpu())
    finally:
        modes.restore()
    return torch.cat(out)


@dataclass
class BoundaryShrinkConfig(TrainConfig):
    """Boundary Shrink: fine-tune the forget samples towards their nearest wrong class, found by
    an untargeted FGSM step of size ``eps`` on the original model.

    eps: FGSM bound (L-inf, in the model's input space; the paper's 0.1).
    Defaults: SGD lr 1e-4, 10 epochs, batch 64, momentum 0.9, weight decay 5e-4 (the paper's
    code: lr 1e-5, 10 epochs). The amount of training grows with the forget set (steps =
    epochs * forget batches): measured on 1,000 MNIST digits (SmallCNN) it forgets the class
    (UA 99 on its test images) for 1.4 points of test accuracy, on 500 CIFAR-10 images
    (ResNet-20) UA 90 with none lost; lr 1e-3 costs 2-3 points there and proportionally more on
    a full class. Tiny forget sets (tens of samples) need a larger lr.
    """

    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 64
    eps: float = 0.1


@register_method("boundary_shrink", config=BoundaryShrinkConfig, training_free=False)
def boundary_shrink(model, forget, retain=None, *, config: BoundaryShrinkConfig, device=None, progress=False):
    """Boundary Shrink: relabel forget samples to their nearest wrong class (FGSM) and fine-tune."""
    if device is not None:
        model.to(device)
    x, y = labeled_tensors(forget)
    # The original model is fixed, so its neighbour labels are computed once, not per epoch.
    neighbours = nearest_wrong_labels(model, x, y, config.eps, device=device)
    fit(
        model, ForgetCE(), {"forget": (x, neighbours)}, config, device=device, progress=progress, desc="boundary_shrink"
    )
    return model


@dataclass
class BoundaryExpandingConfig(TrainConfig):
    """Boundary Expanding: add a shadow output unit to the classifier head, train the forget
    samples into it with cross-entropy, then remove it (the head keeps its shape and name).

    layers: the head to widen (a ``resolve_targets`` preset or name; must be one nn.Linear).
    Defaults: SGD lr 1e-4, 10 epochs, batch 64, momentum 0.9, weight decay 5e-4 (the paper's
    code: lr 1e-5, 10 epochs). Measured: 1,000 MNIST digits (SmallCNN) UA 96 on the class's
    test images for 2.7 points of test accuracy (lr 1e-3: UA 100 but -13 points); 500 CIFAR-10
    images (ResNet-20) UA 86 for 1.6 points. Tiny forget sets (tens of samples) need a larger lr.
    """

    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 64
    layers: str = "head"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def _widened(head: nn.Linear) -> nn.Linear:
    """A copy of ``head`` with one more output unit (the shadow class, freshly initialised)."""
    p = head.weight
    wide = nn.Linear(
        head.in_features, head.out_features + 1, bias=head.bias is not None, device=p.device, dtype=p.dtype
    )
    with torch.no_grad():
        wide.weight[:-1].copy_(head.weight)
        if head.bias is not None:
            wide.bias[:-1].copy_(head.bias)
    wide.requires_grad_(p.requires_grad)
    return wide


@register_method("boundary_expanding", config=BoundaryExpandingConfig, training_free=False)
def boundary_expanding(model, forget, retain=None, *, config: BoundaryExpandingConfig, device=None, progress=False):
    """Boundary Expanding: train forget samples into an extra shadow class, then prune that class."""
    targets = resolve_targets(model, config.layers)
    if len(targets) != 1 or not isinstance(next(iter(targets.values())), nn.Linear):
        kinds = {n: type(m).__name__ for n, m in targets.items()}
        raise ValueError(
            f"boundary_expanding needs one nn.Linear classifier head; layers={config.layers!r} gave {kinds}"
        )
    name, head = next(iter(targets.items()))
    if device is not None:
        model.to(device)
    x, _ = labeled_tensors(forget)
    shadow = torch.full((len(x),), head.out_features, dtype=torch.long)
    with torch.random.fork_rng(devices=[]):  # a seeded shadow unit, without touching global RNG state
        torch.manual_seed(config.seed)
        wide = _widened(head)
    _set_module(model, name, wide)
    try:
        fit(
            model,
            ForgetCE(),
            {"forget": (x, shadow)},
            config,
            device=device,
            progress=progress,
            desc="boundary_expanding",
        )
    finally:
        # Always put the original module back (same object, so hooks and references survive),
        # carrying the trained weights of the original units; the shadow unit is dropped.
        with torch.no_grad():
            head.weight.copy_(wide.weight[:-1])
            if head.bias is not None:
                head.bias.copy_(wide.bias[:-1])
        _set_module(model, name, head)
    return model
