"""Image grids as PNG files (rows of equally sized cells, optional row, column and per-cell labels), written atomically."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["save_png", "save_image_grid", "wrap_words", "label_font"]

PAD = 4
LABEL_W = 200
TITLE_H = 16
FONT_SIZE = 11


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


def label_font(size: int = FONT_SIZE):
    """Pillow's default font at ``size`` pixels (its bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0: no sizes, the bitmap font
        return ImageFont.load_default()


def _word_gap(font) -> int:
    """The space drawn between words. Pillow's default FreeType font advances a space by only 2
    pixels at 10-11 px, no wider than the gaps between its letters, so a label drawn as one string
    reads "a photoof the digitseven"; words are drawn one by one this far apart instead."""
    size = getattr(font, "size", 10)
    return max(math.ceil(font.getlength(" ")), math.ceil(0.45 * size))


def wrap_words(text: str, width: float, measure: Callable[[str], float], gap: float) -> list[list[str]]:
    """Split ``text`` at whitespace into lines of words no wider than ``width`` when drawn with
    ``gap`` between words (``measure(word)`` is a word's width); a word wider than ``width`` alone is
    broken between characters. Every word is kept, in order."""
    lines: list[list[str]] = []
    line: list[str] = []
    used = 0.0
    for word in text.split():
        pieces = [word]
        if measure(word) > width:  # break an over-long word into pieces that fit
            pieces, piece = [], ""
            for ch in word:
                if piece and measure(piece + ch) > width:
                    pieces.append(piece)
                    piece = ""
                piece += ch
            pieces.append(piece)
        for piece in pieces:
            w = measure(piece)
            if line and used + gap + w > width:
                lines.append(line)
                line, used = [], 0.0
            used += (gap if line else 0) + w
            line.append(piece)
    if line:
        lines.append(line)
    return lines


def _safe_text(text: str, font) -> str:
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")  # the bitmap font holds Latin-1 only


def _draw_words(draw: ImageDraw.ImageDraw, x: float, y: float, words: Sequence[str], font, gap: int) -> None:
    for word in words:
        draw.text((x, y), word, fill="black", font=font)
        x += font.getlength(word) + gap


def _draw_label(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str, font) -> None:
    """``text`` word-wrapped into ``box`` (left, top, width, height), centred vertically; lines that do
    not fit end in "..."."""
    left, top, width, height = box
    gap = _word_gap(font)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (font.getbbox("Ag")[3], 0)
    line_h = ascent + descent + 1
    lines = wrap_words(_safe_text(str(text), font), width, font.getlength, gap)
    fit = max(1, height // line_h)
    if len(lines) > fit:
        lines = lines[:fit]
        last = lines[-1] + ["..."]
        while len(last) > 2 and sum(font.getlength(w) for w in last) + gap * (len(last) - 1) > width:
            last = last[:-2] + ["..."]
        if len(last) == 2 and font.getlength(last[0]) + gap + font.getlength("...") > width:
            # one word left (e.g. a long name broken into pieces): keep its head rather than only "..."
            word = last[0]
            while word and font.getlength(word + "...") > width:
                word = word[:-1]
            last = [word + "..."]
        lines[-1] = last
    y = top + (height - len(lines) * line_h) // 2
    for words in lines:
        _draw_words(draw, left, y, words, font, gap)
        y += line_h


def _draw_tag(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font) -> None:
    """A small white label on a black box, its top-left corner at ``xy``."""
    text = _safe_text(text, font)
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill="black")
    draw.text(xy, text, fill="white", font=font)


def save_image_grid(
    rows: Sequence[Sequence[Image.Image]],
    path: str | os.PathLike,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell_labels: Sequence[Sequence[str]] | None = None,
    min_cell: int = 96,
    pad: int = PAD,
    background: str | tuple[int, int, int] = "white",
) -> Path:
    """One PNG with a row of images per entry of ``rows`` (labelled on the left by ``row_labels``,
    columns titled by ``col_labels``, each cell tagged in its top-left corner by ``cell_labels[r][c]``
    unless empty). Every cell takes the first image's size; small images are upscaled by an integer
    factor (nearest) to at least ``min_cell`` pixels (0: never). ``pad`` pixels of ``background``
    separate and surround the cells. Labels are wrapped at spaces to fit (row labels: ``LABEL_W``
    wide and the row's height; column titles: one line over their column)."""
    if not rows or not all(rows):
        raise ValueError("save_image_grid needs at least one non-empty row of images")
    cols = max(len(r) for r in rows)
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"row_labels: {len(row_labels)} labels for {len(rows)} rows")
    if col_labels is not None and len(col_labels) != cols:
        raise ValueError(f"col_labels: {len(col_labels)} labels for {cols} columns")
    if cell_labels is not None and [len(r) for r in cell_labels] != [len(r) for r in rows]:
        raise ValueError(
            f"cell_labels must match the images row by row: {[len(r) for r in cell_labels]} labels "
            f"for {[len(r) for r in rows]} images"
        )
    if min_cell < 0 or pad < 0:
        raise ValueError(f"min_cell and pad must be >= 0; got {min_cell}, {pad}")
    w, h = rows[0][0].size
    scale = max(1, -(-min_cell // max(w, h)))
    cw, ch = w * scale, h * scale
    left = LABEL_W if row_labels else 0
    top = TITLE_H if col_labels else 0
    canvas = Image.new(
        "RGB", (left + cols * cw + (cols + 1) * pad, top + len(rows) * ch + (len(rows) + 1) * pad), background
    )
    draw, font = ImageDraw.Draw(canvas), label_font()
    for c, title in enumerate(col_labels or []):
        _draw_label(draw, (left + pad + c * (cw + pad) + 2, 0, cw - 2, TITLE_H), str(title), font)
    for r, images in enumerate(rows):
        y0 = top + pad + r * (ch + pad)
        if row_labels:
            _draw_label(draw, (4, y0, LABEL_W - 8, ch), str(row_labels[r]), font)
        for c, im in enumerate(images):
            x0 = left + pad + c * (cw + pad)
            canvas.paste(im.convert("RGB").resize((cw, ch), Image.NEAREST), (x0, y0))
            if cell_labels and cell_labels[r][c]:
                _draw_tag(draw, (x0 + 2, y0 + 2), str(cell_labels[r][c]), font)
    return save_png(canvas, path)
