"""A robust Unlink for text-to-image pipelines: Unlink's K/V edit, plus the removal of the concept's
directions that the kept concepts do not use, so that an attacker cannot reach them.

Unlink reflects the concept's text directions in the cross-attention key/value inputs (strength 1.5).
A reflection is invertible, and the UNet reads every direction of its K/V inputs, including those no
natural prompt produces: a soft-prompt attacker (learned token embeddings,
``evaluation.attacks.soft_prompt``) finds conditionings that draw the concept again without the
reflected directions. The robust variant composes Unlink's edit with a *removal* (strength 1, not
a reflection: no input reaches a removed direction) of directions the protected concepts do not use:

- ``closure="private"`` (default): the concept's private directions, the part of its K/V input
  features outside N, the subspace that holds ``protected_energy`` of the energy of what is
  protected (the retain concepts' features, each concept weighing the same, plus the shared
  context). Their singular directions with singular value at least ``private_ratio`` times the
  largest are removed (rank 1 for a digit of the bundled model); being outside N, they cost the
  kept concepts (almost) nothing.
- ``closure="full"``: every direction outside N (the attacker is confined to the subspace the
  protected prompts span). Only sensible when the protected statistics cover everything the model
  should still draw, e.g. a model with a small declared vocabulary (the bundled digits model's
  ``concept_bank``): on Stable Diffusion it would remove every concept the retain list does not name.
- ``closure="none"``: Unlink's edit alone (for comparisons).

Unlink's reflection is then fitted on what the removal leaves of the concept's features (reflecting
directions already removed would weaken the reflection of the rest). The edit of each K/V layer is
``W -> W (I - dual diag(eta) basis^T)(I - C C^T)`` (C: the removed directions), stored as one
low-rank :class:`eraser.patch.LayerEdit` (see :func:`eraser.subspace.with_cut`): reversible
bit-exact, saved and loaded like any Unlink patch. ``eraser bench attack`` (``evaluation.attack_bench``) measures it
against the soft-prompt attack, with what it costs the kept digits.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .._version import __version__
from ..layers import layer_kind
from ..patch import ErasurePatch, LayerEdit, as_module
from ..registry import register_method
from ..subspace import (
    Gram,
    Subspace,
    complement_basis,
    energy_basis,
    gram_without,
    private_basis,
    protected_statistics,
    with_cut,
)
from .unlink import _stack, fit_subspace
from .unlink_diffusion import ConceptUnlinkConfig, concept_statistics, pipeline_id

__all__ = ["CLOSURES", "RobustUnlinkConfig", "unlink_robust_concepts", "closure_cut"]

CLOSURES = ("private", "full", "none")


@dataclass
class RobustUnlinkConfig(ConceptUnlinkConfig):
    """Unlink (``ConceptUnlinkConfig``: every setting of the reflected edit) plus a removal of what
    the protected concepts do not use; serialised into every patch's metadata.

    closure: ``"private"`` (default: the concept's directions outside the protected subspace),
        ``"full"`` (every direction outside it) or ``"none"`` (Unlink alone); see the module docs.
    protected_energy: the protected subspace N holds this share of the protected statistics'
        energy (retain concepts weighing the same, plus the shared context).
    private_ratio: private directions with singular value at least this times the largest are removed.
    """

    closure: str = "private"
    protected_energy: float = 0.999
    private_ratio: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.closure not in CLOSURES:
            raise ValueError(f"closure must be one of {CLOSURES}; got {self.closure!r}")
        for name in ("protected_energy", "private_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1]; got {value!r}")
        if self.variant == "svd":
            raise ValueError(
                "unlink_robust protects the kept concepts (the Rayleigh fit and the protected subspace need "
                "retain statistics); variant='svd' has none. Use variant='auto' or 'rayleigh'."
            )


def closure_cut(forget: Gram, retain: Gram, cfg: RobustUnlinkConfig) -> tuple[Tensor, dict[str, Any]]:
    """The directions to remove (orthonormal d x q) for one layer's statistics, and what was found
    (the protected subspace's rank, the cut's rank, the concept's private energy share)."""
    d = forget.dim
    if cfg.closure == "none":
        return torch.zeros(d, 0, dtype=torch.float64), {"protected_rank": None, "cut_rank": 0, "private_share": None}
    keep = energy_basis(protected_statistics(retain), float(cfg.protected_energy))
    private, share = private_basis(forget, keep, float(cfg.private_ratio))
    cut = complement_basis(keep) if cfg.closure == "full" else private
    return cut, {"protected_rank": keep.shape[1], "cut_rank": cut.shape[1], "private_share": share}


@register_method("unlink_robust", config=RobustUnlinkConfig, training_free=True, family="diffusion")
def unlink_robust_concepts(
    pipe: Any,
    concepts: Any,
    retain: Any = None,
    *,
    config: RobustUnlinkConfig | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ErasurePatch:
    """Robust Unlink: Unlink's K/V edit plus the removal of the concept's directions the kept concepts do not use (training-free)."""
    cfg = config or RobustUnlinkConfig()
    if not isinstance(cfg, RobustUnlinkConfig):
        raise TypeError(f"unlink_robust takes a RobustUnlinkConfig; got {type(cfg).__name__}")
    if isinstance(retain, str) and retain.strip().casefold() == "none":
        raise ValueError(
            "unlink_robust protects the kept concepts, but retain='none' gives none; drop retain='none' "
            "(neighbours are then protected) or pass the concepts to keep."
        )
    stats = concept_statistics(pipe, concepts, retain, config=cfg, device=device, progress=progress)
    if stats.retain is None:  # pragma: no cover - the config and retain checks above rule it out
        raise ValueError("unlink_robust needs retain statistics; the model was not changed.")
    t0 = time.perf_counter()
    strength = float(cfg.strength)
    edits: dict[str, LayerEdit] = {}
    found: dict[str, list[dict[str, Any]]] = {}
    # Layers fed the same statistics (every K/V projection) share one fit and one stored basis.
    fitted: dict[tuple, tuple[tuple[Tensor, Tensor, Tensor | None], list[dict[str, Any]]]] = {}
    for name, mod in stats.modules.items():
        forget, retain_g = stats.forget[name], stats.retain[name]
        key = tuple(id(g) for g in forget) + tuple(id(g) for g in retain_g)
        if key not in fitted:
            subs, infos = [], []
            for fg, rg in zip(forget, retain_g):
                try:
                    cut, info = closure_cut(fg, rg, cfg)
                    # Unlink's fit on what the cut leaves of the concept: reflecting directions
                    # the cut already removed would weaken the reflection of the rest.
                    rest = gram_without(fg, cut)
                    if cut.shape[1] and float(torch.trace(rest.matrix)) <= 1e-12 * float(torch.trace(fg.matrix)):
                        sub = Subspace(
                            fg.matrix.new_zeros(fg.dim, 0), fg.matrix.new_zeros(0), fg.matrix.new_zeros(fg.dim, 0)
                        )
                    else:
                        sub = fit_subspace(rest, rg, cfg, default_k=stats.default_k(cfg))
                        sub = Subspace(sub.basis, sub.eta * strength, sub.dual, sub.spectrum)
                except ValueError as err:
                    raise ValueError(f"layer {name!r}: {err} The model was not changed.") from None
                subs.append(with_cut(sub, cut))
                infos.append({**info, "reflected_rank": sub.k})
            fitted[key] = (_stack(subs), infos)
        (basis, eta, dual), infos = fitted[key]
        kind = layer_kind(mod)
        edits[name] = LayerEdit(name, kind.name, tuple(kind.weight(mod).shape), basis, eta, dual)
        found[name] = infos
    first = next(iter(found.values()))[0]
    patch = ErasurePatch(
        edits,
        metadata={
            "method": "unlink_robust",
            "variant": stats.variant,
            "config": asdict(cfg),
            "names": list(stats.words),
            "layers": list(stats.modules),
            "base_model": pipeline_id(pipe),
            "library_version": __version__,
            "robust": {
                "closure": cfg.closure,
                "protected_energy": float(cfg.protected_energy),
                "private_ratio": float(cfg.private_ratio),
                # K/V layers share their statistics: the first layer's numbers are every K/V layer's
                **first,
                **({"per_layer": found} if len(fitted) > 1 else {}),
            },
            **stats.metadata(pipe, cfg),
        },
    )
    t1 = time.perf_counter()
    patch.exact_revert = cfg.exact_revert
    patch.apply(as_module(pipe), _fresh=True)  # fingerprints base and result while editing
    t2 = time.perf_counter()
    patch.metadata["timing_s"] = {"encode": stats.encode_s, "fit": t1 - t0, "apply": t2 - t1}
    return patch
