"""The ``eraser`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from apps.common import DTYPES, csv_list, load_pipeline_by_name, split_methods

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LITE0_NORM = (0.5, 0.5, 0.5)  # the EfficientNet-Lite0 TF weights expect inputs in [-1, 1]


def _data_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("ERASER_DATA", DEFAULT_DATA))
    needed = [path / "imagenette" / f for f in ("imagenette_224_train100.tar", "imagenette_224_val.tar")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise SystemExit(
            f"eraser demo-classifier: Imagenette archives not found: {missing}. Pass --data DIR (or set ERASER_DATA) "
            "to a folder holding imagenette/imagenette_224_train100.tar and imagenette/imagenette_224_val.tar."
        )
    return path


def cmd_demo(args: argparse.Namespace) -> None:
    """Erase one Imagenette class from ImageNet EfficientNet-Lite0 and print the table."""
    import torch

    import eraser
    from classifiers.datasets import TarImageFolder, pil_to_tensor
    from classifiers.zoo import IMAGENETTE, efficientnet_lite0
    from evaluation.classification import PerClassAccuracy, head_inputs

    data = _data_dir(args.data)
    by_name = {name.lower(): wnid for wnid, (name, _) in IMAGENETTE.items()}
    if args.erase.lower() not in by_name:
        raise SystemExit(
            f"eraser demo-classifier: unknown class {args.erase!r}; choose one of {[n for n, _ in IMAGENETTE.values()]}"
        )
    wnid = by_name[args.erase.lower()]
    wnids = list(IMAGENETTE)
    labels = {w: IMAGENETTE[w][1] for w in wnids}
    tf = lambda img: pil_to_tensor(img, LITE0_NORM, LITE0_NORM)  # noqa: E731

    torch.manual_seed(0)
    model = efficientnet_lite0("wheel")
    forget = TarImageFolder(data / "imagenette/imagenette_224_train100.tar", "train", [wnid], args.forget, tf, labels)
    val = TarImageFolder(data / "imagenette/imagenette_224_val.tar", "val", wnids, args.val_per_class, tf, labels)
    print(
        f"EfficientNet-Lite0 (ImageNet-1k) | erase '{IMAGENETTE[wnid][0]}' with {len(forget)} training images | "
        f"evaluate on {len(val)} Imagenette val images (top-1 over 1000 classes)"
    )

    t0 = time.perf_counter()
    feats, y = head_inputs(model, "classifier", val)
    eval_s = time.perf_counter() - t0

    def per_class() -> PerClassAccuracy:
        m = PerClassAccuracy(1000)
        with torch.no_grad():
            m.update(model.classifier(feats), y)
        return m

    before = per_class()
    patch = eraser.erase_classes(model, forget, names=[IMAGENETTE[wnid][0]], k=args.k)
    after = per_class()
    c = labels[wnid]
    others = [labels[w] for w in wnids if w != wnid]

    print("\n| class | ImageNet idx | acc before | acc after |\n|---|---|---|---|")
    for w in wnids:
        mark = " (erased)" if w == wnid else ""
        print(
            f"| {IMAGENETTE[w][0]}{mark} | {labels[w]} | {before.accuracy_on([labels[w]]):.1f} | {after.accuracy_on([labels[w]]):.1f} |"
        )
    t = patch.metadata["timing_s"]
    print(f"\nUA (erased class no longer top-1): {100 - after.accuracy_on([c]):.1f}%")
    print(f"retained accuracy (other 9 classes): {before.accuracy_on(others):.2f} -> {after.accuracy_on(others):.2f}")
    print(
        f"rank k={patch.edits['classifier'].rank} | feature capture {t['capture']:.2f} s | fit + apply "
        f"{t['fit'] + t['apply']:.3f} s | val feature pass {eval_s:.1f} s | patch holds {patch.num_parameters():,} numbers"
    )
    if args.save:
        print(f"patch saved to {patch.save(args.save)}")


def cmd_app(args: argparse.Namespace) -> None:
    """Start the Gradio demo: erase concepts and compare images before and after in the browser."""
    from apps.demo.app import run

    run(args)


def cmd_methods(args: argparse.Namespace) -> None:
    """List the registered methods (classifier and diffusion families)."""
    import eraser

    for family in ("classifier", "diffusion"):
        print(f"# {family} (eraser {'erase' if family == 'diffusion' else 'bench classify'})")
        for name in eraser.list_methods(family=family):
            spec = eraser.get_method(name, family=family)
            kind = "training-free" if spec.training_free else "trained"
            print(f"{name:22s} {kind:14s} {spec.summary}")


def _concepts(args: argparse.Namespace) -> list:
    from prompts import get_preset, load_prompts

    items: list = list(args.concept or [])
    for name in args.preset or []:
        items += get_preset(name)
    for path in args.concepts_csv or []:
        items += load_prompts(path)
    return items


def cmd_erase(args: argparse.Namespace) -> None:
    """Erase concepts from a text-to-image pipeline; write the patch (and optionally the erased pipeline)."""
    import eraser
    from eraser.options import parse_options

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"eraser erase: {out} exists; pass --overwrite to replace it, or choose another --out.")
    save_dir = Path(args.save_pipeline) if args.save_pipeline else None
    if save_dir is not None:
        model_dir = Path(args.model).expanduser()
        if model_dir.exists() and save_dir.resolve() == model_dir.resolve():
            raise SystemExit(
                "eraser erase: --save-pipeline must not be the model's own folder (its files are never overwritten)."
            )
        if save_dir.exists() and any(save_dir.iterdir()) and not args.overwrite:
            raise SystemExit(f"eraser erase: {save_dir} is not empty; pass --overwrite or choose another folder.")
    from eraser.training.processes import process_state

    state = process_state(args.device)  # under `accelerate launch`, trained methods use every process
    try:
        concepts = _concepts(args)
        spec = eraser.get_method(args.method, family="diffusion")
        options = parse_options(spec.config_cls, args.option or [], where="--option")
        if args.template:
            options["templates"] = tuple(args.template)
        t0 = time.perf_counter()
        pipe = load_pipeline_by_name(args.model, args.dtype, args.device)
        load_s = time.perf_counter() - t0
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
        look = _Look(pipe, args, concepts, seeds) if (args.grid or args.check) else None
        t1 = time.perf_counter()
        retain = (
            args.retain[0]
            if args.retain and len(args.retain) == 1 and args.retain[0] in ("none", "generic")
            else args.retain
        )
        patch = eraser.erase_concepts(
            pipe,
            concepts,
            retain=retain,
            k=args.k,
            targets=args.targets,
            method=args.method,
            device=args.device,
            progress=True,
            **options,
        )
        erase_s = time.perf_counter() - t1
    except (ValueError, TypeError, FileNotFoundError, eraser.PatchError) as err:
        raise SystemExit(f"eraser erase: {err}") from None
    if not state.is_main_process:  # every process holds the same result: one writes it
        state.wait_for_everyone()
        return
    try:
        path = patch.save(out, compact=args.compact)
    except eraser.PatchError as err:
        raise SystemExit(f"eraser erase: {err}") from None
    ranks = sorted({e.rank for e in patch.edits.values()})
    print(
        f"erased {patch.metadata.get('concepts')} from {patch.metadata.get('base_model')} with {args.method} "
        f"in {erase_s:.2f} s{f' on {state.num_processes} processes' if state.num_processes > 1 else ''} "
        f"(loading took {load_s:.1f} s)"
    )
    print(
        f"layers edited: {len(patch.layers) + len(patch.parameters)} | rank {ranks} | "
        f"retain: {patch.metadata.get('retain_source', 'user' if args.retain else 'none')}"
    )
    groups = patch.metadata.get("concept_groups") or []
    if len(groups) > 1:
        print(f"{len(groups)} concepts, each with its own weight and rank: " + "; ".join(" = ".join(g) for g in groups))
    elif groups and len(groups[0]) > 1:
        print("one concept in other words: " + " = ".join(groups[0]))
    if patch.metadata.get("retain_source") == "neighbours":
        sims = patch.metadata.get("neighbour_similarity", {})
        print(
            "protected neighbours: "
            + ", ".join(f"{n} ({sims.get(n, float('nan')):.2f})" for n in patch.metadata["retain"])
        )
        if patch.metadata.get("synonyms"):
            print(
                "erased as synonyms: "
                + ", ".join(f"{n} ({sims.get(n, float('nan')):.2f})" for n in patch.metadata["synonyms"])
            )
    print(f"patch: {path} ({path.stat().st_size / 1024:.0f} KB)")
    if look is not None:
        look.after(pipe)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(save_dir)
        (save_dir / "erasure_patch.json").write_text(json.dumps(patch.metadata, indent=2, default=str))
        print(f"erased pipeline: {save_dir} (load it with DiffusionPipeline.from_pretrained)")
    state.wait_for_everyone()


class _Look:
    """``eraser erase --grid/--check``: the same prompts and seeds before and after the erasure,
    each phase of generations behind one progress bar over its images."""

    def __init__(self, pipe, args: argparse.Namespace, concepts: list, seeds: list[int]) -> None:
        from eraser.loading import DIGIT_MODELS

        if args.check and args.model not in DIGIT_MODELS:
            raise ValueError(f"--check runs the digit judge, so it needs --model {' or '.join(DIGIT_MODELS)}")
        if not seeds:
            raise ValueError("--seeds needs at least one seed, e.g. --seeds 0,1,2,3")
        if args.check and args.check_images < 1:
            raise ValueError(f"--check-images must be >= 1; got {args.check_images}")
        self.args, self.seeds = args, seeds
        self.digits_model = args.model in DIGIT_MODELS  # small: the whole grid in one call
        self.erased = _erased_digits(concepts) if self.digits_model else []
        self.prompts = args.prompt or _default_prompts(args.model, concepts, args.retain)
        self.before_images = self._images(pipe, "grid: original") if args.grid else None
        self.before_judge = self._judge(pipe, "check: original") if args.check else None

    def _images(self, pipe, desc: str) -> list[list]:
        """One row of images per prompt, image j from ``torch.Generator().manual_seed(seeds[j])``.
        The bundled model draws the whole grid in one call; other pipelines one prompt per call."""
        import torch
        from tqdm.auto import tqdm

        from eraser.bundled.evaluate import images_progress

        steps = {} if self.args.steps is None else {"num_inference_steps": self.args.steps}
        jobs = [(p, s) for p in self.prompts for s in self.seeds]
        per_call = len(jobs) if self.digits_model else len(self.seeds)
        images: list = []
        with tqdm(total=len(jobs), desc=desc, unit="img", dynamic_ncols=True) as bar:
            for start in range(0, len(jobs), per_call):
                chunk = jobs[start : start + per_call]
                with images_progress(pipe, bar, len(chunk)):
                    images += pipe(
                        [p for p, _ in chunk], generator=[torch.Generator().manual_seed(s) for _, s in chunk], **steps
                    ).images
        n = len(self.seeds)
        return [images[r * n : (r + 1) * n] for r in range(len(self.prompts))]

    def _judge(self, pipe, desc: str) -> dict:
        from eraser.bundled.evaluate import judge_digits

        return judge_digits(
            pipe, self.args.check_images, steps=self.args.steps, seed=self.args.check_seed, progress=desc
        )["accuracy"]

    def after(self, pipe) -> None:
        from evaluation.grids import save_image_grid

        if self.args.grid:
            after = self._images(pipe, "grid: erased")
            rows = [b + a for b, a in zip(self.before_images, after)]
            cols = [f"original {s}" for s in self.seeds] + [f"erased {s}" for s in self.seeds]
            path = save_image_grid(rows, self.args.grid, row_labels=self.prompts, col_labels=cols)
            print(f"before/after grid: {path} (rows: prompts; columns: seeds, original then erased)")
        if self.args.check:
            from eraser.bundled.evaluate import check_report

            after = self._judge(pipe, "check: erased")
            table, _ = check_report(
                self.before_judge, after, self.erased, self.args.check_images, seed=self.args.check_seed
            )
            print("\n" + table, flush=True)


def _erased_digits(concepts: list) -> list[int]:
    """The digits a bundled-model erasure names: a concept holding a digit's word or numeral as a
    word of its own ("seven", "7", "a photo of the digit seven"; not "seventeen")."""
    import re

    from eraser.bundled import DIGIT_WORDS

    words = {w for c in concepts if isinstance(c, str) for w in re.findall(r"[a-z]+|[0-9]+", c.lower())}
    return [d for d in range(10) if DIGIT_WORDS[d] in words or str(d) in words]


def _default_prompts(model: str, concepts: list, retain: list | None) -> list[str]:
    """A few prompts showing the concept and what should survive."""
    from prompts import GENERIC_RETAIN

    words = [c for c in concepts if isinstance(c, str)][:3]
    from eraser.loading import DIGIT_MODELS

    if model in DIGIT_MODELS:
        from eraser.bundled import digit_prompt

        erased = _erased_digits(concepts)
        others = [d for d in range(10) if d not in erased][:3]
        return [digit_prompt(d) for d in erased + others]
    shown = [w if len(w.split()) > 2 else f"a photo of {w}" for w in words]
    return shown + [f"a photo of {r}" for r in (retain or list(GENERIC_RETAIN))[:2]]


def cmd_patch_info(args: argparse.Namespace) -> None:
    """Print a saved patch's metadata and layers."""
    import eraser

    try:
        patch = eraser.ErasurePatch.load(args.path)
    except eraser.PatchError as err:
        raise SystemExit(f"eraser patch-info: {err}") from None
    layers = {n: {"kind": e.kind, "rank": e.rank, "shape": list(e.shape)} for n, e in patch.edits.items()}
    print(json.dumps({"metadata": patch.metadata, "layers": layers}, indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    """Write a saved patch as a LoRA file (peft: diffusers' load_lora_weights; kohya: Automatic1111, ComfyUI)."""
    import eraser

    try:
        patch = eraser.ErasurePatch.load(args.path)
        pipe = None
        if args.model:
            from apps.common import load_pipeline_by_name

            pipe = load_pipeline_by_name(args.model, None, "cpu")
        info = patch.to_lora(args.out, format=args.format, pipe=pipe, rank=args.rank)
    except (eraser.PatchError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"eraser export: {err}") from None
    worst = max(info["relative_error"].values(), default=None)
    print(
        f"{info['path']}: {args.format} LoRA, {len(info['layers'])} layers, {info['bytes'] / 1e3:.1f} KB"
        + ("" if worst is None else f"; dense updates truncated to rank {args.rank}, worst relative error {worst:.2e}")
    )


def _bench_config(args: argparse.Namespace, **fields):
    """The benchmark configuration from the options that name data, model and original."""
    from eraser.options import parse_options
    from eraser.training import TrainConfig
    from evaluation.classify_bench import ClassifyBenchConfig

    root = args.data_root or str(
        Path(os.environ.get("ERASER_DATA", DEFAULT_DATA))
        / {"mnist": "mnist", "cifar10": "cifar10"}.get(args.dataset, "")
    )
    return ClassifyBenchConfig(
        dataset=args.dataset,
        data_root=root,
        model=args.model,
        original=args.original or "",
        recipe=parse_options(TrainConfig, args.recipe or [], where="--recipe"),
        presets=not args.no_presets,
        out_dir=args.out,
        cache_dir=args.cache,
        device=args.device,
        **fields,
    )


def _data_model_options(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--dataset", default="mnist", help="mnist | cifar10 | folder (default mnist)")
    p.add_argument("--data-root", default=None, help="dataset path (default: $ERASER_DATA/<dataset>)")
    p.add_argument("--model", default="small_cnn", help="architecture (small_cnn, cifar_resnet20, resnet18, ...)")
    p.add_argument(
        "--original",
        default=None,
        help="pretrained original checkpoint (.safetensors or weights-only .pt/.th) instead of training one",
    )
    p.add_argument("--recipe", action="append", help="override the original/Retrain recipe, e.g. epochs=5 (repeatable)")
    p.add_argument("--no-presets", action="store_true", help="use the methods' own defaults, not the dataset presets")
    p.add_argument("--out", default="bench-classify", help=out_help)
    p.add_argument("--cache", default=None, help="checkpoint cache (default: <out>/checkpoints)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_bench_classify(args: argparse.Namespace) -> None:
    """Unlearning methods vs Retrain on a classifier: UA/RA/TA/MIA, Avg. Gap and run time."""
    from evaluation.classify_bench import ALL_METHODS, run_classify_bench

    scenarios = []
    for s in args.scenario or ["class:0"]:
        scenarios += [f"class:{c}" for c in range(args.num_classes)] if s == "class:each" else [s]
    try:
        methods = ALL_METHODS if args.methods == "all" else split_methods(args.methods)
        cfg = _bench_config(
            args,
            methods=methods,
            scenarios=scenarios,
            seeds=[int(s) for s in csv_list(args.seeds)],
            mia_feature=args.mia_feature,
            mia_samples=args.mia_samples,
            retrain=not args.no_retrain,
            eval_samples=args.eval_samples,
            shifts=_shifts(args.shift or []),
            shift_samples=args.shift_samples,
            gradcam=args.gradcam,
        )
        run_classify_bench(cfg, progress=not args.quiet)
    except (ValueError, FileNotFoundError, TypeError) as err:
        raise SystemExit(f"eraser bench classify: {err}") from None
    print((Path(args.out) / "table.md").read_text())


def cmd_vector_bank(args: argparse.Namespace) -> None:
    """Learn one forget vector per class of a dataset's original model (resumable)."""
    from eraser.methods.forget_vector import ForgetVectorConfig
    from eraser.options import parse_options
    from evaluation.classify_bench import vector_bank

    try:
        options = parse_options(ForgetVectorConfig, args.option or [], where="--option")
        cfg = _bench_config(args, methods=[], scenarios=[])
        path, seconds = vector_bank(cfg, int(args.seed), progress=not args.quiet, options=options)
    except (ValueError, FileNotFoundError, TypeError) as err:
        raise SystemExit(f"eraser vector bank: {err}") from None
    print(f"vector bank: {path} ({seconds:.1f} s of vector learning)")


def _shifts(items: list[str]) -> list[str]:
    from evaluation.shift import DEFAULT_SHIFTS

    return list(dict.fromkeys(s for item in items for s in (DEFAULT_SHIFTS if item == "default" else [item])))


def build_parser() -> argparse.ArgumentParser:
    from apps.cli_attack import add_parser as add_attack_parser
    from apps.cli_generation import add_bench_parsers
    from apps.cli_generation import add_parsers as add_generation_parsers
    from apps.demo.app import add_arguments as add_demo_arguments

    ap = argparse.ArgumentParser(
        prog="eraser",
        description="Erase concepts and classes from trained vision models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `eraser <command> --help` for each command's options and examples.\n\n"
        "Exit codes: 0 done; 1 the input could not be used (the message says what to do; models and files\n"
        "are left as they were); 2 the command line itself is wrong; 130 interrupted (rerun to resume\n"
        "where the command supports it: generate, bench).",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    app = sub.add_parser(
        "demo",
        help=cmd_app.__doc__,
        description=cmd_app.__doc__ + "\n\nExamples:\n"
        "  eraser demo                      # the bundled digits model on CPU, http://127.0.0.1:7860\n"
        "  eraser demo --model 'SD 1.4=CompVis/stable-diffusion-v1-4' --device cuda --dtype float16 --host 0.0.0.0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_demo_arguments(app)
    app.set_defaults(func=cmd_app)
    demo = sub.add_parser(
        "demo-classifier",
        help=cmd_demo.__doc__,
        description=f"{cmd_demo.__doc__}\n\nExample: eraser demo-classifier --erase church --save church.safetensors",
    )
    demo.add_argument("--erase", default="tench", help="Imagenette class to erase (default: tench)")
    demo.add_argument(
        "--data", default=None, help=f"folder with imagenette/*.tar (default: $ERASER_DATA or {DEFAULT_DATA})"
    )
    demo.add_argument("--forget", type=int, default=100, help="forget images of the class (default 100)")
    demo.add_argument("--val-per-class", type=int, default=50, help="val images per class to evaluate on (default 50)")
    demo.add_argument("--k", type=int, default=None, help="rank to remove (default: chosen from the data)")
    demo.add_argument("--save", default=None, help="write the patch here (.safetensors)")
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("methods", help=cmd_methods.__doc__).set_defaults(func=cmd_methods)
    er = sub.add_parser(
        "erase",
        help=cmd_erase.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=cmd_erase.__doc__ + "\n\nExamples:\n"
        "  eraser erase --model CompVis/stable-diffusion-v1-4 --preset nudity --out nudity.safetensors\n"
        "  eraser erase --model ./my-sd --concept 'van gogh' --retain monet --retain picasso --out vangogh.safetensors\n"
        "  eraser erase --model stabilityai/stable-diffusion-xl-base-1.0 --dtype fp16 --device cuda --concept church "
        "--out church.safetensors --save-pipeline ./sdxl-no-church\n"
        "  eraser erase --model random:tiny-sd --concept nude --out /tmp/p.safetensors   # no download: random weights\n"
        "  eraser erase --model bundled:digits --concept seven --concept 7 --out seven.safetensors --grid seven.png --check",
    )
    er.add_argument(
        "--model",
        required=True,
        help="hub id, local pipeline folder, bundled:digits (the bundled digits "
        "model), bundled:digits-mmdit (its MMDiT counterpart), or random:<arch> (sd-v1-4, sd-v2-1, sdxl-base-1.0, sd3-medium, tiny-sd, tiny-sdxl, tiny-sd3, tiny-flux: published or tiny config, random weights)",
    )
    er.add_argument("--concept", action="append", help="a word or prompt to erase (repeatable), e.g. --concept nude")
    er.add_argument(
        "--preset", action="append", help="concept preset (repeatable): nudity, imagenette, imagenette:<class>"
    )
    er.add_argument(
        "--concepts-csv", action="append", help="prompt CSV whose rows are erased as whole prompts (repeatable)"
    )
    er.add_argument(
        "--retain",
        action="append",
        help="a word or prompt to keep (repeatable); default: the concepts nearest to "
        "the erased ones in the model's text space (printed); 'generic' for everyday subjects, 'none' for nothing",
    )
    er.add_argument("--method", default="unlink", help="diffusion method id (see `eraser methods`; default unlink)")
    er.add_argument("--k", type=int, default=None, help="rank removed per layer (default: chosen from the features)")
    er.add_argument(
        "--targets",
        default=None,
        help="cross_attn_kv (default), cross_attn_k, cross_attn_v, text_encoder_mlp, "
        "text_encoder_attn, or a regular expression over unet.*/text_encoder.* names",
    )
    er.add_argument(
        "--template", action="append", help="template for concept words, with {} (repeatable), e.g. 'a photo of {}'"
    )
    er.add_argument(
        "--option", action="append", help="a method setting as key=value (repeatable), e.g. ridge=0.05 or steps=200"
    )
    er.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="load the pipeline in this dtype (default: as saved)"
    )
    er.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: where the pipeline loads)")
    er.add_argument("--out", required=True, help="patch file to write (.safetensors)")
    er.add_argument(
        "--compact",
        action="store_true",
        help="write only the basis (no undo factors): a small file for sharing, recomputed from the base weights "
        "on apply; it cannot revert a model saved with the edit baked in",
    )
    er.add_argument("--save-pipeline", default=None, help="also write the whole erased pipeline here (save_pretrained)")
    er.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out file / non-empty --save-pipeline folder"
    )
    er.add_argument(
        "--grid",
        default=None,
        help="also write a PNG of the same prompts and seeds before and after, e.g. --grid seven.png",
    )
    er.add_argument(
        "--prompt", action="append", help="a prompt for --grid (repeatable; default: the concepts and a few others)"
    )
    er.add_argument("--seeds", default="0,1,2,3", help="seeds for --grid (default 0,1,2,3)")
    er.add_argument(
        "--steps", type=int, default=None, help="denoising steps for --grid and --check (default: the pipeline's)"
    )
    er.add_argument(
        "--check",
        action="store_true",
        help="bundled:digits only: the digit judge's accuracy per digit before and after",
    )
    er.add_argument(
        "--check-images",
        type=int,
        default=20,
        help="generations per digit for --check, the same seeds "
        "before and after (default 20: one image = 5 points; 400 generations in all)",
    )
    er.add_argument("--check-seed", type=int, default=1234, help="seed of --check's generations (default 1234)")
    er.set_defaults(func=cmd_erase)
    add_generation_parsers(sub, sorted(DTYPES))
    add_attack_parser(sub, sorted(DTYPES))
    info = sub.add_parser(
        "patch-info",
        help=cmd_patch_info.__doc__,
        description=f"{cmd_patch_info.__doc__}\n\nExample: eraser patch-info runs/demo/seven.safetensors",
    )
    info.add_argument("path", help="a patch file (.safetensors)")
    info.set_defaults(func=cmd_patch_info)
    ex = sub.add_parser(
        "export",
        help=cmd_export.__doc__,
        description=f"{cmd_export.__doc__}\n\nExamples:\n"
        "  eraser export runs/demo/seven.safetensors --format peft --out seven_lora.safetensors\n"
        "  eraser export esd.safetensors --format kohya --rank 16 --out esd_lora.safetensors   # dense: truncated SVD\n\n"
        "Load with diffusers: pipe.load_lora_weights('seven_lora.safetensors', adapter_name='erase_seven');\n"
        "pipe.set_adapters(['erase_seven'], adapter_weights=[s]) scales the erasure; pipe.unload_lora_weights() removes it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("path", help="a patch file (.safetensors)")
    ex.add_argument("--format", choices=["peft", "kohya"], default="peft", help="key layout (default peft)")
    ex.add_argument("--out", required=True, help="the LoRA file to write")
    ex.add_argument("--rank", type=int, default=32, help="rank of dense updates (ESD, SalUn) after SVD (default 32)")
    ex.add_argument(
        "--model", default=None, help="the base model, only for patches that hold no undo factors (compact patches)"
    )
    ex.set_defaults(func=cmd_export)
    bench = sub.add_parser("bench", help="run a benchmark").add_subparsers(dest="bench", required=True)
    add_bench_parsers(bench, sorted(DTYPES))
    bc = bench.add_parser(
        "classify",
        help=cmd_bench_classify.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"{cmd_bench_classify.__doc__}\n\nExample:\n  eraser bench classify --dataset mnist "
        "--scenario class:3 --methods ft,ga,salun,unlink --seeds 0,1,2 --out runs/mnist",
    )
    _data_model_options(bc, "output folder (rows.jsonl, table.md/csv/json); rerun to resume")
    bc.add_argument(
        "--scenario", action="append", help="class:3 | classes:1,7 | random:0.1 | instance:32 | class:each (repeatable)"
    )
    bc.add_argument("--num-classes", type=int, default=10, help="classes for class:each (default 10)")
    bc.add_argument(
        "--methods", default="all", help="comma list, options after ':' joined by ';' (ft:lr=0.02;epochs=2), or 'all'"
    )
    bc.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    bc.add_argument("--mia-feature", default="confidence", help="confidence | entropy | m_entropy | loss")
    bc.add_argument(
        "--mia-samples", type=int, default=None, help="cap members/non-members of the MIA SVC (default: all)"
    )
    bc.add_argument(
        "--no-retrain",
        action="store_true",
        help="skip the Retrain reference (no Avg. Gap; for when retraining is out of reach)",
    )
    bc.add_argument(
        "--eval-samples", type=int, default=None, help="evaluate RA/MIA on a seeded subset of this many retain samples"
    )
    bc.add_argument(
        "--shift",
        action="append",
        help="a data shift to evaluate under (repeatable): gauss:0.08, elastic:weak, "
        "elastic:strong, elastic:34,4, pgd:8/255, pgd:8/255,7; 'default' = the five of the forget-vector paper",
    )
    bc.add_argument(
        "--gradcam",
        type=int,
        default=0,
        help="save Grad-CAM grids of this many forget and retain images, "
        "before and after each method (first seed), under <out>/gradcam/",
    )
    bc.add_argument("--shift-samples", type=int, default=2000, help="samples per split under each shift (default 2000)")
    bc.set_defaults(func=cmd_bench_classify)
    vec = sub.add_parser("vector", help="forget vectors").add_subparsers(dest="vector", required=True)
    vb = vec.add_parser(
        "bank",
        help=cmd_vector_bank.__doc__,
        description="Example: eraser vector bank --dataset mnist --out runs/bank (writes runs/bank/banks/seed0-<model>.safetensors)",
    )
    _data_model_options(vb, "output folder (the bank goes to <out>/banks/); rerun to resume")
    vb.add_argument("--seed", default=0, type=int, help="seed of the original model and of the vectors (default 0)")
    vb.add_argument(
        "--option", action="append", help="a forget-vector setting, e.g. max_steps=60 or retain_weight=5 (repeatable)"
    )
    vb.set_defaults(func=cmd_vector_bank)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"\neraser {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main(sys.argv[1:])
