"""Model plumbing per layer kind: a layer's input features and its weight as a matrix.

Every supported layer is seen the same way: a weight of shape (G, d_out/G, D) acting on input
features of shape (G, m, D), with G = groups (1 except for grouped convolutions). Adding a layer
kind means adding one small class here. :class:`KeptModes` puts a model's train/eval modes back exactly.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerKind", "layer_kind", "kind_by_name", "supported_kinds", "KeptModes"]


class LayerKind:
    """How one module type exposes its input features and its weight matrix."""

    name: str = ""
    param: str = "weight"
    module_type: type[nn.Module] = nn.Module

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, self.module_type)

    def groups(self, module: nn.Module) -> int:
        return 1

    def weight(self, module: nn.Module) -> Tensor:
        return getattr(module, self.param)

    def as_matrix(self, module: nn.Module, weight: Tensor | None = None) -> Tensor:
        """The weight (or a tensor of its shape) as (G, d_out/G, D)."""
        w = self.weight(module) if weight is None else weight
        g = self.groups(module)
        return w.reshape(g, w.shape[0] // g, -1)

    def from_matrix(self, module: nn.Module, matrix: Tensor) -> Tensor:
        return matrix.reshape(self.weight(module).shape)

    def features(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Tensor:
        """Input features seen by the weight, as (G, m, D)."""
        raise NotImplementedError


class LinearKind(LayerKind):
    name = "linear"
    module_type = nn.Linear

    def features(self, module, args, kwargs):
        x = args[0] if args else kwargs["input"]
        return x.reshape(1, -1, x.shape[-1])


class Conv2dKind(LayerKind):
    name = "conv2d"
    module_type = nn.Conv2d

    def groups(self, module):
        return module.groups

    def features(self, module, args, kwargs):
        x = args[0] if args else kwargs["input"]
        if x.ndim == 3:  # unbatched (C, H, W)
            x = x.unsqueeze(0)
        # Pad exactly as the layer does (string paddings and non-zero padding modes included),
        # then unfold with the layer's own kernel, dilation and stride.
        pad = module._reversed_padding_repeated_twice
        if any(pad):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, pad, mode=mode)
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=0, stride=module.stride)
        n, cd, length = cols.shape  # cd = C * kh * kw, channel-major, so groups are contiguous
        g = module.groups
        return cols.transpose(1, 2).reshape(n * length, g, cd // g).transpose(0, 1)


class MultiheadAttentionKind(LayerKind):
    """``nn.MultiheadAttention`` self-attention: the fused ``in_proj_weight`` (3E x E)."""

    name = "mha"
    param = "in_proj_weight"
    module_type = nn.MultiheadAttention

    def matches(self, module):
        return isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None

    def features(self, module, args, kwargs):
        names = ("query", "key", "value")
        q, k, v = (args[i] if len(args) > i else kwargs.get(n) for i, n in enumerate(names))
        if not (k is q and v is q):
            raise NotImplementedError(
                "Unlink on nn.MultiheadAttention supports self-attention (query is key is value); "
                "for cross-attention target the separate key/value projections instead."
            )
        return q.reshape(1, -1, q.shape[-1])


_KINDS: list[LayerKind] = [LinearKind(), Conv2dKind(), MultiheadAttentionKind()]


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The :class:`LayerKind` that handles ``module``, or None if it is not supported."""
    for kind in _KINDS:
        if kind.matches(module):
            return kind
    return None


def kind_by_name(name: str) -> LayerKind:
    for kind in _KINDS:
        if kind.name == name:
            return kind
    raise ValueError(f"unknown layer kind {name!r}; known: {supported_kinds()}")


def supported_kinds() -> list[str]:
    return [k.name for k in _KINDS]


class KeptModes:
    """Records every submodule's train/eval flag; ``restore()`` or leaving a ``with`` block puts exactly those back."""

    def __init__(self, model: nn.Module) -> None:
        self.modes: dict[nn.Module, bool] = {m: m.training for m in model.modules()}

    def restore(self) -> None:
        """Set each recorded module's own flag back to what it was."""
        # Per module, not model.train(flag): that recurses and would flatten the submodules' own modes.
        for module, flag in self.modes.items():
            module.training = flag

    def __enter__(self) -> KeptModes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
