"""Unlink for text-to-image pipelines: remove concepts' text-feature subspace from cross-attention K/V."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import torch
from torch import Tensor, nn

from prompts.bank import CONCEPT_BANK
from prompts.presets import DEFAULT_TEMPLATES, GENERIC_RETAIN

from ..capture import GramAccumulator
from ..families.base import pipeline_family
from ..families.diffusion import (
    BANK_TEMPLATES,
    TOKEN_MODES,
    Neighbours,
    balanced_gram,
    bank_features,
    centred_similarity,
    concept_features,
    concept_grams,
    concept_neighbours,
    concept_texts,
    expand_concepts,
    pipeline_id,
    resolve_concept_targets,
    text_similarity,
    text_towers,
)
from ..patch import ErasurePatch, as_module
from ..registry import register_method
from ..subspace import Gram
from .unlink import UnlinkConfig, unlink_from_grams

__all__ = [
    "ConceptStatistics",
    "ConceptUnlinkConfig",
    "RayleighConceptUnlinkConfig",
    "concept_statistics",
    "concept_texts",
    "generic_retain_for",
    "pipeline_id",
    "unlink_concepts",
]


@dataclass
class ConceptUnlinkConfig(UnlinkConfig):
    """Unlink on a text-to-image pipeline; serialised into every patch's metadata.

    layers: a preset (``cross_attn_kv``, ``cross_attn_k``, ``cross_attn_v``, ``text_encoder_mlp``,
    ``text_encoder_attn``), a regular expression or a list of names over ``unet.…``/``text_encoder.…``.
    templates: each concept word is inserted into each (``"{}"`` keeps it bare); prompt rows are used as they are.
    tokens: which positions are the concept's features (see ``eraser.families.diffusion.TOKEN_MODES``).
    hidden_layer: ``auto`` (penultimate for SDXL-style UNets, else last), ``last`` or ``penultimate``.
    retain (the ``retain=`` argument of ``erase_concepts``): ``None`` (default) protects the
        ``neighbours`` concepts of ``bank`` nearest to the erased ones in the pipeline's own text
        features (see ``eraser.families.diffusion.concept_neighbours``); ``"generic"`` protects
        ``prompts.GENERIC_RETAIN`` (everyday subjects); ``"none"`` protects nothing (the svd
        variant); a list protects exactly those words or prompts.
    neighbours: how many bank concepts to protect; ``None`` (default): every entry of a bank the
        pipeline declares (``pipe.concept_bank``: the concepts it knows), else the 16 nearest.
    synonym_similarity: bank entries at least this close (centred cosine) are the concept in other
        words ("7" for "seven"): they are erased with it (``erase_synonyms``), never protected.
    bank: the candidate concepts (default: the pipeline's ``concept_bank`` if it declares one, e.g. the
        bundled digits model's ten digits, else ``prompts.bank.CONCEPT_BANK``).
    balance: every retain concept weighs the same in the retain statistics (the worst-protected
        neighbour decides, not the average).
    contrast, fragility: with ``balance``, protect what tells the retain concepts apart (their
        centred mean features, weighed ``contrast`` times the retain statistics) and weigh each retain
        concept by its separability from the others to the power ``-fragility`` (see
        ``eraser.subspace.balanced_rayleigh_subspace``).
    protect_context: with automatically chosen neighbours, the start-of-text token and the
        templates' prefixes, which a causal text encoder computes without seeing the concept, are
        retain features too (a user's retain list is protected exactly as given).
    rank_per_concept: with ``k`` unset, the Rayleigh fit removes this many directions per named
        concept (``k = rank_per_concept * len(concepts)``, at most half the text-feature dimension,
        lowered to the rank of the concepts' features), so that each of many concepts erased in one
        call gets the rank one concept gets alone.
    The subspace selectors (k, energy, sv_ratio, variant, ridge) are Unlink's.
    """

    layers: str | list[str] = "cross_attn_kv"
    # auto: the regression fit (least squares against the protected concepts) when something is
    # protected, svd when nothing is; reflected (strength 2), retain weight 2 (docs/defaults.md)
    strength: float = 2.0
    retain_weight: float = 2.0
    ridge: float = 1e-3  # the regression fit's first step; raised only to bound the edit's size
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    tokens: str = "concept_eot"
    hidden_layer: str = "auto"
    neighbours: int | None = None
    synonym_similarity: float = 0.9
    erase_synonyms: bool = True
    bank: tuple[str, ...] | None = None
    balance: bool = True
    balance_rounds: int = 1
    contrast: float = 0.0
    fragility: float = 0.0
    protect_context: bool = True
    rank_per_concept: int = 3
    batch_size: int = 64  # prompts encoded at once (concept prompts are short: small batches waste the CPU)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokens not in TOKEN_MODES:
            raise ValueError(f"tokens must be one of {TOKEN_MODES}; got {self.tokens!r}")
        if isinstance(self.templates, str) or not self.templates:
            raise ValueError("templates must be a non-empty list of strings such as ['{}', 'a photo of {}']")
        self.templates = tuple(self.templates)
        if (
            not isinstance(self.rank_per_concept, int)
            or isinstance(self.rank_per_concept, bool)
            or self.rank_per_concept < 1
        ):
            raise ValueError(f"rank_per_concept must be a positive integer; got {self.rank_per_concept!r}")
        for name in ("contrast", "fragility"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < float("inf"):
                raise ValueError(f"{name} must be a number >= 0; got {value!r}")
        if self.neighbours is not None and (
            not isinstance(self.neighbours, int) or isinstance(self.neighbours, bool) or self.neighbours < 0
        ):
            raise ValueError(f"neighbours must be a non-negative integer (or None: automatic); got {self.neighbours!r}")
        if not 0.0 < float(self.synonym_similarity) <= 1.0:
            raise ValueError(f"synonym_similarity must be in (0, 1]; got {self.synonym_similarity!r}")
        if self.bank is not None:
            if isinstance(self.bank, str) or not all(isinstance(b, str) and b.strip() for b in self.bank):
                raise ValueError("bank must be a list of concept words or phrases, e.g. CONCEPT_BANK + ('my concept',)")
            self.bank = tuple(self.bank)
        for t in self.templates:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise ValueError(f"template {t!r} must contain '{{}}' exactly once")

    def resolved_variant(self, has_retain: bool) -> str:
        """``auto``: the regression fit when concepts are protected, else svd."""
        if self.variant == "auto":
            return "regression" if has_retain else "svd"
        return super().resolved_variant(has_retain)


@dataclass
class RayleighConceptUnlinkConfig(ConceptUnlinkConfig):
    """Unlink's retain-aware (oblique Rayleigh) variant on a pipeline; needs retain prompts."""

    variant: str = "rayleigh"
    strength: float = 1.5  # the Rayleigh fit's measured settings (docs/defaults.md)
    ridge: float = 0.1


_RETAIN_CACHE = "_eraser_retain_grams"
PROTECTING = ("rayleigh", "regression")  # the variants fitted against retain statistics


def _retain_key(
    pipe: Any, keep: list[str], verbatim: set[int], kv: list[str], text: dict, cfg: ConceptUnlinkConfig
) -> tuple:
    """Identifies retain statistics: the prompts, the settings that shape features, and the text
    encoders' exact state (parameter storage and in-place version counters, so any edit invalidates)."""
    state = tuple((p.data_ptr(), p._version, p.dtype) for _, _, enc in text_towers(pipe) for p in enc.parameters())
    return (
        tuple(keep),
        tuple(sorted(verbatim)),
        tuple(kv),
        tuple(text),
        cfg.templates,
        cfg.tokens,
        cfg.hidden_layer,
        state,
    )


def pooled_context(pipe: Any, cfg: ConceptUnlinkConfig, device: Any = None) -> Tensor:
    """Pooled text vectors every erasure keeps (MMDiT): the empty prompt, which classifier-free
    guidance reads at every step, and each template without a concept. Their pooled vectors share
    most of a concept prompt's, so an unprotected fit would move them too."""
    prompts = list(dict.fromkeys(["", *(t.replace("{}", "").strip() for t in cfg.templates)]))
    return pipeline_family(pipe).conditioning.encode_pooled(pipe, prompts, device=device)


def generic_retain_for(concepts: list[str]) -> list[str]:
    """``GENERIC_RETAIN`` without the entries that share a word with a concept (erasing "dog" must
    not protect "a dog")."""
    stop = {"a", "an", "the", "of"}
    words = {w for c in concepts for w in c.casefold().split()} - stop
    return [g for g in GENERIC_RETAIN if not (set(g.casefold().split()) - stop) & words]


RETAIN_MODES = ("none", "generic")
DEFAULT_NEIGHBOURS = 16  # from the built-in bank (docs/defaults.md)


def _bank(pipe: Any, cfg: ConceptUnlinkConfig) -> tuple[str, ...]:
    """Where neighbours are looked for: the config's bank, else the concepts the pipeline declares
    it knows (``pipe.concept_bank``, e.g. a model trained on a small vocabulary), else the built-in one."""
    return tuple(cfg.bank or getattr(pipe, "concept_bank", None) or CONCEPT_BANK)


def _with_context(r_grams: dict[str, list[Gram]], kv: list[str], context: Gram) -> dict[str, list[Gram]]:
    """The K/V retain statistics with the shared context rows added; other targets' are unchanged."""
    shared = r_grams[kv[0]][0]
    merged = Gram(shared.matrix + context.matrix, shared.n + context.n)
    return {**r_grams, **{name: [merged] for name in kv}}


def _warn_synonyms(pipe: Any, words: list[str], keep: list[str], cfg: ConceptUnlinkConfig, device: Any) -> None:
    """Warn when a user's retain entry is, in the model's text space, the concept itself."""
    sim = text_similarity(pipe, keep, words, bank=_bank(pipe, cfg), hidden_layer=cfg.hidden_layer, device=device)
    close = [(k, float(v)) for k, v in zip(keep, sim.max(1).values) if float(v) >= cfg.synonym_similarity]
    if close:
        warnings.warn(
            f"retain entries {[k for k, _ in close]} are as close to the erased concepts as synonyms "
            f"(similarity >= {cfg.synonym_similarity}); protecting them keeps the concept reachable through "
            "them. They are kept as you asked.",
            stacklevel=4,
        )


@dataclass
class ConceptStatistics:
    """What Unlink fits on a pipeline: the concepts' (and their synonyms') feature statistics per
    target layer (``forget``), the retain concepts' (``retain``: None for the svd variant; K/V
    targets share one Gram, which for automatic neighbours carries each concept's rows in ``parts``
    and the shared context in ``shared``), and how they were chosen."""

    words: list[str]
    keep: list[str]
    retain_source: str
    found: Neighbours | None
    forget: dict[str, list[Gram]]
    retain: dict[str, list[Gram]] | None
    counts: list[int]
    kv: list[str]
    modules: dict[str, nn.Module]
    variant: str
    encode_s: float
    groups: list[list[str]] = dc_field(default_factory=list)  # the concepts, synonyms grouped

    def default_k(self, cfg: ConceptUnlinkConfig) -> int:
        """The rank when ``k`` is not set: ``rank_per_concept`` for each concept (a group of
        synonyms counts once), at most half the text-feature dimension (a fit that keeps the other
        half for everything else)."""
        dim = self.forget[self.kv[0] if self.kv else next(iter(self.forget))][0].dim
        return max(1, min(cfg.rank_per_concept * max(len(self.groups), 1), dim // 2))

    def metadata(self, pipe: Any, cfg: ConceptUnlinkConfig) -> dict[str, Any]:
        """The patch metadata describing these statistics (concepts, retain and how it was chosen)."""
        found = self.found
        return {
            "family": pipeline_family(pipe).name,
            "concepts": self.words,
            "retain": self.keep,
            "retain_source": self.retain_source,
            "synonyms": list(found.synonyms) if found else [],
            "neighbour_similarity": dict(found.similarity) if found else {},
            "bank": None
            if found is None
            else ("config" if cfg.bank else "pipeline" if getattr(pipe, "concept_bank", None) else "builtin"),
            "pipeline_class": type(pipe).__name__,
            "tokens_per_concept": dict(zip(self.words, self.counts)),
            "concept_groups": self.groups,
            **({"default_k": self.default_k(cfg)} if cfg.k is None and self.variant in PROTECTING else {}),
        }


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
    stats = concept_statistics(pipe, concepts, retain, config=cfg, device=device, progress=progress)
    patch = unlink_from_grams(
        as_module(pipe),
        stats.forget,
        stats.retain,
        config=cfg,
        names=stats.words,
        targets=stats.modules,
        base_model=pipeline_id(pipe),
        default_k=stats.default_k(cfg),
    )
    patch.metadata.update(stats.metadata(pipe, cfg))
    patch.metadata["timing_s"]["encode"] = stats.encode_s
    return patch


def concept_statistics(
    pipe: Any,
    concepts: Any,
    retain: Any = None,
    *,
    config: ConceptUnlinkConfig,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ConceptStatistics:
    """The feature statistics Unlink fits for ``concepts`` on ``pipe`` (``retain`` as in
    :func:`unlink_concepts`); the pipeline is not changed."""
    cfg = config
    t0 = time.perf_counter()
    towers = text_towers(pipe)
    words, verbatim = concept_texts(concepts, "concepts")
    mode = retain.strip().casefold() if isinstance(retain, str) and retain.strip().casefold() in RETAIN_MODES else None
    keep, keep_verbatim = ([], set()) if mode else concept_texts(retain, "retain prompts")
    clash = sorted({w.casefold() for w in words} & {r.casefold() for r in keep})
    if clash:
        raise ValueError(f"{clash} are both concepts to erase and retain prompts; remove them from one list.")
    if mode == "none" and cfg.variant in PROTECTING:
        raise ValueError(
            f"variant={cfg.variant!r} protects retain concepts, but retain='none' gives none; "
            "drop retain='none' (neighbours are then protected) or use variant='svd'."
        )
    kv, text, modules, pooled_targets = resolve_concept_targets(pipe, cfg.layers)
    tokenizer = towers[0][1]
    found, search = None, False
    if keep:
        retain_source = "user"
        _warn_synonyms(pipe, words, keep, cfg, device)
    elif mode == "none" or cfg.variant == "svd":
        retain_source = "none"
    elif mode == "generic" or cfg.neighbours == 0:
        keep, retain_source = generic_retain_for(words), "generic"
    else:
        search, retain_source = True, "neighbours"
    kw = dict(
        tokens=cfg.tokens, hidden_layer=cfg.hidden_layer, batch_size=cfg.batch_size, device=device, progress=progress
    )
    # Context rows join automatically chosen neighbours; a user's retain list is protected as given.
    context = Gram(torch.zeros(0, 0, dtype=torch.float64), 0) if search and cfg.protect_context and kv else None
    # The neighbour search pools the concepts' features under BANK_TEMPLATES: when those templates
    # are among the erasure's own, the forget pass computes them too (no second encoding).
    reuse = search and cfg.tokens == "concept_eot" and set(BANK_TEMPLATES) <= set(cfg.templates)
    pooled: dict[int, Tensor] = {}
    rows: dict[int, Tensor] = {}  # each concept's K/V rows: the Gram is built once the weights are known
    embeds: dict[int, Tensor] = {}  # each concept's pooled text vectors (MMDiT), one per prompt

    def forget_pass(texts: list[str], as_is: set[int], offset: int) -> tuple[dict[str, list[Gram]], list[int]]:
        got_pooled: dict[int, Tensor] = {}
        got_rows: dict[int, Tensor] = {}
        got_embeds: dict[int, Tensor] | None = {} if pooled_targets else None
        grams, counts = concept_grams(
            pipe,
            expand_concepts(tokenizer, texts, cfg.templates, as_is),
            kv,
            text,
            what="concept prompts",
            context=context,
            pooled=got_pooled,
            rows_out=got_rows,
            pooled_embeds_out=got_embeds,
            **kw,
        )
        pooled.update({offset + i: v for i, v in got_pooled.items()})
        rows.update({offset + i: v for i, v in got_rows.items()})
        embeds.update({offset + i: v for i, v in (got_embeds or {}).items()})
        return grams, counts

    f_grams, counts = forget_pass(words, verbatim, 0)
    if search:
        bank = _bank(pipe, cfg)
        n = cfg.neighbours
        if n is None:  # a bank the pipeline declares is its whole vocabulary: protect all of it
            n = len(bank) if getattr(pipe, "concept_bank", None) and not cfg.bank else DEFAULT_NEIGHBOURS
        found = concept_neighbours(
            pipe,
            words,
            bank,
            n=n,
            synonym_similarity=cfg.synonym_similarity,
            hidden_layer=cfg.hidden_layer,
            device=device,
            features=torch.stack([pooled[i] for i in range(len(words))]) if reuse else None,
        )
        keep = list(found.neighbours)
        extra = [w for w in found.synonyms if w.casefold() not in {x.casefold() for x in words}]
        if cfg.erase_synonyms and extra:  # only the synonyms are encoded now
            more, more_counts = forget_pass(extra, set(), len(words))
            f_grams = {name: [a + b for a, b in zip(f_grams[name], more[name])] for name in f_grams}
            words, counts = words + extra, counts + more_counts
    groups = [[w] for w in words]
    weights = [1.0] * len(words)
    if kv:
        if len(words) > 1:
            for i, x in rows.items():  # a concept with no prompt in BANK_TEMPLATES: its mean over all
                if i not in pooled and x.shape[0]:
                    pooled[i] = x.double().mean(0)
            weights, groups = concept_weights(pipe, cfg, words, pooled, counts, device)
        acc = GramAccumulator()
        for i in sorted(rows):
            if rows[i].shape[0]:
                acc.update((rows[i].double() * weights[i] ** 0.5).unsqueeze(0))
        if acc.nonfinite:
            raise ValueError("the text encoder produced NaN or Inf for the concept prompts; the model was not changed.")
        shared = acc.compute()  # one Gram object for all K/V layers: fitted once
        f_grams.update({name: shared for name in kv})
    if pooled_targets:
        # One pooled vector per prompt, each concept weighed as its K/V rows are (concept_weights:
        # the second moment is the sum over synonym groups of each group's mean).
        # Only what tells a concept's pooled vector from the context's (the empty prompt and the bare
        # templates) is the concept's: its rows are taken off the context's span first.
        ctx = pooled_context(pipe, cfg, device).double()
        basis = torch.linalg.svd(ctx, full_matrices=False)[2]
        acc, n_rows, total = GramAccumulator(), sum(len(e) for e in embeds.values()), max(sum(counts), 1)
        for i in sorted(embeds):
            w = n_rows * weights[i] * counts[i] / (len(embeds[i]) * total)
            rows_i = embeds[i].double()
            rows_i = rows_i - rows_i @ basis.T @ basis
            acc.update((rows_i * w**0.5).unsqueeze(0))
        if acc.nonfinite:
            raise ValueError("the text encoder produced NaN or Inf for the concept prompts; the model was not changed.")
        f_grams.update({name: acc.compute() for name in pooled_targets})
    variant = cfg.resolved_variant(bool(keep))
    if pooled_targets and variant not in PROTECTING:
        # Without retain statistics the pooled fit would also move the empty prompt's pooled vector,
        # which classifier-free guidance reads at every step: the svd variant leaves that layer alone.
        for name in pooled_targets:
            f_grams.pop(name, None)
            modules = {n: m for n, m in modules.items() if n != name}
        pooled_targets = ()
    empty = [w for w, n in zip(words, counts) if n == 0]
    if empty:
        raise ValueError(f"concepts {empty} have no tokens left to erase (cut off by truncation?); shorten them.")
    if cfg.k is not None and cfg.k > sum(counts):
        raise ValueError(
            f"k={cfg.k} exceeds the number of concept tokens ({sum(counts)}) the features come from; "
            "choose a smaller k, or add templates or concept words."
        )
    r_grams = None
    if variant in PROTECTING and cfg.balance and not text and cfg.tokens == "concept_eot":
        # One statistic per retain concept, so that the fit protects each of them. Neighbours'
        # features come with the (cached) bank; a user's list is encoded here.
        if found is not None:
            bank = _bank(pipe, cfg)
            feats = bank_features(pipe, bank, hidden_layer=cfg.hidden_layer, device=device)
            picked = [bank.index(n) for n in keep]
        else:
            key = ("rows",) + _retain_key(pipe, keep, keep_verbatim, kv, text, cfg)
            cache = pipe.__dict__.get(_RETAIN_CACHE)
            if cache is None or cache[0] != key:
                cache = (
                    key,
                    concept_features(
                        pipe,
                        keep,
                        templates=cfg.templates,
                        verbatim=keep_verbatim,
                        hidden_layer=cfg.hidden_layer,
                        device=device,
                    ),
                )
                pipe.__dict__[_RETAIN_CACHE] = cache  # a user's list is often reused for many erasures
            feats, picked = cache[1], list(range(len(keep)))
        r_grams = {}
        if kv:
            parts = [feats.rows[i] for i in picked]
            shared = balanced_gram(parts)
            ctx = context if context is not None and context.n else None
            matrix = shared.matrix + (ctx.covariance() if ctx is not None else 0)
            merged = Gram(matrix, shared.n + (ctx is not None), parts=parts, shared=ctx)
            r_grams.update({name: [merged] for name in kv})
        if pooled_targets:
            # the context weighs as much as all retain concepts together: every generation reads it
            parts = [feats.pooled_embeds[i] for i in picked]
            parts += [pooled_context(pipe, cfg, device)] * max(len(parts), 1)
            g = balanced_gram(parts)
            r_grams.update({name: [Gram(g.matrix, g.n, parts=parts)] for name in pooled_targets})
    elif variant in PROTECTING:
        key = _retain_key(pipe, keep, keep_verbatim, kv, text, cfg)
        cache = pipe.__dict__.get(_RETAIN_CACHE)
        if cache is not None and cache[0] == key:
            r_grams = cache[1]
        else:
            got: dict[int, Tensor] | None = {} if pooled_targets else None
            r_grams, _ = concept_grams(
                pipe,
                expand_concepts(tokenizer, keep, cfg.templates, keep_verbatim),
                kv,
                text,
                what="retain prompts",
                pooled_embeds_out=got,
                **kw,
            )
            if got:
                acc = GramAccumulator()
                rows_p = torch.cat([got[i] for i in sorted(got)] + [pooled_context(pipe, cfg, device)])
                acc.update(rows_p.double().unsqueeze(0))
                r_grams.update({name: acc.compute() for name in pooled_targets})
            if not text:  # K/V statistics are one d x d matrix: cheap to keep for the next erasure
                pipe.__dict__[_RETAIN_CACHE] = (key, r_grams)
        if context is not None and context.n:
            r_grams = _with_context(r_grams, kv, context)
    return ConceptStatistics(
        words=words,
        keep=keep,
        retain_source=retain_source,
        found=found,
        forget=f_grams,
        retain=r_grams,
        counts=counts,
        kv=kv,
        modules=modules,
        variant=variant,
        encode_s=time.perf_counter() - t0,
        groups=groups,
    )


def concept_weights(
    pipe: Any,
    cfg: ConceptUnlinkConfig,
    words: Sequence[str],
    pooled: dict[int, Tensor],
    counts: Sequence[int],
    device: Any = None,
) -> tuple[list[float], list[list[str]]]:
    """How several concepts weigh in one erasure's forget statistics: a multiplier per concept
    for its rows' outer products, and the groups of synonyms.

    Concepts whose pooled features are at least ``synonym_similarity`` alike (centred on the
    bank's mean, as the neighbour search compares them) are one concept in other words
    (``"eight"`` and ``"8"``): a group. The forget second moment is the sum over groups of each
    group's mean second moment (each concept's rows weigh ``1 / its rows / its group's size``,
    scaled by the total rows so that ``Gram.covariance()`` is that sum), so that a concept erased
    among many keeps the weight it has alone (a mean over every row would divide it by the number
    of concepts, and its directions' Rayleigh quotients with it), and a word with its numeral
    erases what the word erases alone.
    """
    n = len(words)
    centre = bank_features(pipe, _bank(pipe, cfg), hidden_layer=cfg.hidden_layer, device=device).pooled.mean(0)
    feats = torch.stack([pooled[i] for i in range(n)])
    similar = centred_similarity(feats, feats, centre) >= float(cfg.synonym_similarity)
    label = list(range(n))  # union-find over "alike" pairs

    def root(i: int) -> int:
        while label[i] != i:
            label[i] = label[label[i]]
            i = label[i]
        return i

    for i, j in torch.nonzero(similar | similar.T).tolist():
        label[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    total = sum(counts)
    size = {i: len(m) for m in members.values() for i in m}
    weights = [total / (counts[i] * size[i]) if counts[i] else 0.0 for i in range(n)]
    return weights, [[words[i] for i in m] for m in members.values()]


@register_method(
    "unlink_rayleigh", config=RayleighConceptUnlinkConfig, training_free=True, needs_retain=True, family="diffusion"
)
def unlink_rayleigh_concepts(
    pipe: Any, concepts: Any, retain: Any = None, *, config: RayleighConceptUnlinkConfig | None = None, **kw
) -> ErasurePatch:
    """Unlink (Rayleigh): remove the text directions that separate the concepts from the retain prompts."""
    if not retain:
        raise ValueError("unlink_rayleigh needs retain prompts (concepts to keep); pass retain=[...].")
    return unlink_concepts(pipe, concepts, retain, config=config or RayleighConceptUnlinkConfig(), **kw)
