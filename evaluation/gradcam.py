"""Grad-CAM saliency maps (Selvaraju et al. 2017) and a PNG grid comparing models side by side.

The activations of one layer's output are caught by a forward hook that a context manager always
removes; gradients are taken with ``torch.autograd.grad`` on those activations only, so no
``.grad`` is left in the model's parameters, and the model's train/eval mode is restored.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from eraser.data import to_model
from eraser.layers import KeptModes

from .grids import TITLE_H, save_image_grid

__all__ = ["grad_cam", "save_gradcam_grid", "conv_layers", "jet"]

MIN_CELL = 96  # images are upscaled by an integer factor to at least this many pixels per side
PAD = 2  # pixels between cells
TITLE_HEIGHT = TITLE_H  # height of the column-title bar (the grid writer's)


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the model's ``nn.Conv2d`` modules, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _resolve(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    convs = conv_layers(model)
    if layer is None:
        if not convs:
            raise ValueError(
                f"{type(model).__name__} has no nn.Conv2d: pass layer= (a module with a (N, C, H, W) output)"
            )
        layer = convs[-1]
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"unknown layer {layer!r}; conv layers of this model: {convs}")
    return layer, modules[layer]


@contextmanager
def _output_of(module: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, the outputs of ``module``'s forward calls are appended to the list (the
    model carries on with a copy, so a following in-place op such as ReLU(inplace=True) leaves them)."""
    outputs: list[Tensor] = []

    def hook(mod, args, out):
        if isinstance(out, Tensor):
            outputs.append(out)
            return out.clone()
        return None

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


def _cam(
    model: nn.Module, x: Tensor, layer: str | None, target: Tensor | None, device, batch_size: int
) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps (N, H, W) on x's device and the predicted classes (N,) on the CPU."""
    layer, module = _resolve(model, layer)
    param = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else (param.device if param is not None else x.device)
    modes = KeptModes(model)
    model.eval()
    maps, preds = [], []
    try:
        with _output_of(module) as outs, torch.enable_grad():
            for start in range(0, x.shape[0], batch_size):
                outs.clear()
                xb = to_model(x[start : start + batch_size], param, dev).detach().requires_grad_(True)
                logits = model(xb)
                act = outs[-1] if outs else None
                if not isinstance(act, Tensor) or act.ndim != 4:
                    raise ValueError(f"layer {layer!r} must output a (N, C, H, W) tensor during the forward pass")
                pred = logits.argmax(1)
                tb = (
                    pred
                    if target is None
                    else torch.as_tensor(target[start : start + batch_size]).long().to(logits.device)
                )
                score = logits.gather(1, tb[:, None]).sum()
                (grad,) = torch.autograd.grad(score, act, allow_unused=True)
                grad = torch.zeros_like(act) if grad is None else grad
                cam = torch.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True)).detach().float()
                cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                peak = cam.flatten(1).amax(1).view(-1, 1, 1)
                maps.append(torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam)).to(x.device))
                preds.append(pred.cpu())
    finally:
        modes.restore()
    return torch.cat(maps), torch.cat(preds)


def grad_cam(
    model: nn.Module,
    x: Tensor,
    *,
    layer: str | None = None,
    target: Tensor | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1] at the input resolution for the ``target`` classes
    (default: predicted) at ``layer``'s output (a ``named_modules`` name; default the last Conv2d)."""
    return _cam(model, x, layer, target, device, batch_size)[0]


def jet(v: Tensor) -> Tensor:
    """A jet-like colormap: values (...) in [0, 1] -> RGB (..., 3) in [0, 1] (blue -> red)."""
    v = v.clamp(0, 1)[..., None]
    centres = torch.tensor([3.0, 2.0, 1.0], device=v.device)  # r, g, b
    return (1.5 - (4 * v - centres).abs()).clamp(0, 1)


def _pixels(x: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """(N, C, H, W) model inputs -> (N, H, W, 3) RGB in [0, 1] on the CPU."""
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.as_tensor(std).float().view(1, -1, 1, 1) + torch.as_tensor(mean).float().view(1, -1, 1, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"images need 1 or 3 channels; got {x.shape[1]}")
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def save_gradcam_grid(
    models: Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor | None,
    path: str | os.PathLike,
    *,
    layer: str | Mapping[str, str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    titles: bool = True,
    device: torch.device | str | None = None,
    alpha: float = 0.5,
) -> Path:
    """One PNG: a row per image; the image (true label in its corner), then per model its Grad-CAM
    over the image (predicted class in the corner). Cells are upscaled by an integer factor to at
    least ``MIN_CELL`` px; size = (cols * cell_w + (cols + 1) * PAD, rows * cell_h + (rows + 1) * PAD
    + TITLE_HEIGHT if titles). ``layer``: one name, or one per model name. Written atomically."""
    n, _, h, w = x.shape
    scale = max(1, -(-MIN_CELL // max(h, w)))
    ch, cw = h * scale, w * scale
    img = _pixels(x, mean, std).permute(0, 3, 1, 2)
    img = F.interpolate(img, scale_factor=scale, mode="nearest").permute(0, 2, 3, 1)
    cells, tags = [img], [[f"y={int(v)}" for v in y] if y is not None else [""] * n]
    for name, model in models.items():
        lay = layer.get(name) if isinstance(layer, Mapping) else layer
        maps, preds = _cam(model, x, lay, None, device, 64)
        heat = jet(
            F.interpolate(maps.float().cpu()[:, None], size=(ch, cw), mode="bilinear", align_corners=False)[:, 0]
        )
        cells.append((1 - alpha) * img + alpha * heat)
        tags.append([f"pred {int(p)}" for p in preds])
    grid = [[Image.fromarray((column[r].numpy() * 255 + 0.5).astype(np.uint8)) for column in cells] for r in range(n)]
    # min_cell=0: the cells are already upscaled, to the size the heat maps were interpolated to
    return save_image_grid(
        grid,
        path,
        col_labels=["image", *models] if titles else None,
        cell_labels=[list(row) for row in zip(*tags)],
        min_cell=0,
        pad=PAD,
    )
