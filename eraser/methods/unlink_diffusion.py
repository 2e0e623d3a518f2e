"""Unlink for text-to-image pipelines: remove concepts' text-feature subspace from cross-attention K/V."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from prompts.presets import DEFAULT_TEMPLATES, GENERIC_RETAIN

from ..families.diffusion import TOKEN_MODES, concept_grams, expand_concepts, resolve_concept_targets, text_towers
from ..patch import ErasurePatch, as_module
from ..registry import register_method
from .unlink import UnlinkConfig, unlink_from_grams

__all__ = ["ConceptUnlinkConfig", "RayleighConceptUnlinkConfig", "concept_texts", "generic_retain_for", "pipeline_id", "unlink_concepts"]


@dataclass
class ConceptUnlinkConfig(UnlinkConfig):
    """Unlink on a text-to-image pipeline; serialised into every patch's metadata.

    layers: a preset (``cross_attn_kv``, ``cross_attn_k``, ``cross_attn_v``, ``text_encoder_mlp``,
    ``text_encoder_attn``), a regular expression or a list of names over ``unet.…``/``text_encoder.…``.
    templates: each concept word is inserted into each (``"{}"`` keeps it bare); prompt rows are used as they are.
    tokens: which positions are the concept's features (see ``eraser.families.diffusion.TOKEN_MODES``).
    hidden_layer: ``auto`` (penultimate for SDXL-style UNets, else last), ``last`` or ``penultimate``.
    generic_retain: with no retain prompts, protect ``prompts.GENERIC_RETAIN`` (everyday subjects
        that share no word with the concepts) with the Rayleigh variant; the plain SVD of concept
        tokens is dominated by a direction every prompt shares. ``variant="svd"`` turns this off.
    The subspace selectors (k, energy, sv_ratio, variant, ridge) are Unlink's.
    """

    layers: str | list[str] = "cross_attn_kv"
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    tokens: str = "concept_eot"
    hidden_layer: str = "auto"
    generic_retain: bool = True
    batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokens not in TOKEN_MODES:
            raise ValueError(f"tokens must be one of {TOKEN_MODES}; got {self.tokens!r}")
        if isinstance(self.templates, str) or not self.templates:
            raise ValueError("templates must be a non-empty list of strings such as ['{}', 'a photo of {}']")
        self.templates = tuple(self.templates)
        for t in self.templates:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise ValueError(f"template {t!r} must contain '{{}}' exactly once")


@dataclass
class RayleighConceptUnlinkConfig(ConceptUnlinkConfig):
    """Unlink's retain-aware (oblique Rayleigh) variant on a pipeline; needs retain prompts."""

    variant: str = "rayleigh"


def concept_texts(items: Any, what: str) -> tuple[list[str], set[int]]:
    """Concept words/prompts as strings, and the indices of those given as prompt rows (used verbatim)."""
    if items is None:
        return [], set()
    if isinstance(items, str) or hasattr(items, "prompt"):
        items = [items]
    texts, verbatim = [], set()
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else getattr(item, "prompt", None)
        if not isinstance(text, str):
            raise TypeError(f"{what} must be strings or prompt rows; got {type(item).__name__}")
        if not text.strip():
            raise ValueError(f"{what} contain an empty string (item {i}); give a word or a prompt.")
        if not isinstance(item, str):
            verbatim.add(i)
        texts.append(" ".join(text.split()))
    if not texts:
        raise ValueError(f"{what} are empty: pass at least one concept word or prompt.")
    return texts, verbatim


_RETAIN_CACHE = "_eraser_retain_grams"


def _retain_key(pipe: Any, keep: list[str], verbatim: set[int], kv: list[str], text: dict, cfg: ConceptUnlinkConfig) -> tuple:
    """Identifies retain statistics: the prompts, the settings that shape features, and the text
    encoders' exact state (parameter storage and in-place version counters, so any edit invalidates)."""
    state = tuple((p.data_ptr(), p._version, p.dtype) for _, _, enc in text_towers(pipe) for p in enc.parameters())
    return (tuple(keep), tuple(sorted(verbatim)), tuple(kv), tuple(text), cfg.templates, cfg.tokens, cfg.hidden_layer, state)


def generic_retain_for(concepts: list[str]) -> list[str]:
    """``GENERIC_RETAIN`` without the entries that share a word with a concept (erasing "dog" must
    not protect "a dog")."""
    stop = {"a", "an", "the", "of"}
    words = {w for c in concepts for w in c.casefold().split()} - stop
    return [g for g in GENERIC_RETAIN if not (set(g.casefold().split()) - stop) & words]


def pipeline_id(pipe: Any) -> str:
    """The hub id or path a pipeline was loaded from (its class name if unknown)."""
    name = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return str(name) if name else type(pipe).__name__


@register_method("unlink", config=ConceptUnlinkConfig, training_free=True, family="diffusion")
def unlink_concepts(
    pipe: Any,
    concepts: Any,
    retain: Any = None,
    *,
    config: ConceptUnlinkConfig | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ErasurePatch:
    """Unlink: project the concepts' text-feature subspace out of cross-attention K/V (training-free)."""
    cfg = config or ConceptUnlinkConfig()
    t0 = time.perf_counter()
    towers = text_towers(pipe)
    words, verbatim = concept_texts(concepts, "concepts")
    keep, keep_verbatim = concept_texts(retain, "retain prompts")
    clash = sorted({w.casefold() for w in words} & {r.casefold() for r in keep})
    if clash:
        raise ValueError(f"{clash} are both concepts to erase and retain prompts; remove them from one list.")
    retain_source = "user" if keep else "none"
    if not keep and cfg.generic_retain and cfg.variant != "svd":
        keep, keep_verbatim, retain_source = generic_retain_for(words), set(), "generic"
    variant = cfg.resolved_variant(bool(keep))
    kv, text = resolve_concept_targets(pipe, cfg.layers)
    tokenizer = towers[0][1]
    kw = dict(tokens=cfg.tokens, hidden_layer=cfg.hidden_layer, batch_size=cfg.batch_size, device=device, progress=progress)
    forget = expand_concepts(tokenizer, words, cfg.templates, verbatim)
    f_grams, counts = concept_grams(pipe, forget, kv, text, what="concept prompts", **kw)
    empty = [w for w, n in zip(words, counts) if n == 0]
    if empty:
        raise ValueError(f"concepts {empty} have no tokens left to erase (cut off by truncation?); shorten them.")
    if cfg.k is not None and cfg.k > sum(counts):
        raise ValueError(
            f"k={cfg.k} exceeds the number of concept tokens ({sum(counts)}) the features come from; "
            "choose a smaller k, or add templates or concept words."
        )
    r_grams = None
    if variant == "rayleigh":
        key = _retain_key(pipe, keep, keep_verbatim, kv, text, cfg)
        cache = pipe.__dict__.get(_RETAIN_CACHE)
        if cache is not None and cache[0] == key:
            r_grams = cache[1]
        else:
            r_grams, _ = concept_grams(pipe, expand_concepts(tokenizer, keep, cfg.templates, keep_verbatim), kv, text,
                                       what="retain prompts", **kw)
            if not text:  # K/V statistics are one d x d matrix: cheap to keep for the next erasure
                pipe.__dict__[_RETAIN_CACHE] = (key, r_grams)
    encode_s = time.perf_counter() - t0
    patch = unlink_from_grams(as_module(pipe), f_grams, r_grams, config=cfg, names=words)
    patch.metadata.update({
        "family": "diffusion",
        "concepts": words,
        "retain": keep,
        "retain_source": retain_source,
        "base_model": pipeline_id(pipe),
        "pipeline_class": type(pipe).__name__,
        "tokens_per_concept": dict(zip(words, counts)),
    })
    patch.metadata["timing_s"]["encode"] = encode_s
    return patch


@register_method("unlink_rayleigh", config=RayleighConceptUnlinkConfig, training_free=True, needs_retain=True, family="diffusion")
def unlink_rayleigh_concepts(pipe: Any, concepts: Any, retain: Any = None, *, config: RayleighConceptUnlinkConfig | None = None, **kw) -> ErasurePatch:
    """Unlink (Rayleigh): remove the text directions that separate the concepts from the retain prompts."""
    if not retain:
        raise ValueError("unlink_rayleigh needs retain prompts (concepts to keep); pass retain=[...].")
    return unlink_concepts(pipe, concepts, retain, config=config or RayleighConceptUnlinkConfig(), **kw)

