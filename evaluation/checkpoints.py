"""Checkpoints of the models a benchmark trains (originals, Retrain), cached under a hash of
everything that shaped them (data, architecture, recipe, seed, training indices)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from eraser.hashing import file_sha256
from eraser.training import TrainConfig

__all__ = ["cache_key", "cached_model"]


def cache_key(**fields) -> str:
    """sha256 over the JSON of ``fields`` (tensors are hashed by their bytes)."""

    def norm(v):
        if isinstance(v, Tensor):
            return hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if isinstance(v, TrainConfig):
            return asdict(v)
        return v

    blob = json.dumps({k: norm(v) for k, v in sorted(fields.items())}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached_model(
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module, Path | None], Any],
    key: str,
    cache_dir: str | Path | None,
    metadata: dict | None = None,
) -> tuple[nn.Module, dict]:
    """``build()`` then ``train(model, checkpoint)``, or load the result from
    ``cache_dir/<key>.safetensors``.

    ``checkpoint`` is where ``train`` may keep its in-progress state (``cache_dir/<key>.partial.safetensors``,
    None without a cache), so that an interrupted training resumes. Returns the model and its
    record (key, sha256 of the weights file, training seconds, metadata). Without ``cache_dir``
    nothing is stored. When ``train`` returns the training loop's per-epoch logs, the training seconds
    are the sum of their epochs' (a training resumed from its checkpoint counts its earlier runs too).
    """
    from safetensors.torch import load_file, save_file

    model = build()
    if cache_dir is not None:
        path = Path(cache_dir) / f"{key}.safetensors"
        meta_path = path.with_suffix(".json")
        if path.exists() and meta_path.exists():
            record = json.loads(meta_path.read_text())
            # A damaged or replaced checkpoint is retrained, not used.
            if isinstance(record, dict) and record.get("weights_sha256") == file_sha256(path):
                model.load_state_dict(load_file(str(path)))
                return model, record
    t0 = time.perf_counter()
    logs = train(model, None if cache_dir is None else Path(cache_dir) / f"{key}.partial.safetensors")
    train_s = time.perf_counter() - t0
    timed = [e for e in logs if isinstance(e, dict) and "seconds" in e] if isinstance(logs, list) else []
    if timed and len(timed) == len(logs):
        train_s = float(sum(e["seconds"] for e in timed))  # every epoch, those of interrupted runs included
    record = {"key": key, "train_s": train_s, **(metadata or {})}
    if isinstance(logs, list) and len(timed) < len(logs):  # resumed from a state that kept no times
        record["train_s_covers"] = f"this run only: {len(logs) - len(timed)} of {len(logs)} epochs ran before it"
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(path)
        record["weights_sha256"] = file_sha256(path)
        meta_path.write_text(json.dumps(record, indent=2, default=str))
    return model, record
