"""Erase one digit from the bundled tiny CLIP's image path, for each digit: zero-shot UA on that
digit and the accuracy change on the other nine, on real MNIST test images.

    python benchmarks/clip_digit_erasure.py --layers model.visual_projection --variant rayleigh --variant svd
    python benchmarks/clip_digit_erasure.py --variant rayleigh --variant rayleigh:k=4,ridge=1.0

Forget data: 32 training images of the digit (``--forget``); retain data (Rayleigh variant): 288
training images of the other digits (``--retain``). A variant may carry Unlink options after a colon
(``rayleigh:k=4,ridge=1.0``), passed to ``eraser.erase_classes``. Zero-shot: cosine similarity to the
canonical prompts ``digit_prompt(0..9)``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import eraser
from eraser.bundled import digits_clip
from eraser.bundled.models import clip_pixel_values, zero_shot_logits
from eraser.families.clip import ImageEncoder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def load(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(DATA / name)
    return torch.tensor(d["x"]).float().div(255).unsqueeze(1), torch.tensor(d["y"]).long()


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"rayleigh:k=4,ridge=1.0"`` -> ``("rayleigh", {"k": 4, "ridge": 1.0})``, typed by ``UnlinkConfig``."""
    from eraser.methods.unlink import UnlinkConfig
    from eraser.registry import parse_options

    name, _, opts = spec.partition(":")
    if name not in ("svd", "rayleigh"):
        raise SystemExit(f"variant must be svd or rayleigh (optionally with :key=value,...); got {spec!r}")
    try:
        return name, parse_options(UnlinkConfig, opts.split(","), where=spec)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="model.visual_projection", help="layers of ImageEncoder(clip), comma-separated (default: the projection)")
    ap.add_argument("--variant", action="append",
                    help="svd | rayleigh, optionally with Unlink options, e.g. rayleigh:k=4,ridge=1.0 (repeatable; default rayleigh)")
    ap.add_argument("--forget", type=int, default=32, help="forget images of the erased digit (default 32)")
    ap.add_argument("--retain", type=int, default=288, help="retain images of the other digits, Rayleigh only (default 288)")
    ap.add_argument("--test", type=int, default=10000, help="test images (default: all 10,000)")
    args = ap.parse_args()
    variants = args.variant or ["rayleigh"]
    torch.manual_seed(0)
    clip, tok = digits_clip()
    encoder = ImageEncoder(clip)
    xtr, ytr = load("mnist_train10k.npz")
    xte, yte = load("mnist_test10k.npz")
    xte, yte = xte[: args.test], yte[: args.test]

    def per_digit() -> list[float]:
        with torch.no_grad():
            pred = zero_shot_logits(clip, tok, xte).argmax(1)
        return [100 * float((pred[yte == d] == d).float().mean()) for d in range(10)]

    base = per_digit()
    print(f"zero-shot accuracy before erasure: {np.mean(base):.2f} (per digit {[round(b, 1) for b in base]})\n")
    print("| variant | digit | UA on the digit | other digits before -> after | change | erase s |\n|---|---|---|---|---|---|")
    summary = []
    for spec in variants:
        variant, options = parse_variant(spec)
        uas, changes = [], []
        for d in range(10):
            g = torch.Generator().manual_seed(d)
            own, rest = torch.nonzero(ytr == d).flatten(), torch.nonzero(ytr != d).flatten()
            forget = clip_pixel_values(xtr[own[torch.randperm(len(own), generator=g)[: args.forget]]])
            kw = dict(options)
            if variant == "rayleigh":
                kw["retain_data"] = clip_pixel_values(xtr[rest[torch.randperm(len(rest), generator=g)[: args.retain]]])
            t0 = time.perf_counter()
            patch = eraser.erase_classes(encoder, forget, layers=args.layers.split(","), variant=variant, names=[str(d)], **kw)
            seconds = time.perf_counter() - t0
            after = per_digit()
            patch.revert(encoder)
            others_b = np.mean([base[j] for j in range(10) if j != d])
            others_a = np.mean([after[j] for j in range(10) if j != d])
            uas.append(100 - after[d])
            changes.append(others_a - others_b)
            print(f"| {spec} | {d} | {100 - after[d]:.1f} | {others_b:.2f} -> {others_a:.2f} | {others_a - others_b:+.2f} | {seconds:.3f} |")
        summary.append(f"| {spec} | mean UA {np.mean(uas):.1f}, min {min(uas):.1f} | mean change {np.mean(changes):+.2f}, worst {min(changes):+.2f} |")
    print("\n| variant | UA over the 10 digits | other digits' accuracy |\n|---|---|---|")
    print("\n".join(summary))
    print(f"\nlayers {args.layers}; {args.forget} forget images, {args.retain} retain images (rayleigh); {len(xte)} test images; {platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
