"""Small real models bundled with eraser, trained on real MNIST digits.

- ``digits_clip()``: a tiny CLIP (transformers ``CLIPModel`` + the real CLIP tokenizer) trained
  contrastively on MNIST digits with varied captions.
- ``digits_judge()``: a small CNN digit classifier (the "judge" for evaluating erasure).
- ``digits_pipeline()``: a tiny text-to-image diffusion pipeline conditioned by the tiny CLIP.
- ``digit_prompt(d)``: the canonical prompt ``"a photo of the digit {word}"``.
"""

from __future__ import annotations

from .captions import CAPTION_TEMPLATES, DIGIT_WORDS, all_captions, caption, digit_prompt
from .models import BundledWeightsError, digits_clip, digits_judge

__all__ = [
    "DIGIT_WORDS",
    "CAPTION_TEMPLATES",
    "BundledWeightsError",
    "all_captions",
    "caption",
    "digit_prompt",
    "digits_clip",
    "digits_judge",
    "digits_pipeline",
]


def digits_pipeline(*args, **kwargs):
    """The bundled tiny digit diffusion pipeline (see ``eraser.bundled.pipeline``)."""
    from .pipeline import digits_pipeline as f

    return f(*args, **kwargs)
