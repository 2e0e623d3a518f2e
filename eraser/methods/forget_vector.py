"""Forget vectors (input-perturbation unlearning) and their composition from a class-wise bank.

Loss (GUIDE.md section 1), model frozen, only the perturbation trained:
``l_f + retain_weight * CE(retain + delta) + norm_weight * penalty`` with the C&W margin
``l_f = mean max(z_y - max_{k != y} z_k, -tau)`` on the forget set (``retain_loss="kl"`` replaces
the CE by the KL divergence from the unperturbed model's predictions), and penalty ``||delta||_2^2``
(the paper) or ``||delta||_2 / B`` (``norm="per_batch"``, the authors' code). Composition trains
only the weights ``w`` of ``delta(w) = sum_k w_k delta_k`` over a bank's class vectors, with
``norm_weight * ||w||^2``.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import LabeledData, labeled_tensors
from ..registry import register_method
from ..training import Objective, StepInfo, TrainConfig, fit
from ..vectors import ForgetVector, VectorBank, VectorError, model_fingerprint, perturb

__all__ = ["ForgetVectorConfig", "ComposeConfig", "learn_vector", "build_bank", "compose", "margin_loss"]

NORMS = ("squared", "per_batch")
RETAIN_LOSSES = ("ce", "kl")


def margin_loss(logits: Tensor, labels: Tensor, tau: float = 1.0) -> Tensor:
    """C&W forget loss: mean of ``max(z_y - max_{k != y} z_k, -tau)`` (minimised: misclassified by tau)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return (true - others).clamp_min(-tau).mean()


@dataclass
class ForgetVectorConfig(TrainConfig):
    """A forget vector: SGD on ``delta`` only (momentum 0.9, lr x0.9 per step, 40 steps of 256).

    retain_weight: lambda1 (3 for class-wise forgetting, 1 for random, as in the paper).
    norm_weight: lambda2. The paper's lambda2 = 1 on ``||delta||^2`` holds delta near zero on
        [0, 1] inputs (measured on MNIST: 40% UA), so the default is 0.01 on the squared norm,
        which forgot 97.8% of unseen test images of an MNIST digit (GUIDE.md section 1).
    norm: ``squared`` (the paper) or ``per_batch`` (``||delta||_2 / B``, the authors' code; that
        code also lets weight decay act on delta: set ``weight_decay``).
    tau: the margin of the forget loss.
    retain_loss: ``ce`` (the paper: cross-entropy to the labels) or ``kl`` (KL divergence from the
        unperturbed model's predictions: keep what the model did, including its mistakes, which a
        single perturbation cannot fix anyway; one more forward pass per step).
    mean/std: the model's input normalisation; when given, delta is in pixel units.
    clamp: keep perturbed images in [0, 1] (pixel space).
    """

    epochs: int = 1000  # an upper bound: max_steps ends the run
    max_steps: int | None = 40
    lr: float = 0.1
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "exponential"
    lr_decay: float = 0.9
    retain_weight: float = 3.0
    norm_weight: float = 0.01
    norm: str = "squared"
    tau: float = 1.0
    retain_loss: str = "ce"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    clamp: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}; got {self.norm!r}")
        if self.retain_loss not in RETAIN_LOSSES:
            raise ValueError(f"retain_loss must be one of {RETAIN_LOSSES}; got {self.retain_loss!r}")
        self.mean, self.std = _floats(self.mean, "mean"), _floats(self.std, "std")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std (normalised inputs, delta in pixels) or neither")


def _floats(value, name: str) -> tuple[float, ...] | None:
    """Accepts a sequence or the command line's ``0.485/0.456/0.406``."""
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, str):
        try:
            return tuple(float(v) for v in value.split("/"))
        except ValueError:
            raise ValueError(f"{name} takes numbers separated by '/', e.g. 0.485/0.456/0.406; got {value!r}") from None
    return tuple(float(v) for v in value)


class _Perturbed(nn.Module):
    """The frozen model on ``x + delta(params)`` during training: ``delta`` directly, or ``w @ basis``."""

    def __init__(
        self, model: nn.Module, cfg: ForgetVectorConfig, shape: tuple[int, ...], basis: Tensor | None = None
    ) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg
        param = next(model.parameters())
        if basis is None:
            self.delta = nn.Parameter(torch.zeros(shape, device=param.device, dtype=param.dtype))
        else:
            self.weights = nn.Parameter(torch.zeros(basis.shape[0], device=param.device, dtype=param.dtype))
            self.register_buffer("basis", basis.to(param.device, param.dtype))
        self.composed = basis is not None

    def train(self, mode: bool = True) -> _Perturbed:
        self.training = mode
        self.model.eval()
        return self

    def trained(self) -> Tensor:
        return self.weights if self.composed else self.delta

    def current(self) -> Tensor:
        return torch.tensordot(self.weights, self.basis, dims=1) if self.composed else self.delta

    def forward(self, x: Tensor) -> Tensor:
        return self.model(perturb(x, self.current(), mean=self.cfg.mean, std=self.cfg.std, clamp=self.cfg.clamp))


class VectorObjective(Objective):
    """Forget margin + retain CE + norm penalty; remembers the last parameters with a finite loss."""

    streams = ("forget", "retain")

    def __init__(self, cfg: ForgetVectorConfig) -> None:
        self.cfg = cfg
        self.last_finite: Tensor | None = None
        self.history: list[float] = []

    def loss(self, model: _Perturbed, batches, info: StepInfo) -> Tensor:
        (xf, yf), (xr, yr) = batches["forget"], batches["retain"]
        p = model.trained()
        if self.cfg.norm == "squared" or model.composed:
            penalty = p.pow(2).sum()
        else:
            penalty = p.norm() / xf.shape[0]
        loss = margin_loss(model(xf), yf, self.cfg.tau) + self.cfg.retain_weight * self._retain(model, xr, yr)
        return loss + self.cfg.norm_weight * penalty

    def _retain(self, model: _Perturbed, xr: Tensor, yr: Tensor) -> Tensor:
        logits = model(xr)
        if self.cfg.retain_loss == "ce":
            return nn.functional.cross_entropy(logits, yr)
        with torch.no_grad():
            target = nn.functional.log_softmax(model.model(xr), dim=1)
        return nn.functional.kl_div(
            nn.functional.log_softmax(logits, dim=1), target, log_target=True, reduction="batchmean"
        )

    def backward(self, model: _Perturbed, batches, info: StepInfo) -> float:
        value = super().backward(model, batches, info)
        if torch.isfinite(torch.tensor(value)) and torch.isfinite(model.trained()).all():
            self.last_finite = model.trained().detach().clone()
            self.history.append(value)
        return value


def _frozen_fit(
    wrapper: _Perturbed,
    forget: LabeledData,
    retain: LabeledData,
    cfg: ForgetVectorConfig,
    device,
    progress: bool,
    desc: str,
) -> dict:
    """Train the wrapper's perturbation with the model's weights frozen; on a non-finite loss keep
    the last finite perturbation and report it in the returned info."""
    flags = [(p, p.requires_grad) for p in wrapper.model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    objective = VectorObjective(cfg)
    info: dict = {}
    t0 = time.perf_counter()
    try:
        logs = fit(
            wrapper, objective, {"forget": forget, "retain": retain}, cfg, device=device, progress=progress, desc=desc
        )
        info["steps"] = logs[-1]["steps"] if logs else 0
    except FloatingPointError as err:
        if objective.last_finite is None:
            raise
        with torch.no_grad():
            wrapper.trained().copy_(objective.last_finite)
        info["stopped"] = f"{err}; kept the last finite vector (step {len(objective.history)})"
        warnings.warn(f"{desc}: {info['stopped']}", RuntimeWarning, stacklevel=3)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    info["seconds"] = time.perf_counter() - t0
    info["final_loss"] = objective.history[-1] if objective.history else None
    return info


def _input_shape(data: LabeledData) -> tuple[int, ...]:
    from ..data import iter_inputs

    return tuple(next(iter(iter_inputs(data, 1))).shape[1:])


def learn_vector(
    model: nn.Module,
    forget: LabeledData,
    retain: LabeledData,
    config: ForgetVectorConfig | None = None,
    *,
    device=None,
    progress: bool = False,
    metadata: dict | None = None,
) -> ForgetVector:
    """A forget vector for ``forget`` that keeps ``retain`` (the model's weights are not changed)."""
    cfg = config or ForgetVectorConfig()
    wrapper = _Perturbed(model, cfg, _input_shape(forget))
    info = _frozen_fit(wrapper, forget, retain, cfg, device, progress, "forget vector")
    meta = {"method": "forget_vector", "config": asdict(cfg), "fit": info, **(metadata or {})}
    return ForgetVector(model, wrapper.delta.detach(), mean=cfg.mean, std=cfg.std, clamp=cfg.clamp, metadata=meta)


@register_method("forget_vector", config=ForgetVectorConfig, training_free=False, needs_retain=True, returns="wrapper")
def forget_vector(model, forget, retain, *, config: ForgetVectorConfig, device=None, progress=False):
    """Forget vector: one input perturbation, model frozen (returns a ForgetVector wrapping the model)."""
    return learn_vector(model, forget, retain, config, device=device, progress=progress)


def build_bank(
    model: nn.Module,
    data: LabeledData,
    config: ForgetVectorConfig | None = None,
    *,
    classes: Sequence[int] | None = None,
    path: str | Path | None = None,
    device=None,
    progress: bool = True,
) -> VectorBank:
    """One class-wise vector per class of ``data`` (forget = that class, retain = the rest).

    With ``path`` the bank is saved after every class and a re-run resumes from it (it must have
    been made for the same model and configuration).
    """
    cfg = config or ForgetVectorConfig()
    x, y = labeled_tensors(data)
    classes = sorted({int(c) for c in y.tolist()}) if classes is None else [int(c) for c in classes]
    absent = [c for c in classes if not bool((y == c).any())]
    if absent:
        raise VectorError(f"no samples of classes {absent} in the data; cannot learn their vectors")
    meta = {
        "config": asdict(cfg),
        "mean": cfg.mean,
        "std": cfg.std,
        "clamp": cfg.clamp,
        "space": "pixel" if cfg.mean is not None else "input",
        "model_class": type(model).__name__,
        "model_fingerprint": model_fingerprint(model),
        "seconds": {},
    }
    deltas: dict[int, Tensor] = {}
    if path is not None and Path(path).exists():
        old = VectorBank.load(path)
        old_fp = old.metadata.get("model_fingerprint")
        for key, same in (
            # as stored (JSON): a tuple setting reads back as a list
            ("config", old.metadata.get("config") == json.loads(json.dumps(meta["config"]))),
            ("model", old_fp == model_fingerprint(model, like=old_fp)),
        ):
            if not same:
                raise VectorError(f"{path} holds a bank made with another {key}; choose another path or delete it")
        deltas, meta["seconds"] = dict(old.deltas), dict(old.metadata.get("seconds", {}))
    for c in tqdm([c for c in classes if c not in deltas], desc="vector bank", disable=not progress):
        forget, retain = (x[y == c], y[y == c]), (x[y != c], y[y != c])
        vec = learn_vector(model, forget, retain, cfg, device=device)
        deltas[c] = vec.delta.detach().cpu()
        meta["seconds"][str(c)] = vec.metadata["fit"]["seconds"]
        if path is not None:
            VectorBank(deltas, meta).save(path)
    return VectorBank(deltas, meta)


@dataclass
class ComposeConfig(ForgetVectorConfig):
    """Compositional unlearning: learn only the weights of a bank's class vectors.

    bank: path of a saved :class:`VectorBank` made for this model; empty = build one from the
        forget + retain data first (its time counts as this method's run time).
    classes: bank classes to combine, ``"3/5/7"``; empty = all.
    retain_weight: 1, the paper's value for random forgetting.
    norm_weight: the weight of ``||w||^2``.
    """

    bank: str = ""
    classes: str = ""
    retain_weight: float = 1.0
    lr: float = 0.1


def compose(
    model: nn.Module,
    forget: LabeledData,
    retain: LabeledData,
    bank: VectorBank,
    config: ComposeConfig | None = None,
    *,
    device=None,
    progress: bool = False,
) -> ForgetVector:
    """A vector for a new forget set as ``sum_k w_k delta_k`` over ``bank``, optimising only ``w``."""
    cfg = config or ComposeConfig()
    expected = bank.metadata.get("model_fingerprint")
    if expected != model_fingerprint(model, like=expected):
        raise VectorError("the vector bank was made for a different model (fingerprints differ)")
    for key in ("mean", "std", "clamp"):
        if _norm_meta(bank.metadata.get(key)) != _norm_meta(getattr(cfg, key)):
            raise VectorError(
                f"the bank's {key} ({bank.metadata.get(key)}) differs from this configuration's ({getattr(cfg, key)})"
            )
    chosen = [int(c) for c in cfg.classes.split("/") if c.strip()] if cfg.classes else None
    classes, basis = bank.basis(chosen)
    if tuple(basis.shape[1:]) != _input_shape(forget):
        raise VectorError(f"the bank's vectors have shape {tuple(basis.shape[1:])}; the inputs {_input_shape(forget)}")
    wrapper = _Perturbed(model, cfg, tuple(basis.shape[1:]), basis=basis)
    info = _frozen_fit(wrapper, forget, retain, cfg, device, progress, "compose vector")
    weights = {str(c): float(w) for c, w in zip(classes, wrapper.weights.detach().cpu())}
    meta = {"method": "forget_vector_compose", "config": asdict(cfg), "fit": info, "bank_weights": weights}
    return ForgetVector(model, wrapper.current().detach(), mean=cfg.mean, std=cfg.std, clamp=cfg.clamp, metadata=meta)


def _norm_meta(v):
    return None if v is None else [float(a) for a in v] if isinstance(v, (list, tuple)) else v


@register_method(
    "forget_vector_compose", config=ComposeConfig, training_free=False, needs_retain=True, returns="wrapper"
)
def forget_vector_compose(model, forget, retain, *, config: ComposeConfig, device=None, progress=False):
    """Compositional forget vector: learn only combination weights of a class-wise vector bank."""
    if config.bank:
        bank = VectorBank.load(config.bank)
    else:
        fx, fy = labeled_tensors(forget)
        rx, ry = labeled_tensors(retain)
        # the bank's class vectors use the class-wise defaults, in this configuration's input space
        base = ForgetVectorConfig(mean=config.mean, std=config.std, clamp=config.clamp, seed=config.seed)
        bank = build_bank(model, (torch.cat([fx, rx]), torch.cat([fy, ry])), base, device=device, progress=progress)
    return compose(model, forget, retain, bank, config, device=device, progress=progress)
