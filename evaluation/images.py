"""Image sets for the evaluators: a folder (recursively) or a list of PIL images, read lazily.

Unreadable or non-image files in a folder are skipped and listed in ``ImageSet.skipped``, never fatal:
a half-written file from a crashed run or a stray ``.txt`` must not stop an evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "ImageSet", "image_set"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class ImageSet:
    """Named images from a folder (read on iteration) or from memory.

    ``skipped`` lists ``(name, reason)`` for files that are not images (known at listing) and for
    files that fail to decode (known once iterated)."""

    names: list[str]
    paths: list[Path] | None = None
    images: list[Image.Image] | None = None
    source: str = "memory"
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, Image.Image]]:
        """``(name, RGB image)`` for every readable image, in name order (pixels as stored)."""
        return self.iter_images()

    def iter_images(self, exif_orientation: bool = False) -> Iterator[tuple[str, Image.Image]]:
        """``(name, RGB image)`` for every readable image, in name order. ``exif_orientation``:
        turn files as their EXIF orientation tag says (as ``cv2.imread`` does; images given in
        memory are taken as they are)."""
        if self.images is not None:
            for name, img in zip(self.names, self.images):
                yield name, img.convert("RGB")
            return
        for name, path in zip(self.names, self.paths or []):
            try:
                with Image.open(path) as img:
                    img.load()
                    rgb = (ImageOps.exif_transpose(img) if exif_orientation else img).convert("RGB")
            except (OSError, UnidentifiedImageError, ValueError) as err:
                if all(name != seen for seen, _ in self.skipped):  # listed once however often iterated
                    self.skipped.append((name, f"unreadable: {err}"))
                continue
            yield name, rgb

    def sizes(self, limit: int = 50) -> list[tuple[int, int]]:
        """Distinct (width, height) among the first ``limit`` images (for reports)."""
        seen: list[tuple[int, int]] = []
        for i, (_, img) in enumerate(self):
            if img.size not in seen:
                seen.append(img.size)
            if i + 1 >= limit:
                break
        return seen


def image_set(source: str | Path | Sequence[Image.Image] | ImageSet) -> ImageSet:
    """An :class:`ImageSet` from a folder path (every image file below it, sorted by relative path)
    or a sequence of PIL images (named by position)."""
    if isinstance(source, ImageSet):
        return source
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        names, paths, skipped = [], [], []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if rel.startswith(".") or "/." in rel:  # hidden files, e.g. the runner's temporary files
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                names.append(rel)
                paths.append(path)
            elif path.suffix.lower() not in {".json", ".jsonl", ".csv", ".md"}:  # the runner's own records
                skipped.append((rel, "not an image file"))
        return ImageSet(names, paths=paths, source=str(root), skipped=skipped)
    images = list(source)
    bad = [i for i, img in enumerate(images) if not isinstance(img, Image.Image)]
    if bad:
        raise TypeError(f"expected a folder path or PIL images; items {bad[:5]} are {type(images[bad[0]]).__name__}")
    return ImageSet([f"{i:06d}" for i in range(len(images))], images=images)
