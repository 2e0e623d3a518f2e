"""Load a text-to-image pipeline by name: a local folder, a hub id, the bundled digits model or a
published architecture with random weights. Sits above the bundled models it can name."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from .bundled import digits_pipeline
from .families.architectures import build_pipeline, names
from .families.diffusion import text_towers

__all__ = ["BUNDLED_DIGITS", "BUNDLED_DIGITS_MMDIT", "DIGIT_MODELS", "load_pipeline"]

BUNDLED_DIGITS = "bundled:digits"
BUNDLED_DIGITS_MMDIT = "bundled:digits-mmdit"  # the same digits, an SD3-layout transformer (eraser.bundled.mmdit)
DIGIT_MODELS = (BUNDLED_DIGITS, BUNDLED_DIGITS_MMDIT)  # the models the digit judge evaluates


def load_pipeline(
    model: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    local_files_only: bool | None = None,
) -> Any:
    """A diffusers pipeline from a local folder (with ``model_index.json``), a hub id,
    ``bundled:digits`` (the bundled digits text-to-image model), ``bundled:digits-mmdit`` (its MMDiT
    counterpart) or ``random:<arch>`` (a published
    architecture with random weights, for tests), with clear errors for paths that do not exist or
    are not pipelines. Honours ``HF_HUB_OFFLINE``."""
    from diffusers import DiffusionPipeline

    if model == BUNDLED_DIGITS:
        return digits_pipeline(device=device or "cpu", dtype=dtype or torch.float32)
    if model == BUNDLED_DIGITS_MMDIT:
        from .bundled.mmdit import digits_mmdit_pipeline

        return digits_mmdit_pipeline(device=device or "cpu", dtype=dtype or torch.float32)
    if model.startswith("random:"):
        arch = model.split(":", 1)[1]
        if arch not in names():
            raise ValueError(f"unknown architecture {arch!r}; choose one of {names()}")
        pipe = build_pipeline(arch, dtype=dtype or torch.float32)
        return pipe.to(device) if device else pipe
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{model} is not a diffusers pipeline folder (it has no model_index.json).")
    elif not re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", model):
        raise FileNotFoundError(f"no pipeline folder at {model}, and it is not a hub id of the form 'org/name'.")
    offline = (
        local_files_only
        if local_files_only is not None
        else os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    )
    kwargs: dict[str, Any] = {"local_files_only": offline}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path) if path.exists() else model, **kwargs)
    except Exception as err:  # diffusers raises several types for "cannot fetch/read"
        where = (
            "the local folder" if path.exists() else ("the local hub cache (offline mode)" if offline else "the hub")
        )
        raise ValueError(f"could not load a pipeline from {where} for {model!r}: {err}") from None
    if device is not None:
        pipe.to(device)
    text_towers(pipe)  # a pipeline, but is it one we can edit?
    return pipe
