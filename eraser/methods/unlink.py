"""Unlink: training-free removal of the forget subspace from layer weights."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..capture import collect_grams
from ..data import DataLike
from ..patch import ErasurePatch, LayerEdit
from ..registry import register_method
from ..subspace import Gram, Subspace, forget_subspace, rayleigh_subspace
from ..targets import resolve_targets
from ..layers import layer_kind

__all__ = ["UnlinkConfig", "RayleighUnlinkConfig", "unlink", "unlink_rayleigh", "unlink_from_grams", "fit_subspace"]

VARIANTS = ("auto", "svd", "rayleigh")


@dataclass
class UnlinkConfig:
    """Settings of Unlink; serialised into every patch's metadata.

    variant: ``"svd"`` (forget data only), ``"rayleigh"`` (forget vs retain, oblique projection)
    or ``"auto"`` (rayleigh when retain data is given, else svd).
    k / energy / sv_ratio / tail_beta: how many directions (at most one of them). With none set,
    svd keeps the directions with singular value >= DEFAULT_SV_RATIO * the largest, and rayleigh
    uses k = DEFAULT_RAYLEIGH_K (lowered to the forget features' rank). docs/defaults.md has the
    evidence for this rule.
    ridge: Rayleigh regulariser, as a fraction of trace(C_rr)/d.
    strength: scales the removal, ``W* = W - strength * W U diag(eta) U^T``. 1 removes the
        subspace; 2 reflects it (the concept's features point the other way, which steers
        generations away from the concept, like a negative guidance; still a low-rank,
        reversible edit); values in (0, 1) only weaken it.
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
    strength: float = 1.0
    batch_size: int = 64
    exact_revert: bool | str = "auto"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {self.variant!r}")
        given = [n for n in ("k", "energy", "tail_beta", "sv_ratio") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"set only one of k, energy, tail_beta, sv_ratio (got {given})")
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be a positive integer; got {self.k!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {self.batch_size}")
        if not 0.0 < float(self.strength) <= 2.0:
            raise ValueError(f"strength must be in (0, 2] (1 removes the subspace, 2 reflects it); got {self.strength!r}")
        choices = {"auto": "auto", "true": True, "1": True, "false": False, "0": False}
        value = str(self.exact_revert).lower() if not isinstance(self.exact_revert, bool) else self.exact_revert
        if value not in (True, False, *choices):
            raise ValueError(f"exact_revert must be true, false or 'auto'; got {self.exact_revert!r}")
        self.exact_revert = choices.get(value, value) if isinstance(value, str) else value

    def resolved_variant(self, has_retain: bool) -> str:
        if self.variant == "auto":
            return "rayleigh" if has_retain else "svd"
        if self.variant == "rayleigh" and not has_retain:
            raise ValueError("variant='rayleigh' needs retain data; pass retain_data or use variant='svd'.")
        return self.variant


# Chosen on two real heads (benchmarks/classifier_heads.py, docs/defaults.md): a feature spectrum
# dominated by one direction (CIFAR ResNet-20, 64-d) gives k=1, a spread one (EfficientNet, 1280-d)
# gives k=2-3; the oblique Rayleigh variant at k=3, ridge 0.1 holds on both.
DEFAULT_SV_RATIO = 0.3
DEFAULT_RAYLEIGH_K = 3


def fit_subspace(forget: Gram, retain: Gram | None, cfg: UnlinkConfig) -> Subspace:
    """The subspace to remove for one layer (one group) from its feature statistics."""
    variant = cfg.resolved_variant(retain is not None)
    if variant == "rayleigh":
        if cfg.energy is not None or cfg.tail_beta is not None or cfg.sv_ratio is not None:
            raise ValueError("the rayleigh variant takes k only (not energy, tail_beta or sv_ratio)")
        if cfg.k is not None:
            return rayleigh_subspace(forget, retain, cfg.k, ridge=cfg.ridge)
        return rayleigh_subspace(forget, retain, DEFAULT_RAYLEIGH_K, ridge=cfg.ridge, clip_k=True)
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


@register_method("unlink", config=UnlinkConfig, training_free=True)
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
    if cfg.resolved_variant(retain is not None) == "svd":
        retain = None  # the svd variant does not use retain data: do not spend a pass on it
    targets = resolve_targets(model, cfg.layers)
    _check_weights(targets)
    t0 = time.perf_counter()
    kw = dict(device=device, batch_size=cfg.batch_size, progress=progress)
    f_grams = collect_grams(model, targets, forget, what="forget data", **kw)
    r_grams = collect_grams(model, targets, retain, what="retain data", **kw) if retain is not None else None
    capture_s = time.perf_counter() - t0
    patch = unlink_from_grams(model, f_grams, r_grams, config=cfg, names=names)
    patch.metadata["timing_s"]["capture"] = capture_s
    return patch


@dataclass
class RayleighUnlinkConfig(UnlinkConfig):
    """Unlink's retain-aware (oblique Rayleigh) variant; needs retain data."""

    variant: str = "rayleigh"


@register_method("unlink_rayleigh", config=RayleighUnlinkConfig, training_free=True, needs_retain=True)
def unlink_rayleigh(model, forget, retain, *, config: RayleighUnlinkConfig | None = None, **kw) -> ErasurePatch:
    """Unlink (Rayleigh): remove the directions that separate forget from retain features."""
    return unlink(model, forget, retain, config=config or RayleighUnlinkConfig(), **kw)


def unlink_from_grams(
    model: nn.Module,
    forget: dict[str, list[Gram]],
    retain: dict[str, list[Gram]] | None = None,
    *,
    config: UnlinkConfig | None = None,
    names: list[str] | None = None,
) -> ErasurePatch:
    """Unlink from feature statistics already captured (per layer name, one Gram per group).

    Grams add up, so statistics captured once per class can be combined for any forget/retain
    split without running the model again.
    """
    cfg = config or UnlinkConfig()
    variant = cfg.resolved_variant(retain is not None)
    targets = resolve_targets(model, list(forget))
    t0 = time.perf_counter()
    edits = {}
    # Layers fed the same statistics (e.g. every cross-attention K/V of a UNet) share one fit,
    # and one basis tensor, which the patch file then stores once.
    fitted: dict[tuple[int, ...], tuple[Tensor, Tensor, Tensor | None]] = {}
    for name, mod in targets.items():
        kind = layer_kind(mod)
        key = tuple(id(g) for g in forget[name]) + tuple(id(g) for g in (retain[name] if retain else ()))
        if key not in fitted:
            subs = []
            for g, fg in enumerate(forget[name]):
                try:
                    subs.append(fit_subspace(fg, retain[name][g] if retain else None, cfg))
                except ValueError as err:
                    raise ValueError(f"layer {name!r}: {err} The model was not changed.") from None
            basis, eta, dual = _stack(subs)
            fitted[key] = (basis, eta * float(cfg.strength), dual)
        basis, eta, dual = fitted[key]
        edits[name] = LayerEdit(name, kind.name, tuple(kind.weight(mod).shape), basis, eta, dual)
    patch = ErasurePatch(
        edits,
        metadata={
            "method": "unlink",
            "variant": variant,
            "config": asdict(cfg),
            "names": list(names) if names else [],
            "layers": list(targets),
            "base_model": type(model).__name__,
            "library_version": _version(),
        },
    )
    t1 = time.perf_counter()
    patch.exact_revert = cfg.exact_revert
    patch.apply(model, _fresh=True)  # fingerprints base and result while editing
    t2 = time.perf_counter()
    patch.metadata["timing_s"] = {"fit": t1 - t0, "apply": t2 - t1}
    return patch


def _check_weights(targets: dict[str, nn.Module]) -> None:
    for name, mod in targets.items():
        if not torch.isfinite(layer_kind(mod).weight(mod)).all():
            raise ValueError(f"the weight of layer {name!r} contains NaN or Inf; the model was not changed.")


def _version() -> str:
    from .. import __version__

    return __version__
