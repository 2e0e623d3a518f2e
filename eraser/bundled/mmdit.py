"""A tiny MMDiT (SD3 layout) text-to-image pipeline of handwritten digits, conditioned by the tiny CLIP.

    from eraser.bundled.mmdit import digits_mmdit_pipeline

    pipe = digits_mmdit_pipeline()
    x = pipe("a photo of the digit seven", num_images_per_prompt=8, output_type="pt").images

``DigitsMMDiTPipeline`` denoises the same 1-channel 32x32 pixels as the UNet digits model
(``eraser.bundled.pipeline``) with a diffusers ``SD3Transformer2DModel`` (joint attention over
image patches and text tokens), and reads text as ``StableDiffusion3Pipeline`` does:

- ``transformer.context_embedder`` reads the penultimate hidden states of two CLIP text towers side
  by side (``text_encoder`` and ``text_encoder_2``; here both hold a copy of the bundled tiny CLIP's
  text tower, 64 + 64 = 128 features), so :func:`eraser.erase_concepts` edits it through the SD3
  family adapter (``eraser.families.mmdit``), exactly as on SD3;
- ``transformer.time_text_embed`` reads their pooled projections (64 + 64), which modulate every block.

Where it differs from SD3, to stay small enough to train on a CPU: pixel space (no VAE); the UNet
model's noise schedule and sampler (cosine DDPM, epsilon prediction, DDIM with clipped x0) instead
of rectified flow; CLIP padded to 32 positions (``tokenizer.model_max_length``) instead of 77; no
T5 tower, and none of the zero positions SD3's pipeline puts in its place (an edit of the context
embedder's weight leaves a zero input as it is, so they would change nothing an erasure does).

Bundled files (``eraser/bundled/weights/t2i_mmdit/``, written by
``python -m recipes.train_t2i --arch mmdit``): ``transformer/`` (config and float16 safetensors),
``scheduler/`` and ``meta.json`` (training record, weights' sha256).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, SD3Transformer2DModel
from torch import Tensor

from ..hashing import file_sha256
from .models import WEIGHTS_DIR
from .pipeline import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    IMAGE_SIZE,
    TRANSFORMER_DIR,
    DigitsPipeline,
    DigitsPipelineOutput,
    _as_list,
    _check_call,
    _load_scheduler,
    _negatives,
    _read_json,
    load_denoiser,
    scheduler_config,
)

__all__ = [
    "MMDIT_DIR",
    "MMDIT_REBUILD",
    "CONTEXT_LENGTH",
    "DigitsMMDiTPipeline",
    "mmdit_config",
    "predict_noise",
    "text_encoder_with_projection",
    "digits_mmdit_pipeline",
    "random_digits_mmdit_pipeline",
]

MMDIT_DIR = WEIGHTS_DIR / "t2i_mmdit"
MMDIT_REBUILD = (
    "python -m recipes.train_t2i --arch mmdit --data ../shared/data/mnist --out eraser/bundled/weights/t2i_mmdit"
)
CONTEXT_LENGTH = 32  # CLIP positions the transformer reads (SD3: 77); the captions need at most 16


def mmdit_config(
    text_hidden: int = 64,
    projection_dim: int = 64,
    patch_size: int = 4,
    num_layers: int = 6,
    num_attention_heads: int = 4,
    attention_head_dim: int = 32,
) -> dict[str, Any]:
    """The digits MMDiT on 1-channel 32x32 pixels: ``patch_size`` pixel patches, joint attention
    with the text of two CLIP towers (``2 * text_hidden`` features, ``2 * projection_dim`` pooled)."""
    if IMAGE_SIZE % patch_size:
        raise ValueError(f"patch_size must divide {IMAGE_SIZE}; got {patch_size}")
    return {
        "sample_size": IMAGE_SIZE,
        "patch_size": patch_size,
        "in_channels": 1,
        "out_channels": 1,
        "num_layers": num_layers,
        "attention_head_dim": attention_head_dim,
        "num_attention_heads": num_attention_heads,
        "joint_attention_dim": 2 * text_hidden,
        "caption_projection_dim": num_attention_heads * attention_head_dim,
        "pooled_projection_dim": 2 * projection_dim,
        "pos_embed_max_size": IMAGE_SIZE // patch_size,
    }


def text_encoder_with_projection(clip_model) -> Any:
    """A ``CLIPTextModelWithProjection`` holding a copy of ``clip_model``'s text tower and text
    projection (eval mode, no gradients): SD3's text encoders, whose ``text_embeds`` are the pooled text."""
    from transformers import CLIPTextModelWithProjection

    enc = CLIPTextModelWithProjection(clip_model.config.text_config)
    tower = clip_model.text_model
    tower = getattr(tower, "text_model", tower)  # transformers 5.x wraps the transformer in a CLIPTextModel
    enc.text_model.load_state_dict(tower.state_dict())
    enc.text_projection.load_state_dict(clip_model.text_projection.state_dict())
    p = next(clip_model.parameters())
    return enc.to(p.device, p.dtype).eval().requires_grad_(False)


class DigitsMMDiTPipeline(DigitsPipeline):
    """Text-to-image diffusion of 32x32 handwritten digits with an SD3-layout transformer (pixel space).

    Components: ``transformer`` (``SD3Transformer2DModel``, 1 channel), ``text_encoder`` and
    ``text_encoder_2`` (``CLIPTextModelWithProjection``), ``tokenizer`` and ``tokenizer_2``
    (``CLIPTokenizer``), ``scheduler`` (DDIM by default). Sampling, guidance and outputs are the
    UNet digits pipeline's; the prompt is encoded as SD3 encodes it (see the module docs).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer"

    def __init__(
        self, transformer: SD3Transformer2DModel, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler
    ) -> None:
        DiffusionPipeline.__init__(self)
        self.register_modules(
            transformer=transformer,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            scheduler=scheduler,
        )

    def _encode(self, prompts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """(prompt_embeds (B, L, joint width), pooled (B, 2 * projection)) as SD3 computes them."""
        hidden, pooled = [], []
        for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tok(
                prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            out = enc(ids.to(device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # SD3 reads CLIP's penultimate layer
            pooled.append(out.text_embeds)
        embeds = torch.cat(hidden, dim=-1)
        width = self.transformer.config.joint_attention_dim
        embeds = torch.nn.functional.pad(embeds, (0, width - embeds.shape[-1]))
        return embeds, torch.cat(pooled, dim=-1)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        pooled_prompt_embeds: Tensor | None = None,
        negative_pooled_prompt_embeds: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """``(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)``
        as in diffusers' SD3 pipeline (same signature); the unconditional ones are those of ``""`` (or
        of ``negative_prompt``) when ``do_classifier_free_guidance``, else None. Both CLIP towers read
        ``prompt`` (they are copies of one tower): ``prompt_2`` may only repeat it, and there is no T5
        tower for ``prompt_3``."""
        for name, other in (("prompt_2", prompt_2), ("prompt_3", prompt_3)):
            if other is not None and other != prompt:
                raise ValueError(
                    f"the bundled MMDiT's two CLIP towers are one tower and it has no T5: {name} must be None "
                    f"(or repeat prompt); got {other!r}"
                )
        device = torch.device(device) if device is not None else self._execution_device
        dtype, n = self.transformer.dtype, num_images_per_prompt
        if prompt_embeds is None:
            prompt_embeds, pooled_prompt_embeds = self._encode(_as_list(prompt, "prompt"), device)
        elif pooled_prompt_embeds is None:
            raise ValueError("prompt_embeds need their pooled_prompt_embeds (both come from encode_prompt)")

        def rows(t: Tensor) -> Tensor:
            return t.to(device, dtype).repeat_interleave(n, dim=0)

        prompt_embeds, pooled_prompt_embeds = rows(prompt_embeds), rows(pooled_prompt_embeds)
        if not do_classifier_free_guidance:
            return prompt_embeds, None, pooled_prompt_embeds, None
        if negative_prompt_embeds is None:
            batch = prompt_embeds.shape[0] // n
            negative_prompt_embeds, negative_pooled_prompt_embeds = self._encode(
                _negatives(negative_prompt, batch), device
            )
        elif negative_pooled_prompt_embeds is None:
            raise ValueError("negative_prompt_embeds need their negative_pooled_prompt_embeds")
        negative_prompt_embeds = rows(negative_prompt_embeds)
        negative_pooled_prompt_embeds = rows(negative_pooled_prompt_embeds)
        if negative_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError(
                f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} do not match "
                f"prompt_embeds {tuple(prompt_embeds.shape)}"
            )
        return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds

    def prompt_kwargs(self, prompts: list[str], guidance: bool) -> dict[str, Tensor]:
        """The encoded ``prompts`` as keyword arguments of ``__call__``, one row per prompt."""
        cond, uncond, pooled, upooled = self.encode_prompt(prompts, device=None, do_classifier_free_guidance=guidance)
        out = {"prompt_embeds": cond, "pooled_prompt_embeds": pooled}
        if guidance:
            out.update({"negative_prompt_embeds": uncond, "negative_pooled_prompt_embeds": upooled})
        return out

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images_per_prompt: int = 1,
        negative_prompt: str | list[str] | None = None,
        output_type: str = "pil",
        eta: float = 1.0,
        latents: Tensor | None = None,
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        pooled_prompt_embeds: Tensor | None = None,
        negative_pooled_prompt_embeds: Tensor | None = None,
        return_dict: bool = True,
    ) -> DigitsPipelineOutput | tuple:
        """Generate digits for ``prompt``; the arguments are the UNet digits pipeline's, plus SD3's
        pooled embeddings when passing ``prompt_embeds``."""
        _check_call(output_type, num_inference_steps, num_images_per_prompt, prompt, prompt_embeds)
        cfg = guidance_scale > 1.0
        cond, uncond, pooled, upooled = self.encode_prompt(
            prompt,
            device=self._execution_device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        embeds = torch.cat([uncond, cond]) if cfg else cond
        pooled_all = torch.cat([upooled, pooled]) if cfg else pooled

        def predict(x: Tensor, t: Tensor) -> Tensor:
            return predict_noise(self.transformer, x, t, embeds, pooled_all)

        images = self._sample(
            self.transformer,
            predict,
            cond.shape[0],
            num_inference_steps,
            guidance_scale,
            generator,
            eta,
            latents,
            output_type,
        )
        return DigitsPipelineOutput(images=images) if return_dict else (images,)


def predict_noise(transformer: SD3Transformer2DModel, x: Tensor, t: Tensor, embeds: Tensor, pooled: Tensor) -> Tensor:
    """The transformer's noise prediction for pixels ``x`` at timestep(s) ``t`` (sampling and the recipe's training)."""
    t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
    return transformer(x, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=t).sample


def _pipeline(transformer: SD3Transformer2DModel, clip_model, tokenizer, scheduler) -> DigitsMMDiTPipeline:
    tok = copy.deepcopy(tokenizer)
    tok.model_max_length = CONTEXT_LENGTH
    return DigitsMMDiTPipeline(
        transformer=transformer,
        text_encoder=text_encoder_with_projection(clip_model),
        tokenizer=tok,
        text_encoder_2=text_encoder_with_projection(clip_model),
        tokenizer_2=copy.deepcopy(tok),
        scheduler=scheduler,
    )


def digits_mmdit_pipeline(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    folder: str | Path | None = None,
    clip_folder: str | Path | None = None,
) -> DigitsMMDiTPipeline:
    """The bundled digits MMDiT pipeline (eval mode): the transformer and scheduler of
    ``eraser/bundled/weights/t2i_mmdit/`` (or ``folder``) and the bundled tiny CLIP's text tower
    (or that of the CLIP in ``clip_folder``) in both text-encoder slots. Raises
    ``BundledWeightsError`` naming a missing or damaged file and the command that rebuilds it."""
    from .models import digits_clip, load_clip_folder

    folder = Path(folder) if folder is not None else MMDIT_DIR
    transformer = load_denoiser(folder, SD3Transformer2DModel, TRANSFORMER_DIR, MMDIT_REBUILD)
    scheduler = _load_scheduler(folder, MMDIT_REBUILD)
    meta = _read_json(folder / "meta.json", MMDIT_REBUILD)
    clip, tokenizer = load_clip_folder(clip_folder) if clip_folder is not None else digits_clip()
    clip_dir = Path(clip_folder) if clip_folder is not None else WEIGHTS_DIR / "clip"
    trained_on = meta.get("clip_weights_sha256")
    if trained_on and (clip_dir / "model.safetensors").is_file():
        if file_sha256(clip_dir / "model.safetensors") != trained_on:
            warnings.warn(
                f"the transformer in {folder} was trained on another tiny CLIP than the one in {clip_dir}; "
                f"its images will not follow the prompts. Retrain it with `{MMDIT_REBUILD}`.",
                stacklevel=2,
            )
    pipe = _pipeline(transformer, clip, tokenizer, scheduler).to(device)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def random_digits_mmdit_pipeline(seed: int = 0, clip_model=None, **config) -> DigitsMMDiTPipeline:
    """A ``DigitsMMDiTPipeline`` of the bundled layout with a random transformer (``mmdit_config``
    arguments) and the given tiny CLIP (default: a seeded random one), for tests and training."""
    from transformers import CLIPModel

    from ..families.clip_tokenizer import clip_tokenizer
    from .models import clip_config

    torch.manual_seed(seed)
    clip = clip_model if clip_model is not None else CLIPModel(clip_config()).eval()
    cfg = clip.config
    transformer = SD3Transformer2DModel.from_config(
        mmdit_config(cfg.text_config.hidden_size, cfg.projection_dim, **config)
    ).eval()
    return _pipeline(transformer, clip, clip_tokenizer(), DDIMScheduler.from_config(scheduler_config()))
