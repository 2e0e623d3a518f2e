"""Prompt sets and their loaders, and concept presets."""

from .bank import CONCEPT_BANK
from .csv import PromptRow, load_prompts
from .presets import (
    DEFAULT_TEMPLATES,
    GENERIC_RETAIN,
    IMAGENETTE_CLASSES,
    IMAGENETTE_TEMPLATE,
    NUDITY_WORDS,
    ImagenetteClass,
    expand_templates,
    get_preset,
    list_presets,
)

__all__ = [
    "CONCEPT_BANK",
    "PromptRow",
    "load_prompts",
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
