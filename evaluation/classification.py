"""Class-erasure accuracy, accumulated batch by batch (a torchmetrics ``Metric``, so it also
reduces across processes)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["PerClassAccuracy", "class_erasure_scores"]


class PerClassAccuracy(Metric):
    """Top-1 correct/total counts per true class; ``masked`` classes are never predicted
    (the "mask the class's logit" reference that a class erasure should be compared with)."""

    full_state_update = False

    def __init__(self, num_classes: int, masked: Sequence[int] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.masked = list(masked)
        self.add_state("correct", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (N, {self.num_classes}); got {tuple(logits.shape)}")
        if self.masked:
            logits = logits.clone()
            logits[:, self.masked] = float("-inf")
        hit = (logits.argmax(1) == target).long()
        self.correct += torch.bincount(target, weights=hit, minlength=self.num_classes).long()
        self.total += torch.bincount(target, minlength=self.num_classes)

    def compute(self) -> Tensor:
        """Per-class accuracy in percent (NaN for classes with no samples)."""
        return 100.0 * self.correct.double() / self.total.double()

    def accuracy_on(self, classes: Sequence[int]) -> float:
        """Accuracy in percent over all samples of ``classes`` (micro average)."""
        idx = torch.as_tensor(list(classes), device=self.correct.device)
        total = int(self.total[idx].sum())
        if total == 0:
            raise ValueError(f"no samples seen for classes {list(classes)}")
        return 100.0 * float(self.correct[idx].sum()) / total


def class_erasure_scores(
    after: PerClassAccuracy, forgotten: Sequence[int], retained: Sequence[int]
) -> dict[str, float]:
    """UA (100 - accuracy on the forgotten classes) and the accuracy on the retained classes."""
    return {"UA": 100.0 - after.accuracy_on(forgotten), "retained_acc": after.accuracy_on(retained)}


@torch.no_grad()
def head_inputs(model: torch.nn.Module, head: str, data, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """Inputs of layer ``head`` for every sample of ``data`` ((inputs, labels) batches), and the labels.

    When only the head is edited, ``head(features)`` equals the edited model's logits, so an
    evaluation can run the body once and any number of head edits after it.
    """
    from torch.utils.data import DataLoader

    from eraser.capture import FeatureRows, capture_features
    from eraser.layers import KeptModes
    from eraser.targets import resolve_targets

    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    param = next(model.parameters())
    modes = KeptModes(model)
    model.eval()
    labels = []
    try:
        with capture_features(resolve_targets(model, [head]), FeatureRows) as acc:
            for x, y in loader:
                model(x.to(param.device, param.dtype))
                labels.append(torch.as_tensor(y))
    finally:
        modes.restore()
    return acc[head].compute()[0], torch.cat(labels)
