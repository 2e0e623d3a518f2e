"""Activation pruning (MSU): zero the units most active on the forget set, then fine-tune on the
retain set with the pruned weights held at zero."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data import iter_inputs, to_model
from ..layers import KeptModes
from ..registry import register_method
from ..targets import resolve_targets
from ..training import TrainConfig, fit
from .finetune import RetainCE

__all__ = ["ActivationPruningConfig", "mean_unit_activations", "prune_masks"]


@contextmanager
def _output_means(layers: dict[str, nn.Module]) -> Iterator[dict[str, list]]:
    """Within the block, each layer's output is summed per unit (dim 1 of a conv output, the last
    dim of a linear one): ``sums[name] = [sum, count]``. Hooks are always removed."""
    sums: dict[str, list] = {}

    def make_hook(name: str, conv: bool):
        def hook(mod, args, out):
            o = out.detach().float()
            o = o.transpose(0, 1).flatten(1) if conv else o.reshape(-1, o.shape[-1]).T  # (units, rows)
            s = sums.setdefault(name, [torch.zeros(o.shape[0], device=o.device), 0])
            s[0] += o.sum(1)
            s[1] += o.shape[1]

        return hook

    handles = []
    try:
        for name, m in layers.items():
            handles.append(m.register_forward_hook(make_hook(name, isinstance(m, nn.Conv2d))))
        yield sums
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def mean_unit_activations(
    model: nn.Module, layers: dict[str, nn.Module], data, batch_size: int = 256, device=None
) -> dict[str, Tensor]:
    """Mean raw output (before any BatchNorm or nonlinearity) of every unit of ``layers`` over
    ``data``, in eval mode: conv channels averaged over samples and positions, linear neurons
    over samples (and tokens). Layers that never ran are left out."""
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    modes = KeptModes(model)
    model.eval()
    try:
        with _output_means(layers) as sums:
            for x in iter_inputs(data, batch_size):
                model(to_model(x, param, device))
    finally:
        modes.restore()
    return {n: (s / max(1, c)).cpu() for n, (s, c) in sums.items()}


def prune_masks(means: dict[str, Tensor], q_early: float, q_deep: float) -> dict[str, Tensor]:
    """Per layer (in the given order), True for the units whose mean activation lies above the
    layer's q-th quantile, q going linearly from ``q_early`` (first layer) to ``q_deep`` (last)."""
    names = list(means)
    out = {}
    for i, name in enumerate(names):
        q = q_early + (q_deep - q_early) * (i / (len(names) - 1) if len(names) > 1 else 0.0)
        out[name] = means[name] > torch.quantile(means[name], q)
    return out


@dataclass
class ActivationPruningConfig(TrainConfig):
    """Activation pruning (MSU): forward the forget set, and in every Conv2d/Linear except the
    classifier head zero the output weights (weight rows / output channels and bias entries) of
    the units whose mean raw output (pre-BatchNorm, pre-ReLU) over the forget set lies above the
    layer's q-th quantile; then fine-tune on the retain set with those entries frozen at zero.
    A pruned conv channel followed by BatchNorm becomes a constant (the BN shift), not zero:
    it carries no information about the input either way.

    q_early, q_deep: quantile at the first and at the last pruned layer (linear in between; fewer
        units are pruned early, where features are shared by all classes).
    """

    epochs: int = 5
    lr: float = 0.01
    q_early: float = 0.99
    q_deep: float = 0.90

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 <= self.q_early <= 1 and 0 <= self.q_deep <= 1):
            raise ValueError(f"q_early and q_deep must lie in [0, 1]; got {self.q_early}, {self.q_deep}")


@register_method("activation_pruning", config=ActivationPruningConfig, training_free=False, needs_retain=True)
def activation_pruning(model, forget, retain, *, config: ActivationPruningConfig, device=None, progress=False):
    """Activation pruning: zero the units most active on the forget set, then fine-tune on retain."""
    if device is not None:
        model.to(device)
    head = set(resolve_targets(model, "head").values())
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in head}
    means = mean_unit_activations(model, layers, forget, config.batch_size, device)
    keep: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, pruned in prune_masks(means, config.q_early, config.q_deep).items():
            module = layers[name]
            for pname in ("weight", "bias"):
                p = getattr(module, pname, None)
                if p is None:
                    continue
                rows = pruned.to(p.device).view(-1, *([1] * (p.ndim - 1))).expand_as(p)
                p[rows] = 0  # masked entries are restored to these zeros after every fit step
                keep[f"{name}.{pname}"] = ~rows
    fit(
        model,
        RetainCE(),
        {"retain": retain},
        config,
        trainable=keep,
        device=device,
        progress=progress,
        desc="activation_pruning",
    )
    return model
