"""``eraser attack``: try to bring an erased concept back (the attacks of ``evaluation.attacks``), and
``eraser bench attack``: erasure methods x attacks on the bundled digits model (``evaluation.attack_bench``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from apps.common import load_pipeline_by_name

ATTACKS_HELP = "soft_prompt (default), discrete_prompt, textual_inversion, ring_a_bell or paraphrase"

ATTACK_EXAMPLES = """
Examples:
  eraser attack --model bundled:digits --concept seven --erase unlink --judge digits --target-class 7 --out runs/attack/seven
  eraser attack --model bundled:digits --concept seven --patch seven.safetensors --attack textual_inversion --option steps=200 --judge digits --target-class 7 --out runs/attack/ti
  eraser attack --model bundled:digits --concept seven --erase unlink --attack ring_a_bell --option 'strengths=1|2|4' --judge digits --target-class 7 --out runs/attack/rab
  eraser attack --model bundled:digits --concept seven --erase unlink --attack paraphrase --paraphrase 'a handwritten 7' --paraphrase 'the number seven' --judge digits --target-class 7 --out runs/attack/para
  eraser attack --model bundled:digits --erase unlink_robust --replay runs/attack/seven/attack.safetensors --judge digits --target-class 7 --out runs/attack/replay
  eraser attack --model CompVis/stable-diffusion-v1-4 --concept 'van gogh' --patch vangogh.safetensors --prompt 'a painting by' --targets vangogh_images/ --out runs/attack/vangogh --device cuda
  (the older form `eraser attack MODEL CONCEPT ...` works too)

The model is erased with --patch (a saved erasure) or --erase METHOD[:options] (done here), or attacked
as it is (the ceiling: what the attack reaches on an unerased model). soft_prompt, discrete_prompt
and textual_inversion learn from images of the concept: --targets FOLDER, or --target-images N
generations of '<prompt> <concept>' by the model before it is erased. --replay FILE evaluates a
saved attack.safetensors again (e.g. on another erasure of the same model) instead of running an
attack; a file made for another text encoder is refused, unless --replay-as-text re-encodes a text
attack (discrete_prompt, paraphrase) with this model's encoder. With --judge and --target-class the
attack is scored (ASR: percent of instances with at least half their images judged the concept;
image-level: percent of all images), beside the plain prompt '<prompt> <concept>' on the same seeds;
without a judge the images are written for any evaluator (`eraser evaluate nudenet OUT/images`).
Writes OUT/report.json (attack, asr, image_asr, instances, settings), OUT/attack.md/.csv/.json (every
setting), OUT/attack.safetensors (the conditioning found and the text encoder it is for: replay it
with --replay or pipe(prompt_embeds=...)), OUT/images/ and OUT/grid.png.
"""


def _load_targets(folder: str, pipe: Any, limit: int) -> Any:
    """Images of the concept from ``folder`` as N x C x H x W in [0, 1], at the pipeline's resolution."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"--targets must be a folder of images of the concept; {folder} is not a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"})
    if not files:
        raise ValueError(f"{folder} holds no .png/.jpg/.jpeg/.webp/.bmp images of the concept")
    channels = 3 if getattr(pipe, "vae", None) is not None else int(pipe.unet.config.in_channels)
    size = _resolution(pipe)
    out = []
    for p in files[:limit]:
        try:
            with Image.open(p) as im:
                im = ImageOps.exif_transpose(im).convert("L" if channels == 1 else "RGB")
                im = ImageOps.fit(im, (size, size), Image.Resampling.BICUBIC)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except OSError as err:
            raise ValueError(f"cannot read target image {p}: {err}") from None
        out.append(torch.from_numpy(arr).reshape(size, size, channels).permute(2, 0, 1))
    return torch.stack(out)


def _resolution(pipe: Any) -> int:
    """The pipeline's image side in pixels (latent side times the VAE's downsampling)."""
    side = int(pipe.unet.config.sample_size)
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        side *= 2 ** (len(vae.config.block_out_channels) - 1)
    return side


def _generate(pipe: Any, prompt_embeds: Any, n: int, seed: int) -> Any:
    """``n`` images (N x C x H x W in [0, 1]) from one conditioning, image k from its own generator."""
    import torch

    from eraser.bundled.evaluate import image_seed

    dtype = next(pipe.unet.parameters()).dtype
    gens = [torch.Generator().manual_seed(image_seed(seed, 0, k)) for k in range(n)]
    cond = prompt_embeds[:1].expand(n, -1, -1).to(pipe.device, dtype)
    return pipe(prompt_embeds=cond, generator=gens, output_type="pt").images.float().cpu()


def _one(option: str | None, positional: str | None, flag: str) -> str | None:
    """The value given as ``--flag`` or positionally (the older form); both must agree."""
    if option is not None and positional is not None and option != positional:
        raise ValueError(f"{flag} {option!r} and the positional {positional!r} disagree; give one")
    return option if option is not None else positional


def _image_shape(pipe: Any) -> tuple[int, int, int]:
    """The pipeline's images: channels x height x width."""
    channels = 3 if getattr(pipe, "vae", None) is not None else int(pipe.unet.config.in_channels)
    side = _resolution(pipe)
    return channels, side, side


def cmd_attack(args: argparse.Namespace) -> None:
    """Attack an erased text-to-image model: search for a conditioning that brings the concept back, and score it."""
    import torch

    import eraser
    from eraser.families.diffusion import encode_prompts
    from eraser.options import parse_method, parse_options
    from evaluation.attacks import (
        attack_success,
        get_attack,
        judge_target,
        load_attack,
        run_instances,
        save_attack,
        text_encoder_identity,
    )
    from evaluation.grids import save_image_grid
    from evaluation.report import package_versions, write_report

    name = f"eraser attack {args.attack or ('replay' if args.replay else 'soft_prompt')}"
    try:
        model = _one(args.model, args.model_pos, "--model")
        concept = _one(args.concept, args.concept_pos, "--concept")
        if model is None:
            raise ValueError(
                "give the model to attack: --model M (a hub id, a folder, random:<arch> or bundled:digits)"
            )
        if args.replay is None and (concept is None or not concept.strip()):
            raise ValueError("give the erased concept to bring back: --concept C (e.g. --concept seven)")
        if args.replay is not None and (args.option or args.paraphrase or args.targets):
            raise ValueError(
                "--replay evaluates a saved attack as it is: --option, --paraphrase and --targets do not apply"
            )
        if args.replay_as_text and args.replay is None:
            raise ValueError("--replay-as-text needs --replay FILE")
        attack = args.attack or "soft_prompt"
        spec = get_attack(attack)
        options = parse_options(spec.config_cls, args.option or [], where="--option")
        if attack == "paraphrase" and args.replay is None:
            if not args.paraphrase:
                raise ValueError("the paraphrase attack needs prompts: give --paraphrase TEXT (repeatable)")
            options["prompts"] = tuple(args.paraphrase)
        elif args.paraphrase:
            raise ValueError("--paraphrase is for --attack paraphrase")
        if options or args.replay is None:
            spec.config_cls(**options)  # zero steps, zero budget, no strengths: refused before loading anything
        if args.patch and args.erase:
            raise ValueError("give --patch (a saved erasure) or --erase METHOD (erase here), not both")
        if (args.judge is None) != (args.target_class is None):
            raise ValueError(
                "give --judge and --target-class together (e.g. --judge digits --target-class 7), or neither"
            )
        for flag in ("instances", "images", "target_images"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1; got {getattr(args, flag)}")
        erase = parse_method(args.erase, family="diffusion") if args.erase else None
        patch = eraser.ErasurePatch.load(args.patch) if args.patch else None
        pipe = load_pipeline_by_name(model, args.dtype, args.device)
        # What a saved conditioning is valid for: the text encoder of the model as loaded, before any erasure.
        identity = text_encoder_identity(pipe)
        replayed = None
        if args.replay is not None:
            replayed = load_attack(args.replay, pipe, as_text=args.replay_as_text)
            attacks_in_file = sorted({r.attack for r in replayed})
            if args.attack is not None and attacks_in_file != [args.attack]:
                raise ValueError(f"{args.replay} holds a {', '.join(attacks_in_file)} attack, not {args.attack}")
            attack, spec = replayed[0].attack, get_attack(replayed[0].attack)
            concept = concept or replayed[0].concept
            name = f"eraser attack {attack} (replay)"
        judge, target = None, None
        if args.judge is not None:
            from evaluation.judges import as_judge

            judge = as_judge(args.judge)
            target = judge_target(judge, args.target_class, _image_shape(pipe))  # before minutes of attack
        plain = f"{args.prompt} {concept}".strip()
        targets = None
        if replayed is None and spec.needs_targets:
            if args.targets:
                targets = _load_targets(args.targets, pipe, args.target_images)
            else:  # the model's own images of the concept, before the erasure
                with torch.no_grad():
                    embeds = encode_prompts(pipe, [plain])
                    targets = _generate(pipe, embeds, args.target_images, args.target_seed)
        erasure = "none (the ceiling)"
        t0 = time.perf_counter()
        if patch is not None:
            patch.apply(pipe)
            erasure = f"patch {args.patch}"
        elif erase is not None:
            eraser.erase_concepts(pipe, concept, method=erase[0], **erase[1])
            erasure = f"erase_concepts(method={args.erase!r})"
        erase_s = time.perf_counter() - t0
        # Optimised attacks run --instances times from their own seeds; the others once (one instance per candidate).
        results = replayed or run_instances(
            attack,
            pipe,
            concept,
            prompt=args.prompt,
            instances=args.instances,
            targets=targets,
            progress=True,
            **options,
        )
        cond = torch.cat([r.prompt_embeds for r in results])
        n_inst = len(cond)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_attack(out / "attack.safetensors", results, pipe, identity=identity)
        losses = [(r.initial_loss, r.loss) for r in results if r.loss is not None and r.initial_loss is not None]
        row: dict[str, Any] = {
            "attack": attack,
            "concept": concept,
            "erasure": erasure,
            "instances": n_inst,
            "attack s (mean)": sum(r.seconds for r in results) / len(results),
            # the denoising loss on fixed probe draws: four decimals show what the attack gained
            "loss before -> after (mean)": (
                f"{sum(a for a, _ in losses) / len(losses):.4f} -> {sum(b for _, b in losses) / len(losses):.4f}"
                if losses
                else "-"
            ),
        }
        score, base = None, None
        if judge is not None:
            from evaluation.attacks import ParaphraseConfig, paraphrase

            no_attack = paraphrase(pipe, concept, prompt=args.prompt, config=ParaphraseConfig(prompts=(plain,)))
            kw = dict(instances=1, images_per_instance=n_inst * args.images, seed=args.eval_seed)
            base = attack_success(pipe, no_attack, judge, target, **kw)
            score = attack_success(
                pipe,
                results,
                judge,
                target,
                images_per_instance=args.images,
                seed=args.eval_seed,
                keep_images=True,
                progress="attack success",
            )
            images = score.images
            row.update({"ASR (%)": score.asr, "image-level (%)": score.image_asr, "no attack (%)": base.image_asr})
        else:
            images = torch.cat(
                [_generate(pipe, cond[i : i + 1], args.images, args.eval_seed + i) for i in range(n_inst)]
            )
        folder = out / "images"
        folder.mkdir(exist_ok=True)
        pil = _to_pil(images)
        for k, im in enumerate(pil):
            im.save(folder / f"{k // args.images}_{k % args.images}.png")
        labels = [
            p
            for r in results
            for p in (r.prompts or [f"{r.attack} seed {getattr(r.config, 'seed', '-')}"] * len(r.prompt_embeds))
        ]
        save_image_grid(
            [pil[i * args.images : (i + 1) * args.images] for i in range(n_inst)], out / "grid.png", row_labels=labels
        )
        columns = [c for c in row]
        settings = {
            "model": model,
            "text_encoder": identity,
            "erasure": erasure,
            "erase_s": erase_s,
            "patch_metadata": None
            if patch is None
            else {k: patch.metadata.get(k) for k in ("method", "names", "base_model")},
            "judge": args.judge,
            "target_class": args.target_class,
            "label": args.target_class,  # the older name of target_class
            "instances": n_inst,
            "images_per_instance": args.images,
            "eval_seed": args.eval_seed,
            "replay": args.replay,
            "replay_as_text": bool(args.replay_as_text),
            "targets": None
            if targets is None
            else args.targets or f"{args.target_images} generations of {plain!r} (seed {args.target_seed})",
            "attack": [r.settings() for r in results],
            "versions": package_versions(),
        }
        notes = (
            [
                "ASR: percent of instances with at least half their images judged the target class; image-level: "
                "percent of all images; no attack: the plain prompt on the same seeds (image-level)."
            ]
            if judge is not None
            else ["No judge given: score OUT/images with `eraser evaluate`."]
        )
        paths = write_report(out, "attack", columns, [row], settings, title=name, notes=notes)
        summary = {
            "attack": attack,
            "asr": None if score is None else score.asr,
            "image_asr": None if score is None else score.image_asr,
            "no_attack_image_asr": None if base is None else base.image_asr,
            "instances": n_inst,
            "images_per_instance": args.images,
            "concept": concept,
            "target_class": None if score is None else score.target_class,
            "judge": None if score is None else score.settings.get("judge"),
            "per_instance": None if score is None else score.per_instance,
            "prompts": [p for r in results for p in (r.prompts or [])] or None,
            "settings": settings,
        }
        (out / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        raise SystemExit(f"{name}: {err}") from None
    from evaluation.report import format_cell

    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    print("| " + " | ".join(format_cell(row[c]) for c in columns) + " |")
    prompts = summary["prompts"]
    if prompts:
        print(f"prompts: {prompts}")
    print(
        f"report: {out / 'report.json'} and {paths['md']} (also .csv, .json); conditioning: "
        f"{out / 'attack.safetensors'}; images: {folder}"
    )


def _to_pil(images: Any) -> list:
    """PIL images from N x C x H x W in [0, 1] (the pipeline's own rounding)."""
    import numpy as np
    from PIL import Image

    arr = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def add_parser(sub: argparse._SubParsersAction, dtypes: list[str]) -> None:
    """Add the ``attack`` subcommand to the ``eraser`` parser."""
    at = sub.add_parser(
        "attack",
        help=cmd_attack.__doc__,
        description=cmd_attack.__doc__ + "\n" + ATTACK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    at.add_argument("model_pos", nargs="?", metavar="MODEL", help="(older form) the model; prefer --model")
    at.add_argument("concept_pos", nargs="?", metavar="CONCEPT", help="(older form) the concept; prefer --concept")
    at.add_argument("--model", default=None, help="hub id, local folder, random:<arch> or bundled:digits")
    at.add_argument("--concept", default=None, help="the erased concept, e.g. 'seven' (with --replay: the file's)")
    at.add_argument("--attack", default=None, help=ATTACKS_HELP)
    at.add_argument("--patch", default=None, help="a saved erasure (.safetensors) to apply before attacking")
    at.add_argument("--erase", default=None, help="erase here with METHOD[:key=value,...] (e.g. unlink)")
    at.add_argument(
        "--prompt", default="a photo of", help="the neutral prompt the attack extends (default 'a photo of')"
    )
    at.add_argument(
        "--option",
        action="append",
        help="an attack option key=value (repeatable), e.g. steps=200; lists with |, e.g. strengths=1|2|4",
    )
    at.add_argument("--paraphrase", action="append", help="paraphrase attack: a prompt to try (repeatable)")
    at.add_argument("--replay", default=None, help="evaluate a saved attack.safetensors instead of running an attack")
    at.add_argument(
        "--replay-as-text",
        action="store_true",
        help="--replay a text attack (discrete_prompt, paraphrase) through this model's own text encoder",
    )
    at.add_argument("--targets", default=None, help="attacks learning from images: a folder of images of the concept")
    at.add_argument("--target-images", type=int, default=16, help="how many target images (default 16)")
    at.add_argument("--target-seed", type=int, default=99, help="seed of generated target images (default 99)")
    at.add_argument("--judge", default=None, help="score with this judge: digits, resnet50 or efficientnet_lite0")
    at.add_argument(
        "--target-class",
        "--label",
        dest="target_class",
        default=None,
        help="the judge's class of the concept (index or name, e.g. 7, church); --label is the older name",
    )
    at.add_argument(
        "--instances",
        type=int,
        default=2,
        help="independent runs of an optimised attack, seeds seed..seed+N-1 (default 2)",
    )
    at.add_argument("--images", type=int, default=8, help="images per instance (default 8)")
    at.add_argument("--eval-seed", type=int, default=1234, help="seed of the evaluation images (default 1234)")
    at.add_argument("--out", required=True, help="output folder")
    at.add_argument("--device", default=None, help="device (default: the pipeline's own, cpu here)")
    at.add_argument("--dtype", default=None, choices=dtypes, help="weights dtype")
    at.set_defaults(func=cmd_attack)


# ----------------------------------------------------------------------------------------------
# eraser bench attack


def cmd_bench_attack(args: argparse.Namespace) -> None:
    """Erasure methods x attacks on the bundled digits model: ASR per (digit, method, attack), the original model first (resumable)."""
    from evaluation.attack_bench import AttackBenchConfig, run_attack_bench
    from evaluation.report import format_cell

    try:
        digits = tuple(int(v) for v in args.digits.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"eraser bench attack: --digits must be comma-separated digits; got {args.digits!r}") from None
    try:
        config = AttackBenchConfig(
            digits=digits,
            methods=tuple(args.method or ["unlink"]),
            attacks=tuple(args.attack or ["soft_prompt"]),
            instances=args.instances,
            images=args.images,
            targets=args.targets,
            prompt=args.prompt,
            eval_seed=args.eval_seed,
            target_seed=args.target_seed,
            retain_images=args.retain_images,
        )
        result = run_attack_bench(config, args.out, progress=True)
    except (ValueError, TypeError, RuntimeError) as err:
        raise SystemExit(f"eraser bench attack: {err}") from None
    rows = result["rows"]
    columns = list(rows[0]) if rows else []
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(format_cell(r[c]) for c in columns) + " |")
    print(
        f"{result['computed']} cells computed, {len(rows) - result['computed']} found; report: {result['paths']['md']}"
    )


def add_bench_parser(bench: argparse._SubParsersAction) -> None:
    """Add ``bench attack`` to the ``eraser bench`` subcommands."""
    p = bench.add_parser(
        "attack",
        help=cmd_bench_attack.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"{cmd_bench_attack.__doc__}\n\nExample:\n  eraser bench attack --digits 3,7 --method unlink "
        "--method 'unlink:strength=1.5' --method unlink_robust --attack soft_prompt --attack textual_inversion "
        "--attack 'ring_a_bell:strengths=1|2|4' --instances 2 --images 8 --out runs/bench_attack\n\n"
        "Each finished (digit, method, attack) cell is kept in OUT/cells/; rerun the same command to resume.",
    )
    p.add_argument(
        "--digits", default="7", help="comma-separated digits to erase and attack, one at a time (default 7)"
    )
    p.add_argument(
        "--method",
        action="append",
        help='erasure rows: name[+retain][:option=value,...], repeatable (default "unlink"); the original is always first',
    )
    p.add_argument(
        "--attack",
        action="append",
        help=f"attack columns: id[:option=value,...], repeatable (default soft_prompt); ids: {ATTACKS_HELP}; "
        "paraphrase:prompts=a handwritten {digit}|the number {word}",
    )
    p.add_argument("--instances", type=int, default=2, help="independent runs per optimised attack (default 2)")
    p.add_argument("--images", type=int, default=8, help="evaluation images per instance (default 8)")
    p.add_argument(
        "--targets", type=int, default=16, help="original-model images of the digit to learn from (default 16)"
    )
    p.add_argument("--prompt", default="a photo of the digit", help="the neutral prompt the attacks extend")
    p.add_argument("--eval-seed", type=int, default=1234, help="seed of the evaluation images (default 1234)")
    p.add_argument("--target-seed", type=int, default=99, help="seed of the target images (default 99)")
    p.add_argument(
        "--retain-images",
        type=int,
        default=0,
        help="generations per digit of its own prompt, to measure the kept digits' accuracy (default 0: skip)",
    )
    p.add_argument("--out", required=True, help="output folder (rerun to resume)")
    p.set_defaults(func=cmd_bench_attack)
