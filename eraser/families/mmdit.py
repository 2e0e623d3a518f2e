"""MMDiT text-to-image pipelines (diffusers ``StableDiffusion3Pipeline`` and ``FluxPipeline``):
where text enters.

An SD3 transformer reads text in three places:

- ``transformer.context_embedder``: a Linear on the joint text sequence the pipeline's
  ``encode_prompt`` returns as ``prompt_embeds``: 77 CLIP positions (CLIP-L's and CLIP-bigG's
  penultimate hidden states side by side, zero-padded to the joint width) followed by the T5
  encoder's 256 positions (zeros when the pipeline has no T5). Its input is a fixed function of
  the prompt, exactly like a UNet's cross-attention K/V input, so Unlink fits it the same way.
- ``transformer.time_text_embed.text_embedder``: an MLP on the pooled CLIP projections (one vector
  per prompt), added to the timestep embedding that modulates every block.
- each joint block's ``attn.add_k_proj``/``add_v_proj`` (and ``add_q_proj``): they read the
  context tokens after the block's adaptive norm, whose scale and shift come from the timestep and
  pooled text, and, from the second block on, after the earlier blocks' joint attention with the
  image tokens. Their input for a prompt is not fixed: it changes with the timestep and the image.

Unlink edits the two layers whose input is a fixed function of the prompt and nothing else (preset
``text_inputs``, the default on this family): the context embedder, through which every sequence
feature of the prompt reaches every block, and the pooled text embedder's first layer
(``time_text_embed.text_embedder.linear_1``, preset ``pooled_text_embedder``), whose input is the
pooled CLIP vector (one row per prompt). The pooled vector carries the concept too: on the bundled
MMDiT digits model the pooled vector of "a photo of the digit zero" beside a neutral sequence draws
zeros about twice as often as the neutral prompt (docs/benchmarks.md, "The pooled text path").
``context_embedder`` alone is the earlier default. ``context_kv`` is a preset for inspection and for
trained methods; concept erasure refuses it (its input depends on the timestep and the image).
``tests/eraser/test_mmdit.py`` measures how much the per-block context projections' inputs move
with the timestep and the image latents for one fixed prompt.

Which positions are a concept's features: on the CLIP part the UNet families' token modes (CLIP is
causal: the concept's tokens and those after it, up to the end-of-text token); on the T5 part every
token of the prompt up to and including ``</s>`` (T5 attends both ways, so a template's prefix sees
the concept too), and with the ``*_padding`` modes the padding as well (the pipeline runs T5
without an attention mask, so its padding also attends to the prompt). T5 is always run at the
pipeline's default ``max_sequence_length`` (256), as its padding changes the prompt's features.

FLUX reads text the same way, with one sequence source: ``transformer.context_embedder`` takes the
T5 encoder's last hidden states (512 positions, FluxPipeline's default), and CLIP contributes only
its pooled vector (``time_text_embed.text_embedder``). Unlink edits both there too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import FamilyAdapter, parameters_where, register_family
from .diffusion import PADDING_MODES, ConceptPrompts, concept_token_mask, text_towers

__all__ = [
    "SD3",
    "SD3_MAX_SEQUENCE_LENGTH",
    "SD3Conditioning",
    "is_sd3",
    "FLUX",
    "FLUX_MAX_SEQUENCE_LENGTH",
    "FluxConditioning",
    "is_flux",
]

SD3_MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default max_sequence_length for T5
_CLIP_TOWERS = ("text_encoder", "text_encoder_2")
# The layer that reads the pooled CLIP vector (SD3 and FLUX alike), and the presets over the text inputs.
POOLED_READING = r"transformer\.time_text_embed\.text_embedder\.linear_1"
_TEXT_PRESETS = {
    "text_inputs": r"transformer\.(context_embedder|time_text_embed\.text_embedder\.linear_1)",
    "context_embedder": r"transformer\.context_embedder",
    "pooled_text_embedder": POOLED_READING,
}


def is_sd3(pipe: Any) -> bool:
    """A pipeline with an SD3 transformer (joint attention with a caption projection)."""
    transformer = getattr(pipe, "transformer", None)
    config = getattr(transformer, "config", None)
    return (
        isinstance(transformer, nn.Module)
        and hasattr(transformer, "context_embedder")
        and getattr(config, "caption_projection_dim", None) is not None
    )


class SD3Conditioning:
    """SD3's text features: the ``prompt_embeds`` of ``StableDiffusion3Pipeline.encode_prompt``, and
    its ``pooled_prompt_embeds`` (the CLIP towers' projected end-of-text features side by side)."""

    default_targets = "text_inputs"
    pooled_reading = POOLED_READING
    methods = ("unlink", "unlink_rayleigh", "esd_x", "esd_u", "esd_x_strict")

    @staticmethod
    def _towers(pipe: Any) -> list[tuple[str, Any, nn.Module]]:
        towers = text_towers(pipe)
        names = [name for name, _, _ in towers]
        if names[:2] != list(_CLIP_TOWERS):
            raise ValueError(
                f"{type(pipe).__name__} needs both CLIP text towers (tokenizer/text_encoder and "
                f"tokenizer_2/text_encoder_2); it has {names}. Only the T5 tower (text_encoder_3) may be None."
            )
        return towers

    def tokenize(self, pipe: Any, prompts: Sequence[str], *, shortest: bool = False) -> list[Tensor]:
        """Token ids per tower: CLIP padded to 77 (or, with ``shortest``, to the batch's longest
        prompt: CLIP is causal, so the positions up to end-of-text do not change), T5 always
        padded to ``SD3_MAX_SEQUENCE_LENGTH`` as the pipeline does."""
        ids = []
        for name, tok, _ in self._towers(pipe):
            if name in _CLIP_TOWERS:
                kw = dict(padding="longest" if shortest else "max_length", max_length=tok.model_max_length)
            else:
                kw = dict(padding="max_length", max_length=SD3_MAX_SEQUENCE_LENGTH, add_special_tokens=True)
            ids.append(tok(list(prompts), truncation=True, return_tensors="pt", **kw).input_ids)
        return ids

    @torch.no_grad()
    def encode(
        self,
        pipe: Any,
        ids: list[Tensor],
        *,
        hidden_layer: str = "auto",
        device: torch.device | str | None = None,
        pooled_out: list[Tensor] | None = None,
    ) -> Tensor:
        """The context embedder's input (B, L_clip + 256, joint width) for token ids; the pooled
        text embedder's input (B, pooled width) is appended to ``pooled_out`` when given (CLIP is
        causal and pools its end-of-text token, so padding to the batch's longest changes neither)."""
        if hidden_layer not in ("auto", "penultimate"):
            raise ValueError(
                f"SD3 reads CLIP's penultimate layer and T5's last; hidden_layer must be 'auto' (got {hidden_layer!r})"
            )
        towers = self._towers(pipe)
        dtype = next(towers[0][2].parameters()).dtype
        clip, pooled = [], []
        for (_, _, enc), tower_ids in zip(towers[:2], ids[:2]):
            dev = torch.device(device) if device is not None else next(enc.parameters()).device
            out = enc(tower_ids.to(dev), output_hidden_states=True)
            clip.append(out.hidden_states[-2].to(dtype))
            pooled.append(out.text_embeds.to(dtype=dtype, device=clip[0].device))
        hidden = torch.cat(clip, dim=-1)
        if pooled_out is not None:
            pooled_out.append(torch.cat(pooled, dim=-1))
        width = pipe.transformer.config.joint_attention_dim
        hidden = F.pad(hidden, (0, width - hidden.shape[-1]))
        if len(towers) > 2:
            enc = towers[2][2]
            t5 = enc(ids[2].to(next(enc.parameters()).device))[0].to(dtype=dtype, device=hidden.device)
        else:  # no T5: the pipeline feeds zeros in its place
            t5 = hidden.new_zeros(hidden.shape[0], SD3_MAX_SEQUENCE_LENGTH, width)
        return torch.cat([hidden, t5], dim=-2)

    @torch.no_grad()
    def encode_pooled(self, pipe: Any, prompts: Sequence[str], *, device: torch.device | str | None = None) -> Tensor:
        """The pooled text embedder's input (B, pooled width) for prompts, from the CLIP towers alone."""
        pooled = []
        for _, tok, enc in self._towers(pipe)[:2]:
            ids = tok(list(prompts), padding="longest", truncation=True, return_tensors="pt").input_ids
            dev = torch.device(device) if device is not None else next(enc.parameters()).device
            pooled.append(enc(ids.to(dev)).text_embeds.float().cpu())
        return torch.cat(pooled, dim=-1)

    def mask(self, pipe: Any, ids: list[Tensor], cp: ConceptPrompts, sl: slice, mode: str) -> Tensor:
        """Boolean (B, L_clip + 256) mask of the positions that carry each prompt's concept (see the
        module docstring); the zeros standing in for a missing T5 are never features."""
        towers = self._towers(pipe)
        mask = None
        for (_, tok, _), tower_ids in zip(towers[:2], ids[:2]):
            m = concept_token_mask(tower_ids, tok.eos_token_id, cp.starts[sl], cp.lengths[sl], mode)
            mask = m if mask is None else mask & m  # the CLIP towers share one BPE: their spans agree
        if len(towers) > 2:
            t5 = _t5_mask(ids[2], towers[2][1].eos_token_id, mode)
        else:
            t5 = torch.zeros(mask.shape[0], SD3_MAX_SEQUENCE_LENGTH, dtype=torch.bool)
        return torch.cat([mask, t5], dim=1)


def _t5_mask(ids: Tensor, eos: int, mode: str) -> Tensor:
    """T5 positions that carry a prompt: every token up to and including ``</s>`` (T5 attends both
    ways, so all of them see the concept), and with the ``*_padding`` modes the padding too."""
    b, length = ids.shape
    pos = torch.arange(length).expand(b, length)
    is_eos = ids == eos
    end = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full((b,), length - 1)).unsqueeze(1)
    return torch.ones_like(pos, dtype=torch.bool) if mode in PADDING_MODES else pos <= end


# ESD's train methods on an SD3 transformer. Joint attention (``transformer_blocks.N.attn``, where the
# image tokens read the text tokens) stands in for a UNet's cross-attention; its context key/value
# projections (``add_k_proj``/``add_v_proj``) for ``attn2.to_k``/``to_v``. ``noxattn`` leaves out, as
# on the UNet, the time (and pooled text) embedding and the output head, and also the context
# embedder (it reads only text). SD3.5's ``attn2`` is image-only self-attention: not joint attention.
_JOINT_ATTN = re.compile(r"transformer_blocks\.\d+\.attn\.")
_SD3_NOXATTN_EXCLUDED = ("time_text_embed.", "context_embedder.", "norm_out.", "proj_out.")
SD3_TRAIN_SELECTIONS = {
    "xattn": parameters_where(lambda n: _JOINT_ATTN.match(n) is not None),
    "noxattn": parameters_where(lambda n: _JOINT_ATTN.match(n) is None and not n.startswith(_SD3_NOXATTN_EXCLUDED)),
    "kv": parameters_where(
        lambda n: _JOINT_ATTN.match(n) is not None and n.endswith(("add_k_proj.weight", "add_v_proj.weight"))
    ),
    "full": parameters_where(lambda n: True),
}

SD3 = register_family(
    FamilyAdapter(
        name="sd3",
        summary="MMDiT text-to-image pipelines (diffusers SD3): text features enter through the transformer's context embedder",
        presets={
            **_TEXT_PRESETS,
            "context_kv": r"transformer\.transformer_blocks\.\d+\.attn\.add_[kv]_proj",
        },
        components=("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"),
        text_towers=(
            ("tokenizer", "text_encoder"),
            ("tokenizer_2", "text_encoder_2"),
            ("tokenizer_3", "text_encoder_3"),
        ),
        text_reading=r"transformer\.context_embedder",
        train_selections=SD3_TRAIN_SELECTIONS,
        matches=is_sd3,
        conditioning=SD3Conditioning(),
    )
)


FLUX_MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's default max_sequence_length for T5


def is_flux(pipe: Any) -> bool:
    """A pipeline with a FLUX transformer (double- and single-stream blocks with rotary positions)."""
    transformer = getattr(pipe, "transformer", None)
    config = getattr(transformer, "config", None)
    return (
        isinstance(transformer, nn.Module)
        and hasattr(transformer, "context_embedder")
        and getattr(config, "axes_dims_rope", None) is not None
    )


class FluxConditioning:
    """FLUX's text features: the ``prompt_embeds`` of ``FluxPipeline.encode_prompt``, the T5
    encoder's last hidden states at 512 positions (CLIP gives only the pooled vector).

    As for SD3's T5 part, a concept's features are every position up to and including ``</s>``
    (``*_padding`` modes: all of them); T5 always runs at ``FLUX_MAX_SEQUENCE_LENGTH``, as the
    pipeline runs it (no attention mask, so the padding changes nothing before it only in CLIP).
    """

    default_targets = "text_inputs"
    pooled_reading = POOLED_READING
    methods = ("unlink", "unlink_rayleigh")

    @staticmethod
    def _t5(pipe: Any) -> tuple[Any, nn.Module]:
        tok, enc = getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)
        if tok is None or not isinstance(enc, nn.Module):
            raise ValueError(
                f"{type(pipe).__name__} has no T5 tower (tokenizer_2/text_encoder_2): FLUX reads the prompt's "
                "sequence features from T5 alone, so there is nothing to erase them from. Load the pipeline with it."
            )
        return tok, enc

    def tokenize(self, pipe: Any, prompts: Sequence[str], *, shortest: bool = False) -> list[Tensor]:
        """T5 token ids padded to ``FLUX_MAX_SEQUENCE_LENGTH`` (``shortest`` does not apply: T5
        attends both ways, so its padding changes the prompt's features), then, when the pipeline
        has its CLIP tower, CLIP's (for the pooled vector; padded to the longest: CLIP is causal)."""
        tok, _ = self._t5(pipe)
        kw = dict(padding="max_length", max_length=FLUX_MAX_SEQUENCE_LENGTH, truncation=True, return_tensors="pt")
        ids = [tok(list(prompts), **kw).input_ids]
        clip_tok = getattr(pipe, "tokenizer", None)
        if clip_tok is not None and isinstance(getattr(pipe, "text_encoder", None), nn.Module):
            ids.append(clip_tok(list(prompts), padding="longest", truncation=True, return_tensors="pt").input_ids)
        return ids

    @torch.no_grad()
    def encode(
        self,
        pipe: Any,
        ids: list[Tensor],
        *,
        hidden_layer: str = "auto",
        device: torch.device | str | None = None,
        pooled_out: list[Tensor] | None = None,
    ) -> Tensor:
        """The context embedder's input (B, 512, joint width) for token ids; the pooled text
        embedder's input (CLIP's pooled output, B x 768) is appended to ``pooled_out`` when given."""
        if hidden_layer not in ("auto", "last"):
            raise ValueError(f"FLUX reads T5's last layer; hidden_layer must be 'auto' (got {hidden_layer!r})")
        _, enc = self._t5(pipe)
        dev = torch.device(device) if device is not None else next(enc.parameters()).device
        hidden = enc(ids[0].to(dev))[0]
        if pooled_out is not None:
            if len(ids) < 2:
                raise ValueError(
                    f"{type(pipe).__name__} has no CLIP tower (tokenizer/text_encoder), which gives FLUX its pooled "
                    "vector; load the pipeline with it, or erase with layers='context_embedder'."
                )
            clip = pipe.text_encoder
            clip_dev = torch.device(device) if device is not None else next(clip.parameters()).device
            pooled_out.append(clip(ids[1].to(clip_dev)).pooler_output.to(dtype=hidden.dtype, device=hidden.device))
        return hidden

    @torch.no_grad()
    def encode_pooled(self, pipe: Any, prompts: Sequence[str], *, device: torch.device | str | None = None) -> Tensor:
        """The pooled text embedder's input (B, 768: CLIP's pooled output) for prompts, CLIP alone."""
        ids = self.tokenize(pipe, prompts)
        if len(ids) < 2:
            raise ValueError(
                f"{type(pipe).__name__} has no CLIP tower (tokenizer/text_encoder), which gives FLUX its pooled "
                "vector; load the pipeline with it, or erase with layers='context_embedder'."
            )
        clip = pipe.text_encoder
        dev = torch.device(device) if device is not None else next(clip.parameters()).device
        return clip(ids[1].to(dev)).pooler_output.float().cpu()

    def mask(self, pipe: Any, ids: list[Tensor], cp: ConceptPrompts, sl: slice, mode: str) -> Tensor:
        """Boolean (B, 512) mask of the T5 positions that carry each prompt."""
        tok, _ = self._t5(pipe)
        return _t5_mask(ids[0], tok.eos_token_id, mode)


FLUX = register_family(
    FamilyAdapter(
        name="flux",
        summary="FLUX text-to-image pipelines (diffusers FluxPipeline): T5 features enter through the transformer's context embedder",
        presets={
            **_TEXT_PRESETS,
            "context_kv": r"transformer\.transformer_blocks\.\d+\.attn\.add_[kv]_proj",
        },
        components=("transformer", "text_encoder", "text_encoder_2", "vae"),
        text_towers=(("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
        text_reading=r"transformer\.context_embedder",
        matches=is_flux,
        conditioning=FluxConditioning(),
    )
)
