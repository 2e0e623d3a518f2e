"""Whole classification datasets as in-memory tensors: MNIST npz files, CIFAR-style JPEG trees
(tar or folder) and ImageFolder trees, with the normalisation their models expect."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .datasets import IMAGENET_MEAN, IMAGENET_STD, NpzImages, TarImageFolder

__all__ = ["TensorDataset", "load_dataset", "DATASETS"]


@dataclass
class TensorDataset:
    """Train and test images (N, C, H, W, float, normalised) with int64 labels, and provenance."""

    name: str
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: list[str]
    source: dict = field(default_factory=dict)
    # the per-channel normalisation applied to the images (None: they are pixels in [0, 1])
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train[0].shape[1])

    def digest(self) -> str:
        """A sha256 of all images and labels (identifies the data in checkpoint cache keys)."""
        import hashlib

        h = hashlib.sha256()
        for x, y in (self.train, self.test):
            h.update(np.ascontiguousarray(x.numpy()).tobytes())
            h.update(np.ascontiguousarray(y.numpy()).tobytes())
        return h.hexdigest()


def _mnist(root: Path) -> TensorDataset:
    tr, te = NpzImages(root / "mnist_train10k.npz"), NpzImages(root / "mnist_test10k.npz")
    return TensorDataset(
        "mnist",
        (tr.x, tr.targets),
        (te.x, te.targets),
        [str(i) for i in range(10)],
        {"root": str(root), "files": ["mnist_train10k.npz", "mnist_test10k.npz"]},
    )


def _stack(ds: TarImageFolder) -> tuple[Tensor, Tensor]:
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    return xs, torch.tensor(ds.targets, dtype=torch.long)


def _image_tree(name: str, path: Path) -> TensorDataset:
    # Images are normalised with ImageNet mean/std (TarImageFolder's default), as the CIFAR
    # ResNet checkpoints expect.
    train, test = TarImageFolder(path, "train"), TarImageFolder(path, "test")
    if train.classes != test.classes:
        raise ValueError(f"{path}: train classes {train.classes} differ from test classes {test.classes}")
    return TensorDataset(
        name, _stack(train), _stack(test), train.classes, {"path": str(path)}, IMAGENET_MEAN, IMAGENET_STD
    )


def _cifar10(root: Path) -> TensorDataset:
    return _image_tree("cifar10", root / "cifar10_jpg.tar.gz" if root.is_dir() else root)


DATASETS = {"mnist": _mnist, "cifar10": _cifar10}


def load_dataset(name: str, root: str | Path) -> TensorDataset:
    """``mnist`` (directory with mnist_train10k.npz / mnist_test10k.npz), ``cifar10`` (the JPEG
    tree, as tar.gz or folder) or ``folder`` (any ``train/<class>/`` + ``test/<class>/`` tree)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset path {root} does not exist")
    if name == "folder":
        return _image_tree(root.stem, root)
    try:
        return DATASETS[name](root)
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS) + ['folder']}") from None
