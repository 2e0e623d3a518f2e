"""Spectra of the forget features at each real head: how concentrated each class's features are.

    python benchmarks/forget_spectra.py [--data ../shared/data]

Prints, per class, the energy fraction of the top singular direction and s2/s1, s3/s1 of the
head-input features of the forget images used in benchmarks/classifier_heads.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import eraser
from classifiers.datasets import IMAGENET_MEAN, IMAGENET_STD, TarImageFolder, pil_to_tensor
from classifiers.zoo import IMAGENETTE, efficientnet_lite0, load_cifar_resnet
from eraser.methods.unlink import DEFAULT_SV_RATIO


def report(name: str, model, head: str, dataset, classes, names) -> None:
    targets = eraser.resolve_targets(model, [head])
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.tensor(dataset.targets)
    print(
        f"### {name}\n\n| class | top-1 energy | s2/s1 | s3/s1 | k at sv_ratio {DEFAULT_SV_RATIO} |\n|---|---|---|---|---|"
    )
    for c, cname in zip(classes, names):
        gram = eraser.collect_grams(model, targets, x[y == c])[head][0]
        e = torch.linalg.eigvalsh(gram.matrix).flip(0).clamp_min(0)
        s = e.sqrt()
        k = eraser.forget_subspace(gram, sv_ratio=DEFAULT_SV_RATIO).k
        print(f"| {cname} | {float(e[0] / e.sum()):.3f} | {float(s[1] / s[0]):.3f} | {float(s[2] / s[0]):.3f} | {k} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data")
    args = ap.parse_args()
    wnids = list(IMAGENETTE)
    tf = lambda img: pil_to_tensor(img, (0.5,) * 3, (0.5,) * 3)  # noqa: E731
    train = TarImageFolder(
        args.data / "imagenette/imagenette_224_train100.tar",
        "train",
        wnids,
        100,
        tf,
        {w: IMAGENETTE[w][1] for w in wnids},
    )
    report(
        "EfficientNet-Lite0, Imagenette, 100 forget images",
        efficientnet_lite0("wheel"),
        "classifier",
        train,
        [IMAGENETTE[w][1] for w in wnids],
        [IMAGENETTE[w][0] for w in wnids],
    )
    tf = lambda img: pil_to_tensor(img, IMAGENET_MEAN, IMAGENET_STD)  # noqa: E731
    cifar = TarImageFolder(args.data / "cifar10/cifar10_jpg.tar.gz", "train", None, 50, tf)
    report(
        "ResNet-20, CIFAR-10, 50 forget images",
        load_cifar_resnet(args.data / "models/cifar10_resnet20.th"),
        "linear",
        cifar,
        list(range(10)),
        cifar.classes,
    )


if __name__ == "__main__":
    main()
