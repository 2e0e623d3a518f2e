"""The one training loop that every trained method shares.

A method is an :class:`Objective` (what to minimise on which data streams) plus a
:class:`TrainConfig` (how: optimiser, schedule, epochs). The loop handles devices, shuffling,
learning-rate schedules, frozen-weight masks, progress bars and early stopping.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import LabeledData, labeled_batches, to_model
from ..layers import KeptModes
from .masks import masked_step, trained_parameters

__all__ = ["TrainConfig", "Objective", "StepInfo", "fit", "SCHEDULES", "OPTIMIZERS", "AUGMENTATIONS"]

SCHEDULES = ("constant", "cosine", "linear", "exponential", "onecycle")
# one-cycle: the rate climbs linearly from lr / ONECYCLE_DIV over the first ONECYCLE_WARMUP of the
# steps, then falls to 0 on a cosine (Smith & Topin 2019; torch's OneCycleLR with pct_start 0.25)
ONECYCLE_WARMUP, ONECYCLE_DIV = 0.25, 25.0
OPTIMIZERS = ("sgd", "adam")
AUGMENTATIONS = ("none", "crop_flip")


@dataclass
class TrainConfig:
    """How a trained method optimises (method configs subclass this and add their own fields).

    epochs: passes over the objective's driving stream (the first of its streams).
    max_steps: stop after this many optimiser steps in total (None: no limit).
    schedule: learning-rate schedule over all steps: constant, cosine or linear decay to 0, or
        exponential (the rate is multiplied by ``lr_decay`` after every step), or onecycle (a
        linear warm-up to ``lr`` over the first quarter of the steps, then cosine to 0).
    augment: ``"crop_flip"`` pads images by 4 pixels, crops them back at a random offset and
        flips half of them (the standard CIFAR recipe), on every training batch.
    channels_last: train convolutional models in channels-last memory format (about 1.4x faster
        on CPU for CIFAR ResNets; the results are the same up to rounding).
    """

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 256
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"
    lr_decay: float = 0.9
    max_steps: int | None = None
    grad_clip: float | None = None
    augment: str = "none"
    channels_last: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}; got {self.augment!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}; got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr < 0:
            raise ValueError(
                f"need epochs >= 0, batch_size >= 1 and lr >= 0 (got {self.epochs}, {self.batch_size}, {self.lr})"
            )


@dataclass
class StepInfo:
    """Where the loop is; objectives use it for schedules of their own (e.g. a decaying penalty)."""

    epoch: int
    step: int
    total_steps: int

    @property
    def progress(self) -> float:
        return self.step / max(1, self.total_steps)


Batch = tuple[Tensor, Tensor]


class Objective:
    """What a trained method minimises.

    ``streams`` names the data it reads; the first drives an epoch (one pass over it), the others
    are cycled alongside. ``loss`` gets one (inputs, labels) batch per stream, already on the
    model's device. Override ``backward`` to shape gradients yourself, ``phases`` to run several
    passes per epoch over different streams, and ``finished`` to stop early.
    """

    streams: tuple[str, ...] = ("retain",)

    def loss(self, model: nn.Module, batches: dict[str, Batch], info: StepInfo) -> Tensor:
        raise NotImplementedError

    def backward(self, model: nn.Module, batches: dict[str, Batch], info: StepInfo) -> float:
        loss = self.loss(model, batches, info)
        loss.backward()
        return float(loss.detach())

    def phases(self, epoch: int) -> list[tuple[str, ...]]:
        return [self.streams]

    def finished(self, model: nn.Module) -> bool:
        return False


def _cycle(batches: Iterable) -> Iterator:
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("a data stream of the objective is empty")


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    schedule, progress = cfg.schedule, step / max(1, total)
    if schedule == "exponential":
        return cfg.lr_decay**step
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "onecycle":
        if progress < ONECYCLE_WARMUP:
            return 1.0 / ONECYCLE_DIV + (1.0 - 1.0 / ONECYCLE_DIV) * progress / ONECYCLE_WARMUP
        return 0.5 * (1.0 + math.cos(math.pi * (progress - ONECYCLE_WARMUP) / (1.0 - ONECYCLE_WARMUP)))
    return 1.0


def fit(
    model: nn.Module,
    objective: Objective,
    data: dict[str, LabeledData],
    cfg: TrainConfig,
    *,
    trainable: dict[str, Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "train",
    checkpoint: str | Path | None = None,
) -> list[dict]:
    """Optimise ``objective`` on ``data`` (stream name -> labelled data); returns per-epoch logs
    (epoch, steps so far, mean loss, seconds).

    ``checkpoint``: a file the loop writes its state to after every epoch (weights, optimiser,
    step, the data-order and augmentation random states) and resumes from when it holds a
    state of the same config, so an interrupted run continues where its last epoch ended; the
    file is removed when training ends. The resumed run equals an uninterrupted one for
    objectives whose phases read one data stream (the other streams' positions restart).

    ``trainable`` maps parameter names to boolean masks (True = may change); masked-out entries
    get no gradient (nor a share of ``grad_clip``'s norm) and are restored after every step, so
    momentum and weight decay cannot move them either.
    Parameters with ``requires_grad=False`` are left alone.

    The model trains in train mode, except submodules the caller put in eval mode inside a module
    in train mode (e.g. a frozen BatchNorm): they stay as they are. Afterwards every module's
    train/eval mode is what it was.
    """
    missing = [
        s for e in range(max(1, cfg.epochs)) for p in objective.phases(e) for s in p if s not in data or data[s] is None
    ]
    if missing:
        raise ValueError(f"the objective needs data streams {sorted(set(missing))}")
    _check_masks(model, trainable or {})
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    masks = {n: m.to(device=device, dtype=torch.bool) for n, m in (trainable or {}).items() if n in named}
    frozen = {n: named[n].detach().clone() for n in masks}
    params = trained_parameters(named, masks)
    opt = _optimizer(params, cfg)
    clip = (lambda: nn.utils.clip_grad_norm_(params, cfg.grad_clip)) if cfg.grad_clip is not None else None
    loaders = {
        name: labeled_batches(d, cfg.batch_size, shuffle=True, seed=cfg.seed + 1000 * i)
        for i, (name, d) in enumerate(data.items())
    }
    total = sum(len(loaders[p[0]]) for e in range(cfg.epochs) for p in objective.phases(e))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    cycles = {name: _cycle(b) for name, b in loaders.items()}
    aug_gen = torch.Generator().manual_seed(cfg.seed + 7)

    def prep(batch) -> Batch:
        batch = _to(batch, param, device)
        if cfg.augment == "crop_flip":
            batch = _crop_flip(batch, aug_gen)
        return _channels_last(batch) if cfg.channels_last else batch

    generators = {"aug": aug_gen, **{f"stream.{n}": b.generator for n, b in loaders.items() if _has_generator(b)}}
    logs: list[dict] = []
    step = start = 0
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        state = _load_state(checkpoint, cfg, model, opt, generators)
        if state is not None:
            start, step, logs = state["epoch"], state["step"], state["logs"]
    modes = KeptModes(model)
    _train_keeping_frozen(model, modes.modes)
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress, leave=False)
    try:
        for epoch in range(start, cfg.epochs):
            losses = []
            t_epoch = time.perf_counter()
            for streams in objective.phases(epoch):
                driver, others = streams[0], streams[1:]
                for batch in loaders[driver]:
                    if step >= total:
                        break
                    batches = {driver: prep(batch)}
                    batches.update({s: prep(next(cycles[s])) for s in others})
                    for g in opt.param_groups:
                        g["lr"] = cfg.lr * _lr_factor(cfg, step, total)
                    opt.zero_grad(set_to_none=True)
                    try:
                        loss = objective.backward(model, batches, StepInfo(epoch, step, total))
                    except IndexError as err:  # what cross_entropy raises for labels >= classes
                        raise ValueError(
                            f"{desc}: a batch's labels do not fit the model's outputs ({err}); "
                            "labels must lie in [0, number of classes)"
                        ) from None
                    if not math.isfinite(loss):
                        raise FloatingPointError(
                            f"{desc}: the loss became {loss} at step {step}; lower the learning rate"
                        )
                    masked_step(opt, named, masks, frozen, clip)
                    losses.append(loss)
                    step += 1
                    bar.update(1)
            logs.append(
                {
                    "epoch": epoch,
                    "steps": step,
                    "loss": sum(losses) / max(1, len(losses)),
                    "seconds": time.perf_counter() - t_epoch,  # kept across resumes: the run's real cost
                }
            )
            if step >= total or objective.finished(model):
                break
            if checkpoint is not None:
                _save_state(checkpoint, cfg, model, opt, generators, {"epoch": epoch + 1, "step": step, "logs": logs})
    finally:
        bar.close()
        modes.restore()
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return logs


_STATE_KEY = "eraser_fit_state"


def _has_generator(batches) -> bool:
    return isinstance(getattr(batches, "generator", None), torch.Generator)


def _config_json(cfg: TrainConfig) -> str:
    return json.dumps(asdict(cfg), sort_keys=True, default=str)


def _save_state(
    path: Path, cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer, generators: dict, meta: dict
) -> None:
    """Everything the loop needs to continue after this epoch, as one safetensors file (no pickle)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for idx, st in opt.state_dict()["state"].items():
        for name, value in st.items():
            if value is not None:
                tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors.update({f"gen.{name}": g.get_state() for name, g in generators.items()})
    header = {_STATE_KEY: json.dumps({**meta, "config": _config_json(cfg)})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)


def _load_state(
    path: Path, cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer, generators: dict
) -> dict | None:
    """Restore a state :func:`_save_state` wrote for this config; None (train from the start) when
    there is none, or it is unreadable or from another config (said in a warning)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})[_STATE_KEY])
        tensors = load_file(str(path))
        if meta["config"] != _config_json(cfg):
            warnings.warn(f"{path} was written for another training config; training from the start", stacklevel=3)
            return None
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        own = model.state_dict()
        if {k: tuple(v.shape) for k, v in weights.items()} != {k: tuple(v.shape) for k, v in own.items()}:
            raise ValueError("its weights do not fit the model")
        params = [p for g in opt.param_groups for p in g["params"]]
        state: dict = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                if int(idx) >= len(params) or (value.dim() and value.shape != params[int(idx)].shape):
                    raise ValueError(f"its optimiser state {key} does not fit the parameters")
                state.setdefault(int(idx), {})[name] = value
        gens = {name: tensors[f"gen.{name}"] for name in generators}
        resumed = {"epoch": int(meta["epoch"]), "step": int(meta["step"]), "logs": list(meta["logs"])}
    except Exception as err:  # a damaged or foreign file: never trusted, never fatal
        warnings.warn(f"cannot resume from {path} ({err}); training from the start", stacklevel=3)
        return None
    # everything was checked: only now is the model touched
    model.load_state_dict(weights)
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    for name, g in generators.items():
        g.set_state(gens[name])
    return resumed


def _check_masks(model: nn.Module, trainable: dict[str, Tensor]) -> None:
    """Every ``trainable`` mask must name a parameter of ``model`` and have its shape."""
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for name, mask in trainable.items():
        if name not in shapes:
            known = list(shapes)
            listed = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
            raise ValueError(f"trainable mask {name!r} names no parameter of the model; parameters: {listed}")
        if tuple(mask.shape) != shapes[name]:
            raise ValueError(
                f"trainable mask {name!r} has shape {tuple(mask.shape)}; "
                f"the parameter {name!r} has shape {shapes[name]}"
            )


def _train_keeping_frozen(model: nn.Module, modes: dict[nn.Module, bool]) -> None:
    """Train mode, but a submodule recorded in eval under a parent in train mode keeps its subtree's recorded modes."""
    model.train()
    # A fully-eval model (as loaded for evaluation) trains as a whole; only eval inside train is a deliberate freeze.
    for parent in model.modules():
        for child in parent.children():
            if modes[parent] and not modes[child]:
                for m in child.modules():
                    m.training = modes[m]


def _to(batch, param: Tensor, device: torch.device) -> Batch:
    x, y = batch[0], batch[1]
    return to_model(x, param, device), torch.as_tensor(y).to(device).long()


def _channels_last(batch: Batch) -> Batch:
    x, y = batch
    return (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x), y


def _crop_flip(batch: Batch, generator: torch.Generator, pad: int = 4) -> Batch:
    """Random-offset crop of the zero-padded images and a random horizontal flip, per sample."""
    x, y = batch
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    flip = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    for i in range(n):
        if flip[i]:
            out[i] = out[i].flip(-1)
    return out, y
