"""Unlink: training-free removal of the forget subspace from layer weights."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from .._version import __version__
from ..capture import collect_grams
from ..data import DataLike, subsample
from ..families.clip import ImageEncoder, ZeroShotClassifier
from ..layers import layer_kind
from ..patch import MAX_EDIT_RATIO, ErasurePatch, LayerEdit, edit_size_ratio
from ..registry import register_method
from ..subspace import (
    Gram,
    Subspace,
    balanced_rayleigh_subspace,
    forget_subspace,
    head_rows_subspace,
    protected_rows_subspace,
    rayleigh_subspace,
    regression_subspace,
)
from ..targets import PRESETS, resolve_targets

__all__ = [
    "UnlinkConfig",
    "RayleighUnlinkConfig",
    "unlink",
    "unlink_rayleigh",
    "unlink_from_grams",
    "fit_subspace",
    "classifier_head",
    "forget_classes_from_counts",
]

VARIANTS = ("auto", "svd", "rayleigh", "regression", "head")


# Measured on the CIFAR-10 ResNet-20 tier (64-d head, classes 0 and 3; docs/defaults.md): from 1024
# retain samples on, UA stays within 0.1 and RA within 0.25 points of capturing all 45,000, in 10 s
# instead of 80 s. Wider layers than ~1000 inputs get a rank-deficient statistic (the ridge keeps
# it positive definite); raise it, or pass None, for those.
DEFAULT_RETAIN_SAMPLES = 1024


@dataclass
class UnlinkConfig:
    """Settings of Unlink; serialised into every patch's metadata.

    variant: ``"svd"`` (forget data only), ``"rayleigh"`` (forget vs retain, oblique projection),
    ``"regression"`` (forget vs retain, the least-squares edit of
    :func:`eraser.subspace.regression_subspace`: the forget directions out, every retain feature's
    change penalised with ``retain_weight``),
    ``"head"`` (classifier head only, no retain data: the forget subspace is taken out of the
    forget classes' rows, the other classes' rows are protected, see
    :func:`eraser.subspace.head_rows_subspace`) or ``"auto"``: rayleigh when retain data is given,
    else head on the model's classifier head (a Linear, unless tail_beta is set: random/instance
    forgetting is not a class) and svd on every other layer.
    k / energy / sv_ratio / tail_beta: how many directions (at most one of them). With none set,
    svd keeps the directions with singular value >= DEFAULT_SV_RATIO * the largest, head those
    >= DEFAULT_HEAD_SV_RATIO * the largest, and rayleigh uses k = DEFAULT_RAYLEIGH_K (lowered to
    the forget features' rank). docs/defaults.md has the evidence for this rule.
    ridge: regulariser of the retain statistic (Rayleigh: C_rr; head: the protected rows' Gram;
        regression: C_ff + retain_weight C_rr), as a fraction of its trace/d.
    retain_weight: the regression variant's weight of the retain features' change against the
        forget features' (both as second moments, so 1 weighs them alike).
    classes: head variant: the forget classes (indices of the head's outputs). None: the classes
        the model predicts for the forget data (see DEFAULT_FORGET_CLASS_SHARE).
    strength: scales the removal, ``W* = W - strength * W U diag(eta) U^T``. 1 removes the
        subspace; 2 reflects it (the concept's features point the other way, which steers
        generations away from the concept, like a negative guidance; still a low-rank,
        reversible edit); values in (0, 1) only weaken it.
    retain_samples: capture the retain statistics on at most this many retain samples (drawn with
        ``seed``; default ``DEFAULT_RETAIN_SAMPLES``); None: all of them. A thousand samples pin
        down a classifier head's retain second moment, and capturing a whole training set costs
        minutes (docs/defaults.md).
    seed: the draw of ``retain_samples``.
    exact_revert: keep the edited layers' original weights in memory so that ``revert`` is
        bit-exact (costs their size in memory; without it revert is exact up to rounding).
        ``"auto"`` keeps them when they are at most 5% of the model's parameter memory
        (``eraser.patch.EXACT_REVERT_BUDGET``): SD 1.x K/V yes, SDXL's (10.5%) no.
    """

    layers: str | list[str] = "head"
    k: int | None = None
    energy: float | None = None
    tail_beta: float | None = None
    sv_ratio: float | None = None
    variant: str = "auto"
    ridge: float = 0.1
    retain_weight: float = 1.0
    strength: float = 1.0
    batch_size: int = 64
    exact_revert: bool | str = "auto"
    classes: list[int] | None = None
    retain_samples: int | None = DEFAULT_RETAIN_SAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {self.variant!r}")
        if self.classes is not None:
            given = [self.classes] if isinstance(self.classes, int) else list(self.classes)
            if not given or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in given):
                raise ValueError(
                    f"classes must be a non-empty list of class indices (integers >= 0); got {self.classes!r}"
                )
            self.classes = sorted(set(given))
        given = [n for n in ("k", "energy", "tail_beta", "sv_ratio") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"set only one of k, energy, tail_beta, sv_ratio (got {given})")
        if (
            isinstance(self.retain_weight, bool)
            or not isinstance(self.retain_weight, (int, float))
            or not (0.0 < float(self.retain_weight) < float("inf"))
        ):
            raise ValueError(f"retain_weight must be a number > 0; got {self.retain_weight!r}")
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be a positive integer; got {self.k!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {self.batch_size}")
        if self.retain_samples is not None and (
            not isinstance(self.retain_samples, int) or isinstance(self.retain_samples, bool) or self.retain_samples < 1
        ):
            raise ValueError(f"retain_samples must be a positive integer or None (all); got {self.retain_samples!r}")
        if not 0.0 < float(self.strength) <= 2.0:
            raise ValueError(
                f"strength must be in (0, 2] (1 removes the subspace, 2 reflects it); got {self.strength!r}"
            )
        choices = {"auto": "auto", "true": True, "1": True, "false": False, "0": False}
        value = str(self.exact_revert).lower() if not isinstance(self.exact_revert, bool) else self.exact_revert
        if value not in (True, False, *choices):
            raise ValueError(f"exact_revert must be true, false or 'auto'; got {self.exact_revert!r}")
        self.exact_revert = choices.get(value, value) if isinstance(value, str) else value

    def resolved_variant(self, has_retain: bool) -> str:
        """The variant for a layer that is not a classifier head (``auto``: rayleigh or svd)."""
        if self.variant == "auto":
            return "rayleigh" if has_retain else "svd"
        if self.variant in ("rayleigh", "regression") and not has_retain:
            raise ValueError(f"variant={self.variant!r} needs retain data; pass retain_data or use variant='svd'.")
        return self.variant

    def layer_variant(self, has_retain: bool, head: bool) -> str:
        """The variant for one layer; ``head``: it is the model's classifier head, forget classes known."""
        if self.variant == "auto" and head and not has_retain and self.tail_beta is None:
            return "head"
        variant = self.resolved_variant(has_retain)
        if variant == "head" and not head:
            raise ValueError(
                "variant='head' edits the classifier head (a Linear whose outputs are the classes); "
                "target it with layers='head', or use variant='svd' for other layers."
            )
        return variant


# Chosen on two real heads (benchmarks/classifier_heads.py, docs/defaults.md): a feature spectrum
# dominated by one direction (CIFAR ResNet-20, 64-d) gives k=1, a spread one (EfficientNet, 1280-d)
# gives k=2-3; the oblique Rayleigh variant at k=3, ridge 0.1 holds on both.
DEFAULT_SV_RATIO = 0.3
DEFAULT_RAYLEIGH_K = 3
# Without retain data, on a classifier head (issue 18; benchmarks/classifier_heads.py, docs/defaults.md):
# the other classes' rows are protected, so removing more of the forget features costs them little,
# while the svd default's rank (k=1 on ResNet-20) leaves UA well under 95 there.
DEFAULT_HEAD_SV_RATIO = 0.1
# A class is a forget class when the model predicts it for at least this share of the forget
# samples that its most predicted class gets: the class itself and any class the model confuses it
# with about as often (Imagenette's cassette player images, often called tape player), not the odd
# misclassification (the benchmark's `forget` column).
DEFAULT_FORGET_CLASS_SHARE = 0.5


def forget_classes_from_counts(counts: Tensor, share: float = DEFAULT_FORGET_CLASS_SHARE) -> list[int]:
    """The forget classes from how often the model predicts each class for the forget data."""
    counts = torch.as_tensor(counts)
    if counts.ndim != 1 or int(counts.max()) <= 0:
        raise ValueError("the model predicted no class for the forget data.")
    return torch.nonzero(counts >= share * counts.max()).flatten().tolist()


def fit_subspace(
    forget: Gram,
    retain: Gram | None,
    cfg: UnlinkConfig,
    *,
    head_weight: Tensor | None = None,
    forget_classes: Sequence[int] = (),
    default_k: int = DEFAULT_RAYLEIGH_K,
) -> Subspace:
    """The subspace to remove for one layer (one group) from its feature statistics.

    ``head_weight`` and ``forget_classes``: the layer is a classifier head with these forget classes
    (enables the head variant). ``default_k``: the rayleigh variant's rank when the config sets no
    ``k`` (lowered to the forget features' rank).
    """
    variant = cfg.layer_variant(retain is not None, head_weight is not None)
    if variant == "head":
        if cfg.k is None and cfg.energy is None and cfg.tail_beta is None and cfg.sv_ratio is None:
            return head_rows_subspace(
                forget, head_weight, forget_classes, ridge=cfg.ridge, sv_ratio=DEFAULT_HEAD_SV_RATIO
            )
        return head_rows_subspace(
            forget,
            head_weight,
            forget_classes,
            ridge=cfg.ridge,
            k=cfg.k,
            energy=cfg.energy,
            tail_beta=cfg.tail_beta,
            sv_ratio=cfg.sv_ratio,
        )
    if variant == "rayleigh":
        if cfg.energy is not None or cfg.tail_beta is not None or cfg.sv_ratio is not None:
            raise ValueError("the rayleigh variant takes k only (not energy, tail_beta or sv_ratio)")
        if retain.parts is not None:  # one statistic per retain concept: protect each of them
            return balanced_rayleigh_subspace(
                forget,
                retain.parts,
                cfg.k or default_k,
                shared=retain.shared,
                rounds=getattr(cfg, "balance_rounds", 1),
                contrast=getattr(cfg, "contrast", 0.0),
                fragility=getattr(cfg, "fragility", 0.0),
                ridge=cfg.ridge,
                clip_k=cfg.k is None,
            )[0]
        if cfg.k is not None:
            return rayleigh_subspace(forget, retain, cfg.k, ridge=cfg.ridge)
        return rayleigh_subspace(forget, retain, default_k, ridge=cfg.ridge, clip_k=True)
    if variant == "regression":
        if cfg.energy is not None or cfg.tail_beta is not None or cfg.sv_ratio is not None:
            raise ValueError("the regression variant takes k only (not energy, tail_beta or sv_ratio)")
        return regression_subspace(
            forget,
            retain,
            cfg.k or default_k,
            retain_weight=float(cfg.retain_weight),
            ridge=cfg.ridge,
            clip_k=cfg.k is None,
        )
    if cfg.k is None and cfg.energy is None and cfg.tail_beta is None and cfg.sv_ratio is None:
        return forget_subspace(forget, sv_ratio=DEFAULT_SV_RATIO)
    return forget_subspace(forget, k=cfg.k, energy=cfg.energy, tail_beta=cfg.tail_beta, sv_ratio=cfg.sv_ratio)


def _stack(subs: list[Subspace]) -> tuple[Tensor, Tensor, Tensor | None]:
    """Stack per-group subspaces into (G, D, k) tensors, padding smaller ones with eta = 0."""
    k = max(s.k for s in subs)
    d = subs[0].basis.shape[0]

    def pad(t: Tensor, rows: int) -> Tensor:
        out = torch.zeros(rows, k, dtype=torch.float64)
        out[:, : t.shape[1]] = t
        return out

    basis = torch.stack([pad(s.basis, d) for s in subs])
    eta = torch.stack([pad(s.eta.unsqueeze(0), 1)[0] for s in subs])
    dual = torch.stack([pad(s.dual, d) for s in subs]) if subs[0].dual is not None else None
    return basis, eta, dual


@register_method("unlink", config=UnlinkConfig, training_free=True, returns="patch")
def unlink(
    model: nn.Module,
    forget: DataLike,
    retain: DataLike | None = None,
    *,
    config: UnlinkConfig | None = None,
    device: torch.device | str | None = None,
    names: list[str] | None = None,
    progress: bool = False,
) -> ErasurePatch:
    """Unlink: project the forget data's feature subspace out of the target layers (training-free)."""
    cfg = config or UnlinkConfig()
    if cfg.resolved_variant(retain is not None) in ("svd", "head"):
        retain = None  # these variants do not use retain data: do not spend a pass on it
    # CLIP: a zero-shot classifier's classes are text embeddings read through the image projection,
    # which has its own retain-free default (None: the generic path below).
    if retain is None and isinstance(model, ZeroShotClassifier):
        patch = _unlink_zero_shot(model, forget, cfg, device=device, names=names, progress=progress)
        if patch is not None:
            return patch
    if retain is None and isinstance(model, ImageEncoder):
        _refuse_image_encoder(cfg)
    targets = resolve_targets(model, cfg.layers)
    _check_weights(targets)
    head = classifier_head(model, targets) if retain is None and cfg.variant in ("auto", "head") else None
    if head is not None and cfg.layer_variant(False, True) != "head":
        head = None  # auto with tail_beta: random/instance forgetting keeps the svd variant
    t0 = time.perf_counter()
    kw = dict(device=device, batch_size=cfg.batch_size, progress=progress)
    # The forget classes are what the model predicts for the forget data, counted in the same pass.
    with _prediction_counts(targets[head] if head is not None and cfg.classes is None else None) as counts:
        f_grams = collect_grams(model, targets, forget, what="forget data", **kw)
    if retain is not None and cfg.retain_samples is not None:
        retain = subsample(retain, cfg.retain_samples, cfg.seed)
    r_grams = collect_grams(model, targets, retain, what="retain data", **kw) if retain is not None else None
    capture_s = time.perf_counter() - t0
    classes = forget_classes_from_counts(counts) if counts is not None else None
    patch = unlink_from_grams(model, f_grams, r_grams, config=cfg, names=names, forget_classes=classes, targets=targets)
    patch.metadata["timing_s"]["capture"] = capture_s
    if counts is not None and "forget_classes" in patch.metadata:
        patch.metadata["forget_classes_from"] = "predictions"
    if counts is not None:
        top = torch.argsort(counts, descending=True, stable=True)
        patch.metadata["forget_predictions"] = [[int(c), int(counts[c])] for c in top if counts[c] > 0]
    return patch


def _unlink_zero_shot(
    model: ZeroShotClassifier,
    forget: DataLike,
    config: UnlinkConfig,
    *,
    device: torch.device | str | None = None,
    names: list[str] | None = None,
    progress: bool = False,
) -> ErasurePatch | None:
    """Unlink's retain-free default on a zero-shot CLIP classifier: the image projection ``P`` (else
    the head) loses the forget images' feature subspace ``U`` (its input features; every direction
    with singular value >= 0.1 x the largest, as the head variant) from what the forget classes
    read, ``W* = P - P V U^T``, with the dual ``V`` chosen so that the other classes' rows read
    through it, ``T_R P``, do not change at all (see :func:`eraser.subspace.protected_rows_subspace`).
    The forget classes are those the classifier predicts for the forget data (as the head variant),
    or ``classes=[...]``. Returns None (the generic path) for explicit layers, the svd/rayleigh
    variants, ``tail_beta`` (random forgetting), or forget data predicted as every class.
    """
    if config.layers != "head" or config.variant not in ("auto", "head") or config.tail_beta is not None:
        return None
    layer = model.projection_layer() or "head"
    modules = dict(model.named_modules())
    targets = {layer: modules[layer]}
    _check_weights({**targets, "head": model.head})
    t0 = time.perf_counter()
    with _prediction_counts(model.head if config.classes is None else None) as counts:
        grams = collect_grams(
            model, targets, forget, device=device, batch_size=config.batch_size, what="forget data", progress=progress
        )
    capture_s = time.perf_counter() - t0
    n_classes = model.head.out_features
    classes = list(config.classes) if config.classes is not None else forget_classes_from_counts(counts)
    if classes[-1] >= n_classes:
        raise ValueError(
            f"classes must be class indices in [0, {n_classes}); got {classes}. The model was not changed."
        )
    if len(classes) >= n_classes:
        return None  # every class is to be forgotten: nothing to protect (the generic path notes it)
    t1 = time.perf_counter()
    kind = layer_kind(targets[layer])
    weight = kind.weight(targets[layer]).detach()
    head = model.head.weight.detach()
    rows = head if layer == "head" else head.double() @ weight.double()  # the classes' rows on the layer's input
    selectors = {n: getattr(config, n) for n in ("k", "energy", "sv_ratio") if getattr(config, n) is not None}
    try:
        sub, protection = protected_rows_subspace(
            grams[layer][0], rows, classes, ridge=config.ridge, **(selectors or {"sv_ratio": DEFAULT_HEAD_SV_RATIO})
        )
    except ValueError as err:
        raise ValueError(f"layer {layer!r}: {err} The model was not changed.") from None
    basis, eta, dual = _stack([sub])
    edit = LayerEdit(layer, kind.name, tuple(weight.shape), basis, eta * float(config.strength), dual)
    patch = ErasurePatch(
        {layer: edit},
        metadata={
            "method": "unlink",
            "variant": "head",
            "config": asdict(config),
            "names": list(names) if names else [],
            "layers": [layer],
            "base_model": type(model).__name__,
            "library_version": __version__,
            "head_layer": "head",
            "read_through": layer if layer != "head" else None,
            "forget_classes": classes,
            "protected_classes": sorted(set(range(n_classes)) - set(classes)),
            "forget_classes_from": "config" if config.classes is not None else "predictions",
            "protection": protection,
        },
    )
    if counts is not None:
        top = torch.argsort(counts, descending=True, stable=True)
        patch.metadata["forget_predictions"] = [[int(c), int(counts[c])] for c in top if counts[c] > 0]
    t2 = time.perf_counter()
    patch.exact_revert = config.exact_revert
    patch.apply(model, _fresh=True)
    patch.metadata["timing_s"] = {"capture": capture_s, "fit": t2 - t1, "apply": time.perf_counter() - t2}
    return patch


def _refuse_image_encoder(config: UnlinkConfig) -> None:
    """The default ``layers="head"`` has no meaning on CLIP's image path (its outputs are
    embeddings, not classes): refused with what to do instead."""
    if config.layers == "head":
        raise ValueError(
            "ImageEncoder outputs image embeddings, not classes, so there is no classifier head for "
            "the default layers='head'. For the retain-free default, erase from "
            "eraser.families.clip.zero_shot_classifier(model, tokenizer, class_prompts); or name the "
            "layers, e.g. layers=['model.visual_projection']. The model was not changed."
        )


def classifier_head(model: nn.Module, targets: dict[str, nn.Module]) -> str | None:
    """The target that is the model's classifier head (the ``"head"`` preset's layer) if it is a
    Linear with at least two outputs (its outputs are taken as the class logits), else None."""
    for name in PRESETS["head"](model):
        mod = targets.get(name)
        if isinstance(mod, nn.Linear) and mod.out_features >= 2:
            return name
    return None


@contextmanager
def _prediction_counts(module: nn.Module | None) -> Iterator[Tensor | None]:
    """Within the block, count how often each output of ``module`` (the classifier head) is the largest."""
    if module is None:
        yield None
        return
    counts = torch.zeros(module.out_features, dtype=torch.long)

    def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
        top = out.detach().reshape(-1, out.shape[-1]).argmax(-1).cpu()
        counts.add_(torch.bincount(top, minlength=counts.numel()))

    handle = module.register_forward_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()


@dataclass
class RayleighUnlinkConfig(UnlinkConfig):
    """Unlink's retain-aware (oblique Rayleigh) variant; needs retain data."""

    variant: str = "rayleigh"


@register_method("unlink_rayleigh", config=RayleighUnlinkConfig, training_free=True, needs_retain=True, returns="patch")
def unlink_rayleigh(model, forget, retain, *, config: RayleighUnlinkConfig | None = None, **kw) -> ErasurePatch:
    """Unlink (Rayleigh): remove the directions that separate forget from retain features."""
    return unlink(model, forget, retain, config=config or RayleighUnlinkConfig(), **kw)


def bounded_fit(
    fit: Callable[[UnlinkConfig], tuple[Tensor, Tensor, Tensor | None]],
    cfg: UnlinkConfig,
    variant: str,
    weights: Sequence[Tensor],
) -> tuple[tuple[Tensor, Tensor, Tensor | None], float]:
    """``fit(cfg)`` (a layer edit's basis, eta, dual), with the regression variant's ridge raised
    until the edit of every weight in ``weights`` is within the patch size bound; returns the edit
    and the ridge used.

    The least-squares edit grows where the features have little energy; a larger ridge bounds it
    (docs/defaults.md): the smallest ridge of a x3 ladder that keeps every edit within
    ``EDIT_RATIO_TARGET * MAX_EDIT_RATIO``, at most ``REGRESSION_MAX_RIDGE``. Other variants: one fit.
    """
    ridge = float(cfg.ridge)
    while True:
        edit = fit(replace(cfg, ridge=ridge) if ridge != cfg.ridge else cfg)
        if variant != "regression" or ridge >= REGRESSION_MAX_RIDGE:
            return edit, ridge
        if max(edit_size_ratio(w, *edit) for w in weights) <= EDIT_RATIO_TARGET * MAX_EDIT_RATIO:
            return edit, ridge
        ridge *= 3.0


def unlink_from_grams(
    model: nn.Module,
    forget: dict[str, list[Gram]],
    retain: dict[str, list[Gram]] | None = None,
    *,
    config: UnlinkConfig | None = None,
    names: list[str] | None = None,
    forget_classes: Sequence[int] | None = None,
    targets: dict[str, nn.Module] | None = None,
    base_model: str | None = None,
    default_k: int = DEFAULT_RAYLEIGH_K,
) -> ErasurePatch:
    """Unlink from feature statistics already captured (per layer name, one Gram per group).

    Grams add up, so statistics captured once per class can be combined for any forget/retain
    split without running the model again. ``forget_classes`` (or the config's ``classes``, which
    wins): the classes being erased, for the head variant on the model's classifier head
    (``unlink`` takes them from the model's predictions); without them that layer gets svd.
    ``targets``: the modules of the layers in ``forget`` when the caller has resolved them already;
    ``base_model``: what the patch records as the model (default: the model's class name);
    ``default_k``: the rayleigh variant's rank when the config sets no ``k``.
    """
    cfg = config or UnlinkConfig()
    cfg.resolved_variant(retain is not None)  # a bad variant/retain combination fails before any work
    if targets is None or set(targets) != set(forget):
        targets = resolve_targets(model, list(forget))
    classes = cfg.classes if cfg.classes is not None else forget_classes
    classes = sorted({int(c) for c in classes}) if classes is not None else []
    head = classifier_head(model, targets) if classes else None
    t0 = time.perf_counter()
    edits, variants, notes = {}, {}, {}
    # Layers fed the same statistics (e.g. every cross-attention K/V of a UNet) share one fit,
    # and one basis tensor, which the patch file then stores once.
    fitted: dict[tuple, tuple[Tensor, Tensor, Tensor | None]] = {}
    keys, heads = {}, {}
    for name, mod in targets.items():
        head_weight = layer_kind(mod).weight(mod) if name == head else None
        if head_weight is not None and cfg.variant == "auto" and len(classes) >= head_weight.shape[0]:
            # Every class is to be forgotten (e.g. random samples of all classes): nothing to protect.
            head_weight, notes[name] = None, "the forget data covers every class: svd"
        try:
            variants[name] = variant = cfg.layer_variant(retain is not None, head_weight is not None)
        except ValueError as err:
            raise ValueError(f"layer {name!r}: {err} The model was not changed.") from None
        heads[name] = head_weight
        keys[name] = (
            tuple(id(g) for g in forget[name])
            + tuple(id(g) for g in (retain[name] if retain else ()))
            + ((name,) if variant == "head" else ())
        )
    ridges: dict[str, float] = {}
    for name, mod in targets.items():
        kind, key = layer_kind(mod), keys[name]
        if key not in fitted:
            sharing = [layer_kind(targets[n]).weight(targets[n]) for n in targets if keys[n] == key]

            def fit(fit_cfg: UnlinkConfig, name: str = name) -> tuple[Tensor, Tensor, Tensor | None]:
                subs = []
                for g, fg in enumerate(forget[name]):
                    try:
                        subs.append(
                            fit_subspace(
                                fg,
                                retain[name][g] if retain else None,
                                fit_cfg,
                                head_weight=heads[name],
                                forget_classes=classes,
                                default_k=default_k,
                            )
                        )
                    except ValueError as err:
                        raise ValueError(f"layer {name!r}: {err} The model was not changed.") from None
                basis, eta, dual = _stack(subs)
                return basis, eta * float(fit_cfg.strength), dual

            (basis, eta, dual), ridge = bounded_fit(fit, cfg, variants[name], sharing)
            if variants[name] == "regression":
                ridges.update({n: ridge for n in targets if keys[n] == key})
            fitted[key] = (basis, eta, dual)
        basis, eta, dual = fitted[key]
        edits[name] = LayerEdit(name, kind.name, tuple(kind.weight(mod).shape), basis, eta, dual)
    kinds = sorted(set(variants.values()))
    patch = ErasurePatch(
        edits,
        metadata={
            "method": "unlink",
            "variant": kinds[0] if len(kinds) == 1 else "+".join(kinds),
            "config": asdict(cfg),
            "names": list(names) if names else [],
            "layers": list(targets),
            "base_model": base_model or type(model).__name__,
            "library_version": __version__,
        },
    )
    if len(kinds) > 1:
        patch.metadata["layer_variants"] = variants
    if variants.get(head) == "head":
        n_rows = layer_kind(targets[head]).weight(targets[head]).shape[0]
        patch.metadata.update(
            {
                "head_layer": head,
                "forget_classes": classes,
                "protected_classes": sorted(set(range(n_rows)) - set(classes)),
                "forget_classes_from": "config" if cfg.classes is not None else "given",
            }
        )
    if notes:
        patch.metadata["notes"] = notes
    if ridges:  # the regression fit's ridge after the size ladder (one value when the layers share it)
        used = sorted(set(ridges.values()))
        patch.metadata["regression_ridge"] = used[0] if len(used) == 1 else ridges
    t1 = time.perf_counter()
    patch.exact_revert = cfg.exact_revert
    patch.apply(model, _fresh=True)  # fingerprints base and result while editing
    t2 = time.perf_counter()
    patch.metadata["timing_s"] = {"fit": t1 - t0, "apply": t2 - t1}
    return patch


REGRESSION_MAX_RIDGE = 1.0  # the ladder's last step: a heavily regularised, small edit
EDIT_RATIO_TARGET = 0.9  # share of MAX_EDIT_RATIO a regression edit may reach


def _check_weights(targets: dict[str, nn.Module]) -> None:
    for name, mod in targets.items():
        if not torch.isfinite(layer_kind(mod).weight(mod)).all():
            raise ValueError(f"the weight of layer {name!r} contains NaN or Inf; the model was not changed.")
