"""Image-classification datasets read from the formats users have: folder trees, tar archives of
``<split>/<class>/<file>`` trees (plain or gzipped) and MNIST-style npz arrays."""

from __future__ import annotations

import io
import tarfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["TarImageFolder", "NpzImages", "IMAGENET_MEAN", "IMAGENET_STD", "pil_to_tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def pil_to_tensor(
    img: Image.Image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """RGB PIL image -> normalised float tensor (C, H, W)."""
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class TarImageFolder(Dataset):
    """``<split>/<class>/<image>`` inside a tar (or tar.gz) archive, or a directory, held as
    encoded bytes in memory and decoded per item.

    ``classes`` restricts and orders the class folders (default: all, sorted); labels are indices
    into it unless ``label_map`` maps folder names to other labels (e.g. ImageNet indices).
    ``per_class`` keeps the first N files (sorted by name) of each class.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        classes: Sequence[str] | None = None,
        per_class: int | None = None,
        transform: Callable[[Image.Image], Tensor] = pil_to_tensor,
        label_map: dict[str, int] | None = None,
    ) -> None:
        root = Path(root)
        files: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        wanted = set(classes) if classes is not None else None
        for member, read in _walk(root):
            parts = member.split("/")
            if len(parts) < 3 or parts[-3] != split or Path(parts[-1]).suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            cls = parts[-2]
            if wanted is None or cls in wanted:
                files[cls].append((parts[-1], read()))
        if not files:
            raise FileNotFoundError(f"no images under '{split}/<class>/' in {root}")
        self.classes = list(classes) if classes is not None else sorted(files)
        missing = [c for c in self.classes if c not in files]
        if missing:
            raise FileNotFoundError(f"classes {missing} have no images under '{split}/' in {root}")
        self.label_map = label_map or {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[bytes, int]] = []
        for cls in self.classes:
            chosen = sorted(files[cls])[: per_class if per_class is not None else None]
            self.samples += [(data, self.label_map[cls]) for _, data in chosen]
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        data, label = self.samples[i]
        return self.transform(Image.open(io.BytesIO(data))), label


def _walk(root: Path):
    """Yield (relative path, reader) for every file in a directory or a tar archive."""
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file():
                yield p.relative_to(root).as_posix(), p.read_bytes
        return
    with tarfile.open(root, "r:*") as tar:
        for m in tar:
            if m.isfile():
                f = tar.extractfile(m)
                data = f.read() if f is not None else b""
                yield m.name.lstrip("./"), (lambda d=data: d)


class NpzImages(Dataset):
    """Grayscale images from an npz with ``x`` (N, H, W) uint8 and ``y`` (N,), scaled to [0, 1]."""

    def __init__(self, path: str | Path, indices: Sequence[int] | None = None) -> None:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
        if indices is not None:
            x, y = x[np.asarray(indices)], y[np.asarray(indices)]
        self.x = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
        self.targets = torch.from_numpy(y.astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], int(self.targets[i])
