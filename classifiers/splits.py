"""Forget / retain / test splits for the four forgetting scenarios.

Scenarios are written as short strings so they can go on a command line and into reports:
``class:3`` (one class), ``classes:1,7`` (several classes), ``random:0.1`` (that share of the
training set, drawn with the seed) and ``instance:32`` (that many training samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Scenario", "Split", "make_split"]

KINDS = ("class", "classes", "random", "instance")


@dataclass(frozen=True)
class Scenario:
    """What to forget: whole classes, a random share of the training set, or a few instances."""

    kind: str
    classes: tuple[int, ...] = ()
    fraction: float | None = None
    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Scenario":
        """``class:3``, ``classes:1,7``, ``random:0.1`` or ``instance:32``."""
        kind, _, arg = text.strip().partition(":")
        try:
            if kind in ("class", "classes") and arg:
                return cls(
                    "class" if kind == "class" and "," not in arg else "classes",
                    classes=tuple(int(c) for c in arg.split(",")),
                )
            if kind == "random" and arg:
                return cls("random", fraction=float(arg))
            if kind == "instance" and arg:
                return cls("instance", count=int(arg))
        except ValueError:
            pass
        raise ValueError(f"cannot read scenario {text!r}; write class:3, classes:1,7, random:0.1 or instance:32")

    @property
    def label(self) -> str:
        if self.kind in ("class", "classes"):
            return f"{self.kind}:{','.join(map(str, self.classes))}"
        return f"{self.kind}:{self.fraction if self.kind == 'random' else self.count}"

    @property
    def classwise(self) -> bool:
        return self.kind in ("class", "classes")


@dataclass
class Split:
    """Indices into the training set (forget, retain) and the test set (test: what TA is measured
    on; class-wise it leaves out the forgotten classes, whose test images are ``test_forget``)."""

    scenario: Scenario
    seed: int
    forget: Tensor
    retain: Tensor
    test: Tensor
    test_forget: Tensor


def make_split(train_labels: Tensor, test_labels: Tensor, scenario: Scenario, seed: int = 0) -> Split:
    """The split of ``scenario``; random and instance scenarios draw their samples with ``seed``."""
    train_labels, test_labels = torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()
    n = len(train_labels)
    everything = torch.arange(len(test_labels))
    if scenario.classwise:
        present = set(train_labels.unique().tolist())
        absent = [c for c in scenario.classes if c not in present]
        if absent:
            raise ValueError(f"classes {absent} have no training samples (classes present: {sorted(present)})")
        if present <= set(scenario.classes):
            raise ValueError(f"{scenario.label} forgets every class; keep at least one class to retain")
        wanted = torch.tensor(scenario.classes)
        in_f = torch.isin(train_labels, wanted)
        in_t = torch.isin(test_labels, wanted)
        return Split(
            scenario,
            seed,
            in_f.nonzero().squeeze(1),
            (~in_f).nonzero().squeeze(1),
            (~in_t).nonzero().squeeze(1),
            in_t.nonzero().squeeze(1),
        )
    if scenario.kind == "random":
        if not 0 < scenario.fraction < 1:
            raise ValueError(f"random forgetting needs a fraction in (0, 1); got {scenario.fraction}")
        size = int(round(scenario.fraction * n))
    else:
        size = scenario.count
        if not 0 < size < n:
            raise ValueError(f"instance forgetting needs 0 < count < {n}; got {size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    forget = order[:size].sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[forget] = False
    return Split(scenario, seed, forget, keep.nonzero().squeeze(1), everything, torch.empty(0, dtype=torch.long))
