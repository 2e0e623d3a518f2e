"""Evaluators: classifier-unlearning metrics, class-erasure accuracy, reports and benchmarks."""

from .classification import PerClassAccuracy, class_erasure_scores, head_inputs
from .report import write_report
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
]
