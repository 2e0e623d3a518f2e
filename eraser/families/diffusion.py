"""Text-to-image pipelines (diffusers): which layers take text features, and those features.

The cross-attention key/value projections of a UNet (``attn2.to_k``/``attn2.to_v``) read the text
encoders' hidden states, so their input features for a concept are the hidden states of the
concept's prompts, computed without running the UNet. By default only the tokens that carry the
concept are kept: the start-of-text token is the same for every prompt and the padding is mostly
shared, and removing their directions would damage every generation. The padding's hidden states
still carry the prompt (they attend to it), so the ``*_padding`` token modes include them, for use
with retain prompts that protect the shared directions (see ``TOKEN_MODES``). Text-encoder layers
(CLIP MLP/attention) are captured with the same hooks as any other layer, restricted to the same
tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..capture import GramAccumulator, capture_features
from ..hashing import cache_dir
from ..layers import KeptModes
from ..patch import as_module, parameters_fingerprint
from ..subspace import Gram, mean_outer_sum
from ..targets import resolve_targets
from .base import FamilyAdapter, parameters_where, pipeline_family, register_family
from .clip_text import encode_with_shared_prefixes, is_causal_clip

__all__ = [
    "DIFFUSION",
    "TARGET_PRESETS",
    "concept_texts",
    "centred_similarity",
    "pipeline_id",
    "TOKEN_MODES",
    "PADDING_MODES",
    "ConceptPrompts",
    "text_towers",
    "expand_concepts",
    "concept_token_mask",
    "ConceptTargets",
    "resolve_concept_targets",
    "tokenize_prompts",
    "encode_ids",
    "encode_prompts",
    "concept_grams",
    "concept_features",
    "bank_features",
    "balanced_gram",
    "TextFeatures",
    "BANK_TEMPLATES",
    "concept_neighbours",
    "text_similarity",
    "Neighbours",
]

# PEFT-style presets over the pipeline's components ("unet.…", "text_encoder.…", "text_encoder_2.…").
# Which token positions of a concept prompt are its features:
#   concept_eot: the concept's tokens, the tokens after them and the end-of-text token (causal
#                attention carries the concept into all of them); a template's prefix is left out.
#   concept:     the concept's own tokens only.
#   prompt:      every token of the prompt but the start-of-text (and the end-of-text).
#   concept_padding: concept_eot and the padding after the end-of-text token.
#   prompt_padding:  every position after the start-of-text: the prompt, the end-of-text token and
#                the padding. A UNet attends to all positions, and in a causal text tower the
#                padding's hidden states attend to the whole prompt, so they carry the concept too.
#                Padding directions shared by every prompt must not be removed: use these two modes
#                with retain prompts of the same templates (the Rayleigh variant protects what the
#                retain prompts share with the concept's).
# The *_padding modes encode prompts padded to the full length, as the pipeline does.
TOKEN_MODES = ("concept_eot", "concept", "prompt", "concept_padding", "prompt_padding")
PADDING_MODES = ("concept_padding", "prompt_padding")

# ESD's "noxattn" leaves out, besides cross-attention, the time embedding and the output head
# (CompVis names ``time_embed``/``out.``): in diffusers these are the modules below, plus SDXL's
# added (time, pooled text) embedding, which is part of the time embedding there.
_NOXATTN_EXCLUDED = ("time_embedding.", "add_embedding.", "conv_norm_out.", "conv_out.")


DIFFUSION = register_family(
    FamilyAdapter(
        name="diffusion",
        summary="UNet text-to-image pipelines (diffusers SD 1.x/2.x, SDXL): text features enter through cross-attention",
        presets={
            "cross_attn_kv": r"unet\..*attn2\.to_[kv]",
            "cross_attn_k": r"unet\..*attn2\.to_k",
            "cross_attn_v": r"unet\..*attn2\.to_v",
            "text_encoder_mlp": r"text_encoder(_2)?\..*layers\.\d+\.mlp\.fc[12]",
            "text_encoder_attn": r"text_encoder(_2)?\..*layers\.\d+\.self_attn\.[qkv]_proj",
        },
        components=("unet", "transformer", "text_encoder", "text_encoder_2", "vae"),
        text_towers=(("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
        text_reading=r"unet\..*\.(to_k|to_v|add_k_proj|add_v_proj)",
        # ESD's train_method: "xattn": every parameter of cross-attention ("attn2"); "noxattn": all but
        # those, the time embedding and the output head; "kv": the cross-attention key/value weights.
        train_selections={
            "xattn": parameters_where(lambda n: "attn2" in n),
            "noxattn": parameters_where(lambda n: "attn2" not in n and not n.startswith(_NOXATTN_EXCLUDED)),
            "kv": parameters_where(lambda n: n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))),
            "full": parameters_where(lambda n: True),
        },
    )
)
TARGET_PRESETS = DIFFUSION.presets  # the family's layer presets, by their old name
_TEXT_READING = re.compile(DIFFUSION.text_reading)


def text_towers(pipe: Any) -> list[tuple[str, Any, nn.Module]]:
    """``(component name, tokenizer, text encoder)`` for each text tower of ``pipe``, in order."""
    towers = []
    for tok_name, enc_name in pipeline_family(pipe).text_towers:
        tok, enc = getattr(pipe, tok_name, None), getattr(pipe, enc_name, None)
        if tok is not None and isinstance(enc, nn.Module):
            towers.append((enc_name, tok, enc))
    if not towers:
        raise TypeError(
            f"{type(pipe).__name__} is not a text-to-image pipeline or text encoder this library can edit: "
            "it needs `tokenizer`/`text_encoder` (optionally `tokenizer_2`/`text_encoder_2`, and `unet` "
            "for cross-attention targets)."
        )
    return towers


def _conditioning(pipe: Any) -> Any:
    """The family's own text conditioning (an MMDiT's joint sequence), or None for UNet pipelines."""
    return pipeline_family(pipe).conditioning


@dataclass
class ConceptPrompts:
    """Prompts and, per prompt, where the concept's tokens start and how many there are."""

    prompts: list[str]
    starts: list[int]  # tokens before the concept (a template's prefix), excluding start-of-text
    lengths: list[int]  # the concept's own tokens
    owners: list[int]  # index of the concept each prompt comes from
    templates: list[str] = field(default_factory=list)  # each prompt's template ("{}" for a whole prompt)


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)


def _n_tokens_each(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts of many texts in one tokenizer call (a fast tokenizer batches them)."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, truncation=False).input_ids]


def expand_concepts(
    tokenizer: Any, concepts: Sequence[str], templates: Sequence[str], verbatim: Collection[int] = ()
) -> ConceptPrompts:
    """Each concept inserted into each template (``"a photo of {}"``), with the token span it
    occupies; the concepts at the indices in ``verbatim`` (whole prompts) are used as they are.

    Prompts come template by template (so that a batch of them mostly shares one prefix, which
    :func:`encode_ids` then computes once), shortest first within a template."""
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must contain '{{}}' exactly once")
    out = ConceptPrompts([], [], [], [])
    limit = int(getattr(tokenizer, "model_max_length", 77)) - 2
    sizes = _n_tokens_each(tokenizer, list(concepts))
    for concept, n in zip(concepts, sizes):
        if n == 0:
            raise ValueError(f"concept {concept!r} tokenises to nothing; give a word or a prompt.")
    for t, template in enumerate(templates):
        prefix = template.split("{}")[0]
        start = _n_tokens(tokenizer, prefix) if prefix.strip() else 0
        chosen = [i for i in range(len(concepts)) if t == 0 or i not in verbatim]  # a whole prompt: once, as it is
        prompts = [concepts[i] if i in verbatim else template.replace("{}", concepts[i]) for i in chosen]
        # shortest first: a batch pads to its longest prompt, so one long prompt among short ones
        # would make the whole batch cost as much as it
        entries = sorted(zip(_n_tokens_each(tokenizer, prompts), range(len(chosen)), chosen, prompts))
        for total, _, i, prompt in entries:
            n = sizes[i]
            if total > limit:
                warnings.warn(
                    f"prompt {prompt[:60]!r}... has {total} tokens; the text encoder reads {limit}, "
                    "so it is truncated (as the pipeline itself would do).",
                    stacklevel=3,
                )
            out.prompts.append(prompt)
            out.starts.append(0 if i in verbatim else start)
            out.lengths.append(n)
            out.owners.append(i)
            out.templates.append("{}" if i in verbatim else template)
    return out


def concept_token_mask(
    input_ids: Tensor, eos_token_id: int, starts: Sequence[int], lengths: Sequence[int], mode: str
) -> Tensor:
    """Boolean (B, L) mask of the token positions that carry each prompt's concept.

    ``input_ids`` start with the start-of-text token; the first ``eos_token_id`` after it ends the
    prompt (padding may repeat it, as in Stable Diffusion's tokenizer). The ``*_padding`` modes also
    mark every position after the end-of-text token (the padding).
    """
    if mode not in TOKEN_MODES:
        raise ValueError(f"tokens must be one of {TOKEN_MODES}; got {mode!r}")
    b, length = input_ids.shape
    pos = torch.arange(length).expand(b, length)
    is_eos = (input_ids == eos_token_id) & (pos > 0)
    eot = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full((b,), length - 1)).unsqueeze(1)
    first = 1 + torch.as_tensor(list(starts)).unsqueeze(1)
    if mode == "prompt":
        return (pos >= 1) & (pos <= eot)
    if mode == "prompt_padding":
        return pos >= 1
    if mode == "concept_padding":
        return pos >= first
    if mode == "concept":
        return (pos >= first) & (pos < first + torch.as_tensor(list(lengths)).unsqueeze(1)) & (pos < eot)
    return (pos >= first) & (pos <= eot)


class ConceptTargets(NamedTuple):
    """The layers a concept erasure edits: those that read text features (``kv``: cross-attention
    key/value projections, by name), text-encoder layers (``text``), all of them (``modules``), and
    those that read the pooled text vector (``pooled``: an MMDiT's pooled text embedder)."""

    kv: list[str]
    text: dict[str, nn.Module]
    modules: dict[str, nn.Module]
    pooled: tuple[str, ...] = ()


def resolve_concept_targets(pipe: Any, targets: str | Sequence[str]) -> ConceptTargets:
    """Resolve the targets once and split them into layers fed by text features and text-encoder layers.

    On a family with its own conditioning (MMDiT: see :mod:`eraser.families.mmdit`) the default
    ``"cross_attn_kv"`` means that family's text-reading default (SD3: ``"context_embedder"``)."""
    view = as_module(pipe)
    family = pipeline_family(pipe)
    if family.conditioning is not None:
        return _resolve_family_targets(pipe, family, view, targets)
    if targets in ("cross_attn_kv", "cross_attn_k", "cross_attn_v") and getattr(pipe, "unet", None) is None:
        raise ValueError(
            f"{type(pipe).__name__} has no UNet, so there is no cross-attention to edit; erase from its "
            "text encoder with targets='text_encoder_mlp' or 'text_encoder_attn'."
        )
    resolved = resolve_targets(view, targets)
    kv = [n for n in resolved if _TEXT_READING.fullmatch(n)]
    text = {n: m for n, m in resolved.items() if n.split(".")[0] in dict(DIFFUSION.text_towers).values()}
    other = [n for n in resolved if n not in kv and n not in text]
    if other:
        raise ValueError(
            f"targets {other[:4]} take image features, not text features; concept erasure edits the "
            f"UNet's cross-attention key/value projections or text-encoder layers (presets: {sorted(TARGET_PRESETS)})."
        )
    return ConceptTargets(kv, text, resolved)


def _resolve_family_targets(pipe: Any, family: FamilyAdapter, view: nn.Module, targets: Any) -> ConceptTargets:
    if targets == "cross_attn_kv":
        targets = family.conditioning.default_targets
    elif isinstance(targets, str) and targets in DIFFUSION.presets and targets.startswith("cross_attn"):
        raise ValueError(
            f"{targets!r} is a UNet preset, and {type(pipe).__name__} has a transformer ({family.name} family); "
            f"its presets: {sorted(family.presets)} (concept erasure edits {family.conditioning.default_targets!r})."
        )
    resolved = resolve_targets(view, targets)
    reading = re.compile(family.text_reading)
    pooled_reading = getattr(family.conditioning, "pooled_reading", None)
    kv = [n for n in resolved if reading.fullmatch(n)]
    pooled = tuple(n for n in resolved if pooled_reading and re.fullmatch(pooled_reading, n))
    other = [n for n in resolved if n not in kv and n not in pooled]
    if other:
        raise ValueError(
            f"targets {other[:4]} do not read the prompt's sequence features directly: on the {family.name} "
            f"family concept erasure edits the layers matching {family.text_reading!r} and "
            f"{pooled_reading!r} (preset {family.conditioning.default_targets!r}); per-block context "
            "projections read context tokens that depend on the timestep and the image, and "
            "text-encoder targets are not supported on this family yet."
        )
    return ConceptTargets(kv, {}, resolved, pooled)


def _hidden(out: Any, hidden_layer: str) -> Tensor:
    if hidden_layer == "penultimate":
        return out.hidden_states[-2]
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _hidden_layer(pipe: Any, hidden_layer: str) -> str:
    if hidden_layer not in ("auto", "last", "penultimate"):
        raise ValueError(f"hidden_layer must be 'auto', 'last' or 'penultimate'; got {hidden_layer!r}")
    if hidden_layer != "auto":
        return hidden_layer
    # SDXL-style UNets (text_time conditioning) read the penultimate layer, as diffusers does.
    unet = getattr(pipe, "unet", None)
    text_time = unet is not None and getattr(unet.config, "addition_embed_type", None) == "text_time"
    return "penultimate" if text_time else "last"


def _batches(items: Sequence[Any], size: int) -> Iterator[slice]:
    for i in range(0, len(items), size):
        yield slice(i, i + size)


def tokenize_prompts(pipe: Any, prompts: Sequence[str], *, shortest: bool = False) -> list[Tensor]:
    """Each text tower's token ids (B, L) for ``prompts``, padded and truncated as the pipeline does.

    ``shortest`` pads only to the longest prompt of the batch when every tower is a causal CLIP
    text model: positions up to the end-of-text token are then the same as with full padding, at a
    fraction of the cost (concept prompts are a few tokens out of 77).
    """
    cond = _conditioning(pipe)
    if cond is not None:
        return cond.tokenize(pipe, prompts, shortest=shortest)
    towers = text_towers(pipe)
    short = shortest and all(type(enc).__name__.startswith("CLIPText") for _, _, enc in towers)
    return [
        tok(
            list(prompts),
            padding="longest" if short else "max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        for _, tok, _ in towers
    ]


@torch.no_grad()
def encode_ids(
    pipe: Any,
    ids: list[Tensor],
    *,
    hidden_layer: str = "auto",
    device: torch.device | str | None = None,
    prefix_lengths: Sequence[int] | None = None,
    pooled_out: list[Tensor] | None = None,
) -> Tensor:
    """The UNet's text conditioning (B, L, D: the towers' hidden states side by side) for token ids
    (an MMDiT's: the context embedder's input; its pooled text embedder's input, B x P, is appended
    to ``pooled_out`` when given).

    ``prefix_lengths``: how many leading tokens of each row other rows share (the start-of-text
    token and a template's prefix); causal CLIP towers then compute each distinct prefix once
    (:func:`eraser.families.clip_text.encode_with_shared_prefixes`, same result up to rounding).
    Only for callers that read no hooks inside the text encoder: its layers see the suffixes alone.
    """
    cond = _conditioning(pipe)
    if cond is not None:
        if pooled_out is not None:
            return cond.encode(pipe, ids, hidden_layer=hidden_layer, device=device, pooled_out=pooled_out)
        return cond.encode(pipe, ids, hidden_layer=hidden_layer, device=device)
    if pooled_out is not None:
        raise ValueError(f"{type(pipe).__name__} has no pooled text layer that erasure edits")
    layer = _hidden_layer(pipe, hidden_layer)
    hidden = []
    if prefix_lengths is not None and not _prefixes_pay(ids[0], prefix_lengths):
        prefix_lengths = None
    for (_, _, enc), tower_ids in zip(text_towers(pipe), ids):
        dev = torch.device(device) if device is not None else next(enc.parameters()).device
        if prefix_lengths is not None and is_causal_clip(enc):
            hidden.append(
                encode_with_shared_prefixes(enc, tower_ids.to(dev), prefix_lengths, penultimate=layer == "penultimate")
            )
            continue
        out = enc(tower_ids.to(dev), output_hidden_states=layer == "penultimate")
        hidden.append(_hidden(out, layer))
    return torch.cat(hidden, dim=-1)


# A pass per distinct prefix pays only when each serves several prompts: a handful of prompts
# with as many templates (one concept) runs faster as one whole-prompt batch.
MIN_PROMPTS_PER_PREFIX = 8


def _prefixes_pay(ids: Tensor, prefix_lengths: Sequence[int]) -> bool:
    prefixes = {tuple(row[: int(p)].tolist()) for row, p in zip(ids, prefix_lengths)}
    return len(prefix_lengths) >= MIN_PROMPTS_PER_PREFIX * len(prefixes)


def encode_prompts(
    pipe: Any, prompts: Sequence[str], *, hidden_layer: str = "auto", device: torch.device | str | None = None
) -> Tensor:
    """The UNet's text conditioning for ``prompts`` (B, L, D), as the pipeline computes it."""
    return encode_ids(pipe, tokenize_prompts(pipe, prompts), hidden_layer=hidden_layer, device=device)


def _mask(pipe: Any, ids: list[Tensor], cp: ConceptPrompts, sl: slice, mode: str) -> Tensor:
    cond = _conditioning(pipe)
    if cond is not None:
        return cond.mask(pipe, ids, cp, sl, mode)
    masks = []
    for (_, tok, _), tower_ids in zip(text_towers(pipe), ids):
        masks.append(concept_token_mask(tower_ids, tok.eos_token_id, cp.starts[sl], cp.lengths[sl], mode))
    mask = masks[0]
    for m in masks[1:]:  # the towers share CLIP's BPE, so their spans agree; keep what both mark
        mask = mask & m
    return mask


@torch.no_grad()
def concept_grams(
    pipe: Any,
    cp: ConceptPrompts,
    kv_targets: Sequence[str],
    text_targets: dict[str, nn.Module],
    *,
    tokens: str = "concept_eot",
    hidden_layer: str = "auto",
    batch_size: int = 16,
    device: torch.device | str | None = None,
    what: str = "concept prompts",
    progress: bool = False,
    context: Gram | None = None,
    pooled: dict[int, Tensor] | None = None,
    rows_out: dict[int, Tensor] | None = None,
    pooled_embeds_out: dict[int, Tensor] | None = None,
) -> tuple[dict[str, list[Gram]], list[int]]:
    """Gram matrices of the concept tokens' features for every target (the K/V targets share one),
    and the number of feature rows (tokens) each concept contributed.

    ``context``, when given (an empty ``Gram`` to fill: ``n`` 0), also receives the K/V features of
    the positions before each concept (start-of-text and a template's prefix): in a causal text
    encoder they do not depend on the concept, so they are context every prompt shares.
    ``pooled``, when given (an empty dict to fill), receives per concept the mean K/V feature of
    its prompts in ``BANK_TEMPLATES`` (float64): what :func:`concept_features` pools, so that a
    neighbour search need not encode the concepts again.
    ``rows_out``, when given (an empty dict to fill), receives each concept's K/V feature rows
    (float32, on the CPU; a few MB for a thousand concepts) instead of their Gram, which the
    returned statistics then leave out: for callers that weigh the concepts themselves.
    ``pooled_embeds_out``, when given (an empty dict to fill), receives each concept's pooled text
    vectors (one row per prompt; MMDiT families), the input of their pooled text embedder.
    """
    state: dict[str, Tensor] = {}
    kv_acc = GramAccumulator()
    counts = [0] * (max(cp.owners) + 1 if cp.owners else 0)
    towers = text_towers(pipe)
    batches = [
        (sl, tokenize_prompts(pipe, cp.prompts[sl], shortest=tokens not in PADDING_MODES))
        for sl in _batches(cp.prompts, batch_size)
    ]
    masks = [_mask(pipe, ids, cp, sl, tokens) for sl, ids in batches]
    for (sl, _), mask in zip(batches, masks):
        for owner, n in zip(cp.owners[sl], mask.sum(1).tolist()):
            counts[owner] += int(n)
    pool_sums: dict[int, Tensor] = {}
    pool_counts: dict[int, int] = {}
    kept_rows: dict[int, list[Tensor]] = {}
    kept_pooled: dict[int, list[Tensor]] = {}
    modes = [KeptModes(enc) for _, _, enc in towers]
    for _, _, enc in towers:
        enc.eval()
    try:
        with capture_features(text_targets, lambda: GramAccumulator(row_mask=lambda: state["mask"])) as accs:
            for (sl, ids), mask in tqdm(
                list(zip(batches, masks)), desc=f"encode {what}", disable=not progress, leave=False
            ):
                state["mask"] = mask  # read by the text-encoder hooks
                # the hooks inside the text encoder need whole prompts; K/V features do not
                prefixes = None if text_targets else [s + 1 for s in cp.starts[sl]]
                got: list[Tensor] | None = [] if pooled_embeds_out is not None else None
                hidden = encode_ids(
                    pipe, ids, hidden_layer=hidden_layer, device=device, prefix_lengths=prefixes, pooled_out=got
                )
                if got is not None:
                    for owner, vec in zip(cp.owners[sl], got[0].float().cpu()):
                        kept_pooled.setdefault(owner, []).append(vec)
                mask = mask.to(hidden.device)
                if rows_out is None:
                    kv_acc.update(hidden[mask].unsqueeze(0))
                if pooled is not None or rows_out is not None:
                    for owner, template, h, m in zip(cp.owners[sl], cp.templates[sl], hidden, mask):
                        rows = h[m].float().cpu()
                        if rows_out is not None:
                            kept_rows.setdefault(owner, []).append(rows)
                        if template in BANK_TEMPLATES:
                            pool_sums[owner] = pool_sums.get(owner, 0) + rows.double().sum(0)
                            pool_counts[owner] = pool_counts.get(owner, 0) + rows.shape[0]
                if context is not None:
                    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
                    first = 1 + torch.as_tensor(cp.starts[sl], device=mask.device).unsqueeze(1)
                    rows = hidden[pos < first].to(torch.float64).cpu()
                    if torch.isfinite(rows).all() and rows.numel():
                        g = rows.T @ rows
                        context.matrix = g if context.n == 0 else context.matrix + g
                        context.n += rows.shape[0]
    finally:
        for kept in modes:
            kept.restore()
    if pooled is not None:
        pooled.update({owner: pool_sums[owner] / pool_counts[owner] for owner in pool_sums})
    if rows_out is not None:
        rows_out.update({owner: torch.cat(r) for owner, r in kept_rows.items()})
    if pooled_embeds_out is not None:
        pooled_embeds_out.update({owner: torch.stack(r) for owner, r in kept_pooled.items()})
    grams: dict[str, list[Gram]] = {}
    if kv_targets and rows_out is None:
        if kv_acc.nonfinite:
            raise ValueError(f"the text encoder produced NaN or Inf for the {what}; the model was not changed.")
        shared = kv_acc.compute()  # one Gram object for all K/V layers: fitted once
        grams.update({name: shared for name in kv_targets})
    for name, acc in accs.items():
        if acc.nonfinite:
            raise ValueError(
                f"features entering {name!r} contain NaN or Inf for the {what}; the model was not changed."
            )
        grams[name] = acc.compute()
    return grams, counts


def concept_texts(items: Any, what: str) -> tuple[list[str], set[int]]:
    """Concept words/prompts as strings, and the indices of those given as prompt rows (used verbatim).

    ``what`` names the argument in messages; ``"concepts"`` are required (None is refused), every
    other list (retain prompts) may be None."""
    usage = "concept words or prompts: a string, a prompt row, or a list of them (e.g. ['nudity', 'nude'])"
    if items is None:
        if what == "concepts":
            raise ValueError(f"no concepts given (got None): pass the {usage}.")
        return [], set()
    if isinstance(items, str) or hasattr(items, "prompt"):
        items = [items]
    if isinstance(items, (bytes, Mapping)) or not isinstance(items, Iterable):
        raise TypeError(f"{what} must be {usage}; got {type(items).__name__}")
    texts, verbatim, seen, repeated = [], set(), set(), []
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else getattr(item, "prompt", None)
        if not isinstance(text, str):
            raise TypeError(f"{what} must be {usage}; got {type(item).__name__} (item {i})")
        if not text.strip():
            raise ValueError(f"{what} contain an empty string (item {i}); give a word or a prompt.")
        text = " ".join(text.split())
        if text.casefold() in seen:  # counted twice, it would weigh twice in the statistics
            repeated.append(text)
            continue
        seen.add(text.casefold())
        if not isinstance(item, str):
            verbatim.add(len(texts))
        texts.append(text)
    if not texts:
        raise ValueError(f"{what} are empty: pass at least one concept word or prompt.")
    if repeated:
        shown = ", ".join(repr(t) for t in repeated[:5]) + (
            f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        )
        warnings.warn(f"{what} repeat {shown} (ignoring case and spacing); each is used once.", stacklevel=3)
    return texts, verbatim


def pipeline_id(pipe: Any) -> str:
    """The hub id or path a pipeline was loaded from (its class name if unknown)."""
    name = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return str(name) if name else type(pipe).__name__


def _content_words(text: str) -> frozenset[str]:
    return frozenset(text.casefold().split()) - {"a", "an", "the", "of"}


@dataclass
class Neighbours:
    """The bank concepts nearest to the erased ones in the model's text space.

    ``neighbours``: the ``n`` nearest (to protect); ``synonyms``: entries at least
    ``synonym_similarity`` close (the same concept in other words: erased, not protected);
    ``similarity``: each of those entries' cosine similarity to the nearest erased concept.
    """

    neighbours: list[str]
    synonyms: list[str]
    similarity: dict[str, float]


_BANK_CACHE = "_eraser_bank_features"


BANK_TEMPLATES = ("{}", "a photo of {}")


@dataclass
class TextFeatures:
    """K/V input features of some texts: per text, its rows (the tokens of the text and the
    end-of-text token, under each template; float32, n_i x D) and their mean (N x D, float64);
    on families with a pooled text layer (MMDiT), per text its pooled text vectors (one per
    template, float32)."""

    rows: list[Tensor]
    pooled: Tensor
    pooled_embeds: list[Tensor] | None = None


@torch.no_grad()
def concept_features(
    pipe: Any,
    texts: Sequence[str],
    *,
    templates: Sequence[str] = BANK_TEMPLATES,
    verbatim: Collection[int] = (),
    hidden_layer: str = "auto",
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> TextFeatures:
    """The K/V input features of each text put in each template (see :class:`TextFeatures`);
    the texts at the indices in ``verbatim`` are whole prompts, used as they are."""
    tokenizer = text_towers(pipe)[0][1]
    cp = expand_concepts(tokenizer, list(texts), tuple(templates), verbatim)
    rows: list[list[Tensor]] = [[] for _ in texts]
    with_pooled = getattr(_conditioning(pipe), "pooled_reading", None) is not None
    pooled_rows: list[list[Tensor]] = [[] for _ in texts]
    for sl in _batches(cp.prompts, batch_size):
        ids = tokenize_prompts(pipe, cp.prompts[sl], shortest=True)
        mask = _mask(pipe, ids, cp, sl, "concept_eot")
        prefixes = [s + 1 for s in cp.starts[sl]]
        got: list[Tensor] | None = [] if with_pooled else None
        hidden = encode_ids(
            pipe, ids, hidden_layer=hidden_layer, device=device, prefix_lengths=prefixes, pooled_out=got
        ).float()
        for i, (owner, h, m) in enumerate(zip(cp.owners[sl], hidden.cpu(), mask)):
            rows[owner].append(h[m])
            if got is not None:
                pooled_rows[owner].append(got[0][i].float().cpu())
    per_text = [torch.cat(r) for r in rows]
    embeds = [torch.stack(r) for r in pooled_rows] if with_pooled else None
    return TextFeatures(per_text, torch.stack([r.double().mean(0) for r in per_text]), embeds)


def bank_features(pipe: Any, bank: Sequence[str], *, hidden_layer: str = "auto", device: Any = None) -> TextFeatures:
    """``concept_features`` of a concept bank, computed once per pipeline, bank and text-encoder
    state (cached on the pipeline), and kept on disk (``eraser.hashing.cache_dir("bank_features")``)
    under a fingerprint of the bank, the templates, the layer and the text encoders' weights, so
    that another process with the same text encoders reads them back instead of encoding the bank."""
    layer = _hidden_layer(pipe, hidden_layer)
    towers = text_towers(pipe)
    key = (tuple(bank), layer, tuple((p.data_ptr(), p._version) for _, _, enc in towers for p in enc.parameters()))
    cached = pipe.__dict__.get(_BANK_CACHE)
    if cached is not None and cached[0] == key:
        return cached[1]
    blob = json.dumps(
        {
            "format": 2,
            "bank": list(bank),
            "templates": list(BANK_TEMPLATES),
            "layer": layer,
            "towers": [[name, parameters_fingerprint(dict(enc.named_parameters()))] for name, _, enc in towers],
        }
    )
    path = cache_dir("bank_features") / f"{hashlib.sha256(blob.encode()).hexdigest()[:32]}.safetensors"
    feats = _read_bank_file(path, len(bank))
    if feats is not None and feats.pooled_embeds is None and getattr(_conditioning(pipe), "pooled_reading", None):
        feats = None  # written without the pooled vectors this family needs
    if feats is None:
        feats = concept_features(pipe, bank, hidden_layer=hidden_layer, device=device)
        _write_bank_file(path, feats)
    pipe.__dict__[_BANK_CACHE] = (key, feats)
    return feats


def _read_bank_file(path: Path, n: int) -> TextFeatures | None:
    """A bank's features from the disk cache; None when absent or not what was written (a damaged
    or replaced file is recomputed, never trusted)."""
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        t = load_file(str(path))
        rows, counts, pooled = t["rows"], t["counts"], t["pooled"]
        ok = counts.dtype == torch.int64 and counts.shape == (n,) and bool((counts > 0).all())
        ok = ok and rows.dim() == 2 and int(counts.sum()) == rows.shape[0] and pooled.shape == (n, rows.shape[1])
        ok = ok and bool(torch.isfinite(rows).all()) and bool(torch.isfinite(pooled).all())
        embeds = None
        if "pooled_embeds" in t:
            embeds, per = t["pooled_embeds"], t["pooled_embeds_counts"]
            ok = ok and per.dtype == torch.int64 and per.shape == (n,) and bool((per > 0).all())
            ok = ok and embeds.dim() == 2 and int(per.sum()) == embeds.shape[0] and bool(torch.isfinite(embeds).all())
            embeds = list(embeds.split(per.tolist())) if ok else None
    except Exception:
        return None
    if not ok:
        return None
    return TextFeatures(list(rows.split(counts.tolist())), pooled, embeds)


def _write_bank_file(path: Path, feats: TextFeatures) -> None:
    from safetensors.torch import save_file

    tensors = {
        "rows": torch.cat(feats.rows).contiguous(),
        "counts": torch.tensor([r.shape[0] for r in feats.rows], dtype=torch.int64),
        "pooled": feats.pooled.contiguous(),
    }
    if feats.pooled_embeds is not None:
        tensors["pooled_embeds"] = torch.cat(feats.pooled_embeds).contiguous()
        tensors["pooled_embeds_counts"] = torch.tensor([r.shape[0] for r in feats.pooled_embeds], dtype=torch.int64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    except OSError as err:  # a read-only or full disk costs the next process an encoding, nothing more
        warnings.warn(f"could not cache the concept bank's features in {path.parent} ({err})", stacklevel=3)


def balanced_gram(rows: Sequence[Tensor]) -> Gram:
    """A retain Gram in which each concept weighs the same: the sum of each concept's mean outer
    product of its rows, with ``n`` the number of concepts (so ``covariance()`` is their average)."""
    return Gram(mean_outer_sum(rows), len(rows))


def text_similarity(
    pipe: Any,
    texts: Sequence[str],
    others: Sequence[str],
    *,
    bank: Sequence[str],
    hidden_layer: str = "auto",
    device: torch.device | str | None = None,
    others_features: Tensor | None = None,
) -> Tensor:
    """Similarity (len(texts), len(others)) of ``concept_features`` centred on the bank's mean: the
    cosine, except that a text whose centred feature is shorter than half the other's counts as
    half the other's length. A text the model barely tells from the average prompt (an unknown
    word, in a model trained on a small vocabulary) is then not "close" to everything.
    ``others_features``: the pooled features of ``others`` when the caller has them (used when
    ``texts`` is the bank)."""
    bank_feats = bank_features(pipe, bank, hidden_layer=hidden_layer, device=device).pooled
    if tuple(texts) == tuple(bank):  # the bank itself: its features are cached
        a = bank_feats
        b = (
            others_features
            if others_features is not None
            else concept_features(pipe, list(others), hidden_layer=hidden_layer, device=device).pooled
        )
    else:
        feats = concept_features(pipe, list(texts) + list(others), hidden_layer=hidden_layer, device=device).pooled
        a, b = feats[: len(texts)], feats[len(texts) :]
    return centred_similarity(a, b, bank_feats.mean(0))


def centred_similarity(a: Tensor, b: Tensor, mean: Tensor) -> Tensor:
    """The similarity :func:`text_similarity` uses, of pooled features ``a`` (n x D) and ``b``
    (m x D) centred on ``mean``."""
    a, b = a - mean, b - mean
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True).T
    return (a @ b.T) / (torch.maximum(na, nb / 2) * nb).clamp_min(1e-12)


def concept_neighbours(
    pipe: Any,
    concepts: Sequence[str],
    bank: Sequence[str],
    *,
    n: int = 8,
    synonym_similarity: float = 0.9,
    hidden_layer: str = "auto",
    device: torch.device | str | None = None,
    features: Tensor | None = None,
) -> Neighbours:
    """The ``n`` entries of ``bank`` nearest to ``concepts`` in the pipeline's own text features.

    Similarity is the cosine between features centred on the bank's mean (the direction every
    prompt shares would otherwise make everything look alike). Entries that contain a concept's
    words (``"a dog"`` when erasing ``"dog"``) are the concept itself and are skipped; entries at
    least ``synonym_similarity`` close are returned as synonyms. The bank's features are computed
    once per pipeline and text-encoder state, and cached on the pipeline; ``features``: the
    concepts' pooled features (from :func:`concept_grams`), when already computed.
    """
    words = [_content_words(c) for c in concepts]
    sim = (
        text_similarity(
            pipe, bank, concepts, bank=bank, hidden_layer=hidden_layer, device=device, others_features=features
        )
        .max(1)
        .values
    )
    order = sim.argsort(descending=True).tolist()
    taken = {e.casefold() for e in concepts}
    neighbours, synonyms, similarity = [], [], {}
    for i in order:
        entry = bank[i]
        ew = _content_words(entry)
        if entry.casefold() in taken or any(w and w <= ew for w in words):
            continue  # the concept itself, or a narrower form of it
        s = float(sim[i])
        if s >= synonym_similarity:
            if len(synonyms) >= max(n, 1):
                continue  # a degenerate text space (many entries alike): erase only the nearest few
            synonyms.append(entry)
        elif len(neighbours) < n:
            neighbours.append(entry)
        else:
            break
        taken.add(entry.casefold())
        similarity[entry] = round(s, 4)
    return Neighbours(neighbours, synonyms, similarity)
