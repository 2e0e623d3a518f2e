"""Classifier architectures by name, built untrained for a given number of classes."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .cifar_resnet import cifar_resnet

__all__ = ["SmallCNN", "build_model", "list_architectures"]


class SmallCNN(nn.Module):
    """Two conv blocks and two linear layers for 28x28 grayscale digits (about 52k parameters;
    ~0.3M multiply-adds per image, so a full MNIST evaluation takes well under a second on CPU)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(2 * width * 7 * 7, 64)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.head(nn.functional.relu(self.fc(self.features(x).flatten(1))))


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int = 3, small_input: bool = False) -> nn.Module:
        import torchvision

        if in_channels != 3:
            raise ValueError(f"{name} takes 3-channel images; got in_channels={in_channels}")
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if small_input and name.startswith("resnet"):
            # The CIFAR convention (as in the SalUn/l1-sparse code): 3x3 stem, no max-pool.
            model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        elif small_input:
            raise ValueError(f"small_input is only defined for ResNets, not {name}")
        return model

    return build


def _cifar(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int = 3, small_input: bool = True) -> nn.Module:
        if in_channels != 3:
            raise ValueError(f"cifar_resnet{depth} takes 3-channel images; got in_channels={in_channels}")
        return cifar_resnet(depth, num_classes=num_classes)

    return build


_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": lambda num_classes, in_channels=1, small_input=True: SmallCNN(num_classes, in_channels),
    "cifar_resnet20": _cifar(20),
    "cifar_resnet56": _cifar(56),
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
    "vgg16_bn": _torchvision("vgg16_bn"),
    "vit_b_16": _torchvision("vit_b_16"),
    "swin_t": _torchvision("swin_t"),
}


def list_architectures() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_ARCHITECTURES)


def build_model(name: str, num_classes: int, in_channels: int | None = None, small_input: bool = False) -> nn.Module:
    """An untrained ``name`` classifier with ``num_classes`` outputs.

    ``small_input`` adapts ImageNet ResNets to 32x32 images (3x3 stem, no max-pool).
    """
    try:
        build = _ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of {list_architectures()}") from None
    kwargs = {"small_input": small_input} if small_input else {}
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    return build(num_classes, **kwargs)
