"""Captions for the bundled MNIST digit models (tiny CLIP training and the digit prompts).

``digit_prompt(d)`` is the canonical prompt ("a photo of the digit seven") used for zero-shot
classification and as the default diffusion prompt; ``caption(d, rng)`` draws one of the varied
``CAPTION_TEMPLATES`` used while training the tiny CLIP. Templates may use ``{word}`` (the digit
spelled out) and ``{d}`` (the numeral).
"""

from __future__ import annotations

import random

__all__ = [
    "DIGIT_WORDS",
    "CAPTION_TEMPLATES",
    "CANONICAL_TEMPLATE",
    "caption",
    "all_captions",
    "digit_prompt",
    "concept_templates",
]

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

CANONICAL_TEMPLATE = "a photo of the digit {word}"

CAPTION_TEMPLATES: tuple[str, ...] = (
    CANONICAL_TEMPLATE,
    "handwritten {d}",
    "the number {word}",
    "a drawing of a {d}",
    "an image of the numeral {word}",
    "digit {d}",
    "a handwritten {word}",
    "the digit {d} written by hand",
    "a photo of the number {d}",
    "a scanned {word}",
    "a black and white picture of a handwritten {word}",
    "{word}",
)


def _check(d: int) -> int:
    if isinstance(d, bool) or not isinstance(d, int):
        try:
            import numbers

            if isinstance(d, numbers.Integral) and not isinstance(d, bool):
                d = int(d)
            else:
                raise TypeError
        except TypeError:
            raise TypeError(f"digit must be an int in 0..9, got {d!r}") from None
    if not 0 <= d <= 9:
        raise ValueError(f"digit must be in 0..9, got {d}")
    return d


def _fill(template: str, d: int) -> str:
    return template.format(word=DIGIT_WORDS[d], d=d)


def digit_prompt(d: int) -> str:
    """The canonical prompt for digit ``d``: ``"a photo of the digit {word}"``."""
    d = _check(d)
    return _fill(CANONICAL_TEMPLATE, d)


def caption(d: int, rng: random.Random) -> str:
    """A caption for digit ``d`` from a template drawn with ``rng``."""
    d = _check(d)
    return _fill(rng.choice(CAPTION_TEMPLATES), d)


def all_captions(d: int) -> list[str]:
    """Every template filled in for digit ``d`` (in ``CAPTION_TEMPLATES`` order)."""
    d = _check(d)
    return [_fill(t, d) for t in CAPTION_TEMPLATES]


def concept_templates(templates: tuple[str, ...] = CAPTION_TEMPLATES) -> tuple[str, ...]:
    """The caption templates with one ``"{}"`` slot (``{word}`` and ``{d}`` alike), in order and
    without repeats: the model's own training wordings, for expanding concept words (``"seven"``,
    ``"7"``) into prompts for ``eraser.erase_concepts(..., templates=...)``."""
    out: list[str] = []
    for t in templates:
        t = t.replace("{word}", "{}").replace("{d}", "{}")
        if t not in out:
            out.append(t)
    return tuple(out)
