"""Training machinery shared by the trained methods: one loop, objectives, probes."""

from .loop import OPTIMIZERS, SCHEDULES, Objective, StepInfo, TrainConfig, fit
from .probes import accuracy, gradient_stats, logits_of, reinitialize

__all__ = [
    "TrainConfig",
    "Objective",
    "StepInfo",
    "fit",
    "SCHEDULES",
    "OPTIMIZERS",
    "accuracy",
    "logits_of",
    "gradient_stats",
    "reinitialize",
]
