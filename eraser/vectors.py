"""Forget vectors: an input perturbation ``delta`` that makes a frozen model forget.

A :class:`ForgetVector` wraps a model as ``model(x + delta)``; the model's weights never change.
``delta`` lives in the space the user chose: the model's own input space, or pixel space when the
model receives normalised images (``mean``/``std`` given: ``x + delta / std``, so a pixel-space
vector can be clamped to valid images). Vectors add, subtract, negate and scale; a
:class:`VectorBank` holds one vector per class and combines them with weights. Both save as
safetensors with JSON metadata that records the model and input shape they were made for.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .layers import layer_kind
from .patch import fingerprint

__all__ = ["ForgetVector", "VectorBank", "VectorError", "perturb", "model_fingerprint"]

FORMAT = "eraser.forget_vector/1"
BANK_FORMAT = "eraser.vector_bank/1"


class VectorError(ValueError):
    """A forget vector or bank that does not fit the model, the inputs or the request."""


def model_fingerprint(model: nn.Module, like: str | None = None) -> str:
    """Fingerprint of the weights of every linear/conv/attention layer (identifies the model);
    ``like`` as in :func:`eraser.patch.fingerprint` (older files hold SHA-256 fingerprints)."""
    return fingerprint(model, [n for n, m in model.named_modules() if layer_kind(m) is not None], like=like)


def _check_clamp(clamp: Any) -> bool:
    """``clamp`` as given, if it is a real boolean (a file's ``"no"`` must not read as True)."""
    if not isinstance(clamp, bool):
        raise VectorError(f"clamp must be true or false; got {clamp!r}")
    return clamp


def _check_stats(values: Any, name: str) -> list[float] | None:
    """``mean``/``std`` as a list of finite floats (None stays None)."""
    if values is None:
        return None
    ok = isinstance(values, (list, tuple)) and len(values) > 0
    ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
    if not ok or not all(math.isfinite(float(v)) for v in values):
        raise VectorError(f"{name} must be a list of numbers (one per channel, or one for all); got {values!r}")
    return [float(v) for v in values]


def _check_fields(meta: dict, source: Any) -> None:
    """Refuse a file's metadata whose values do not have the types the code relies on."""
    fp = meta.get("model_fingerprint")
    if fp is not None and not isinstance(fp, str):
        raise VectorError(f"{source}: model_fingerprint must be a string; got {type(fp).__name__}")
    shape = meta.get("input_shape")
    if shape is not None and not (
        isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise VectorError(f"{source}: input_shape must be a list of sizes; got {shape!r}")
    try:
        _check_stats(meta.get("mean"), "mean")
        _check_stats(meta.get("std"), "std")
        _check_clamp(meta.get("clamp", False))
    except VectorError as err:
        raise VectorError(f"{source}: {err}") from None


def _channels(values: Sequence[float] | None, device, dtype) -> Tensor | None:
    return None if values is None else torch.as_tensor(values, device=device, dtype=dtype).view(-1, 1, 1)


def perturb(
    x: Tensor,
    delta: Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    clamp: bool = False,
) -> Tensor:
    """``x + delta`` for model inputs ``x``; with ``mean``/``std`` (x normalised) ``delta`` is in
    pixel units; ``clamp`` keeps the perturbed image inside [0, 1] in pixel space."""
    delta = delta.to(x.device, x.dtype)
    m, s = _channels(mean, x.device, x.dtype), _channels(std, x.device, x.dtype)
    if m is None or s is None:
        return (x + delta).clamp(0, 1) if clamp else x + delta
    pixels = x * s + m + delta
    if clamp:
        pixels = pixels.clamp(0, 1)
    return (pixels - m) / s


class ForgetVector(nn.Module):
    """``model(perturb(x, delta))``: a model that has forgotten, with its weights untouched.

    The wrapped model stays in eval mode (its BatchNorm statistics never change through the
    vector). ``metadata`` records the input shape, the space, the model's fingerprint and how the
    vector was made.
    """

    def __init__(
        self,
        model: nn.Module,
        delta: Tensor,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        clamp: bool = False,
        metadata: dict | None = None,
    ) -> None:
        super().__init__()
        if metadata is not None and not isinstance(metadata, Mapping):
            raise VectorError(f"metadata must be a dict; got {type(metadata).__name__}")
        if not isinstance(delta, Tensor) or not delta.is_floating_point():
            raise VectorError(
                f"delta must be a floating-point tensor; got {getattr(delta, 'dtype', type(delta).__name__)}"
            )
        if not bool(torch.isfinite(delta.detach()).all()):
            raise VectorError("delta holds non-finite values (NaN or Inf); a forget vector must be finite")
        mean, std = _check_stats(mean, "mean"), _check_stats(std, "std")
        if (mean is None) != (std is None):
            raise VectorError("give both mean and std (normalised inputs, delta in pixels) or neither")
        if std is not None and any(v <= 0 for v in std):
            raise VectorError(f"std must be positive; got {std}")
        if mean is not None and std is not None:
            # perturb() broadcasts mean/std as (C, 1, 1): pixel space means image inputs (C, H, W)
            channels = delta.shape[0] if delta.ndim == 3 else None
            if channels is None or any(len(v) not in (1, channels) for v in (mean, std)):
                raise VectorError(
                    f"mean and std take 1 value or one per channel of image inputs (C, H, W); got {len(mean)} "
                    f"and {len(std)} for inputs of shape {tuple(delta.shape)}"
                )
        self.model = model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else delta.device
        self.delta = nn.Parameter(delta.detach().clone().to(device), requires_grad=delta.requires_grad)
        self.mean, self.std = mean, std
        self.clamp = _check_clamp(clamp)
        self.metadata = {
            "format": FORMAT,
            "input_shape": list(delta.shape),
            "space": "pixel" if mean is not None else "input",
            "mean": self.mean,
            "std": self.std,
            "clamp": self.clamp,
            "model_class": type(model).__name__,
            "model_fingerprint": model_fingerprint(model),
            **(metadata or {}),
        }

    def train(self, mode: bool = True) -> ForgetVector:
        self.training = mode
        self.model.eval()
        return self

    def perturb(self, x: Tensor) -> Tensor:
        """The inputs the wrapped model sees."""
        if tuple(x.shape[1:]) != tuple(self.delta.shape):
            raise VectorError(
                f"this forget vector was made for inputs of shape {tuple(self.delta.shape)}; "
                f"got a batch of shape {tuple(x.shape)}"
            )
        return perturb(x, self.delta, mean=self.mean, std=self.std, clamp=self.clamp)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.perturb(x))

    @property
    def norm(self) -> float:
        """``||delta||_2`` in the vector's own space."""
        return float(self.delta.detach().norm())

    # -- arithmetic -----------------------------------------------------------------------------
    def _check_compatible(self, other: ForgetVector) -> None:
        keys = ("input_shape", "space", "mean", "std", "model_fingerprint")
        diff = [k for k in keys if self.metadata.get(k) != other.metadata.get(k)]
        if diff:
            raise VectorError(
                f"cannot combine forget vectors made for different models or inputs (they differ in {diff})"
            )

    def _derived(self, delta: Tensor, expression: str) -> ForgetVector:
        meta = {k: v for k, v in self.metadata.items() if k not in ("input_shape", "model_fingerprint", "model_class")}
        meta["expression"] = expression
        return ForgetVector(self.model, delta, mean=self.mean, std=self.std, clamp=self.clamp, metadata=meta)

    def _name(self) -> str:
        return self.metadata.get("expression") or self.metadata.get("name") or "v"

    def __add__(self, other: ForgetVector) -> ForgetVector:
        if not isinstance(other, ForgetVector):
            return NotImplemented
        self._check_compatible(other)
        return self._derived(
            self.delta.detach() + other.delta.detach().to(self.delta.device), f"({self._name()} + {other._name()})"
        )

    def __neg__(self) -> ForgetVector:
        return self._derived(-self.delta.detach(), f"-{self._name()}")

    def __sub__(self, other: ForgetVector) -> ForgetVector:
        if not isinstance(other, ForgetVector):
            return NotImplemented
        return self + (-other)

    def __mul__(self, scale: float) -> ForgetVector:
        if not isinstance(scale, (int, float)):
            return NotImplemented
        try:
            value = float(scale)
        except OverflowError:  # an int beyond float range
            value = math.inf
        if not math.isfinite(value):
            raise VectorError(f"cannot scale a forget vector by {scale}: the scale must be finite")
        return self._derived(self.delta.detach() * value, f"{value:g}*{self._name()}")

    __rmul__ = __mul__

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``delta`` and the metadata as one safetensors file (not the model)."""
        path = Path(path)
        _write(path, {"delta": self.delta.detach()}, self.metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module, *, force: bool = False) -> ForgetVector:
        """A saved vector on ``model``; refuses a model other than the one it was made for unless ``force``."""
        tensors, meta = _read(path, FORMAT)
        if "delta" not in tensors:
            raise VectorError(f"{path} holds no 'delta' tensor")
        shape = meta.get("input_shape")
        if shape is not None and shape != list(tensors["delta"].shape):
            raise VectorError(
                f"{path}: input_shape {shape} does not match the delta's shape {list(tensors['delta'].shape)}"
            )
        _check_model(meta, model, force, path)
        extra = {k: v for k, v in meta.items() if k not in ("input_shape", "model_fingerprint", "model_class")}
        return cls(
            model,
            tensors["delta"],
            mean=meta.get("mean"),
            std=meta.get("std"),
            clamp=meta.get("clamp", False),
            metadata=extra,
        )


def _check_model(meta: Mapping[str, Any], model: nn.Module, force: bool, source: Any) -> None:
    if force:
        return
    expected = meta.get("model_fingerprint")
    if expected != model_fingerprint(model, like=expected):
        raise VectorError(
            f"{source} was made for a different model (a {meta.get('model_class')} with other weights; "
            "fingerprints differ). Use it with the model it was made for, or pass force=True."
        )


def _write(path: Path, tensors: dict[str, Tensor], metadata: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(tmp),
        metadata={"eraser": json.dumps(metadata, default=str)},
    )
    tmp.replace(path)  # never leave a half-written file under the final name


def _read(path: str | Path, fmt: str) -> tuple[dict[str, Tensor], dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise VectorError(f"no file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["eraser"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors, JSON and key errors all mean the same here
        raise VectorError(
            f"{path} is not a readable eraser safetensors file (corrupt, truncated or another format?): {err}"
        ) from None
    if not isinstance(meta, dict):
        raise VectorError(f"{path}: the metadata must be a JSON object; got {type(meta).__name__}")
    if meta.get("format") != fmt:
        raise VectorError(f"{path} has format {meta.get('format')!r}; expected {fmt!r}")
    _check_fields(meta, path)
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise VectorError(f"{path} holds non-finite values")
    return tensors, meta


class VectorBank:
    """One forget vector per class (``deltas[c]``), made for one model, with shared metadata."""

    def __init__(self, deltas: Mapping[int, Tensor], metadata: dict) -> None:
        self.deltas = {int(c): d.detach() for c, d in sorted(deltas.items())}
        self.metadata = dict(metadata)
        shapes = {tuple(d.shape) for d in self.deltas.values()}
        if len(shapes) > 1:
            raise VectorError(f"bank vectors have different shapes: {sorted(shapes)}")

    @property
    def classes(self) -> list[int]:
        return list(self.deltas)

    def basis(self, classes: Sequence[int] | None = None) -> tuple[list[int], Tensor]:
        """The chosen classes (default: all) and their vectors stacked as (K, *input_shape)."""
        classes = self.classes if classes is None else [int(c) for c in classes]
        missing = [c for c in classes if c not in self.deltas]
        if missing:
            raise VectorError(f"the bank has no vector for classes {missing}; it holds {self.classes}")
        if not classes:
            raise VectorError("choose at least one class of the bank")
        return classes, torch.stack([self.deltas[c] for c in classes])

    def vector(self, model: nn.Module, weights: Mapping[int, float] | int, *, force: bool = False) -> ForgetVector:
        """``sum_c w_c delta_c`` as a vector on ``model`` (an int means that class's vector alone)."""
        weights = {int(weights): 1.0} if isinstance(weights, int) else {int(c): float(w) for c, w in weights.items()}
        classes, basis = self.basis(list(weights))
        _check_model(self.metadata, model, force, "this vector bank")
        w = torch.tensor([weights[c] for c in classes], dtype=basis.dtype)
        delta = torch.tensordot(w, basis, dims=1)
        meta = {k: self.metadata[k] for k in ("config", "space") if k in self.metadata}
        meta["bank_weights"] = {str(c): weights[c] for c in classes}
        return ForgetVector(
            model,
            delta,
            mean=self.metadata.get("mean"),
            std=self.metadata.get("std"),
            clamp=self.metadata.get("clamp", False),
            metadata=meta,
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        _write(path, {f"class.{c}": d for c, d in self.deltas.items()}, {**self.metadata, "format": BANK_FORMAT})
        return path

    @classmethod
    def load(cls, path: str | Path) -> VectorBank:
        tensors, meta = _read(path, BANK_FORMAT)
        try:
            deltas = {int(k.split(".", 1)[1]): t for k, t in tensors.items()}
        except (IndexError, ValueError):
            raise VectorError(f"{path}: tensor names must be 'class.<int>'; got {sorted(tensors)}") from None
        return cls(deltas, meta)
