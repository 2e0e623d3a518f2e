"""The one file hash (a leaf module: weights, caches and reports all identify files with it), and
where the library keeps its caches."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["file_sha256", "CACHE_ENV", "cache_dir"]

CACHE_ENV = "ERASER_CACHE"


def cache_dir(kind: str) -> Path:
    """The folder for one kind of cached result: ``$ERASER_CACHE/<kind>`` (default
    ``~/.cache/eraser/<kind>``); not created here."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "eraser")) / kind


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
