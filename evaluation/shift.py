"""Unlearning evaluation under data shift: UA / RA / TA measured again on perturbed splits.

Every shift acts in pixel space [0, 1]: inputs are un-normalised with ``mean`` / ``std`` (None:
already pixels), perturbed, clamped to [0, 1] and re-normalised. Shift texts:

- ``"gauss:S"``: additive Gaussian noise of std S (pixel units).
- ``"elastic:weak"`` (alpha 20, sigma 4), ``"elastic:strong"`` (alpha 34, sigma 4: Simard's MNIST setting) or
  ``"elastic:ALPHA,SIGMA"``: a displacement field of uniform noise in [-1, 1] per pixel and axis,
  smoothed by a Gaussian of std SIGMA pixels and scaled by ALPHA pixels (Simard et al. 2003), then
  bilinear resampling (border padding). The RMS displacement is about 0.163 * ALPHA / SIGMA:
  0.8 px (weak) and 1.4 px (strong), visible but moderate on 28x28 and 32x32 images.
- ``"pgd:EPS"`` or ``"pgd:EPS,STEPS"`` (EPS a number or a fraction such as 8/255): untargeted
  L-inf PGD on the cross-entropy of the true label, random start, STEPS = 7 by default and step
  size 2.5 * EPS / STEPS, run on ``attack_model`` in eval mode.

Random draws come from seeded ``torch.Generator``s in fixed chunks of samples, so the shifted data
depend on the seed only, not on the batch size or the device.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eraser.data import subsample, to_model
from eraser.layers import KeptModes
from eraser.training import accuracy

__all__ = [
    "Shift",
    "parse_shift",
    "DEFAULT_SHIFTS",
    "shift_inputs",
    "make_shifted_splits",
    "shifted_metrics",
    "pr_metric",
]

DEFAULT_SHIFTS = ["gauss:0.08", "gauss:0.2", "elastic:weak", "elastic:strong", "pgd:8/255"]
ELASTIC_PRESETS = {"weak": (20.0, 4.0), "strong": (34.0, 4.0)}
PGD_STEPS = 7
SPLIT_KEYS = {"forget": "UA", "retain": "RA", "test": "TA"}
_CHUNK = 256  # samples per seeded random chunk
_FORMS = "'gauss:STD', 'elastic:weak', 'elastic:strong', 'elastic:ALPHA,SIGMA', 'pgd:EPS' or 'pgd:EPS,STEPS' (EPS e.g. 8/255)"
_NUM = r"\d*\.?\d+(?:[eE][-+]?\d+)?"
Stats = Sequence[float] | None  # per-channel mean or std; None: inputs are pixels in [0, 1]
Device = torch.device | str | None


@dataclass(frozen=True)
class Shift:
    """A parsed shift: ``kind`` ("gauss", "elastic" or "pgd") and its numeric ``params``."""

    kind: str
    params: tuple[float, ...]

    @property
    def label(self) -> str:
        """Canonical text (``parse_shift(s.label) == s``), used in metric keys."""
        if self.kind == "gauss":
            return f"gauss:{self.params[0]:g}"
        if self.kind == "elastic":
            name = next((k for k, v in ELASTIC_PRESETS.items() if v == self.params), None)
            return f"elastic:{name}" if name else f"elastic:{self.params[0]:g},{self.params[1]:g}"
        eps, steps = self.params[0], int(self.params[1])
        k = eps * 255
        text = f"{round(k)}/255" if abs(k - round(k)) < 1e-9 else f"{eps:g}"
        return f"pgd:{text}" + (f",{steps}" if steps != PGD_STEPS else "")


def _number(text: str) -> float:
    m = re.fullmatch(rf"({_NUM})(?:/({_NUM}))?", text.strip())
    if m is None or (m.group(2) is not None and float(m.group(2)) == 0):
        raise ValueError
    return float(m.group(1)) / (float(m.group(2)) if m.group(2) else 1.0)


def parse_shift(text: str | Shift) -> Shift:
    """Parse a shift text such as ``"gauss:0.08"``, ``"elastic:weak"`` or ``"pgd:8/255,7"``."""
    if isinstance(text, Shift):
        return text
    kind, _, arg = str(text).strip().partition(":")
    parts = [p.strip() for p in arg.split(",")]
    try:
        if kind == "gauss" and len(parts) == 1:
            return Shift("gauss", (_number(parts[0]),))
        if kind == "elastic" and len(parts) == 1 and parts[0] in ELASTIC_PRESETS:
            return Shift("elastic", ELASTIC_PRESETS[parts[0]])
        if kind == "elastic" and len(parts) == 2:
            alpha, sigma = _number(parts[0]), _number(parts[1])
            if sigma > 0:
                return Shift("elastic", (alpha, sigma))
        if kind == "pgd" and len(parts) in (1, 2):
            steps = int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else (PGD_STEPS if len(parts) == 1 else 0)
            if steps >= 1:
                return Shift("pgd", (_number(parts[0]), float(steps)))
    except ValueError:
        pass
    raise ValueError(f"unknown shift {text!r}; accepted forms: {_FORMS}")


def _rand(seed: int, start: int, stop: int, shape: tuple[int, ...], normal: bool) -> Tensor:
    """Rows start..stop of a seeded (N, *shape) random stream, drawn in fixed chunks on the CPU."""
    rows = []
    for k in range(start // _CHUNK, (stop - 1) // _CHUNK + 1):
        g = torch.Generator().manual_seed((seed * 1_000_003 + k) % (2**63))
        block = (torch.randn if normal else torch.rand)(_CHUNK, *shape, generator=g)
        rows.append(block[max(start - k * _CHUNK, 0) : stop - k * _CHUNK])
    return torch.cat(rows)


def _smooth(field: Tensor, sigma: float, radius: int) -> Tensor:
    """Separable Gaussian blur without padding: (N, 2, H + 2r, W + 2r) -> (N, 2, H, W)."""
    t = torch.arange(-radius, radius + 1, dtype=field.dtype, device=field.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).repeat(2, 1, 1, 1)
    field = F.conv2d(field, k.view(2, 1, 1, -1), groups=2)
    return F.conv2d(field, k.view(2, 1, -1, 1), groups=2)


def _elastic(x: Tensor, alpha: float, sigma: float, noise: Tensor) -> Tensor:
    n, _, h, w = x.shape
    radius = (noise.shape[-1] - w) // 2
    disp = _smooth(noise * 2 - 1, sigma, radius) * alpha  # pixels, (N, 2, H, W) as (dx, dy)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    gx = (2 * (xs + disp[:, 0]) + 1) / w - 1
    gy = (2 * (ys + disp[:, 1]) + 1) / h - 1
    return F.grid_sample(x, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border", align_corners=False)


def _pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, start: Tensor, norm) -> Tensor:
    step = 2.5 * eps / steps
    adv = (x + (2 * start - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(norm(adv)).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)  # only w.r.t. the input: no parameter .grad
        adv = torch.minimum(torch.maximum(adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return adv.detach()


@contextmanager
def _eval_mode(model: nn.Module | None) -> Iterator[None]:
    """Eval mode inside the block; the previous train/eval mode is restored after."""
    modes = KeptModes(model) if model is not None else None
    if model is not None:
        model.eval()
    try:
        yield
    finally:
        if modes is not None:
            modes.restore()


def _perturb(s: Shift, pix: Tensor, start: int, seed: int, labels, model, to_input) -> Tensor:
    """Shift one batch of pixel-space images (rows start.. of the split)."""
    stop, dev = start + pix.shape[0], pix.device
    if s.kind == "gauss":
        return pix + s.params[0] * _rand(seed, start, stop, tuple(pix.shape[1:]), True).to(dev)
    if s.kind == "elastic":
        r = max(1, int(3 * s.params[1] + 0.5))
        noise = _rand(seed, start, stop, (2, pix.shape[2] + 2 * r, pix.shape[3] + 2 * r), False).to(dev)
        return _elastic(pix, *s.params, noise)
    noise = _rand(seed, start, stop, tuple(pix.shape[1:]), False).to(dev)
    with torch.enable_grad():
        y = torch.as_tensor(labels[start:stop]).long().to(dev)
        return _pgd(model, pix, y, s.params[0], int(s.params[1]), noise, to_input)


def shift_inputs(
    x: Tensor,
    shift: str | Shift,
    *,
    labels: Tensor | None = None,
    attack_model: nn.Module | None = None,
    mean: Stats = None,
    std: Stats = None,
    seed: int = 0,
    batch_size: int = 256,
    device: Device = None,
) -> Tensor:
    """The shifted images: same shape, dtype, device and normalisation as ``x`` (seeded)."""
    s = parse_shift(shift)
    if s.kind == "pgd" and (labels is None or attack_model is None):
        raise ValueError(f"shift {s.label!r} needs labels= and attack_model= (the model under attack)")
    param = next(attack_model.parameters(), None) if attack_model is not None else None
    dev = torch.device(device) if device is not None else (param.device if param is not None else x.device)
    dtype = torch.promote_types(x.dtype, torch.float32)
    m = None if mean is None else torch.as_tensor(mean, dtype=dtype, device=dev).view(1, -1, 1, 1)
    sd = None if std is None else torch.as_tensor(std, dtype=dtype, device=dev).view(1, -1, 1, 1)
    norm = (lambda p: p) if m is None else (lambda p: (p - m) / sd)
    out = []
    with _eval_mode(attack_model):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(dev, dtype)
            pix = _perturb(
                s,
                xb if m is None else xb * sd + m,
                start,
                seed,
                labels,
                attack_model,
                lambda p: to_model(norm(p), param, dev),
            )
            out.append(norm(pix.clamp(0, 1)).to(x.device, x.dtype))
    return torch.cat(out) if out else x.clone()


def make_shifted_splits(
    splits: Mapping[str, tuple[Tensor, Tensor]],
    shifts: Sequence[str | Shift],
    *,
    attack_model: nn.Module | None = None,
    mean: Stats = None,
    std: Stats = None,
    seed: int = 0,
    max_samples: int | None = None,
    batch_size: int = 256,
    device: Device = None,
) -> dict[str, dict[str, tuple[Tensor, Tensor]]]:
    """``{shift label: {split name: (shifted x, y)}}``, each split first cut to a seeded subset of
    ``max_samples``; build once and evaluate many models on it with ``shifted_metrics(shifted=)``."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be positive or None; got {max_samples}")
    parsed = [parse_shift(s) for s in shifts]
    cut = {
        name: subsample((x, torch.as_tensor(y).long()), max_samples, seed) if max_samples else (x, y)
        for name, (x, y) in splits.items()
    }
    return {
        s.label: {
            name: (
                shift_inputs(
                    x,
                    s,
                    labels=y,
                    attack_model=attack_model,
                    mean=mean,
                    std=std,
                    seed=seed,
                    batch_size=batch_size,
                    device=device,
                ),
                y,
            )
            for name, (x, y) in cut.items()
        }
        for s in parsed
    }


def shifted_metrics(
    model: nn.Module,
    splits: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    shifts: Sequence[str | Shift] | None = None,
    *,
    shifted: Mapping[str, Mapping[str, tuple[Tensor, Tensor]]] | None = None,
    attack_model: nn.Module | None = None,
    mean: Stats = None,
    std: Stats = None,
    seed: int = 0,
    max_samples: int | None = None,
    batch_size: int = 256,
    device: Device = None,
) -> dict[str, float]:
    """``UA@label`` (100 - forget accuracy), ``RA@label``, ``TA@label`` in percent for each shift
    (another split name gives ``NAME@label``, its accuracy); from ``splits`` + ``shifts`` (attacked
    with ``attack_model``, default ``model``) or a ``make_shifted_splits`` result as ``shifted=``."""
    if (shifted is None) == (splits is None or shifts is None):
        raise ValueError("pass either splits and shifts, or shifted= (from make_shifted_splits), not both")
    if shifted is None:
        attacker = model if attack_model is None else attack_model
        shifted = make_shifted_splits(
            splits,
            shifts,
            attack_model=attacker,
            mean=mean,
            std=std,
            seed=seed,
            max_samples=max_samples,
            batch_size=batch_size,
            device=device,
        )
    out = {}
    for label, sets in shifted.items():
        for name, data in sets.items():
            acc = accuracy(model, data, batch_size)
            out[f"{SPLIT_KEYS.get(name, name)}@{label}"] = 100.0 - acc if name == "forget" else acc
    return out


def pr_metric(
    model: nn.Module, unseen_forget: tuple[Tensor, Tensor], *, batch_size: int = 256, device: Device = None
) -> float:
    """PR: UA (100 - accuracy, percent) on forget data the model never saw (e.g. test images of
    the forgotten class, or shifted forget data)."""
    return 100.0 - accuracy(model, unseen_forget, batch_size)
