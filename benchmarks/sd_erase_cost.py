"""What erasing a concept costs on the real Stable Diffusion architectures (random weights: no SD
weights exist offline; timing and memory depend on shapes, not on weight values).

    python benchmarks/sd_erase_cost.py --arch sd-v1-4 --out docs/results/sd_erase/sd-v1-4.json
    python benchmarks/sd_erase_cost.py --arch sdxl-base-1.0 --dtype bfloat16 --out docs/results/sd_erase/sdxl.json
    python benchmarks/sd_erase_cost.py --arch sd3-medium --dtype bfloat16 --repeats 1 --out docs/results/sd_erase/sd3-medium.json

SD3 is built without its T5 encoder (the pipeline supports that; the transformer then reads zeros
in T5's 256 positions): on a CPU the 4.7B-parameter T5 would be nearly all of the cost.

Measures, in one run on one pipeline (model building excluded):
- Unlink erase time per concept (text encoding of its prompts included): the first erasure on a
  pipeline (which also encodes the generic retain set once) and the median of later ones, for the
  default (Rayleigh with the generic retain set) and the retain-free SVD variant;
- the peak extra resident memory during a (later) erasure, against the model's size, with the
  default ``exact_revert="auto"`` (originals kept only within 5% of the model) and with
  ``exact_revert=True`` (the edited layers' original weights always kept in memory);
- one denoiser (UNet, or SD3's transformer) forward pass at the architecture's resolution (batch 1), and the cheapest optimisation
  step of ESD (esd_x, with ``--esd``): no DDIM sampling of x_t, only its forward/backward passes;
- the patch file size against the denoiser's;
- the denoiser step at generation (batch 2, classifier-free guidance) before and after erasure
  (interleaved), whose ratio shows whether erasure adds inference cost.

With ``--many 1,10,100,1000`` it measures instead many concepts erased in one call (default
settings, neighbour search and retain statistics included): for each count, cold (a fresh
pipeline state and an empty disk cache, so the concept bank is encoded too) and with the bank's
features already on disk (what every later process on the same text encoder sees), with the peak
extra memory. The concepts are whole-word entries of the pipeline's tokenizer vocabulary, in a
seeded order.

    python benchmarks/sd_erase_cost.py --arch sd-v1-4 --many 1,10,100,1000 --out docs/results/sd_erase/many.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

import eraser
from eraser.families.architectures import architecture, build_pipeline
from eraser.options import parse_options
from eraser.registry import get_method

CONCEPTS = ["nude", "church", "van gogh", "parachute", "garbage truck", "tench"]


class PeakRSS:
    """Samples this process's resident memory every few milliseconds while active."""

    def __init__(self, every_s: float = 0.002) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRSS:
        # Hand memory freed by earlier work back to the OS first, or the allocator would serve the
        # erasure from pages already counted in the baseline and hide its cost.
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def note(text: str) -> None:
    """Progress on stderr (a run on a big architecture takes a while)."""
    import sys

    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def module_bytes(*mods: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for m in mods for p in m.parameters())


def denoiser(pipe) -> torch.nn.Module:
    """The pipeline's UNet, or its transformer (SD3, FLUX)."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


@torch.no_grad()
def unet_inputs(pipe, batch: int, dtype: torch.dtype, resolution: int | None = None) -> tuple:
    """Random inputs of one denoiser call at ``resolution`` pixels (VAE factor 8): latents, timestep,
    text states and the architecture's extra conditioning (SDXL's pooled text and time ids, SD3's
    pooled text; SD3's text sequence is 77 CLIP positions plus the 256 of T5 or of its zeros)."""
    model = denoiser(pipe)
    size = resolution // 8 if resolution else model.config.sample_size
    latents = torch.randn(batch, model.config.in_channels, size, size, dtype=dtype)
    kw = {}
    if getattr(pipe, "unet", None) is None:  # SD3
        text = torch.randn(batch, 77 + 256, model.config.joint_attention_dim, dtype=dtype)
        kw["pooled_projections"] = torch.randn(batch, model.config.pooled_projection_dim, dtype=dtype)
        return latents, torch.tensor([500.0] * batch), text, kw
    text = torch.randn(batch, 77, model.config.cross_attention_dim, dtype=dtype)
    if getattr(model.config, "addition_embed_type", None) == "text_time":
        pooled = model.config.projection_class_embeddings_input_dim - 6 * model.config.addition_time_embed_dim
        res = size * 8
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, dtype=dtype),
            "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * batch, dtype=dtype),
        }
    return latents, torch.tensor(500), text, kw


@torch.no_grad()
def unet_forward_s(pipe, inputs: tuple) -> float:
    """Seconds of one denoiser forward pass on ``inputs``."""
    latents, t, text, kw = inputs
    model = denoiser(pipe)
    t0 = time.perf_counter()
    if getattr(pipe, "unet", None) is None:
        model(latents, encoder_hidden_states=text, timestep=t, **kw)
    else:
        model(latents, t, encoder_hidden_states=text, **kw)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sd-v1-4")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=3, help="denoiser forward passes per measurement (default 3)")
    ap.add_argument("--esd", action="store_true", help="also time one ESD step (esd_x)")
    ap.add_argument("--no-forward", action="store_true", help="skip the denoiser forward and generation-step timings")
    ap.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="denoiser forward at this many pixels (default: the architecture's)",
    )
    ap.add_argument("--many", default=None, help="concept counts erased in one call, e.g. 1,10,100,1000")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        help="with --many: also time these erase options (key=value,...), e.g. variant=rayleigh,strength=1.5",
    )
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    # no VAE, and no T5 (SD3 runs without it; on a CPU a 4.7B-parameter T5 would be the whole cost)
    comps = tuple(n for n in ("unet", "transformer", "text_encoder", "text_encoder_2") if n in architecture(args.arch))
    pipe = build_pipeline(args.arch, dtype=dtype, components=comps)
    build_s = time.perf_counter() - t0
    text_encoders = [m for n, m in eraser.as_module(pipe).items() if n.startswith("text_encoder")]
    model_bytes = module_bytes(denoiser(pipe), *text_encoders)
    unet_bytes = module_bytes(denoiser(pipe))
    res = {
        "arch": args.arch,
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "build_s": build_s,
        "model_bytes": model_bytes,
        "unet_bytes": unet_bytes,
        "date": time.strftime("%Y-%m-%d"),
    }

    note(f"built {args.arch} in {build_s:.0f} s")
    from eraser.hashing import CACHE_ENV

    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="eraser-cache-")  # "first" erasures start with no disk cache
    if args.many:
        configs = {"default": {}}
        for text in args.also:
            cls = get_method("unlink", family="diffusion").config_cls
            configs[text] = parse_options(cls, text.split(","), where="--also")
        res["many"] = many_concepts(pipe, [int(n) for n in args.many.split(",")], configs)
        print(many_table(res))
        finish(res, args.out, show=False)
        return
    # -- erase time ---------------------------------------------------------------------------
    # "previous": the default before neighbour-aware retain (generic subjects, pooled statistics, no
    # context rows), the same code path as then; timed in the same run as today's default.
    settings = {
        "auto": {},
        "svd": {"variant": "svd"},
        "previous": {"retain": "generic", "balance": False, "protect_context": False},
    }
    for variant, kw in settings.items():
        times, parts = [], []
        for concept in CONCEPTS:
            t0 = time.perf_counter()
            patch = eraser.erase_concepts(pipe, concept, **kw)
            times.append(time.perf_counter() - t0)
            parts.append(patch.metadata["timing_s"])
            patch.revert(pipe)
        res[f"erase_{variant}"] = {
            "first_s": times[0],
            "later_median_s": statistics.median(times[1:]),
            "later_s": times[1:],
            "parts_last": parts[-1],
            "rank": patch.edits[patch.layers[0]].rank,
            "layers": len(patch.layers),
        }
        note(f"erase ({variant}): {[round(t, 3) for t in times]}")
    # -- memory of a (later) erasure ------------------------------------------------------------
    with PeakRSS() as mem:
        patch = eraser.erase_concepts(pipe, "nude", exact_revert=True)
    res["erase_peak_extra_bytes_exact_revert"] = mem.peak - mem.base
    patch.revert(pipe)
    with PeakRSS() as mem:  # the default, exact_revert="auto"
        patch = eraser.erase_concepts(pipe, "nude")
    res["erase_keeps_originals"] = bool(patch._originals)
    res["erase_peak_extra_bytes"] = mem.peak - mem.base
    res["erase_peak_extra_pct_of_model"] = 100 * (mem.peak - mem.base) / model_bytes
    note(
        f"memory: {res['erase_peak_extra_bytes'] / 2**20:.0f} MB (default), "
        f"{res['erase_peak_extra_bytes_exact_revert'] / 2**20:.0f} MB (exact_revert=True)"
    )
    with tempfile.TemporaryDirectory() as d:
        path = patch.save(Path(d) / "nude.safetensors")
        res["patch_bytes"] = path.stat().st_size
        res["compact_patch_bytes"] = patch.save(Path(d) / "compact.safetensors", compact=True).stat().st_size
        for fmt in ("peft", "kohya"):
            try:
                res[f"lora_{fmt}_bytes"] = patch.to_lora(Path(d) / f"lora_{fmt}.safetensors", format=fmt)["bytes"]
            except ValueError as err:  # kohya names UNet and text-encoder layers only
                res[f"lora_{fmt}_bytes"], res[f"lora_{fmt}_refused"] = None, str(err)
    res["patch_pct_of_unet"] = 100 * res["patch_bytes"] / unet_bytes
    patch.revert(pipe)

    if args.no_forward:
        finish(res, args.out)
        return
    # -- denoiser forward and generation step before/after ----------------------------------------------
    res["resolution"] = args.resolution or denoiser(pipe).config.sample_size * 8
    one = unet_inputs(pipe, 1, dtype, args.resolution)
    unet_forward_s(pipe, one)  # warm-up
    res["unet_forward_s"] = statistics.median(unet_forward_s(pipe, one) for _ in range(args.repeats))
    note(f"denoiser forward {res['unet_forward_s']:.1f} s")
    two = unet_inputs(pipe, 2, dtype, args.resolution)
    before, after = [], []
    for _ in range(args.repeats):
        before.append(unet_forward_s(pipe, two))
        p = eraser.erase_concepts(pipe, "nude")
        after.append(unet_forward_s(pipe, two))
        p.revert(pipe)
    res["gen_step_before_s"], res["gen_step_after_s"] = statistics.median(before), statistics.median(after)
    res["gen_step_ratio"] = res["gen_step_after_s"] / res["gen_step_before_s"]
    res["erase_over_unet_forward"] = res["erase_auto"]["later_median_s"] / res["unet_forward_s"]

    if args.esd and "esd_x" in eraser.list_methods(family="diffusion"):
        res["esd"] = esd_step(pipe)
        res["erase_over_esd_step"] = res["erase_auto"]["later_median_s"] / res["esd"]["step_s"]

    finish(res, args.out)


def vocabulary_concepts(pipe, n: int, seed: int = 0) -> list[str]:
    """``n`` whole-word entries (letters only, at least 5) of the pipeline's tokenizer, seeded order."""
    import random

    words = sorted(
        w[:-4] for w in pipe.tokenizer.get_vocab() if w.endswith("</w>") and w[:-4].isalpha() and len(w) >= 9
    )
    random.Random(seed).shuffle(words)
    if n > len(words):
        raise SystemExit(f"the vocabulary has {len(words)} such words; asked for {n}")
    return words[:n]


def _forget_pipeline_caches(pipe) -> None:
    """Drop what earlier erasures cached on the pipeline (bank and retain features)."""
    for key in [k for k in pipe.__dict__ if k.startswith("_eraser")]:
        del pipe.__dict__[key]


def many_concepts(pipe, counts: list[int], configs: dict[str, dict] | None = None) -> list[dict]:
    """Erase time and peak extra memory of N concepts in one call, cold and with the bank cached on
    disk, for each of ``configs`` (label: erase options; default: the defaults alone)."""
    from eraser.hashing import CACHE_ENV

    rows = []
    for n, (label, options) in ((n, c) for n in counts for c in (configs or {"default": {}}).items()):
        concepts = vocabulary_concepts(pipe, n)
        row = {"concepts": n, "config": label}
        with tempfile.TemporaryDirectory() as cache:
            os.environ[CACHE_ENV] = cache  # empty: the bank is encoded (cold), then read back (cached)
            for phase in ("cold", "bank_cached"):
                _forget_pipeline_caches(pipe)
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    patch = eraser.erase_concepts(pipe, concepts, **options)
                    row[f"{phase}_s"] = time.perf_counter() - t0
                row[f"{phase}_peak_extra_bytes"] = mem.peak - mem.base
                row[f"{phase}_parts_s"] = patch.metadata["timing_s"]
                row["rank"] = patch.edits[patch.layers[0]].rank
                patch.revert(pipe)
                note(f"{n} concepts ({label}), {phase}: {row[f'{phase}_s']:.2f} s")
        os.environ.pop(CACHE_ENV, None)
        rows.append(row)
    return rows


def many_table(r: dict) -> str:
    lines = [
        f"{r['arch']} ({r['dtype']}, random weights), default settings; machine {r['machine']}, "
        f"torch threads {r['torch_threads']}, {r['date']}",
        "",
        "| concepts | settings | cold (bank encoded) | bank features cached on disk | per concept (cached) | rank | peak extra memory (cold) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["many"]:
        lines.append(
            f"| {row['concepts']:,} | {row.get('config', 'default')} | {row['cold_s']:.2f} s | {row['bank_cached_s']:.2f} s | "
            f"{1000 * row['bank_cached_s'] / row['concepts']:.0f} ms | {row['rank']} | "
            f"{row['cold_peak_extra_bytes'] / 2**20:,.0f} MB |"
        )
    return "\n".join(lines)


def finish(res: dict, out: str | None, show: bool = True) -> None:
    if show:
        print(table(res))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=2))


def esd_step(pipe) -> dict:
    """One esd_x optimisation step at its cheapest (ddim_steps=1: x_t needs no sampling, leaving the
    trained forward + backward and the two frozen predictions); its changes are reverted. A real
    ESD step also samples x_t over k ~ U[0, 50) DDIM steps with guidance."""
    t0 = time.perf_counter()
    patch = eraser.erase_concepts(pipe, "nude", method="esd_x", steps=1, ddim_steps=1)
    total = time.perf_counter() - t0
    patch.revert(pipe)
    timing = patch.metadata.get("timing_s", {})
    return {"total_s": total, "timing_s": timing, "step_s": timing.get("train", total)}


def table(r: dict) -> str:
    mb = 1 / 2**20
    rows = [
        (
            "architecture",
            f"{r['arch']} ({r['dtype']}, random weights; denoiser + text encoders {r['model_bytes'] * mb:,.0f} MB)",
        ),
        (
            "Unlink erase, one concept: median of later erasures",
            f"{r['erase_auto']['later_median_s']:.3f} s (rank {r['erase_auto']['rank']}, {r['erase_auto']['layers']} K/V layers)",
        ),
        (
            "Unlink erase, first on this pipeline (+ the concept bank, cached afterwards)",
            f"{r['erase_auto']['first_s']:.3f} s",
        ),
        ("Unlink SVD variant (no retain), median", f"{r['erase_svd']['later_median_s']:.3f} s"),
    ]
    if "erase_previous" in r:
        rows += [
            (
                "previous default (generic retain set, pooled): median of later / first",
                f"{r['erase_previous']['later_median_s']:.3f} s / {r['erase_previous']['first_s']:.3f} s",
            ),
            (
                "default / previous default, median of later erasures",
                f"{r['erase_auto']['later_median_s'] / r['erase_previous']['later_median_s']:.2f}",
            ),
        ]
    rows += [
        (
            "peak extra memory during erasure (default exact_revert=auto: originals "
            f"{'kept' if r['erase_keeps_originals'] else 'not kept'})",
            f"{r['erase_peak_extra_bytes'] * mb:,.0f} MB = {r['erase_peak_extra_pct_of_model']:.1f}% of the model",
        ),
        (
            "peak extra memory, exact_revert=True",
            f"{r['erase_peak_extra_bytes_exact_revert'] * mb:,.0f} MB = "
            f"{100 * r['erase_peak_extra_bytes_exact_revert'] / r['model_bytes']:.1f}% of the model",
        ),
        (
            "patch file, one concept",
            f"{r['patch_bytes'] / 1024:,.0f} KB = {r['patch_pct_of_unet']:.4f}% of the denoiser ({r['unet_bytes'] * mb:,.0f} MB)",
        ),
    ]
    if "compact_patch_bytes" in r:
        rows += [
            ("compact patch file (`save(compact=True)`), one concept", f"{r['compact_patch_bytes'] / 1024:,.0f} KB"),
            (
                "LoRA file (`to_lora`), one concept: peft / kohya",
                " / ".join(
                    "refused" if r[f"lora_{f}_bytes"] is None else f"{r[f'lora_{f}_bytes'] / 1024:,.0f} KB"
                    for f in ("peft", "kohya")
                ),
            ),
        ]
    if "unet_forward_s" in r:
        rows += [
            (f"denoiser forward (UNet or transformer), batch 1, {r['resolution']} px", f"{r['unet_forward_s']:.3f} s"),
            ("erase / denoiser forward", f"{r['erase_over_unet_forward']:.3f}"),
            (
                "generation step (denoiser, batch 2) before / after",
                f"{r['gen_step_before_s']:.3f} s / {r['gen_step_after_s']:.3f} s (ratio {r['gen_step_ratio']:.3f})",
            ),
        ]
    if "esd" in r:
        rows.append(
            (
                "ESD (esd_x) step, cheapest (no x_t sampling)",
                f"{r['esd']['step_s']:.3f} s; erase / ESD step {r['erase_over_esd_step']:.4f}",
            )
        )
    rows.append(("machine", f"{r['machine']}, torch threads {r['torch_threads']}, {r['date']}"))
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


if __name__ == "__main__":
    main()
