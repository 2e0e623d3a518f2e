"""The public entry points."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .data import DataLike
from .patch import ErasurePatch
from .runner import run_method

__all__ = ["erase_classes", "erase_concepts"]


def erase_classes(
    model: nn.Module,
    forget_data: DataLike,
    *,
    layers: str | Sequence[str] | None = None,
    k: int | None = None,
    retain_data: DataLike | None = None,
    method: str = "unlink",
    device: torch.device | str | None = None,
    names: Sequence[str] | None = None,
    config: Any = None,
    progress: bool = False,
    **options,
) -> ErasurePatch:
    """Erase what ``forget_data`` shows from ``model`` (edited in place); returns the patch.

    ``forget_data``/``retain_data``: a DataLoader, a Dataset or a tensor of inputs. With
    ``retain_data`` the Rayleigh variant protects it. ``names`` (e.g. class names) go into the
    patch's metadata. ``layers`` defaults to the config's (``"head"``, the final classifier).
    ``config`` is the method's config dataclass; ``k``, ``layers`` and further ``options``
    (e.g. ``energy=0.9``, ``ridge=0.1``, ``variant="svd"``) override its fields. On any error the
    model is unchanged.
    """
    if layers is not None:
        options["layers"] = layers if isinstance(layers, str) else list(layers)
    if k is not None:
        options["k"] = k
    result = run_method(
        model,
        forget_data,
        retain_data,
        method=method,
        config=config,
        device=device,
        names=list(names or []),
        progress=progress,
        **options,
    )
    if result.patch is None:
        raise ValueError(
            f"method {method!r} does not change the model's weights: it returns a new module to use "
            f"instead, so there is no patch. Call eraser.run_method(model, forget, retain, method={method!r}) "
            "and use its .model."
        )
    return result.patch


def erase_concepts(
    pipe: Any,
    concepts: Any,
    *,
    retain: Any = None,
    k: int | None = None,
    targets: str | Sequence[str] | None = None,
    method: str = "unlink",
    templates: Sequence[str] | None = None,
    config: Any = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    **options,
) -> ErasurePatch:
    """Erase ``concepts`` from a text-to-image pipeline (edited in place); returns the patch.

    ``pipe``: a diffusers pipeline (SD 1.x/2.x, SDXL) or any object with ``unet`` and
    ``tokenizer``/``text_encoder`` (and ``tokenizer_2``/``text_encoder_2``). ``concepts``: words
    (expanded with ``templates``) or prompts / prompt-CSV rows (used as they are). ``retain``: words
    or prompts to protect (the Rayleigh variant). ``targets``: ``"cross_attn_kv"`` (default), another
    preset, a regex or a list of layer names. ``method``: a diffusion method id (``unlink``,
    ``unlink_rayleigh``, ...; see ``eraser.list_methods(family="diffusion")``). Further ``options``
    set fields of the method's config. On any error the pipeline is unchanged.
    """
    if targets is not None:
        options["layers"] = targets if isinstance(targets, str) else list(targets)
    if k is not None:
        options["k"] = k
    if templates is not None:
        options["templates"] = tuple([templates] if isinstance(templates, str) else templates)
    return run_method(
        pipe,
        concepts,
        retain,
        method=method,
        family="diffusion",
        config=config,
        device=device,
        progress=progress,
        **options,
    ).patch
