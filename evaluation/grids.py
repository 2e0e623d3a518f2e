"""Image grids as PNG files (generations before/after an erasure, rows = prompts), written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["save_png", "save_image_grid"]

PAD = 4
LABEL_W = 200
TITLE_H = 14


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as PNG at ``path`` via a temporary file in the same folder (no half-written files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_image_grid(
    rows: Sequence[Sequence[Image.Image]],
    path: str | os.PathLike,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    min_cell: int = 96,
) -> Path:
    """One PNG with a row of images per entry of ``rows`` (labelled on the left by ``row_labels``,
    columns titled by ``col_labels``). Small images are upscaled by an integer factor (nearest) to at
    least ``min_cell`` pixels."""
    if not rows or not all(rows):
        raise ValueError("save_image_grid needs at least one non-empty row of images")
    cols = max(len(r) for r in rows)
    w, h = rows[0][0].size
    scale = max(1, -(-min_cell // max(w, h)))
    cw, ch = w * scale, h * scale
    left = LABEL_W if row_labels else 0
    top = TITLE_H if col_labels else 0
    canvas = Image.new("RGB", (left + cols * cw + (cols + 1) * PAD, top + len(rows) * ch + (len(rows) + 1) * PAD), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for c, title in enumerate(col_labels or []):
        draw.text((left + PAD + c * (cw + PAD) + 2, 1), str(title), fill="black", font=font)
    for r, images in enumerate(rows):
        y0 = top + PAD + r * (ch + PAD)
        if row_labels:
            draw.text((4, y0 + ch // 2 - 6), str(row_labels[r])[:34], fill="black", font=font)
        for c, im in enumerate(images):
            canvas.paste(im.convert("RGB").resize((cw, ch), Image.NEAREST), (left + PAD + c * (cw + PAD), y0))
    return save_png(canvas, path)
