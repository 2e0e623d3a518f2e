"""Classifier-unlearning metrics: UA, RA, TA, MIA-efficacy and Avg. Gap (GUIDE.md section 2).

``UnlearningMetrics`` is a torchmetrics ``Metric``: feed it logits batch by batch, tagged with
the split they come from, on any number of processes; ``compute`` returns the four numbers.
``unlearning_metrics`` and ``mia_efficacy`` run a model over data and do the feeding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from eraser.data import LabeledData, labeled_batches, to_model
from eraser.layers import KeptModes

__all__ = [
    "MIA_FEATURES",
    "SPLITS",
    "mia_feature",
    "svc_mia",
    "UnlearningMetrics",
    "unlearning_metrics",
    "mia_efficacy",
    "avg_gap",
    "GAP_KEYS",
]

SPLITS = ("forget", "retain", "test")
MIA_FEATURES = ("confidence", "entropy", "m_entropy", "loss")
GAP_KEYS = ("UA", "RA", "TA", "MIA")
_EPS = 1e-30  # Song and Mittal's floor for log(p) and log(1 - p); a higher one changes confident samples' features


def mia_feature(logits: Tensor, labels: Tensor, feature: str = "confidence") -> Tensor:
    """The per-sample attack feature (N,): true-class confidence p_y, prediction entropy,
    modified entropy (Song & Mittal 2021) or cross-entropy loss."""
    p = torch.softmax(logits.double(), dim=1)
    p_y = p.gather(1, labels[:, None]).squeeze(1)
    if feature == "confidence":
        return p_y
    if feature == "entropy":
        return -(p * torch.log(p.clamp_min(_EPS))).sum(1)
    if feature == "m_entropy":
        # -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i), per sample (not per column, and
        # with log(1 - p_i) for the other classes: the two bugs in the reference repositories).
        others = -(p * torch.log((1 - p).clamp_min(_EPS)))
        others = others.sum(1) - others.gather(1, labels[:, None]).squeeze(1)
        return -(1 - p_y) * torch.log(p_y.clamp_min(_EPS)) + others
    if feature == "loss":
        return -torch.log(p_y.clamp_min(_EPS))
    raise ValueError(f"unknown MIA feature {feature!r}; choose one of {MIA_FEATURES}")


def svc_mia(members: Tensor, non_members: Tensor, targets: Tensor) -> float:
    """Train ``SVC(C=3, gamma="auto", kernel="rbf")`` on member (1) vs non-member (0) features and
    return the percentage of ``targets`` it calls non-members (MIA-efficacy; higher = forgotten)."""
    from sklearn.svm import SVC

    if len(members) == 0 or len(non_members) == 0 or len(targets) == 0:
        raise ValueError("the MIA needs members (retain), non-members (test) and targets (forget)")
    x = torch.cat([members, non_members]).reshape(len(members) + len(non_members), -1).cpu().numpy()
    y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    pred = clf.predict(targets.reshape(len(targets), -1).cpu().numpy())
    return 100.0 * float((pred == 0).mean())


class UnlearningMetrics(Metric):
    """UA, RA, TA and MIA-efficacy (all in percent), accumulated batch by batch.

    ``update(logits, labels, split)`` with split ``"forget"``, ``"retain"`` or ``"test"`` (for
    class-wise forgetting the test split should exclude the forgotten classes).
    MIA: SVC on the ``mia_feature`` of retain samples (members) vs test samples (non-members);
    members are the first |test| retain samples seen (the reference protocol), or, with
    ``balanced=True``, a seeded random subset of min(|retain|, |test|) from each side. When the
    retain set is smaller than the test set (MNIST-sized data) the reference protocol is not
    defined; both sides are then cut to the first min(|retain|, |test|) samples, so the SVC is
    never trained on imbalanced classes (which would call every sample a non-member).
    ``max_samples`` caps each side (the SVC costs O(n^2): about 8 s at 9,000 per side on 2
    CPU cores); None keeps the reference protocol.
    """

    full_state_update = False

    def __init__(
        self,
        mia_feature: str = "confidence",
        balanced: bool = False,
        seed: int = 0,
        max_samples: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be positive or None; got {max_samples}")
        self.max_samples = max_samples
        if mia_feature not in MIA_FEATURES:
            raise ValueError(f"unknown MIA feature {mia_feature!r}; choose one of {MIA_FEATURES}")
        self.feature, self.balanced, self.seed = mia_feature, balanced, seed
        for split in SPLITS:
            self.add_state(f"{split}_correct", default=torch.tensor(0), dist_reduce_fx="sum")
            self.add_state(f"{split}_total", default=torch.tensor(0), dist_reduce_fx="sum")
            self.add_state(f"{split}_feature", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, labels: Tensor, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(f"need logits (N, C) and labels (N,); got {tuple(logits.shape)} and {tuple(labels.shape)}")
        labels = labels.long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            raise ValueError(f"labels must lie in [0, {logits.shape[1]})")
        setattr(self, f"{split}_correct", getattr(self, f"{split}_correct") + (logits.argmax(1) == labels).sum())
        setattr(self, f"{split}_total", getattr(self, f"{split}_total") + labels.numel())
        getattr(self, f"{split}_feature").append(mia_feature(logits.detach(), labels, self.feature).float())

    def _accuracy(self, split: str) -> float:
        total = int(getattr(self, f"{split}_total"))
        if total == 0:
            raise ValueError(f"no {split} samples were given")
        return 100.0 * int(getattr(self, f"{split}_correct")) / total

    def _features(self, split: str) -> Tensor:
        return dim_zero_cat(getattr(self, f"{split}_feature")) if getattr(self, f"{split}_feature") else torch.empty(0)

    def mia(self) -> float:
        """MIA-efficacy in percent."""
        retain, test, forget = self._features("retain"), self._features("test"), self._features("forget")
        n = min(len(retain), len(test), self.max_samples or len(retain))
        if self.balanced:
            g = torch.Generator().manual_seed(self.seed)
            members = retain[torch.randperm(len(retain), generator=g)[:n]]
            non_members = test[torch.randperm(len(test), generator=g)[:n]]
        else:
            members, non_members = retain[:n], test[:n]
        return svc_mia(members, non_members, forget)

    def compute(self) -> dict[str, float]:
        return {
            "UA": 100.0 - self._accuracy("forget"),
            "RA": self._accuracy("retain"),
            "TA": self._accuracy("test"),
            "MIA": self.mia(),
        }


@torch.no_grad()
def _feed(metric: UnlearningMetrics, model: nn.Module, data: LabeledData, split: str, batch_size: int, device) -> None:
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    for x, y in labeled_batches(data, batch_size):
        metric.update(model(to_model(x, param, device)).float().cpu(), torch.as_tensor(y).cpu(), split)


def unlearning_metrics(
    model: nn.Module,
    forget: LabeledData,
    retain: LabeledData,
    test: LabeledData,
    *,
    mia_feature: str = "confidence",
    balanced: bool = False,
    seed: int = 0,
    mia_samples: int | None = None,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """UA, RA, TA and MIA-efficacy (percent) of ``model`` on the three splits (eval mode)."""
    metric = UnlearningMetrics(mia_feature=mia_feature, balanced=balanced, seed=seed, max_samples=mia_samples)
    modes = KeptModes(model)
    model.eval()
    try:
        for split, data in (("forget", forget), ("retain", retain), ("test", test)):
            _feed(metric, model, data, split, batch_size, device)
    finally:
        modes.restore()
    return metric.compute()


def mia_efficacy(
    model: nn.Module,
    retain: LabeledData,
    forget: LabeledData,
    test: LabeledData,
    feature: str = "confidence",
    **kwargs,
) -> float:
    """MIA-efficacy in percent: the share of ``forget`` an SVC, trained on retain (members) vs
    test (non-members), calls non-members. Higher means better forgotten."""
    return unlearning_metrics(model, forget, retain, test, mia_feature=feature, **kwargs)["MIA"]


def avg_gap(row: Mapping[str, float], retrain_row: Mapping[str, float], keys: Sequence[str] = GAP_KEYS) -> float:
    """Mean absolute difference to Retrain over UA, RA, TA and MIA (run time is reported apart)."""
    missing = [k for k in keys if k not in row or k not in retrain_row]
    if missing:
        raise KeyError(f"both rows need {list(keys)}; missing {missing}")
    return float(sum(abs(float(row[k]) - float(retrain_row[k])) for k in keys) / len(keys))
