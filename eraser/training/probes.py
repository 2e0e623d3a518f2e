"""Read-only questions methods ask a model: its logits, accuracy and gradient statistics."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..data import LabeledData, labeled_batches, to_model
from ..layers import KeptModes

__all__ = ["logits_of", "accuracy", "gradient_stats", "reinitialize"]


@torch.no_grad()
def logits_of(model: nn.Module, data: LabeledData, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """(logits, labels) of every sample of ``data``, in eval mode, on CPU."""
    param = next(model.parameters())
    modes = KeptModes(model)
    model.eval()
    outs, labels = [], []
    try:
        for x, y in labeled_batches(data, batch_size):
            outs.append(model(to_model(x, param, param.device)).float().cpu())
            labels.append(torch.as_tensor(y).long())
    finally:
        modes.restore()
    if not outs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(labels)


def accuracy(model: nn.Module, data: LabeledData, batch_size: int = 512) -> float:
    """Top-1 accuracy on ``data`` in percent."""
    logits, y = logits_of(model, data, batch_size)
    if y.numel() == 0:
        raise ValueError("cannot measure accuracy on an empty set")
    return 100.0 * float((logits.argmax(1) == y).float().mean())


LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _ce(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(model(x), y, reduction="sum")


def gradient_stats(
    model: nn.Module,
    data: LabeledData,
    loss_fn: LossFn = _ce,
    *,
    power: int = 1,
    per_sample: bool = False,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Per-parameter gradient statistics of ``loss_fn`` over ``data``, in eval mode.

    ``power=1``: the gradient of the mean loss. ``power=2``: the mean over batches of the squared
    batch-mean gradient (with ``per_sample``, batches of one: a diagonal empirical Fisher).
    The model's grads are left cleared.

    ``loss_fn(model, x, y)`` must return the summed (not averaged) loss of the batch.
    """
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    acc = {n: torch.zeros_like(p) for n, p in named}
    modes = KeptModes(model)
    model.eval()
    n_seen = n_batches = 0
    try:
        for x, y in labeled_batches(data, 1 if per_sample else batch_size):
            x, y = to_model(x, param, device), torch.as_tensor(y).long().to(device)
            model.zero_grad(set_to_none=True)
            loss_fn(model, x, y).backward()
            for n, p in named:
                if p.grad is not None:
                    acc[n] += p.grad.detach() if power == 1 else (p.grad.detach() / x.shape[0]) ** power
            n_seen += x.shape[0]
            n_batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        modes.restore()
    if n_seen == 0:
        raise ValueError("gradient statistics need a non-empty data set")
    return {n: a / (n_seen if power == 1 else n_batches) for n, a in acc.items()}


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter with its module's own initialiser (seeded); buffers reset too."""
    torch.manual_seed(seed)
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return model
