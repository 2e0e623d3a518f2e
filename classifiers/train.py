"""The documented recipes that train each dataset's original classifier (and Retrain).

The benchmark that trains with them caches the checkpoints (``evaluation.checkpoints``)."""

from __future__ import annotations

from eraser.training import TrainConfig

__all__ = ["RECIPES"]

# Recipes for the original model of each dataset; Retrain uses the same one on the retain set.
RECIPES: dict[str, TrainConfig] = {
    "mnist": TrainConfig(epochs=5, lr=0.05, batch_size=128, schedule="cosine", weight_decay=5e-4),
    "cifar10": TrainConfig(
        epochs=40, lr=0.1, batch_size=128, schedule="cosine", weight_decay=5e-4, augment="crop_flip"
    ),
}
