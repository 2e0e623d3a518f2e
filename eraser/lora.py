"""LoRA layouts of low-rank weight updates: file keys for diffusers/PEFT and kohya (Automatic1111,
ComfyUI), and the factors of a dense update by truncated SVD. Pure tensor plumbing, used by
:meth:`eraser.patch.ErasurePatch.to_lora` and :meth:`~eraser.patch.ErasurePatch.from_lora`.

A LoRA update of a Linear weight ``W`` (out x in) is ``W + (alpha / r) up @ down`` with ``down``
(r x in) and ``up`` (out x r). An Unlink edit ``W - W dual diag(eta) basis^T`` is exactly one:
``down = basis^T``, ``up = -W dual diag(eta)``, ``alpha = r``.

Layer names are the pipeline view's (``"unet.down_blocks.0...attn2.to_k"``,
``"text_encoder.text_model..."``). ``peft`` keys are ``<name>.lora_A.weight`` (down) and
``<name>.lora_B.weight`` (up), as diffusers' ``save_lora_weights`` writes them; ``kohya`` keys are
``lora_unet_<path with _>``, ``lora_te_`` (``lora_te1_``/``lora_te2_`` when the pipeline has a
second text encoder) with ``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["LORA_FORMATS", "lora_key", "lora_state_dict", "parse_lora_state_dict", "truncated_factors"]

LORA_FORMATS = ("peft", "kohya")
_KOHYA_COMPONENTS = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}


def _kohya_prefix(component: str, two_towers: bool) -> str:
    if component == "text_encoder" and two_towers:
        return "lora_te1"
    if component not in _KOHYA_COMPONENTS:
        raise ValueError(
            f"the kohya layout has no prefix for the component {component!r} (unet and text encoders only)"
        )
    return _KOHYA_COMPONENTS[component]


def lora_key(name: str, fmt: str, two_towers: bool = False) -> str:
    """The key stem of layer ``name`` (``"unet.…"``) in the layout ``fmt``."""
    if fmt == "peft":
        return name
    if fmt == "kohya":
        component, _, rest = name.partition(".")
        return f"{_kohya_prefix(component, two_towers)}_{rest.replace('.', '_')}"
    raise ValueError(f"format must be one of {LORA_FORMATS}; got {fmt!r}")


def lora_state_dict(layers: dict[str, tuple[Tensor, Tensor]], fmt: str, two_towers: bool = False) -> dict[str, Tensor]:
    """The tensors of a LoRA file holding ``layers`` (name -> (up, down)) at scale 1."""
    out: dict[str, Tensor] = {}
    for name, (up, down) in layers.items():
        key = lora_key(name, fmt, two_towers)
        up, down = (
            up.detach().to("cpu", torch.float32).contiguous(),
            down.detach().to("cpu", torch.float32).contiguous(),
        )
        if fmt == "peft":
            out[f"{key}.lora_A.weight"], out[f"{key}.lora_B.weight"] = down, up
        else:
            out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = down, up
            out[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))  # alpha = rank: scale 1
    return out


def parse_lora_state_dict(tensors: dict[str, Tensor], names: Iterable[str]) -> dict[str, tuple[Tensor, Tensor, float]]:
    """(up, down, scale) per layer name from a LoRA file's tensors in either layout; ``names``: the
    model's layer names (needed to undo kohya's ``_`` for ``.``). Raises ValueError naming the first
    key that is not understood or whose layer the model does not have."""
    names = list(names)
    two = any(n.startswith("text_encoder_2.") for n in names)
    kohya_names = {lora_key(n, "kohya", two): n for n in names if n.partition(".")[0] in _KOHYA_COMPONENTS}
    known = set(names)
    parts: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        for suffix, role, fmt in (
            (".lora_A.weight", "down", "peft"),
            (".lora_B.weight", "up", "peft"),
            (".lora_down.weight", "down", "kohya"),
            (".lora_up.weight", "up", "kohya"),
            (".alpha", "alpha", "kohya"),
        ):
            if key.endswith(suffix):
                stem = key[: -len(suffix)]
                name = stem if fmt == "peft" else kohya_names.get(stem)
                if name is None or name not in known:
                    raise ValueError(f"LoRA key {key!r} names no layer of this model")
                parts.setdefault(name, {})[role] = t
                break
        else:
            raise ValueError(f"LoRA key {key!r} is not a lora_A/lora_B or lora_down/lora_up/alpha tensor")
    out: dict[str, tuple[Tensor, Tensor, float]] = {}
    for name, p in parts.items():
        if "up" not in p or "down" not in p:
            raise ValueError(f"LoRA layer {name!r} lacks its {'up' if 'up' not in p else 'down'} factor")
        up, down = p["up"], p["down"]
        if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(
                f"LoRA layer {name!r}: factors of shapes {tuple(up.shape)} and {tuple(down.shape)} do not multiply"
            )
        rank = down.shape[0]
        alpha = float(p["alpha"]) if "alpha" in p else float(rank)
        out[name] = (up, down, alpha / rank)
    return out


def truncated_factors(delta: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """(up, down, relative Frobenius error) of the best rank-``rank`` approximation of ``delta``."""
    d = delta.detach().to(torch.float64)
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    r = min(int(rank), s.numel())
    up, down = u[:, :r] * s[:r], vh[:r]
    total = float(s.pow(2).sum())
    error = (float(s[r:].pow(2).sum()) / total) ** 0.5 if total > 0 else 0.0
    return up, down, error
