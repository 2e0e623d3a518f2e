"""eraser: erase concepts and classes from trained vision models.

The engine: capture a layer's input features (``capture``), find the forget subspace
(``subspace``), remove it from the weights (``projection``) and record the edit (``patch``).
"""

from . import methods  # noqa: F401  (registers the methods)
from ._version import __version__
from .api import erase_classes, erase_concepts
from .capture import FeatureRows, GramAccumulator, capture_features, collect_features, collect_grams
from .methods.unlink import UnlinkConfig
from .patch import ErasurePatch, LayerEdit, PatchError, as_module, fingerprint
from .projection import project_out
from .registry import get_method, list_methods, register_method
from .runner import Erasure, run_method
from .subspace import Gram, Subspace, forget_basis, forget_subspace, rayleigh_basis, rayleigh_subspace
from .targets import resolve_targets
from .vectors import ForgetVector, VectorBank

__all__ = [
    "__version__",
    "erase_classes",
    "erase_concepts",
    "run_method",
    "Erasure",
    "forget_basis",
    "forget_subspace",
    "rayleigh_basis",
    "rayleigh_subspace",
    "project_out",
    "capture_features",
    "collect_features",
    "GramAccumulator",
    "FeatureRows",
    "collect_grams",
    "ErasurePatch",
    "LayerEdit",
    "PatchError",
    "fingerprint",
    "as_module",
    "Gram",
    "Subspace",
    "UnlinkConfig",
    "ForgetVector",
    "VectorBank",
    "list_methods",
    "get_method",
    "register_method",
    "resolve_targets",
]
