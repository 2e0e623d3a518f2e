"""Erase one digit from the bundled tiny CLIP's image path, for each digit: zero-shot UA on that
digit and the accuracy change on each of the other nine, on real MNIST test images.

    python benchmarks/clip_digit_erasure.py --variant default --variant head --variant rayleigh:k=4,ridge=1.0
    python benchmarks/clip_digit_erasure.py --layers model.visual_projection --variant rayleigh --variant svd

Variants:

- ``default``: what a user gets with no retain data and no options,
  ``eraser.erase_classes(zero_shot_classifier(clip, tok, prompts), forget)`` (the image projection is
  edited; the other digits' text embeddings are protected, see ``eraser.families.clip``).
- ``head``: the same classifier with ``layers=["head"]``: the library's generic head variant on the
  zero-shot head (a classifier edit; the image embeddings are not changed).
- ``svd`` / ``rayleigh``: ``eraser.erase_classes(ImageEncoder(clip), forget, layers=--layers,
  variant=...)``; rayleigh also gets retain images of the other digits.

Any variant may carry Unlink options after a colon (``rayleigh:k=4,ridge=1.0``, ``default:k=1``),
passed to ``eraser.erase_classes``. Forget data: 32 training images of the digit (``--forget``);
retain data (rayleigh only): 288 training images of the other digits (``--retain``). Zero-shot:
cosine similarity to the canonical prompts ``digit_prompt(0..9)``; "other prompts": the same with
the mean embedding of the other 11 caption templates per digit (prompts no erasure saw).
"embedding cos": the cosine between a test image's normalised image embedding before and after the
erasure, averaged over the erased digit's and the kept digits' images (1 = unchanged). "kNN": a
10-nearest-neighbour vote over the edited image embeddings (index: the first half of the test
images, queries: the second half), i.e. whether the digit can still be found from the images alone.
A kept digit's drop is its accuracy before minus after (positive = lost); the worst case is the
largest drop over the nine kept digits and the ten erasures.
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
from eraser.bundled.captions import all_captions, digit_prompt
from eraser.bundled.models import clip_pixel_values, zero_shot_logits
from eraser.families.clip import ImageEncoder, zero_shot_classifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
VARIANTS = ("default", "head", "svd", "rayleigh")
UA_TARGET, DROP_TARGET = 95.0, 3.0


def load(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(DATA / name)
    return torch.tensor(d["x"]).float().div(255).unsqueeze(1), torch.tensor(d["y"]).long()


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"rayleigh:k=4,ridge=1.0"`` -> ``("rayleigh", {"k": 4, "ridge": 1.0})``, typed by ``UnlinkConfig``."""
    from eraser.methods.unlink import UnlinkConfig
    from eraser.options import parse_options

    name, _, opts = spec.partition(":")
    if name not in VARIANTS:
        raise SystemExit(f"variant must be one of {VARIANTS} (optionally with :key=value,...); got {spec!r}")
    try:
        return name, parse_options(UnlinkConfig, opts.split(","), where=spec)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--layers",
        default="model.visual_projection",
        help="svd/rayleigh: layers of ImageEncoder(clip), comma-separated (default: the projection)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        help=f"one of {', '.join(VARIANTS)}, optionally with Unlink options, e.g. rayleigh:k=4,ridge=1.0 "
        "(repeatable; default: default)",
    )
    ap.add_argument("--forget", type=int, default=32, help="forget images of the erased digit (default 32)")
    ap.add_argument(
        "--retain", type=int, default=288, help="retain images of the other digits, rayleigh only (default 288)"
    )
    ap.add_argument("--test", type=int, default=10000, help="test images (default: all 10,000)")
    args = ap.parse_args()
    variants = [(spec, *parse_variant(spec)) for spec in (args.variant or ["default"])]
    torch.manual_seed(0)
    clip, tok = digits_clip()
    encoder = ImageEncoder(clip)
    classifier = zero_shot_classifier(clip, tok, [digit_prompt(d) for d in range(10)])
    other_prompts = zero_shot_classifier(clip, tok, [all_captions(d)[1:] for d in range(10)])
    xtr, ytr = load("mnist_train10k.npz")
    xte, yte = load("mnist_test10k.npz")
    xte, yte = xte[: args.test], yte[: args.test]
    pixels = clip_pixel_values(xte)

    def per_digit() -> tuple[list[float], list[float], torch.Tensor]:
        """Per-digit zero-shot accuracy with the canonical prompts (the classifier's head, which the
        head variant edits) and with the other prompts (an untouched head); the image embeddings."""
        with torch.no_grad():
            emb = torch.cat(
                [
                    torch.nn.functional.normalize(encoder(pixels[i : i + 1000]), dim=-1)
                    for i in range(0, len(pixels), 1000)
                ]
            )
            preds = classifier.head(emb).argmax(1), other_prompts.head(emb).argmax(1)
        return (*([100 * float((p[yte == d] == d).float().mean()) for d in range(10)] for p in preds), emb)

    half = len(yte) // 2

    def knn(emb: torch.Tensor) -> list[float]:
        """Per-digit accuracy of a 10-NN vote: queries (second half) against the index (first half)."""
        votes = yte[:half][(emb[half:] @ emb[:half].T).topk(10, dim=1).indices]
        pred = torch.mode(votes, dim=1).values
        return [100 * float((pred[yte[half:] == d] == d).float().mean()) for d in range(10)]

    base, base_other, base_emb = per_digit()
    base_knn = knn(base_emb)
    with torch.no_grad():
        same = int(
            (
                zero_shot_logits(clip, tok, xte).argmax(1)
                == classifier.head(torch.nn.functional.normalize(encoder(pixels), dim=-1)).argmax(1)
            ).sum()
        )
    print(
        f"zero-shot accuracy before erasure: {np.mean(base):.2f} (per digit {[round(b, 1) for b in base]}); "
        f"other prompts {np.mean(base_other):.2f}; kNN {np.mean(base_knn):.2f}; "
        f"the classifier and zero_shot_logits agree on {same}/{len(xte)} test images\n"
    )
    print(
        "| variant | digit | UA on the digit | worst kept digit: drop (digit) | kept digits' mean before -> after | mean change "
        "| other prompts: UA, worst drop | embedding cos: erased, kept | kNN: erased digit's accuracy, worst kept drop | erase s |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    summary = []
    for spec, variant, options in variants:
        uas, worst, gains, means, o_uas, o_worst, cos_kept, knn_acc, knn_drop, secs = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
        )
        for d in range(10):
            g = torch.Generator().manual_seed(d)
            own, rest = torch.nonzero(ytr == d).flatten(), torch.nonzero(ytr != d).flatten()
            forget = clip_pixel_values(xtr[own[torch.randperm(len(own), generator=g)[: args.forget]]])
            kw = dict(options, names=[str(d)])
            if variant == "rayleigh":
                kw["retain_data"] = clip_pixel_values(xtr[rest[torch.randperm(len(rest), generator=g)[: args.retain]]])
            t0 = time.perf_counter()
            if variant == "default":
                model = classifier
                patch = eraser.erase_classes(classifier, forget, **kw)
            elif variant == "head":
                model = classifier
                patch = eraser.erase_classes(classifier, forget, layers=["head"], **kw)
            else:
                model = encoder
                patch = eraser.erase_classes(encoder, forget, layers=args.layers.split(","), variant=variant, **kw)
            seconds = time.perf_counter() - t0
            after, after_other, emb = per_digit()
            cos = (emb * base_emb).sum(1)
            after_knn = knn(emb)
            patch.revert(model)
            kept = [j for j in range(10) if j != d]
            drops = {j: base[j] - after[j] for j in kept}
            j_worst = max(kept, key=lambda j: drops[j])
            mean_b, mean_a = np.mean([base[j] for j in kept]), np.mean([after[j] for j in kept])
            o_drop = max(base_other[j] - after_other[j] for j in kept)
            uas.append(100 - after[d])
            worst.append(drops[j_worst])
            gains.append(-min(drops.values()))
            means.append(mean_a - mean_b)
            o_uas.append(100 - after_other[d])
            o_worst.append(o_drop)
            cos_kept.append(float(cos[yte != d].mean()))
            knn_acc.append(after_knn[d])
            knn_drop.append(max(base_knn[j] - after_knn[j] for j in kept))
            secs.append(seconds)
            print(
                f"| {spec} | {d} | {100 - after[d]:.1f} | {drops[j_worst]:+.2f} ({j_worst}) | {mean_b:.2f} -> {mean_a:.2f} "
                f"| {mean_a - mean_b:+.2f} | {100 - after_other[d]:.1f}, {o_drop:+.2f} "
                f"| {float(cos[yte == d].mean()):.3f}, {cos_kept[-1]:.3f} | {knn_acc[-1]:.1f}, {knn_drop[-1]:+.2f} | {seconds:.3f} |"
            )
        met = min(uas) >= UA_TARGET and max(worst) <= DROP_TARGET
        summary.append(
            f"| {spec} | {min(uas):.1f} | {np.mean(uas):.1f} | {max(worst):+.2f} | {np.mean(worst):+.2f} "
            f"| {max(gains):.2f} | {np.mean(means):+.2f} | {min(o_uas):.1f}, {max(o_worst):+.2f} "
            f"| {min(cos_kept):.3f} | {min(knn_acc):.1f}, {max(knn_drop):+.2f} | {'yes' if met else 'no'} | {np.mean(secs):.3f} |"
        )
    print(
        "\n| variant | UA min | UA mean | worst drop of a kept digit | mean of the per-erasure worst drops "
        "| largest gain of a kept digit | mean change of the kept digits | other prompts: UA min, worst drop "
        "| kept digits' embedding cos, lowest | kNN: erased digit's accuracy, lowest; worst kept drop "
        f"| targets met (UA >= {UA_TARGET:g} on every digit, every kept digit's drop <= {DROP_TARGET:g}) | erase s, mean |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(summary))
    print(
        f"\nsvd/rayleigh layers {args.layers}; {args.forget} forget images, {args.retain} retain images (rayleigh); "
        f"{len(xte)} test images; {platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}"
    )


if __name__ == "__main__":
    main()
