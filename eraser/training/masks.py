"""Parameter masks shared by the trained methods: which entries to train (:func:`top_fraction_mask`)
and the optimiser step that changes only those (:func:`masked_step`).

A mask maps a parameter name to a boolean tensor of the parameter's shape; True = may change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["top_fraction_mask", "trained_parameters", "masked_step"]


def top_fraction_mask(scores: dict[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """Boolean masks marking the ``ratio`` largest entries over all tensors together (one global
    threshold); exactly ``int(ratio * total)`` entries are True, ties broken by position."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1]; got {ratio}")
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores.values()])
    total, k = flat.numel(), int(ratio * flat.numel())
    if k == 0:
        chosen = torch.zeros(total, dtype=torch.bool, device=flat.device)
    elif k == total:
        chosen = torch.ones(total, dtype=torch.bool, device=flat.device)
    else:
        threshold = flat.kthvalue(total - k + 1).values  # the k-th largest value
        chosen = flat > threshold
        ties = torch.nonzero(flat == threshold).squeeze(1)
        chosen[ties[: k - int(chosen.sum())]] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = chosen[start : start + s.numel()].reshape(s.shape)
        start += s.numel()
    return out


def trained_parameters(params: dict[str, Tensor], masks: dict[str, Tensor]) -> list[Tensor]:
    """The parameters an optimiser gets: all but those whose mask is all False; ValueError if none."""
    out = [p for n, p in params.items() if n not in masks or bool(masks[n].any())]
    if not out:
        raise ValueError("no parameter entry to train: every parameter is frozen or masked out")
    return out


def masked_step(
    optimizer: torch.optim.Optimizer,
    params: dict[str, Tensor],
    masks: dict[str, Tensor],
    frozen: dict[str, Tensor],
    clip: Callable[[], object] | None = None,
) -> None:
    """One optimiser step that changes only the True entries of ``masks``: zero the other
    entries' gradients, call ``clip`` (gradient clipping, if any), step, then reset the other
    entries to ``frozen`` (so momentum and weight decay cannot move them either)."""
    # Masking before clipping keeps frozen entries out of the clipped gradient norm.
    for n, m in masks.items():
        grad = params[n].grad
        if grad is not None:
            grad.mul_(m)
    if clip is not None:
        clip()
    optimizer.step()
    if masks:
        with torch.no_grad():
            for n, m in masks.items():
                p = params[n]
                p.copy_(torch.where(m, p, frozen[n].to(p.dtype)))
