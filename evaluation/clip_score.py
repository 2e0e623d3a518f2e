"""CLIP score of generated images against their prompts, with the CLIP the user names.

    from evaluation import clip_score
    clip_score("runs/coco/erased", model="openai/clip-vit-base-patch32")   # prompts from index.jsonl
    clip_score(images, prompts, model="open_clip:ViT-B-32:laion2b_s34b_b79k")

Score = 100 * max(cos(image embedding, text embedding), 0), averaged over images (torchmetrics'
``CLIPScore`` definition). Models: ``open_clip:<arch>[:<pretrained tag or file>]`` (open_clip),
``bundled:digits`` (the bundled tiny CLIP), or anything else as a transformers ``CLIPModel`` hub
id or folder (offline when ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchmetrics import Metric

from eraser.families.clip import embedding

from .images import ImageSet, image_set
from .registry import EvaluatorResult, register_evaluator

__all__ = ["ClipEncoders", "clip_encoders", "ClipScore", "clip_score", "clip_score_report"]


@dataclass
class ClipEncoders:
    """Image and text embedding functions of one CLIP (PIL images / strings -> (B, d))."""

    encode_images: Callable[[Sequence[Image.Image]], Tensor]
    encode_texts: Callable[[Sequence[str]], Tensor]
    name: str


def clip_encoders(model: str = "openai/clip-vit-base-patch32", device: str | torch.device = "cpu") -> ClipEncoders:
    """The encoders of a named CLIP (see the module docstring for the name forms)."""
    if model.startswith("open_clip:"):
        import open_clip

        parts = model.split(":")
        arch, pretrained = parts[1], (parts[2] if len(parts) > 2 and parts[2] else None)
        net, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(arch)
        net.eval()
        return ClipEncoders(
            lambda imgs: net.encode_image(torch.stack([preprocess(i) for i in imgs]).to(device)),
            lambda texts: net.encode_text(tokenizer(list(texts)).to(device)),
            model,
        )
    if model == "bundled:digits":
        import numpy as np

        from eraser.bundled import digits_clip
        from eraser.bundled.models import clip_pixel_values

        net, tokenizer = digits_clip(device)

        def images(imgs: Sequence[Image.Image]) -> Tensor:
            x = torch.stack(
                [torch.from_numpy(np.asarray(i.convert("L"), dtype=np.float32) / 255.0)[None] for i in imgs]
            )
            return embedding(net.get_image_features(pixel_values=clip_pixel_values(x).to(device)))

        def texts(texts: Sequence[str]) -> Tensor:
            tok = tokenizer(list(texts), padding="max_length", truncation=True, return_tensors="pt").to(device)
            return embedding(net.get_text_features(**tok))

        return ClipEncoders(images, texts, model)
    from transformers import CLIPModel, CLIPProcessor

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        net = CLIPModel.from_pretrained(model, local_files_only=offline).to(device).eval()
        processor = CLIPProcessor.from_pretrained(model, local_files_only=offline)
    except OSError as err:
        where = (
            "the local folder" if Path(model).exists() else ("the local hub cache (offline)" if offline else "the hub")
        )
        raise ValueError(f"could not load a transformers CLIP from {where} for {model!r}: {err}") from None
    return ClipEncoders(
        lambda imgs: embedding(net.get_image_features(**processor(images=list(imgs), return_tensors="pt").to(device))),
        lambda texts: embedding(
            net.get_text_features(
                **processor(text=list(texts), padding=True, truncation=True, return_tensors="pt").to(device)
            )
        ),
        model,
    )


class ClipScore(Metric):
    """torchmetrics-style CLIP score: ``update(images, prompts)`` batch by batch, ``compute()`` the mean."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, encoders: ClipEncoders, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoders = encoders
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.tensor(0), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> None:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return
        a = torch.nn.functional.normalize(self.encoders.encode_images(images).float(), dim=-1)
        b = torch.nn.functional.normalize(self.encoders.encode_texts(prompts).float(), dim=-1)
        score = (100 * (a * b).sum(-1)).clamp(min=0)
        self.score_sum += score.double().sum().to(self.score_sum.device)
        self.n += len(images)

    def compute(self) -> Tensor:
        if int(self.n) == 0:
            raise ValueError("CLIP score of no images")
        return self.score_sum / self.n


def clip_score(
    images: str | Path | Sequence[Image.Image] | ImageSet,
    prompts: Sequence[str] | None = None,
    model: str | ClipEncoders = "openai/clip-vit-base-patch32",
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> float:
    """Mean CLIP score of images against their prompts. ``prompts``: one per image, or None to read
    them from the generation runner's ``index.jsonl`` in the image folder."""
    from tqdm.auto import tqdm

    images = image_set(images)
    if prompts is None:
        if images.paths is None:
            raise ValueError("give the prompts (one per image) for in-memory images")
        from .generate import read_index

        index = read_index(images.source)
        missing = [n for n in images.names if n not in index]
        if missing:
            raise ValueError(f"{len(missing)} images are not in {images.source}/index.jsonl (e.g. {missing[:3]})")
        by_name = {n: index[n]["prompt"] for n in images.names}
    else:
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        by_name = dict(zip(images.names, prompts))
    metric = ClipScore(model if isinstance(model, ClipEncoders) else clip_encoders(model, device))
    batch: list[tuple[str, Image.Image]] = []
    for item in tqdm(images, total=len(images), desc="CLIP score", unit="img", disable=not progress):
        batch.append(item)
        if len(batch) == batch_size:
            metric.update([i for _, i in batch], [by_name[n] for n, _ in batch])
            batch = []
    if batch:
        metric.update([i for _, i in batch], [by_name[n] for n, _ in batch])
    return float(metric.compute())


@register_evaluator(
    "clip-score",
    higher_is_better=True,
    metric="CLIP score",
    columns=("CLIP score", "N", "CLIP"),
    needs=("images", "prompts"),
)
def clip_score_report(
    images: str | Path | Sequence[Image.Image] | ImageSet,
    *,
    prompts: Sequence[str] | None = None,
    clip: str | ClipEncoders = "openai/clip-vit-base-patch32",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvaluatorResult:
    """CLIP score of the images against their prompts (from the runner's index.jsonl unless given)."""
    from .report import skipped_note

    images = image_set(images)
    score = clip_score(images, prompts, model=clip, batch_size=batch_size, device=device, progress=progress)
    name = clip if isinstance(clip, str) else clip.name
    rows = [{"CLIP score": score, "N": len(images) - len(images.skipped), "CLIP": name}]
    settings = {"clip": name, "definition": "100 * max(cos, 0), mean over images"}
    return EvaluatorResult(rows, settings, skipped_note(images.skipped))
