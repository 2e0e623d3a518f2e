"""Concept presets: the word sets and class lists concept-erasure papers erase, and prompt templates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "NUDITY_WORDS",
    "ImagenetteClass",
    "IMAGENETTE_CLASSES",
    "IMAGENETTE_TEMPLATE",
    "DEFAULT_TEMPLATES",
    "GENERIC_RETAIN",
    "expand_templates",
    "get_preset",
    "list_presets",
]

NUDITY_WORDS: tuple[str, ...] = (
    "nude",
    "naked",
    "nudity",
    "sexual",
    "shirtless",
    "breast",
    "bare breasts",
    "genitalia",
    "erotic",
    "topless",
    "attractive female goddess",
    "lingerie",
    "explicit",
)


@dataclass(frozen=True)
class ImagenetteClass:
    """One Imagenette class: its name, its ImageNet-1k index and its WordNet id."""

    name: str
    imagenet_index: int
    wnid: str


# The 10 classes in the standard Imagenette order (label 0..9).
IMAGENETTE_CLASSES: tuple[ImagenetteClass, ...] = (
    ImagenetteClass("tench", 0, "n01440764"),
    ImagenetteClass("English springer", 217, "n02102040"),
    ImagenetteClass("cassette player", 482, "n02979186"),
    ImagenetteClass("chain saw", 491, "n03000684"),
    ImagenetteClass("church", 497, "n03028079"),
    ImagenetteClass("French horn", 566, "n03394916"),
    ImagenetteClass("garbage truck", 569, "n03417042"),
    ImagenetteClass("gas pump", 571, "n03425413"),
    ImagenetteClass("golf ball", 574, "n03445777"),
    ImagenetteClass("parachute", 701, "n03888257"),
)

IMAGENETTE_TEMPLATE = "Image of {}"

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}",
    "an image of {}",
    "a picture of {}",
    "a painting of {}",
    "{} in a photo",
)


# Everyday subjects that concept erasure protects when the user names nothing to keep: the text
# features every prompt shares (a dominant direction of CLIP's hidden states) score low against
# them, so the retain-aware fit leaves them alone.
GENERIC_RETAIN: tuple[str, ...] = (
    "a person",
    "a man",
    "a woman",
    "a child",
    "a face",
    "a dog",
    "a cat",
    "a bird",
    "a car",
    "a house",
    "a tree",
    "a flower",
    "a city street",
    "a landscape",
    "the sky",
    "the sea",
    "a room",
    "food",
    "a painting",
    "a photograph",
)


def expand_templates(concept: str, templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[str]:
    """The prompts made by putting ``concept`` (stripped) in each template's ``{}``, in template order.

    Raises ``ValueError`` for a blank concept, no templates, or a template without exactly one ``{}``.
    """
    if isinstance(templates, str):
        raise TypeError(f"templates must be a sequence of strings, not the string {templates!r}")
    if not isinstance(concept, str) or concept.strip() == "":
        raise ValueError(f"concept must be a non-empty string, got {concept!r}")
    if len(templates) == 0:
        raise ValueError("no templates given")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"template {template!r} must contain exactly one '{{}}'")
    word = concept.strip()
    return [template.replace("{}", word) for template in templates]


_PRESETS = ("nudity", "imagenette")


def list_presets() -> list[str]:
    """Every name :func:`get_preset` accepts: ``nudity``, ``imagenette`` and ``imagenette:<class name>``."""
    return [*_PRESETS, *(f"imagenette:{c.name}" for c in IMAGENETTE_CLASSES)]


def get_preset(name: str) -> list[str]:
    """The concept words of a preset (case-insensitive name); ``ValueError`` listing the presets if unknown."""
    key = name.strip().casefold() if isinstance(name, str) else name
    if key == "nudity":
        return list(NUDITY_WORDS)
    if key == "imagenette":
        return [c.name for c in IMAGENETTE_CLASSES]
    if isinstance(key, str) and key.startswith("imagenette:"):
        wanted = key.split(":", 1)[1].strip()
        for c in IMAGENETTE_CLASSES:
            if c.name.casefold() == wanted:
                return [c.name]
        raise ValueError(
            f"unknown Imagenette class {name.split(':', 1)[1].strip()!r}; "
            f"choose one of {[c.name for c in IMAGENETTE_CLASSES]}"
        )
    raise ValueError(f"unknown preset {name!r}; choose one of {list_presets()}")
