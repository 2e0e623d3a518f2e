"""Turning what users pass (DataLoader, Dataset, tensor) into batches of model inputs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["DataLike", "iter_inputs", "to_model"]

DataLike = DataLoader | Dataset | Tensor


def _inputs_of(batch: Any) -> Tensor:
    """The model input of a batch: the tensor itself, or the first item of (inputs, labels, ...)."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("pixel_values", "image", "images", "input", "inputs", "x"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise TypeError(
        f"cannot find the model inputs in a batch of type {type(batch).__name__}: yield tensors, "
        "(inputs, labels) tuples, or dicts with a 'pixel_values' or 'image' key."
    )


def iter_inputs(data: DataLike, batch_size: int = 64) -> Iterator[Tensor]:
    """Yield input batches from a DataLoader, a Dataset (batched here) or a tensor of samples."""
    if isinstance(data, Tensor):
        if data.ndim == 0:
            raise ValueError("data must be a batch of samples, not a scalar tensor")
        for start in range(0, data.shape[0], batch_size):
            yield data[start : start + batch_size]
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, DataLoader):
        raise TypeError(f"data must be a DataLoader, a Dataset or a Tensor; got {type(data).__name__}")
    for batch in data:
        yield _inputs_of(batch)


def to_model(x: Tensor, reference: torch.nn.Parameter | Tensor | None, device: torch.device) -> Tensor:
    """Move inputs to ``device`` and, for floating inputs, to the model's parameter dtype."""
    x = x.to(device)
    if reference is not None and x.is_floating_point() and reference.is_floating_point():
        x = x.to(reference.dtype)
    return x
