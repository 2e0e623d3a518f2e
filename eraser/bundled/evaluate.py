"""The digit judge on a digits pipeline's generations: accuracy per digit (the bundled model's check)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .captions import DIGIT_WORDS, digit_prompt

__all__ = ["judge_digits", "image_seed", "images_progress", "check_report", "UA_TARGET", "MAX_DROP"]

UA_TARGET = 95.0  # the erased digit: at least this % of its generations no longer read as it
MAX_DROP = 5.0  # every kept digit: its judge accuracy falls by at most this many points


def image_seed(seed: int, digit: int, index: int) -> int:
    """The generator seed of image ``index`` of ``digit`` in a check seeded by ``seed``: each image's
    noise depends on (seed, digit, index) only, not on how the images are batched."""
    if not 0 <= index < 1_000_000:
        raise ValueError(f"image index must be in 0..999999; got {index}")
    return (int(seed) * 10 + int(digit)) * 1_000_000 + int(index)


class _StepsAsImages:
    """Stands in for a pipeline's per-call step bar: each of the call's ``total`` steps advances
    the outer bar by ``n_images / total`` images (whole images; the rest when the call ends)."""

    def __init__(self, bar: Any, n_images: int, total: int | None = None, iterable: Iterable | None = None) -> None:
        if total is None and iterable is not None:
            total = len(iterable)  # type: ignore[arg-type]
        self.bar, self.n, self.total, self.iterable = bar, n_images, max(1, int(total or 1)), iterable
        self.steps = self.shown = 0

    def update(self, k: int = 1) -> None:
        self.steps = min(self.total, self.steps + k)
        self._show(self.n * self.steps // self.total)

    def _show(self, n: int) -> None:
        if n > self.shown:
            self.bar.update(n - self.shown)
            self.shown = n

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()

    def __enter__(self) -> _StepsAsImages:
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is None:
            self._show(self.n)

    def close(self) -> None:  # tqdm's interface, for pipelines that close their bar themselves
        pass


@contextlib.contextmanager
def images_progress(pipe: Any, bar: Any, n_images: int) -> Iterator[None]:
    """While active, a diffusers pipeline call of ``n_images`` images advances ``bar`` (a tqdm over
    images) step by step instead of drawing its own per-call bar: a phase of many images shows
    one bar that moves during each call."""
    pipe.progress_bar = lambda iterable=None, total=None: _StepsAsImages(bar, n_images, total, iterable)
    try:
        yield
    finally:
        del pipe.progress_bar  # the class's own method again


@torch.no_grad()
def judge_digits(
    pipe: Any,
    per_digit: int = 100,
    *,
    guidance_scale: float | None = None,
    steps: int | None = None,
    seed: int = 1234,
    batch: int = 100,
    judge: torch.nn.Module | None = None,
    keep_images: bool = False,
    progress: bool | str = False,
) -> dict[str, Any]:
    """Generate ``per_digit`` images of ``digit_prompt(d)`` for each digit and classify them with the
    bundled judge. Image i of digit d starts from the noise of ``image_seed(seed, d, i)`` (its own
    generator), so the same image comes out whatever the batching; the 10 * ``per_digit`` images are
    generated ``batch`` at a time, digits mixed in one pipeline call. Returns ``accuracy`` (% read as
    d), ``confidence`` (mean judge probability of d) and ``predictions`` (the judge's digit for each
    image) per digit, and with ``keep_images`` the images (10 * per_digit, 1, 32, 32) in [0, 1],
    digit by digit. ``progress``: a tqdm bar over images (a string is its description)."""
    from tqdm.auto import tqdm

    from .models import digits_judge
    from .pipeline import DEFAULT_GUIDANCE

    if int(per_digit) < 1 or int(batch) < 1:
        raise ValueError(f"per_digit and batch must be >= 1; got {per_digit} and {batch}")
    judge = judge if judge is not None else digits_judge()
    guidance = DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale
    device = next(judge.parameters()).device
    jobs = [(d, i) for d in range(10) for i in range(per_digit)]
    # the ten prompts (and the unconditional one) are encoded once; each image picks its digit's row
    cfg = guidance > 1.0
    encoded = pipe.prompt_kwargs([digit_prompt(d) for d in range(10)], cfg)
    kw = {} if steps is None else {"num_inference_steps": steps}
    preds, probs, images = [], [], []
    desc = progress if isinstance(progress, str) else "judge digits"
    with tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            digits = torch.tensor([d for d, _ in chunk])
            gens = [torch.Generator().manual_seed(image_seed(seed, d, i)) for d, i in chunk]
            rows = {k: v[digits] for k, v in encoded.items()}
            with images_progress(pipe, bar, len(chunk)):
                x: Tensor = pipe(guidance_scale=guidance, generator=gens, output_type="pt", **rows, **kw).images
            p = judge(x.to(device)).softmax(-1).cpu()
            preds.append(p.argmax(-1))
            probs.append(p.gather(1, digits[:, None])[:, 0])
            if keep_images:
                images.append(x.cpu())
    pred, prob = torch.cat(preds).view(10, per_digit), torch.cat(probs).view(10, per_digit)
    accuracy = {d: 100.0 * int((pred[d] == d).sum()) / per_digit for d in range(10)}
    confidence = {d: float(prob[d].mean()) for d in range(10)}
    out: dict[str, Any] = {
        "accuracy": accuracy,
        "confidence": confidence,
        "predictions": {d: pred[d].tolist() for d in range(10)},
        "per_digit": per_digit,
        "guidance_scale": guidance,
        "num_inference_steps": steps,
        "seed": seed,
    }
    if keep_images:
        out["images"] = torch.cat(images)
    return out


def check_report(
    before: dict[int, float],
    after: dict[int, float],
    erased: Sequence[int],
    per_digit: int,
    *,
    ua_target: float = UA_TARGET,
    max_drop: float = MAX_DROP,
    seed: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """The before/after check as a markdown table (per digit: judge accuracy before, after, and the
    drop = before - after, in points), a caption stating what was measured, and a summary line: the
    erased digits' UA (100 - accuracy after), the worst and mean drop over the kept digits, and PASS
    or FAIL against the targets (UA >= ``ua_target`` for every erased digit, drop <= ``max_drop``
    for every kept digit). Returns (text, summary dict)."""
    erased = sorted({int(d) for d in erased})
    kept = [d for d in range(10) if d not in erased]
    drop = {d: before[d] - after[d] for d in range(10)}
    lines = ["| digit | judge accuracy before | after | drop |", "|---|---|---|---|"]
    for d in range(10):
        name = f"{d} (erased)" if d in erased else str(d)
        lines.append(f"| {name} | {before[d]:.1f} | {after[d]:.1f} | {drop[d]:+.1f} |")
    lines.append(
        f"(judge accuracy = % of the {per_digit} generations of 'a photo of the digit <word>' per digit "
        f"({10 * per_digit} per model) that the bundled digit judge reads as that digit; the same seeds "
        f"{'' if seed is None else f'({seed}) '}before and after; one image = {100 / per_digit:.1f} points; "
        "drop = before - after)"
    )
    ua = {d: 100.0 - after[d] for d in erased}
    worst = max(kept, key=lambda d: (drop[d], -d)) if kept else None
    mean_drop = sum(drop[d] for d in kept) / len(kept) if kept else None
    ua_ok = bool(erased) and all(u >= ua_target for u in ua.values())
    kept_ok = all(drop[d] <= max_drop for d in kept)
    parts = []
    if erased:
        parts.append(
            "erased "
            + ", ".join(f"{d} ({DIGIT_WORDS[d]}): UA {ua[d]:.1f}" for d in erased)
            + f" (target >= {ua_target:g})"
        )
    else:
        parts.append("no digit among the erased concepts: no UA")
    if kept:
        parts.append(
            f"kept digits: worst drop {drop[worst]:+.1f} (digit {worst}), mean drop {mean_drop:+.1f} "
            f"(target: every drop <= {max_drop:g})"
        )
    verdict = "PASS" if ua_ok and kept_ok else "FAIL"
    lines.append(" | ".join(parts) + f" | {verdict}")
    summary = {
        "erased": erased,
        "UA": ua,
        "drop": drop,
        "worst_drop": drop[worst] if kept else None,
        "worst_digit": worst,
        "mean_drop": mean_drop,
        "ua_ok": ua_ok,
        "kept_ok": kept_ok,
        "passed": verdict == "PASS",
    }
    return "\n".join(lines), summary
