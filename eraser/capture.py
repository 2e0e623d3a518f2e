"""Feature capture: forward pre-hooks inside a context manager that always removes them.

Input features of each target layer are reduced on the fly to Gram matrices (float64, per group),
so memory is bounded by d^2 per layer whatever the number of samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import DataLike, iter_inputs, to_model
from .layers import KeptModes, layer_kind
from .subspace import Gram

__all__ = ["GramAccumulator", "FeatureRows", "capture_features", "collect_grams", "collect_features"]


class GramAccumulator:
    """Accumulates ``X^T X`` of feature batches shaped (G, m, D) (torchmetrics-style).

    ``row_mask``, when given, is called at each update and returns a boolean mask over the m rows
    (e.g. which tokens of a batch of prompts carry a concept); only those rows are accumulated.
    """

    def __init__(self, row_mask: Callable[[], Tensor] | None = None) -> None:
        self.row_mask = row_mask
        self.reset()

    def reset(self) -> None:
        self.matrix: Tensor | None = None
        self.n = 0
        self.nonfinite = False
        self.rows: list[Tensor] | None = []  # kept while there are fewer rows than dimensions

    def update(self, features: Tensor) -> None:
        f = features.detach()
        if self.row_mask is not None:
            mask = self.row_mask().reshape(-1).to(f.device)
            if mask.numel() != f.shape[1]:
                raise ValueError(f"row mask has {mask.numel()} entries for {f.shape[1]} feature rows")
            f = f[:, mask]
        if not torch.isfinite(f).all():
            self.nonfinite = True
            return
        f = f.to(torch.float64 if f.device.type != "mps" else torch.float32)
        g = f.transpose(1, 2) @ f
        self.matrix = g if self.matrix is None else self.matrix + g
        self.n += f.shape[1]
        if self.rows is not None:
            self.rows = self.rows + [f.to("cpu")] if self.n < f.shape[2] else None

    def compute(self) -> list[Gram]:
        """One :class:`Gram` per group (on the CPU, float64; with the rows when fewer than dims)."""
        if self.matrix is None:
            return []
        m = self.matrix.to("cpu", torch.float64)
        rows = torch.cat(self.rows, dim=1).to(torch.float64) if self.rows else None
        return [Gram(m[i], self.n, None if rows is None else rows[i]) for i in range(m.shape[0])]


class FeatureRows:
    """Keeps the feature rows themselves (G, n, D) on the CPU; for small n, e.g. head inputs."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.rows: list[Tensor] = []
        self.n = 0
        self.nonfinite = False

    def update(self, features: Tensor) -> None:
        self.rows.append(features.detach().to("cpu"))
        self.n += features.shape[1]

    def compute(self) -> Tensor:
        return torch.cat(self.rows, dim=1)


@contextmanager
def capture_features(
    targets: dict[str, nn.Module], accumulator: Callable[[], Any] = GramAccumulator
) -> Iterator[dict[str, Any]]:
    """Within the block, every forward through a target layer passes its input features,
    shaped (G, m, D), to that layer's accumulator (Gram matrices by default)."""
    accs = {name: accumulator() for name in targets}
    handles = []

    def make_hook(name: str, module: nn.Module):
        kind = layer_kind(module)
        if kind is None:
            raise ValueError(f"layer {name!r} ({type(module).__name__}) is not a supported kind")

        def hook(mod, args, kwargs):
            accs[name].update(kind.features(mod, args, kwargs))

        return hook

    try:
        for name, module in targets.items():
            handles.append(module.register_forward_pre_hook(make_hook(name, module), with_kwargs=True))
        yield accs
    finally:
        for h in handles:
            h.remove()


def collect_grams(
    model: nn.Module,
    targets: dict[str, nn.Module],
    data: DataLike,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 64,
    what: str = "forget data",
    progress: bool = False,
) -> dict[str, list[Gram]]:
    """Run ``data`` through ``model`` (eval mode, no grad) and return each target's Grams (one per group)."""
    return collect_features(
        model, targets, data, GramAccumulator, device=device, batch_size=batch_size, what=what, progress=progress
    )


@torch.no_grad()
def collect_features(
    model: nn.Module,
    targets: dict[str, nn.Module],
    data: DataLike,
    accumulator: Callable[[], Any] = GramAccumulator,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 64,
    what: str = "data",
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``data`` through ``model`` (eval mode, no grad); each target's ``accumulator().compute()``."""
    params = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else (params.device if params is not None else torch.device("cpu"))
    seen = 0
    with KeptModes(model), capture_features(targets, accumulator) as accs:
        model.eval()
        for x in tqdm(iter_inputs(data, batch_size), desc=f"capture {what}", disable=not progress, leave=False):
            if x.shape[0] == 0:
                continue
            model(to_model(x, params, dev))
            seen += x.shape[0]
    if seen == 0:
        raise ValueError(f"{what} is empty: pass at least one sample.")
    out = {}
    for name, acc in accs.items():
        if acc.nonfinite:
            raise ValueError(
                f"features entering layer {name!r} contain NaN or Inf for the {what}; check the inputs "
                "and the model's weights. The model was not changed."
            )
        if acc.n == 0:
            raise ValueError(
                f"layer {name!r} received no input during the forward pass; it may be called "
                "functionally (e.g. MultiheadAttention.out_proj) or not used by this model's forward."
            )
        out[name] = acc.compute()
    return out
