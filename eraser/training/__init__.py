"""Training machinery shared by the trained methods: one loop, objectives, parameter masks, probes."""

from .loop import OPTIMIZERS, SCHEDULES, Objective, StepInfo, TrainConfig, fit
from .masks import masked_step, top_fraction_mask, trained_parameters
from .probes import accuracy, gradient_stats, logits_of, reinitialize

__all__ = [
    "TrainConfig",
    "Objective",
    "StepInfo",
    "fit",
    "SCHEDULES",
    "OPTIMIZERS",
    "top_fraction_mask",
    "trained_parameters",
    "masked_step",
    "accuracy",
    "logits_of",
    "gradient_stats",
    "reinitialize",
]
