"""Evaluators: classifier-unlearning metrics, class-erasure accuracy, data shift, Grad-CAM, reports and benchmarks."""

from .classification import PerClassAccuracy, class_erasure_scores, head_inputs
from .gradcam import grad_cam, save_gradcam_grid
from .report import write_report
from .shift import DEFAULT_SHIFTS, make_shifted_splits, parse_shift, pr_metric, shift_inputs, shifted_metrics
from .unlearning import (
    GAP_KEYS,
    MIA_FEATURES,
    UnlearningMetrics,
    avg_gap,
    mia_efficacy,
    mia_feature,
    svc_mia,
    unlearning_metrics,
)

__all__ = [
    "PerClassAccuracy",
    "class_erasure_scores",
    "head_inputs",
    "UnlearningMetrics",
    "unlearning_metrics",
    "mia_efficacy",
    "mia_feature",
    "svc_mia",
    "avg_gap",
    "GAP_KEYS",
    "MIA_FEATURES",
    "write_report",
    "DEFAULT_SHIFTS",
    "parse_shift",
    "shift_inputs",
    "make_shifted_splits",
    "shifted_metrics",
    "pr_metric",
    "grad_cam",
    "save_gradcam_grid",
]
