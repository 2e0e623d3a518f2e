"""Soft relabeling (MSU): forget samples are trained towards a similarity-weighted mix of the
labels of the retain samples in the batch, alongside plain CE on the retain batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..capture import FeatureRows, capture_features
from ..data import forget_share
from ..registry import register_method
from ..targets import resolve_targets
from ..training import Objective, TrainConfig, fit

__all__ = ["SoftRelabelConfig", "soft_labels"]


def soft_labels(
    feat_f: Tensor, y_f: Tensor, feat_r: Tensor, y_r: Tensor, num_classes: int, temperature: float
) -> Tensor:
    """softmax(cos(feat_f, feat_r) / T) @ onehot(y_r), with retain samples of the forget sample's
    own class masked out; a row with no usable retain sample gets the uniform mix of the other
    classes. Returns (n_f, num_classes) probability rows."""
    sim = nn.functional.normalize(feat_f, dim=1) @ nn.functional.normalize(feat_r, dim=1).T / temperature
    same = y_f[:, None] == y_r[None, :]
    attn = sim.masked_fill(same, float("-inf")).softmax(dim=1)
    labels = attn @ nn.functional.one_hot(y_r, num_classes).to(attn.dtype)
    empty = same.all(dim=1)
    if empty.any():
        uniform = torch.ones(int(empty.sum()), num_classes, dtype=labels.dtype, device=labels.device)
        uniform[torch.arange(len(uniform)), y_f[empty]] = 0
        labels[empty] = uniform / (num_classes - 1)
    return labels


class SoftRelabel(Objective):
    """CE of forget batches to their soft labels + CE of retain batches to their labels."""

    streams = ("forget", "retain")

    def __init__(self, head: dict[str, nn.Module], temperature: float, forget_weight: float) -> None:
        self.head, self.temperature, self.forget_weight = head, temperature, forget_weight

    def loss(self, model, batches, info):
        (xf, yf), (xr, yr) = batches["forget"], batches["retain"]
        # One forward over both batches; the head's input rows are captured on the way (they are
        # detached: soft labels are targets, not something to optimise through).
        with capture_features(self.head, FeatureRows) as accs:
            out = model(torch.cat([xf, xr]))
        feats = next(iter(accs.values())).compute()[0]
        n = out.shape[0]
        # A head applied per position (conv or token heads) sees several rows per sample: average them.
        feats = feats.reshape(n, -1, feats.shape[-1]).mean(1).to(out.device, out.dtype)
        nf = xf.shape[0]
        target = soft_labels(feats[:nf], yf, feats[nf:], yr, out.shape[1], self.temperature)
        ce = nn.functional.cross_entropy
        return self.forget_weight * ce(out[:nf], target) + (1 - self.forget_weight) * ce(out[nf:], yr)


@dataclass
class SoftRelabelConfig(TrainConfig):
    """Soft relabeling (MSU): each forget sample's label becomes an attention-weighted mix of the
    labels of the retain samples in the batch (cosine similarity of the penultimate features, i.e.
    the input of the classifier head; retain samples of its own class excluded), trained with CE
    alongside CE on the retain batch.

    temperature: softmax temperature of the cosine similarities (lower: sharper, towards the
        nearest retain sample's class).
    forget_weight: weight of the forget term, the retain term gets 1 - forget_weight (None: the
        forget set's share of all samples, as in RL).
    """

    epochs: int = 10
    lr: float = 0.01
    temperature: float = 0.1
    forget_weight: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive; got {self.temperature}")


@register_method("soft_relabel", config=SoftRelabelConfig, training_free=False, needs_retain=True)
def soft_relabel(model, forget, retain, *, config: SoftRelabelConfig, device=None, progress=False):
    """Soft relabeling: train forget samples towards the labels of similar retain samples."""
    head = resolve_targets(model, "head")
    objective = SoftRelabel(head, config.temperature, forget_share(forget, retain, config.forget_weight))
    fit(
        model,
        objective,
        {"forget": forget, "retain": retain},
        config,
        device=device,
        progress=progress,
        desc="soft_relabel",
    )
    return model
