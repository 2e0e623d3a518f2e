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
- ``closure="none"``: Unlink's edit alone (for comparisons): its Rayleigh variant at strength 1.5,
  on which the closure and the rounds were measured (plain ``unlink`` now defaults to the
  regression fit).

With ``adversarial_rounds`` (2 by default), the method also red-teams itself: it draws the concept
with the model before the edit, learns a soft prompt against the erased model
(``eraser.training.soft_prompts``, the engine of the ``soft_prompt`` attack, on its own seeds), adds
the features that prompt makes the UNet read (outside the protected subspace) to the concept's forget
statistics, and fits the edit again, round after round.

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
from ..training.soft_prompts import SoftPromptConfig, check_pipeline, check_scheduler, learn_soft_prompt
from .unlink import _stack, bounded_fit, fit_subspace
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
    adversarial_rounds: rounds of self-red-teaming: a soft prompt (``adversarial_prompt`` plus learned
        tokens, ``eraser.training.soft_prompts``, ``adversarial_steps`` steps) is learned against the
        erased model on ``adversarial_images`` of each concept that the model drew before the edit;
        the features it makes the UNet read join the concept's forget statistics (all rounds together
        weigh as one more concept, with ``rank_per_concept`` more directions) and the edit is fitted
        again. Only the part of those features outside the subspace holding
        ``adversarial_protected_energy`` of the protected statistics is added. 0: no rounds (the
        closure alone). The default (two rounds of 30 steps on 8 images) held soft_prompt and
        textual_inversion to ASR 20 mean over five digits, against 90 for plain Unlink, in 7-8 s
        per erasure on one core of this CPU; 16 images and 60 steps held them to 0 and 10 in about
        20 s (docs/benchmarks.md, "A robust Unlink under 10 s"). Optimisation and image seeds start
        at ``adversarial_seed``. The search supports single-text-encoder pipelines (SD 1.x/2.x, the
        bundled digits model); on others (SDXL, SD3, FLUX) pass ``adversarial_rounds=0``.
    """

    # the closure and the rounds were measured on the Rayleigh fit at strength 1.5
    variant: str = "rayleigh"
    strength: float = 1.5
    ridge: float = 0.1
    closure: str = "private"
    protected_energy: float = 0.999
    private_ratio: float = 0.5
    adversarial_rounds: int = 2
    adversarial_protected_energy: float = 0.99
    adversarial_prompt: str = "a photo of"
    adversarial_images: int = 8
    adversarial_steps: int = 30
    adversarial_seed: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.closure not in CLOSURES:
            raise ValueError(f"closure must be one of {CLOSURES}; got {self.closure!r}")
        for name in ("protected_energy", "private_ratio", "adversarial_protected_energy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1]; got {value!r}")
        for name in ("adversarial_rounds", "adversarial_images", "adversarial_steps", "adversarial_seed"):
            value = getattr(self, name)
            low = 1 if name in ("adversarial_images", "adversarial_steps") else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
        if not isinstance(self.adversarial_prompt, str):
            raise ValueError(f"adversarial_prompt must be a string (a neutral prompt); got {self.adversarial_prompt!r}")
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
    rounds = int(cfg.adversarial_rounds) if stats.kv else 0
    if rounds:
        try:
            check_pipeline(pipe, "soft_prompt")
            check_scheduler(pipe, "soft_prompt")
        except (ValueError, NotImplementedError) as err:
            raise type(err)(
                f"unlink_robust's adversarial rounds run a soft-prompt search, which this pipeline does not "
                f"support ({err}); pass adversarial_rounds=0 for the closure alone. The model was not changed."
            ) from None
    # the concepts as the model draws them now, before any edit: what the attacker aims at
    t_images = time.perf_counter()
    targets = _concept_images(pipe, stats, cfg) if rounds else {}
    t_fit = time.perf_counter()
    patch = _fitted_patch(pipe, stats, cfg, stats.forget, 0)
    found: list[Tensor] = []
    log: list[dict[str, Any]] = []
    t_attack = 0.0
    applied: ErasurePatch | None = patch
    try:
        for r in range(rounds):
            t0 = time.perf_counter()
            for i, (word, images) in enumerate(targets.items()):
                sp = learn_soft_prompt(
                    pipe,
                    cfg.adversarial_prompt,
                    images,
                    _round_config(cfg, r * len(targets) + i),
                    what="unlink_robust",
                    desc=f"unlink_robust round {r + 1} {word}",
                    progress=progress,
                )
                # what the UNet reads from the learned tokens on: the attack's own features
                found.append(sp.prompt_embeds[0, sp.start :].to(torch.float64))
                log.append({"round": r + 1, "concept": word, "loss_before": sp.initial_loss, "loss_after": sp.loss})
            t_attack += time.perf_counter() - t0
            patch.revert(as_module(pipe))
            applied = None
            patch = _fitted_patch(pipe, stats, cfg, _with_found(stats, found, cfg), cfg.rank_per_concept)
            applied = patch
    except BaseException:  # an interrupted or failed round leaves the model as it was
        if applied is not None:
            applied.revert(as_module(pipe))
        raise
    patch.metadata["robust"]["adversarial"] = {
        "rounds": rounds,
        "prompt": cfg.adversarial_prompt,
        "images": int(cfg.adversarial_images),
        "steps": int(cfg.adversarial_steps),
        "seed": int(cfg.adversarial_seed),
        "found": log,
    }
    patch.metadata["timing_s"] = {
        **patch.metadata["timing_s"],
        "encode": stats.encode_s,
        "images": t_fit - t_images,
        "attack": t_attack,
        "total": time.perf_counter() - t_images + stats.encode_s,
    }
    return patch


def _round_config(cfg: RobustUnlinkConfig, index: int) -> SoftPromptConfig:
    """The soft-prompt search of one adversarial round (its own optimisation seed)."""
    return SoftPromptConfig(
        steps=int(cfg.adversarial_steps),
        batch_size=8,
        restarts=4,
        seed=int(cfg.adversarial_seed) + index,
        probe_images=min(8, int(cfg.adversarial_images)),
    )


@torch.no_grad()
def _concept_images(pipe: Any, stats: Any, cfg: RobustUnlinkConfig) -> dict[str, Tensor]:
    """``adversarial_images`` generations of each concept group's first word (``"<prompt> <word>"``)
    by the pipeline as it is, in [0, 1]; image seeds from ``adversarial_seed`` up."""
    out = {}
    n = int(cfg.adversarial_images)
    for g, group in enumerate(stats.groups or [[w] for w in stats.words]):
        word = group[0]
        prompt = " ".join(f"{cfg.adversarial_prompt} {word}".split())
        gens = [torch.Generator().manual_seed(int(cfg.adversarial_seed) + 10_000 * g + i) for i in range(n)]
        out[word] = pipe([prompt] * n, generator=gens, output_type="pt").images.float().clamp(0, 1)
    return out


def _with_found(stats: Any, found: list[Tensor], cfg: RobustUnlinkConfig) -> dict[str, list[Gram]]:
    """The forget statistics with the attacks' feature rows added to the K/V layers', each row without
    its part in the protected subspace (``adversarial_protected_energy`` of the protected statistics'
    energy: an attack that reaches the concept through a kept concept's features is not followed
    there), all rows together weighing as one more concept."""
    base = stats.forget[stats.kv[0]][0]
    rows = torch.cat(found)
    keep = energy_basis(protected_statistics(stats.retain[stats.kv[0]][0]), float(cfg.adversarial_protected_energy))
    rows = rows - (rows @ keep) @ keep.T
    merged = Gram(base.matrix + (base.n / rows.shape[0]) * (rows.T @ rows), base.n)
    return {**stats.forget, **{name: [merged] for name in stats.kv}}


def _key(forget_grams: dict[str, list[Gram]], stats: Any, name: str) -> tuple:
    """Which statistics a layer is fitted on: layers with the same key share one fit."""
    return tuple(id(g) for g in forget_grams[name]) + tuple(id(g) for g in stats.retain[name])


def _fitted_patch(
    pipe: Any, stats: Any, cfg: RobustUnlinkConfig, forget_grams: dict[str, list[Gram]], extra_k: int
) -> ErasurePatch:
    """The robust edit fitted on ``forget_grams`` (rank: the default plus ``extra_k``), applied to ``pipe``."""
    t0 = time.perf_counter()
    edits: dict[str, LayerEdit] = {}
    found: dict[str, list[dict[str, Any]]] = {}
    ridges: dict[str, float] = {}
    default_k = stats.default_k(cfg) + int(extra_k)
    # Layers fed the same statistics (every K/V projection) share one fit and one stored basis.
    fitted: dict[tuple, tuple[tuple[Tensor, Tensor, Tensor | None], list[dict[str, Any]]]] = {}
    for name, mod in stats.modules.items():
        forget, retain_g = forget_grams[name], stats.retain[name]
        key = _key(forget_grams, stats, name)
        if key not in fitted:
            infos: list[dict[str, Any]] = []

            def fit(fit_cfg: RobustUnlinkConfig, name=name, forget=forget, retain_g=retain_g, infos=infos):
                subs = []
                infos.clear()
                for fg, rg in zip(forget, retain_g):
                    try:
                        cut, info = closure_cut(fg, rg, fit_cfg)
                        # Unlink's fit on what the cut leaves of the concept: reflecting directions
                        # the cut already removed would weaken the reflection of the rest.
                        rest = gram_without(fg, cut)
                        if cut.shape[1] and float(torch.trace(rest.matrix)) <= 1e-12 * float(torch.trace(fg.matrix)):
                            sub = Subspace(
                                fg.matrix.new_zeros(fg.dim, 0), fg.matrix.new_zeros(0), fg.matrix.new_zeros(fg.dim, 0)
                            )
                        else:
                            sub = fit_subspace(rest, rg, fit_cfg, default_k=min(default_k, fg.dim // 2))
                            sub = Subspace(sub.basis, sub.eta * float(fit_cfg.strength), sub.dual, sub.spectrum)
                    except ValueError as err:
                        raise ValueError(f"layer {name!r}: {err} The model was not changed.") from None
                    subs.append(with_cut(sub, cut))
                    infos.append({**info, "reflected_rank": sub.k})
                return _stack(subs)

            sharing = [layer_kind(m).weight(m) for n, m in stats.modules.items() if _key(forget_grams, stats, n) == key]
            edit, ridge = bounded_fit(fit, cfg, stats.variant, sharing)
            if stats.variant == "regression":
                ridges[name] = ridge
            fitted[key] = (edit, infos)
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
            # the regression fit's ridge after the size ladder (see eraser.methods.unlink.bounded_fit)
            **({"regression_ridge": max(ridges.values())} if ridges else {}),
        },
    )
    t1 = time.perf_counter()
    patch.exact_revert = cfg.exact_revert
    patch.apply(as_module(pipe), _fresh=True)  # fingerprints base and result while editing
    t2 = time.perf_counter()
    patch.metadata["timing_s"] = {"encode": stats.encode_s, "fit": t1 - t0, "apply": t2 - t1}
    return patch
