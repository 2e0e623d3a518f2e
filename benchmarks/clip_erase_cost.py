"""Unlink on CLIP ViT-B/32 towers (open_clip and transformers, built from config with random weights:
no CLIP weights exist offline): which layers the presets pick, and what an erasure costs.

    python benchmarks/clip_erase_cost.py --forget 16 --out docs/results/clip_erase/vit-b-32.json

Each row: one erasure (feature capture on the forget images or concept prompts included),
reverted before the next. Forget images are random 224x224 inputs: timing and shapes do not depend
on their content.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import eraser
from eraser.families.clip import image_tower, text_view
from eraser.families.clip_tokenizer import clip_tokenizer


def erase_row(library: str, tower_name: str, preset: str, fn) -> dict:
    t0 = time.perf_counter()
    patch, model = fn()
    seconds = time.perf_counter() - t0
    shapes = sorted({tuple(e.shape) for e in patch.edits.values()})
    row = {
        "library": library,
        "tower": tower_name,
        "preset": preset,
        "layers": len(patch.layers),
        "weight shapes": " ".join("x".join(map(str, s)) for s in shapes),
        "rank": sorted({e.rank for e in patch.edits.values()}),
        "seconds": seconds,
    }
    patch.revert(model)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forget", type=int, default=16, help="forget images (default 16)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    import open_clip
    from transformers import CLIPConfig, CLIPModel

    oc = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    hf = CLIPModel(CLIPConfig()).eval()  # the defaults are ViT-B/32's
    images = torch.randn(args.forget, 3, 224, 224)
    tok = clip_tokenizer()
    rows = []
    for library, model in (("open_clip", oc), ("transformers", hf)):
        tower = image_tower(model)
        for preset in ("clip_last_mlp", "clip_mlp", "clip_attn"):
            rows.append(
                erase_row(library, "image", preset, lambda: (eraser.erase_classes(tower, images, layers=preset), tower))
            )
    view = text_view(hf, tok)
    for preset in ("text_encoder_mlp", "text_encoder_attn"):
        rows.append(
            erase_row(
                "transformers",
                "text",
                preset,
                lambda: (eraser.erase_concepts(view, ["dog", "puppy"], targets=preset), view),
            )
        )
    head = "| library | tower | preset | layers | weight shapes | rank | seconds |\n|---|---|---|---|---|---|---|"
    print(head)
    for r in rows:
        print(
            f"| {r['library']} | {r['tower']} | {r['preset']} | {r['layers']} | {r['weight shapes']} | {r['rank']} | {r['seconds']:.3f} |"
        )
    print(
        f"\n{args.forget} forget images; {platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
