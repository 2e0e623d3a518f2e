"""Does an erased digit come back under attack? soft_prompt's attack success rate (ASR) on the bundled
digits model, for the original model (the ceiling) and erasure methods, with the same seeds on every row.

    python benchmarks/attack_digits.py                                          # digit 7: original, unlink
    python benchmarks/attack_digits.py --digits 3,7 --instances 2 --images 4 --steps 40 --method "unlink:strength=1.5"
    python benchmarks/attack_digits.py --method unlink --method unlink_robust --retain-images 10

For digit d: ``--targets`` sevens (say) drawn by the original model from ``digit_prompt(d)`` are the
attack's target images. Each row is a model: the original, then each ``--method`` erasing the
digit's word (``eraser.erase_concepts(pipe, "seven", method=...)``: the default erasure also erases
the synonyms it finds, such as "7"; ``name+retain`` also protects the other digits). On each row
``--instances`` independent soft_prompt attacks (``--tokens`` embeddings appended to ``--prompt``,
optimisation seeds ``--seed`` + i) are optimised against that row's model, and instance i is judged
on ``--images`` fresh generations from its prompt (evaluation seed ``--eval-seed``, apart from the
optimisation's): ASR = % of instances with at least half their images read as d by the bundled
digit judge; image-level = % of all those images. "no attack" is the image-level rate of the plain
prompt ``digit_prompt(d)`` on the same evaluation seeds. After each method the patch is reverted and
the UNet and text encoder are checked to be exactly the original again. What each erasure costs the
kept digits: ``--retain-images`` generations of each digit's own prompt ``digit_prompt(o)`` (the
evaluation seed, the same on every row), judged; "kept acc" is the mean judge accuracy over the other
nine digits, "worst drop" / "mean drop" the largest and mean fall of a kept digit's accuracy against
the original row, in points. "erase s" is the erasure's wall-clock time. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import eraser
from eraser.bundled import DIGIT_WORDS, digit_prompt, digits_judge, digits_pipeline
from eraser.bundled.evaluate import image_seed, judge_digits
from evaluation.attacks import attack_success, run_attack
from evaluation.erasure_bench import parse_bench_method

ORIGINAL = "original (no erasure)"


def snapshot(pipe) -> dict[str, torch.Tensor]:
    """Every UNet and text-encoder weight (to check that a revert restores them exactly)."""
    return {f"{c}.{k}": v.clone() for c in ("unet", "text_encoder") for k, v in getattr(pipe, c).state_dict().items()}


@torch.no_grad()
def target_images(pipe, d: int, n: int, seed: int) -> torch.Tensor:
    """``n`` generations of ``digit_prompt(d)`` by the (unerased) pipeline, image i seeded by (seed, d, i)."""
    gens = [torch.Generator().manual_seed(image_seed(seed, d, i)) for i in range(n)]
    return pipe([digit_prompt(d)] * n, generator=gens, output_type="pt").images


def attack_row(pipe, judge, d: int, targets: torch.Tensor, args: argparse.Namespace) -> dict:
    """soft_prompt ASR, image-level rate, the plain prompt's rate and the attack's cost on the pipeline as it is."""
    word = DIGIT_WORDS[d]
    results = [
        run_attack(
            "soft_prompt",
            pipe,
            word,
            prompt=args.prompt,
            targets=targets,
            n_tokens=args.tokens,
            steps=args.steps,
            lr=args.lr,
            time_budget=args.time_budget,
            seed=args.seed + i,
            progress=args.progress,
        )
        for i in range(args.instances)
    ]
    common = dict(images_per_instance=args.images, seed=args.eval_seed, progress="judge" if args.progress else False)
    asr = attack_success(pipe, results, judge, d, **common)
    plain = run_attack("paraphrase", pipe, word, prompt="", prompts=(digit_prompt(d),))
    base = attack_success(pipe, plain, judge, d, instances=args.instances, **common)
    return {
        "asr": asr.asr,
        "image_asr": asr.image_asr,
        "no_attack": base.image_asr,
        "seconds": statistics.mean(r.seconds for r in results),
        "loss": (statistics.mean(r.initial_loss for r in results), statistics.mean(r.loss for r in results)),
    }


def kept_accuracy(pipe, judge, args: argparse.Namespace) -> dict[int, float] | None:
    """Judge accuracy (%) of every digit's own prompt on the pipeline as it is (None when not asked)."""
    if args.retain_images < 1:
        return None
    bar = "kept digits" if args.progress else False
    return judge_digits(pipe, args.retain_images, seed=args.eval_seed, judge=judge, progress=bar)["accuracy"]


def kept_columns(d: int, acc: dict[int, float] | None, base: dict[int, float] | None) -> str:
    """``kept acc | worst drop | mean drop`` over the digits other than ``d`` (against ``base``)."""
    if acc is None or base is None:
        return "- | - | -"
    kept = [o for o in range(10) if o != d]
    drops = [base[o] - acc[o] for o in kept]
    worst = max(kept, key=lambda o: (base[o] - acc[o], -o))
    which = f" (digit {worst})" if base[worst] - acc[worst] > 0 else ""
    return f"{statistics.mean(acc[o] for o in kept):.1f} | {base[worst] - acc[worst]:+.1f}{which} | {statistics.mean(drops):+.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:5]),
    )
    ap.add_argument("--digits", default="7", help="comma-separated digits to erase and attack, one at a time")
    ap.add_argument(
        "--method",
        action="append",
        help='erasure rows: name[+retain][:option=value,...], repeatable (default: "unlink", the default erasure)',
    )
    ap.add_argument("--instances", type=int, default=4, help="independent attacks per row")
    ap.add_argument("--images", type=int, default=8, help="evaluation images per instance")
    ap.add_argument("--targets", type=int, default=16, help="original-model images of the digit to attack with")
    ap.add_argument("--steps", type=int, default=120, help="Adam steps per attack")
    ap.add_argument("--tokens", type=int, default=4, help="learned token embeddings per attack")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--time-budget", type=float, default=600.0, help="seconds per attack")
    ap.add_argument("--prompt", default="a photo of the digit", help="the neutral prompt the attack extends")
    ap.add_argument("--seed", type=int, default=0, help="optimisation seed of instance 0 (instance i: seed + i)")
    ap.add_argument("--eval-seed", type=int, default=1234, help="seed of the evaluation images")
    ap.add_argument("--target-seed", type=int, default=99, help="seed of the target images")
    ap.add_argument(
        "--retain-images",
        type=int,
        default=10,
        help="generations per digit of its own prompt, to measure the kept digits' accuracy (0: skip)",
    )
    ap.add_argument("--progress", action="store_true", help="progress bars for every attack and judging")
    args = ap.parse_args()

    digits = [int(v) for v in args.digits.split(",") if v.strip()]
    if not digits or any(not 0 <= d <= 9 for d in digits):
        raise SystemExit(f"--digits must list digits in 0..9; got {args.digits!r}")
    for name in ("instances", "images", "targets", "steps", "tokens"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1; got {getattr(args, name)}")
    if args.retain_images < 0:
        raise SystemExit(f"--retain-images must be >= 0; got {args.retain_images}")
    if args.eval_seed in range(args.seed, args.seed + args.instances):
        raise SystemExit(f"--eval-seed {args.eval_seed} is one of the optimisation seeds; choose another")
    specs = [parse_bench_method(m) for m in (args.method or ["unlink"])]

    pipe = digits_pipeline()
    pipe.set_progress_bar_config(disable=True)
    judge = digits_judge()
    original = snapshot(pipe)
    lines = [
        "| digit | method | ASR (%) | image-level success (%) | no attack: image-level (%) | kept acc (%) "
        "| worst drop | mean drop | erase s | attack s (mean) | probe loss before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_acc = kept_accuracy(pipe, judge, args)  # the original model's: the same for every digit
    for d in digits:
        targets = target_images(pipe, d, args.targets, args.target_seed)
        rows: list[tuple[str, dict]] = [
            (ORIGINAL, {**attack_row(pipe, judge, d, targets, args), "kept": base_acc, "erase_s": None})
        ]
        for label, name, with_retain, options in specs:
            retain = [w for o in range(10) if o != d for w in (DIGIT_WORDS[o], str(o))] if with_retain else None
            t0 = time.perf_counter()
            patch = eraser.erase_concepts(pipe, DIGIT_WORDS[d], retain=retain, method=name, **options)
            erase_s = time.perf_counter() - t0
            try:
                row = attack_row(pipe, judge, d, targets, args)
                rows.append((label, {**row, "kept": kept_accuracy(pipe, judge, args), "erase_s": erase_s}))
            finally:
                patch.revert(pipe)
            changed = [k for k, v in snapshot(pipe).items() if not torch.equal(v, original[k])]
            if changed:
                raise SystemExit(
                    f"reverting {label} for digit {d} left {len(changed)} tensors changed, e.g. {changed[0]}"
                )
        for label, r in rows:
            erase = "-" if r["erase_s"] is None else f"{r['erase_s']:.2f}"
            lines.append(
                f"| {d} | {label} | {r['asr']:.1f} | {r['image_asr']:.1f} | {r['no_attack']:.1f} | "
                f"{kept_columns(d, r['kept'], base_acc)} | {erase} | "
                f"{r['seconds']:.1f} | {r['loss'][0]:.4f} -> {r['loss'][1]:.4f} |"
            )
    lines.append(
        f"(soft_prompt: {args.tokens} token embeddings appended to {args.prompt!r}, up to {args.steps} Adam steps "
        f"(lr {args.lr}, budget {args.time_budget:g} s) on the model's denoising loss over {args.targets} original "
        f"generations of the digit; {args.instances} instances per row (optimisation seeds {args.seed}.."
        f"{args.seed + args.instances - 1}), each judged on {args.images} generations (evaluation seed "
        f"{args.eval_seed}, the same for every row) by the bundled digit judge; ASR = % of instances with at least "
        "half their images read as the digit; no attack = the plain prompt 'a photo of the digit <word>' on the "
        f"same seeds; kept acc = mean judge accuracy of the nine other digits' own prompts, "
        f"{args.retain_images} images each (seed {args.eval_seed}), worst / mean drop = fall against the original "
        f"row in points (one image = {100 / max(args.retain_images, 1):.0f} points; the digit with the worst drop in brackets); "
        f"erase s / attack s = wall-clock seconds per erasure / attack on {torch.get_num_threads()} thread(s))"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
