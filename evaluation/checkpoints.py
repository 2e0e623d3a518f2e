"""Checkpoints of the models a benchmark trains (originals, Retrain), cached under a hash of
everything that shaped them (data, architecture, recipe, seed, training indices)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

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
    train: Callable[[nn.Module, Path | None], None],
    key: str,
    cache_dir: str | Path | None,
    metadata: dict | None = None,
) -> tuple[nn.Module, dict]:
    """``build()`` then ``train(model, checkpoint)``, or load the result from
    ``cache_dir/<key>.safetensors``.

    ``checkpoint`` is where ``train`` may keep its in-progress state (``cache_dir/<key>.partial.safetensors``,
    None without a cache), so that an interrupted training resumes. Returns the model and its
    record (key, sha256 of the weights file, training seconds, metadata). Without ``cache_dir``
    nothing is stored.
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
    train(model, None if cache_dir is None else Path(cache_dir) / f"{key}.partial.safetensors")
    record = {"key": key, "train_s": time.perf_counter() - t0, **(metadata or {})}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(path)
        record["weights_sha256"] = file_sha256(path)
        meta_path.write_text(json.dumps(record, indent=2, default=str))
    return model, record
