"""Model families: one adapter module each (see :mod:`eraser.families.base`).

Importing this package registers every family's presets and pipeline components.
"""

from . import classifier, clip, diffusion, mmdit  # noqa: F401  (each registers its adapter)
from .base import FAMILY_ADAPTERS, FamilyAdapter, get_family, pipeline_family, register_family

__all__ = ["FAMILY_ADAPTERS", "FamilyAdapter", "get_family", "pipeline_family", "register_family"]
