"""Evaluators: classifier-unlearning metrics, class-erasure accuracy, data shift, Grad-CAM, reports and
benchmarks; for generators the generation runner, NudeNet counts, FID, CLIP score and judge accuracy
(each registered in the evaluator table: ``list_evaluators()``, ``get_evaluator(name)``); attacks on
erased pipelines and their success rate (``evaluation.attacks``: ``list_attacks()``, ``get_attack(name)``;
``evaluation.attack_success`` is NudeNet's rule, the attacks' ASR is ``evaluation.attacks.attack_success``)."""

from .attacks import (
    AttackResult,
    AttackSpec,
    AttackSuccess,
    ParaphraseConfig,
    SoftPromptConfig,
    get_attack,
    list_attacks,
    register_attack,
    run_attack,
)
from .classification import PerClassAccuracy, class_erasure_scores, head_inputs
from .clip_score import ClipScore, clip_score
from .fid import fid, fid_details
from .generate import GenerationConfig, generate_images
from .gradcam import grad_cam, save_gradcam_grid
from .images import ImageSet, image_set
from .judges import Judge, judge_accuracy, judge_predictions
from .nudenet import EXPOSED_LABELS, attack_success, nudenet_counts, nudenet_detections
from .registry import EvaluatorResult, EvaluatorSpec, get_evaluator, list_evaluators, register_evaluator
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
    "AttackSpec",
    "AttackResult",
    "AttackSuccess",
    "SoftPromptConfig",
    "ParaphraseConfig",
    "register_attack",
    "get_attack",
    "list_attacks",
    "run_attack",
    "EvaluatorSpec",
    "EvaluatorResult",
    "register_evaluator",
    "get_evaluator",
    "list_evaluators",
    "GenerationConfig",
    "generate_images",
    "ImageSet",
    "image_set",
    "nudenet_counts",
    "nudenet_detections",
    "attack_success",
    "EXPOSED_LABELS",
    "fid",
    "fid_details",
    "ClipScore",
    "clip_score",
    "Judge",
    "judge_accuracy",
    "judge_predictions",
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
