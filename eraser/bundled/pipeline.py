"""A tiny text-to-image diffusion pipeline of handwritten digits, conditioned by the tiny CLIP.

    from eraser.bundled import digits_pipeline, digit_prompt

    pipe = digits_pipeline()                                         # float32, eval mode, < 1 s
    images = pipe(digit_prompt(7), num_images_per_prompt=8, generator=torch.Generator().manual_seed(0)).images
    x = pipe(["handwritten 3", "the number five"], output_type="pt").images     # (2, 1, 32, 32) in [0, 1]

``DigitsPipeline`` is a ``diffusers.DiffusionPipeline`` laid out as Stable Diffusion v1 minus the
VAE: a ``UNet2DConditionModel`` denoises 1-channel 32x32 pixels (MNIST digits zero-padded from
28x28, values in [-1, 1], white digit on black) and cross-attends to the last hidden states
(77 x 64) of the tiny CLIP's text tower (``CLIPTextModel``, real CLIP tokenizer, padded to 77 with
``<|endoftext|>``). Classifier-free guidance uses the empty prompt ``""`` as the unconditional
prompt, as SD does, so :func:`eraser.erase_concepts` edits it like any SD pipeline (it reads
``pipe.unet``, ``pipe.text_encoder`` and ``pipe.tokenizer``).

Bundled files (``eraser/bundled/weights/t2i/``, written by ``python -m recipes.train_t2i``):
``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors`` (the EMA weights in float16,
loaded as float32), ``scheduler/scheduler_config.json`` and ``meta.json`` (training record,
weights' sha256). The text encoder is not stored again: it is the text tower of
``eraser.bundled.digits_clip()``. ``pipe.save_pretrained(folder)`` writes a complete diffusers
folder (all four components) that ``DigitsPipeline.from_pretrained(folder)`` reads back.
"""

from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from ..hashing import file_sha256
from .captions import DIGIT_WORDS
from .models import WEIGHTS_DIR, BundledWeightsError

__all__ = [
    "T2I_DIR",
    "T2I_REBUILD",
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "DigitsPipeline",
    "DigitsPipelineOutput",
    "digits_pipeline",
    "unet_config",
    "scheduler_config",
    "text_encoder_from_clip",
    "random_digits_pipeline",
    "save_t2i_folder",
    "load_t2i_unet",
    "load_denoiser",
]

T2I_DIR = WEIGHTS_DIR / "t2i"
T2I_REBUILD = "python -m recipes.train_t2i --data ../shared/data/mnist --out eraser/bundled/weights/t2i"
UNET_DIR, UNET_CONFIG, UNET_WEIGHTS = "unet", "config.json", "diffusion_pytorch_model.safetensors"
TRANSFORMER_DIR = "transformer"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
DEFAULT_GUIDANCE = 4.0
DEFAULT_STEPS = 20
IMAGE_SIZE = 32


def unet_config(
    cross_attention_dim: int = 64,
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64),
    layers_per_block: int = 1,
    attention_head_dim: int = 8,
    norm_num_groups: int = 8,
    attention_levels: int = 2,
) -> dict[str, Any]:
    """The digits UNet on 1-channel 32x32 pixels: self/cross-attention only in the
    ``attention_levels`` lowest-resolution levels (and the mid block), plain ResNet blocks above.

    ``attention_head_dim`` is diffusers' legacy name for the number of heads of each attention.
    """
    n = len(block_out_channels)
    if not 1 <= attention_levels <= n:
        raise ValueError(f"attention_levels must be in 1..{n}; got {attention_levels}")
    plain = n - attention_levels
    return {
        "sample_size": IMAGE_SIZE,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": list(block_out_channels),
        "down_block_types": ["DownBlock2D"] * plain + ["CrossAttnDownBlock2D"] * attention_levels,
        "up_block_types": ["CrossAttnUpBlock2D"] * attention_levels + ["UpBlock2D"] * plain,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": layers_per_block,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": attention_head_dim,
        "norm_num_groups": norm_num_groups,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }


def scheduler_config(num_train_timesteps: int = 1000) -> dict[str, Any]:
    """The training noise schedule and the sampler: cosine (``squaredcos_cap_v2``, Nichol & Dhariwal
    2021, suited to low-resolution pixel-space models), epsilon prediction, DDIM sampling with SD's
    ``leading`` spacing (20 steps: t = 951, 901, ..., 1) and predictions of x0 clipped to the pixel
    range [-1, 1] (the pipeline then re-derives the noise from the clipped x0:
    ``use_clipped_model_output``). (``trailing`` spacing would start at t = 999, where the cosine schedule leaves
    sqrt(alpha_bar) ~ 1e-4: an epsilon model's x0 estimate there is noise, clipped to +-1, and it
    greys the background of the final image.)"""
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": num_train_timesteps,
        "beta_schedule": "squaredcos_cap_v2",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "prediction_type": "epsilon",
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "thresholding": False,
    }


def text_encoder_from_clip(clip_model) -> Any:
    """A ``CLIPTextModel`` holding a copy of ``clip_model``'s text tower (eval mode, no gradients)."""
    import copy

    from transformers import CLIPTextModel

    tower = clip_model.text_model
    if isinstance(tower, CLIPTextModel):  # transformers 5.x
        enc = copy.deepcopy(tower)
    else:  # transformers 4.x: a bare CLIPTextTransformer
        enc = CLIPTextModel(clip_model.config.text_config)
        enc.text_model.load_state_dict(tower.state_dict())
    p = next(clip_model.parameters())
    return enc.to(p.device, p.dtype).eval().requires_grad_(False)


@dataclass
class DigitsPipelineOutput(BaseOutput):
    """``images``: PIL "L" images (``pil``), a float (B, 32, 32, 1) array (``np``) or a
    (B, 1, 32, 32) tensor (``pt``), pixels in [0, 1] (white digit on black)."""

    images: Any


class DigitsPipeline(DiffusionPipeline):
    """Text-to-image diffusion of 32x32 handwritten digits (pixel space, no VAE).

    Components: ``unet`` (``UNet2DConditionModel``, 1 channel), ``text_encoder``
    (``CLIPTextModel``), ``tokenizer`` (``CLIPTokenizer``), ``scheduler`` (any diffusers scheduler
    of the same noise schedule; DDIM by default).
    """

    model_cpu_offload_seq = "text_encoder->unet"
    # The concepts this model was trained on (its captions name nothing else): erasure looks for an
    # erased concept's neighbours among them (``eraser.erase_concepts``' neighbour-aware default).
    concept_bank: tuple[str, ...] = DIGIT_WORDS + tuple(str(d) for d in range(10))
    vae_scale_factor = 1  # pixel space: trainers size their samples as sample_size * vae_scale_factor
    _optional_components: list[str] = []

    def __init__(self, unet: UNet2DConditionModel, text_encoder, tokenizer, scheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    # ------------------------------------------------------------------------------------------
    def _encode(self, prompts: list[str], device: torch.device) -> Tensor:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = self.text_encoder(ids.to(device))
        return out.last_hidden_state  # SD v1 reads the last layer (after the final layer norm)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``(prompt_embeds, negative_prompt_embeds)`` as in diffusers' SD pipeline: the text
        encoder's last hidden states (B * num_images_per_prompt, 77, D); the unconditional ones are
        those of ``""`` (or of ``negative_prompt``) when ``do_classifier_free_guidance``, else None."""
        device = torch.device(device) if device is not None else self._execution_device
        dtype = self.unet.dtype
        if prompt_embeds is None:
            prompts = _as_list(prompt, "prompt")
            prompt_embeds = self._encode(prompts, device)
        batch = prompt_embeds.shape[0]
        prompt_embeds = prompt_embeds.to(device, dtype).repeat_interleave(num_images_per_prompt, dim=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            negative_prompt_embeds = self._encode(_negatives(negative_prompt, batch), device)
        negative_prompt_embeds = negative_prompt_embeds.to(device, dtype).repeat_interleave(
            num_images_per_prompt, dim=0
        )
        if negative_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError(
                f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} do not match "
                f"prompt_embeds {tuple(prompt_embeds.shape)}"
            )
        return prompt_embeds, negative_prompt_embeds

    def prompt_kwargs(self, prompts: list[str], guidance: bool) -> dict[str, Tensor]:
        """The encoded ``prompts`` as keyword arguments of ``__call__``, one row per prompt (index the
        rows to pick prompts): encode once, generate many times."""
        cond, uncond = self.encode_prompt(prompts, None, 1, guidance)
        return {"prompt_embeds": cond, **({"negative_prompt_embeds": uncond} if guidance else {})}

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict[str, Any]:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        if "use_clipped_model_output" in params:
            # With clip_sample the scheduler clips its x0 estimate; the noise estimate must then be
            # recomputed from the clipped x0, or the two disagree and the error grows with every step
            # (on this model, digits fall apart at 20+ steps without it; docs/benchmarks.md).
            kwargs["use_clipped_model_output"] = True
        return kwargs

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
        return_dict: bool = True,
    ) -> DigitsPipelineOutput | tuple:
        """Generate digits for ``prompt`` (a string or a list; ``""`` is unconditional).

        ``guidance_scale`` > 1 enables classifier-free guidance against ``""`` (or
        ``negative_prompt``). ``generator`` makes the result deterministic. ``eta``: DDIM's
        stochasticity (1.0, the default, is ancestral DDPM-like sampling, which gives this small
        model clean black backgrounds at 20 steps; 0.0 is deterministic DDIM). ``output_type``:
        ``"pil"`` (grayscale "L" images), ``"np"`` ((B, 32, 32, 1) float in [0, 1]), ``"pt"``
        ((B, 1, 32, 32) float tensor in [0, 1]) or ``"latent"`` (the raw [-1, 1] samples).
        """
        _check_call(output_type, num_inference_steps, num_images_per_prompt, prompt, prompt_embeds)
        cfg = guidance_scale > 1.0
        cond, uncond = self.encode_prompt(
            prompt,
            self._execution_device,
            num_images_per_prompt,
            cfg,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
        )
        embeds = torch.cat([uncond, cond]) if cfg else cond

        def predict(x: Tensor, t: Tensor) -> Tensor:
            return self.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]

        images = self._sample(
            self.unet, predict, cond.shape[0], num_inference_steps, guidance_scale, generator, eta, latents, output_type
        )
        return DigitsPipelineOutput(images=images) if return_dict else (images,)

    def _sample(
        self,
        denoiser: Any,
        predict: Any,
        batch: int,
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None,
        eta: float,
        latents: Tensor | None,
        output_type: str,
    ) -> Any:
        """The sampling loop shared by the bundled pipelines: ``predict(x, t)`` is the denoiser's
        noise prediction for the (with guidance: unconditional then conditional) batch ``x``."""
        device = self._execution_device
        cfg = guidance_scale > 1.0
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} images")
        self.scheduler.set_timesteps(int(num_inference_steps), device=device)
        size = denoiser.config.sample_size
        shape = (batch, denoiser.config.in_channels, size, size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=denoiser.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}; got {tuple(latents.shape)}")
        latents = latents.to(device, denoiser.dtype) * self.scheduler.init_noise_sigma
        extra = self.prepare_extra_step_kwargs(generator, eta)

        with self.progress_bar(total=len(self.scheduler.timesteps)) as bar:
            for t in self.scheduler.timesteps:
                x_in = torch.cat([latents] * 2) if cfg else latents
                x_in = self.scheduler.scale_model_input(x_in, t)
                eps = predict(x_in, t)
                if cfg:
                    eps_u, eps_c = eps.chunk(2)
                    eps = eps_u + guidance_scale * (eps_c - eps_u)
                latents = self.scheduler.step(eps, t, latents, **extra, return_dict=False)[0]
                bar.update()

        self.maybe_free_model_hooks()
        if output_type == "latent":
            return latents
        x = (latents.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return x
        arr = x.permute(0, 2, 3, 1).cpu().numpy()
        return arr if output_type == "np" else _to_pil(arr)


def _check_call(output_type: str, steps: int, per_prompt: int, prompt: Any, prompt_embeds: Any) -> None:
    if output_type not in ("pil", "np", "pt", "latent"):
        raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent'; got {output_type!r}")
    if int(steps) < 1:
        raise ValueError(f"num_inference_steps must be >= 1; got {steps}")
    if int(per_prompt) < 1:
        raise ValueError(f"num_images_per_prompt must be >= 1; got {per_prompt}")
    if prompt is None and prompt_embeds is None:
        raise ValueError("give a prompt (use '' for unconditional generation) or prompt_embeds")


def _negatives(negative_prompt: str | list[str] | None, batch: int) -> list[str]:
    """The unconditional prompts of a batch: ``""`` each, or ``negative_prompt`` (one, or one per prompt)."""
    if negative_prompt is None:
        return [""] * batch
    negatives = _as_list(negative_prompt, "negative_prompt")
    if len(negatives) == 1:
        negatives = negatives * batch
    if len(negatives) != batch:
        raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {batch}")
    return negatives


def _as_list(prompt, name: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise TypeError(f"{name} must be a string or a non-empty list of strings; got {type(prompt).__name__}")


def _to_pil(arr: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray((a[..., 0] * 255).round().astype(np.uint8), mode="L") for a in arr]


# ----------------------------------------------------------------------------------------------
# bundled files


def _need(path: Path, rebuild: str = T2I_REBUILD) -> Path:
    if not path.is_file():
        raise BundledWeightsError(f"bundled text-to-image file {path} is missing; rebuild it with `{rebuild}`")
    return path


def _read_json(path: Path, rebuild: str = T2I_REBUILD) -> dict:
    try:
        data = json.loads(_need(path, rebuild).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundledWeightsError(f"bundled file {path} is damaged ({err}); rebuild it with `{rebuild}`") from None
    if not isinstance(data, dict):
        raise BundledWeightsError(f"bundled file {path} is damaged (not a JSON object); rebuild it with `{rebuild}`")
    return data


def load_t2i_unet(folder: str | Path = T2I_DIR, check_sha: bool = True) -> UNet2DConditionModel:
    """The UNet of a folder written by ``train_t2i`` (float32, eval mode), with clear errors."""
    return load_denoiser(folder, UNet2DConditionModel, UNET_DIR, T2I_REBUILD, check_sha)


def load_denoiser(folder: str | Path, cls: type, sub: str, rebuild: str, check_sha: bool = True) -> Any:
    """The ``cls`` model in ``folder/sub`` of a folder written by ``save_t2i_folder`` (float32, eval
    mode), its weights checked against ``meta.json``; errors name the file and the ``rebuild`` command."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / sub / UNET_CONFIG, folder / sub / UNET_WEIGHTS
    config = _read_json(cfg_path, rebuild)
    _need(w_path, rebuild)
    meta = _read_json(folder / "meta.json", rebuild)
    expected = meta.get("weights_sha256")
    if check_sha and expected and file_sha256(w_path) != expected:
        raise BundledWeightsError(
            f"bundled weight file {w_path} is damaged (sha256 differs from {folder / 'meta.json'}); "
            f"rebuild it with `{rebuild}`"
        )
    try:
        state = load_file(str(w_path))
    except Exception as err:  # SafetensorError / OSError on damaged files
        raise BundledWeightsError(
            f"bundled weight file {w_path} is damaged ({err}); rebuild it with `{rebuild}`"
        ) from None
    try:
        model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    except Exception as err:
        raise BundledWeightsError(f"bundled file {cfg_path} is damaged ({err}); rebuild it with `{rebuild}`") from None
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise BundledWeightsError(
            f"bundled weight file {w_path} does not fit {cfg_path} ({str(err)[:300]}); rebuild it with `{rebuild}`"
        ) from None
    return model.eval().requires_grad_(False)


def _load_scheduler(folder: Path, rebuild: str = T2I_REBUILD) -> DDIMScheduler:
    path = folder / SCHEDULER_CONFIG
    config = _read_json(path, rebuild)
    try:
        return DDIMScheduler.from_config(config)
    except Exception as err:
        raise BundledWeightsError(f"bundled file {path} is damaged ({err}); rebuild it with `{rebuild}`") from None


def digits_pipeline(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    folder: str | Path | None = None,
    clip_folder: str | Path | None = None,
) -> DigitsPipeline:
    """The bundled digits text-to-image pipeline (eval mode): the UNet and scheduler of
    ``eraser/bundled/weights/t2i/`` (or ``folder``) and the text tower of the bundled tiny CLIP
    (or of the CLIP in ``clip_folder``). Raises ``BundledWeightsError`` naming a missing or damaged
    file and the command that rebuilds it."""
    from .models import digits_clip, load_clip_folder

    folder = Path(folder) if folder is not None else T2I_DIR
    unet = load_t2i_unet(folder)
    scheduler = _load_scheduler(folder)
    meta = _read_json(folder / "meta.json")
    clip, tokenizer = load_clip_folder(clip_folder) if clip_folder is not None else digits_clip()
    clip_dir = Path(clip_folder) if clip_folder is not None else WEIGHTS_DIR / "clip"
    trained_on = meta.get("clip_weights_sha256")
    if (
        trained_on
        and (clip_dir / "model.safetensors").is_file()
        and file_sha256(clip_dir / "model.safetensors") != trained_on
    ):
        warnings.warn(
            f"the UNet in {folder} was trained on another tiny CLIP than the one in {clip_dir}; "
            f"its images will not follow the prompts. Retrain it with `{T2I_REBUILD}`.",
            stacklevel=2,
        )
    pipe = DigitsPipeline(
        unet=unet, text_encoder=text_encoder_from_clip(clip), tokenizer=tokenizer, scheduler=scheduler
    )
    pipe = pipe.to(device)
    # (diffusers warns on any dtype cast; the weights load as float32, so cast only when asked)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def random_digits_pipeline(text_hidden: int = 64, seed: int = 0, **unet_kwargs) -> DigitsPipeline:
    """A ``DigitsPipeline`` of the bundled layout with random weights (for tests and timing)."""
    from transformers import CLIPTextModel

    from ..families.clip_tokenizer import clip_tokenizer
    from .models import clip_config

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(clip_config(text_hidden=text_hidden).text_config).eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_config(unet_config(cross_attention_dim=text_hidden, **unet_kwargs)).eval()
    scheduler = DDIMScheduler.from_config(scheduler_config())
    return DigitsPipeline(unet=unet, text_encoder=text_encoder, tokenizer=clip_tokenizer(), scheduler=scheduler)


def save_t2i_folder(model: Any, scheduler, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write the bundled layout: ``unet/`` (or ``transformer/`` for an MMDiT; config + float16
    safetensors), ``scheduler/`` and ``meta.json`` (``meta`` plus the weights' sha256). The text
    encoder is not written."""
    from safetensors.torch import save_file

    folder = Path(folder)
    cls = type(model).__name__
    sub = UNET_DIR if isinstance(model, UNet2DConditionModel) else TRANSFORMER_DIR
    (folder / sub).mkdir(parents=True, exist_ok=True)
    w_path = folder / sub / UNET_WEIGHTS
    tmp = w_path.with_name(w_path.name + ".tmp")
    save_file(
        {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()},
        str(tmp),
        metadata={"format": "pt", "model": f"diffusers {cls} (eraser.bundled digits text-to-image)"},
    )
    tmp.replace(w_path)
    w_path.chmod(0o644)
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    config = {"_class_name": cls, **config}
    (folder / sub / UNET_CONFIG).write_text(json.dumps(config, indent=2, default=list) + "\n")
    scheduler.save_config(str(folder / "scheduler"))
    meta = {**meta, "weights_sha256": file_sha256(w_path)}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder
