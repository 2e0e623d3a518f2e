"""Turning what users pass (DataLoader, Dataset, tensor) into batches of model inputs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Subset, TensorDataset

__all__ = [
    "DataLike",
    "LabeledData",
    "iter_inputs",
    "to_model",
    "TensorBatches",
    "labeled_batches",
    "labeled_tensors",
    "num_samples",
    "forget_share",
    "is_labeled_pair",
    "as_dataset",
    "mixed_batches",
    "subsample",
]

DataLike = DataLoader | Dataset | Tensor
LabeledData = DataLoader | Dataset | tuple[Tensor, Tensor]


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
    """Yield input batches from a DataLoader, a Dataset (batched here), a tensor of samples or an
    (inputs, labels) tensor pair."""
    if is_labeled_pair(data):
        data = data[0]
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


class TensorBatches:
    """Re-iterable (inputs, labels) mini-batches of two tensors, reshuffled each pass when
    ``shuffle`` (seeded, so runs repeat). Much faster than a DataLoader over a TensorDataset."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"inputs and labels differ in length: {x.shape[0]} vs {y.shape[0]}")
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.x.shape[0]
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                yield self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                yield self.x[idx], self.y[idx]


def is_labeled_pair(data: Any) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)


def labeled_batches(data: LabeledData, batch_size: int, shuffle: bool = False, seed: int = 0):
    """Re-iterable (inputs, labels) batches from a DataLoader (used as given), a Dataset or an
    (inputs, labels) tensor pair."""
    if is_labeled_pair(data):
        return TensorBatches(data[0], torch.as_tensor(data[1]).long(), batch_size, shuffle, seed)
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset):
        g = torch.Generator().manual_seed(seed)
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None)
    raise TypeError(
        f"labelled data must be a DataLoader, a Dataset or an (inputs, labels) tensor pair; got {type(data).__name__}"
    )


def labeled_tensors(data: LabeledData, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """All of ``data`` as one (inputs, labels) tensor pair (for small sets: forget sets, MNIST)."""
    if is_labeled_pair(data):
        return data[0], torch.as_tensor(data[1]).long()
    xs, ys = [], []
    for batch in labeled_batches(data, batch_size):
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (_inputs_of(batch), batch["label"])
        xs.append(x)
        ys.append(torch.as_tensor(y).long())
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(xs), torch.cat(ys)


def num_samples(data: LabeledData | DataLike) -> int:
    """How many samples ``data`` holds (DataLoaders over sized datasets included)."""
    if is_labeled_pair(data):
        return int(data[0].shape[0])
    if isinstance(data, Tensor):
        return int(data.shape[0])
    if isinstance(data, DataLoader):
        return len(data.dataset)  # type: ignore[arg-type]
    return len(data)  # type: ignore[arg-type]


def forget_share(forget: LabeledData, retain: LabeledData, weight: float | None = None) -> float:
    """``weight`` if given, else the forget set's share of forget + retain samples (the weight
    its loss term has when both sets are shuffled into one stream)."""
    if weight is not None:
        if not 0 <= weight <= 1:
            raise ValueError(f"forget_weight must lie in [0, 1]; got {weight}")
        return weight
    n_f, n_r = num_samples(forget), num_samples(retain)
    return n_f / (n_f + n_r)


def as_dataset(data: LabeledData) -> Dataset:
    """``data`` as a map-style Dataset of (input, label) samples. A DataLoader contributes the
    samples its sampler visits (so subset samplers are honoured); an iterable one is read whole."""
    if is_labeled_pair(data):
        return TensorDataset(data[0], torch.as_tensor(data[1]).long())
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            return TensorDataset(*labeled_tensors(data))
        return Subset(data.dataset, list(data.sampler))
    return data


def _collate(samples: list) -> tuple[Tensor, Tensor]:
    # Labels may be ints in one set and tensors in the other: normalise both.
    return torch.stack([torch.as_tensor(s[0]) for s in samples]), torch.as_tensor([int(s[1]) for s in samples])


def mixed_batches(sets: list[LabeledData], batch_size: int, seed: int) -> DataLoader:
    """The union of ``sets`` in shuffled (seeded) batches that mix them."""
    g = torch.Generator().manual_seed(seed)
    union = ConcatDataset([as_dataset(d) for d in sets])
    return DataLoader(union, batch_size=batch_size, shuffle=True, generator=g, collate_fn=_collate)


def subsample(data: LabeledData | Tensor, n: int, seed: int) -> LabeledData | Tensor:
    """``n`` samples of ``data`` drawn without replacement (seeded); all of it if it is smaller."""
    total = num_samples(data)
    if n >= total:
        return data
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    if is_labeled_pair(data):
        return data[0][idx], torch.as_tensor(data[1])[idx]
    if isinstance(data, Tensor):  # unlabelled samples (what Unlink captures features of)
        return data[idx]
    return Subset(as_dataset(data), idx.tolist())
