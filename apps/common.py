"""What the command line and the demo share: loading a pipeline by name, dtype names, method lists."""

from __future__ import annotations

from typing import Any

__all__ = ["DTYPES", "csv_list", "torch_dtype", "load_pipeline_by_name", "split_methods"]

# Names a user may give for a dtype (command line, demo) -> torch's name for it. Names, not
# torch objects: ``eraser --help`` does not import torch.
DTYPES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def torch_dtype(name: str | None) -> Any:
    """The torch dtype for a name in :data:`DTYPES` (None stays None: as saved)."""
    if name is None:
        return None
    import torch

    try:
        return getattr(torch, DTYPES[name])
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}") from None


def load_pipeline_by_name(model: str, dtype: str | None = None, device: str | None = None) -> Any:
    """A pipeline from a hub id, a local folder, ``random:<arch>`` or ``bundled:digits``."""
    from eraser.loading import load_pipeline

    return load_pipeline(model, dtype=torch_dtype(dtype), device=device)


def split_methods(text: str) -> list[str]:
    """``ft,unlink:variant=svd;k=2`` style lists: methods split on ',' unless inside options
    (options of one method are separated by ';' on the command line)."""
    return [m.replace(";", ",") for m in csv_list(text)]


def csv_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]
