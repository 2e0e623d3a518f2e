"""The digit judge on a digits pipeline's generations: accuracy per digit (the bundled model's check)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .captions import digit_prompt

__all__ = ["judge_digits"]


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
) -> dict[str, Any]:
    """Generate ``per_digit`` images of ``digit_prompt(d)`` for each digit (seeded by (seed, d)) and
    classify them with the bundled judge. Returns ``accuracy`` and ``confidence`` (judge probability
    of d) per digit, and with ``keep_images`` the images (10 * per_digit, 1, 32, 32) in [0, 1]."""
    from .models import digits_judge
    from .pipeline import DEFAULT_GUIDANCE

    judge = judge if judge is not None else digits_judge()
    guidance = DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale
    accuracy, confidence, images = {}, {}, []
    for d in range(10):
        preds, probs = [], []
        for start in range(0, per_digit, batch):
            n = min(batch, per_digit - start)
            g = torch.Generator().manual_seed(seed + 1000 * d + start)
            kw = {} if steps is None else {"num_inference_steps": steps}
            x: Tensor = pipe(digit_prompt(d), num_images_per_prompt=n, guidance_scale=guidance, generator=g,
                             output_type="pt", **kw).images
            p = judge(x.to(next(judge.parameters()).device)).softmax(-1).cpu()
            preds.append(p.argmax(-1))
            probs.append(p[:, d])
            if keep_images:
                images.append(x.cpu())
        accuracy[d] = 100.0 * float((torch.cat(preds) == d).float().mean())
        confidence[d] = float(torch.cat(probs).mean())
    out: dict[str, Any] = {"accuracy": accuracy, "confidence": confidence, "per_digit": per_digit,
                           "guidance_scale": guidance, "num_inference_steps": steps, "seed": seed}
    if keep_images:
        out["images"] = torch.cat(images)
    return out
