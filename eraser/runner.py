"""The one runner: any registered method on any model, with the contract every method shares.

``run_method`` looks the method up in the table (:mod:`eraser.registry`), builds its config,
checks the data against the model, computes on ``device`` and hands the model back where it
was, restores the weights if anything fails, and returns one result type, :class:`Erasure`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from ._version import __version__
from .data import is_labeled_pair, num_samples
from .families.base import pipeline_family
from .layers import KeptModes
from .patch import ErasurePatch, as_module
from .registry import get_method, make_config

__all__ = ["Erasure", "run_method"]


@dataclass
class Erasure:
    """What running a method gives.

    ``model``: what to use from now on: the model itself, edited in place, or (``returns ==
    "wrapper"``, e.g. a forget vector) a module wrapping the unchanged model. ``patch``: the
    weight change, reversible and saveable (None when the weights did not change). A trained
    method's patch holds its parameters' changes; buffers it changed (e.g. BatchNorm statistics)
    are listed in ``patch.metadata["buffers_changed"]`` and are not undone by ``revert``.
    """

    model: Any
    patch: ErasurePatch | None
    method: str
    family: str


def run_method(
    model: Any,
    forget: Any,
    retain: Any = None,
    *,
    method: str = "unlink",
    family: str = "classifier",
    config: Any = None,
    device: torch.device | str | None = None,
    names: list[str] | None = None,
    progress: bool = False,
    **overrides: Any,
) -> Erasure:
    """Run ``method`` (a registered id of ``family``) on ``model``; see :class:`Erasure`.

    ``forget``/``retain``: DataLoaders, Datasets, tensors or (inputs, labels) pairs for
    classifiers; concept words or prompts for pipelines. ``config`` is the method's config
    dataclass and ``overrides`` set its fields (``lr=0.01``); unknown names are errors. On any
    error the model's weights are as they were.
    """
    spec = get_method(method, family)
    cfg = make_config(spec.config_cls, config, overrides, method=method)
    if family == "diffusion":  # the pipeline methods check their own inputs and leave no trace on error
        _check_pipeline_family(model, method)
        return Erasure(
            model, spec.fn(model, forget, retain, config=cfg, device=device, progress=progress), method, family
        )
    if num_samples(forget) == 0:
        raise ValueError(f"method {method!r}: the forget set is empty")
    if spec.needs_retain and (retain is None or num_samples(retain) == 0):
        raise ValueError(f"method {method!r} needs a non-empty retain set; pass retain=...")
    if retain is not None and _same_data(forget, retain):
        raise ValueError(
            f"method {method!r}: the retain data is the same as the forget data, so the method would be asked "
            "to forget and keep the same samples; pass different samples as retain data (for example those "
            "of the other classes), or none."
        )
    _check_labels(model, forget, "forget", method)
    if retain is not None:
        _check_labels(model, retain, "retain", method)
    param = next(model.parameters(), None)
    home = param.device if param is not None else torch.device("cpu")
    if device is not None:
        model.to(device)
    try:
        if spec.returns == "patch":
            patch = spec.fn(
                model, forget, retain, config=cfg, device=device, names=list(names or []), progress=progress
            )
            return Erasure(model, patch, method, family)
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        t0 = time.perf_counter()
        try:
            out = spec.fn(model, forget, retain, config=cfg, device=device, progress=progress)
        except BaseException:
            _restore(model, saved)
            raise
        if spec.returns == "wrapper":
            return Erasure(out, None, method, family)
        buffers = [
            k for k, v in model.named_buffers() if k in saved and not torch.equal(v.detach().cpu(), saved[k].cpu())
        ]
        patch = ErasurePatch.from_changes(
            model,
            before,
            metadata={
                "method": method,
                "family": family,
                "config": asdict(cfg) if is_dataclass(cfg) else {},
                "names": list(names or []),
                "base_model": type(as_module(model)).__name__,
                "library_version": __version__,
                "buffers_changed": buffers,
                "timing_s": {"run": time.perf_counter() - t0},
            },
        )
        return Erasure(model, patch, method, family)
    finally:
        if device is not None:
            model.to(home)


def _check_pipeline_family(pipe: Any, method: str) -> None:
    """Refuse a method that does not support the pipeline's family (an MMDiT pipeline has no UNet)."""
    fam = pipeline_family(pipe)
    supported = getattr(fam.conditioning, "methods", None)
    if supported is not None and method not in supported:
        raise ValueError(
            f"method {method!r} is not supported on {type(pipe).__name__} ({fam.name} family: an MMDiT "
            f"transformer, no UNet); supported there: {list(supported)}. The other methods edit or train "
            "a UNet's cross-attention (attn2), which this model does not have. The pipeline was not changed."
        )


def _source(data: Any) -> Any:
    """What ``data`` reads: the input tensor of a tensor, pair or TensorDataset, a DataLoader's
    dataset when its sampler visits all of it, else ``data`` itself."""
    if isinstance(data, DataLoader):
        sampler, batches = data.sampler, data.batch_sampler
        whole = isinstance(sampler, SequentialSampler) or (
            isinstance(sampler, RandomSampler) and not sampler.replacement and sampler._num_samples is None
        )
        if whole and isinstance(batches, BatchSampler) and batches.sampler is sampler:
            return _source(data.dataset)
        return data
    if is_labeled_pair(data):
        return data[0]
    if isinstance(data, TensorDataset) and data.tensors:
        return data.tensors[0]
    return data


def _same_data(forget: Any, retain: Any) -> bool:
    """Whether ``retain`` is the forget data itself: the same object, or equal input tensors
    (compared only when shapes and dtypes match, so different data costs nothing)."""
    if forget is retain:
        return True
    a, b = _source(forget), _source(retain)
    if a is b:
        return True
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a, b.to(a.device))


def _check_labels(model: nn.Module, data: Any, what: str, method: str) -> None:
    """Labels of an (inputs, labels) pair must be classes of the model (checked on one forward)."""
    if not is_labeled_pair(data) or data[1].numel() == 0:
        return
    x, y = data
    param = next(model.parameters())
    try:
        with KeptModes(model), torch.no_grad():
            model.eval()
            out = model(x[:1].to(param.device, param.dtype))
    except RuntimeError as err:
        raise ValueError(
            f"method {method!r}: the model cannot run on the {what} inputs of shape "
            f"{tuple(x.shape[1:])} ({err}); check image size and channels"
        ) from None
    n_classes = out.shape[-1]
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(
            f"method {method!r}: {what} labels must lie in [0, {n_classes}); got [{int(y.min())}, {int(y.max())}]"
        )


def _restore(model: nn.Module, saved: dict) -> None:
    current = model.state_dict()
    if set(current) == set(saved) and all(current[k].shape == saved[k].shape for k in saved):
        model.load_state_dict(saved)
