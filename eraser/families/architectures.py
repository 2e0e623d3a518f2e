"""Stable Diffusion pipelines with random weights: the published architectures, and tiny ones.

No Stable Diffusion checkpoint is available offline, so this module rebuilds the models from their
published ``config.json`` files (``ARCHITECTURES``: SD v1.4, SD v2.1, SDXL base 1.0) with random
weights. Those pipelines have the real layer shapes and parameter counts, so they are good for timing
and memory benchmarks (never for judging image quality). ``TINY`` holds the same classes at tiny
sizes (``tiny-sd``, ``tiny-sdxl``) for fast functional tests. Every pipeline uses the real CLIP
tokenizer (built offline by :mod:`eraser.families.clip_tokenizer`), so prompts tokenize as in SD.

    pipe = build_pipeline("tiny-sd")                                   # < 1 s
    pipe = build_pipeline("sdxl-base-1.0", dtype=torch.bfloat16,       # ~6.8 GB, no float32 copy
                          components=("unet", "text_encoder", "text_encoder_2"))
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

__all__ = ["ARCHITECTURES", "TINY", "MODEL_COMPONENTS", "architecture", "build_pipeline", "default_dtype", "names"]

_CROSS3 = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_UP3 = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

# The VAE shared by SD v1, v2 and XL (CompVis/stable-diffusion-v1-4/vae/config.json); v2.1 and XL
# only change sample_size (and XL scaling_factor / force_upcast).
_SD_VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# OpenAI CLIP ViT-L/14 text tower (CompVis/stable-diffusion-v1-4/text_encoder/config.json; the same
# model is stabilityai/stable-diffusion-xl-base-1.0/text_encoder).
_CLIP_VIT_L: dict[str, Any] = {
    "_class_name": "CLIPTextModel",
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# The DDPM training schedule of every SD model; each repo wraps it in a different sampler class.
_SD_BETAS: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    # Mirrors the hub repo CompVis/stable-diffusion-v1-4 (unet/, text_encoder/, vae/, scheduler/,
    # tokenizer/ config.json files).
    "sd-v1-4": {
        "hub_id": "CompVis/stable-diffusion-v1-4",
        "pipeline": "StableDiffusionPipeline",
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "act_fn": "silu",
            "attention_head_dim": 8,
            "block_out_channels": [320, 640, 1280, 1280],
            "center_input_sample": False,
            "cross_attention_dim": 768,
            "down_block_types": _CROSS3,
            "downsample_padding": 1,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "in_channels": 4,
            "layers_per_block": 2,
            "mid_block_scale_factor": 1,
            "norm_eps": 1e-05,
            "norm_num_groups": 32,
            "out_channels": 4,
            "sample_size": 64,
            "up_block_types": _UP3,
        },
        "text_encoder": dict(_CLIP_VIT_L),
        "tokenizer": {"pad_token": "<|endoftext|>", "model_max_length": 77},
        "vae": dict(_SD_VAE),
        "scheduler": {"_class_name": "PNDMScheduler", **_SD_BETAS},
    },
    # Mirrors the hub repo stabilityai/stable-diffusion-2-1 (768 px, v-prediction, OpenCLIP ViT-H/14
    # text tower of which SD 2 uses the penultimate layer, hence 23 of its 24 layers).
    "sd-v2-1": {
        "hub_id": "stabilityai/stable-diffusion-2-1",
        "pipeline": "StableDiffusionPipeline",
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "act_fn": "silu",
            "attention_head_dim": [5, 10, 20, 20],
            "block_out_channels": [320, 640, 1280, 1280],
            "center_input_sample": False,
            "cross_attention_dim": 1024,
            "down_block_types": _CROSS3,
            "downsample_padding": 1,
            "dual_cross_attention": False,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "in_channels": 4,
            "layers_per_block": 2,
            "mid_block_scale_factor": 1,
            "norm_eps": 1e-05,
            "norm_num_groups": 32,
            "num_class_embeds": None,
            "only_cross_attention": False,
            "out_channels": 4,
            "sample_size": 96,
            "up_block_types": _UP3,
            "upcast_attention": True,
            "use_linear_projection": True,
        },
        "text_encoder": {
            "_class_name": "CLIPTextModel",
            "attention_dropout": 0.0,
            "bos_token_id": 0,
            "dropout": 0.0,
            "eos_token_id": 2,
            "hidden_act": "gelu",
            "hidden_size": 1024,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": 4096,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": 77,
            "num_attention_heads": 16,
            "num_hidden_layers": 23,
            "pad_token_id": 1,
            "projection_dim": 512,
            "vocab_size": 49408,
        },
        "tokenizer": {"pad_token": "!", "model_max_length": 77},
        "vae": {**_SD_VAE, "sample_size": 768},
        "scheduler": {"_class_name": "DDIMScheduler", **_SD_BETAS, "prediction_type": "v_prediction"},
    },
    # Mirrors the hub repo stabilityai/stable-diffusion-xl-base-1.0 (two text towers: CLIP ViT-L/14
    # and OpenCLIP ViT-bigG/14 with its projection; their penultimate states are concatenated).
    "sdxl-base-1.0": {
        "hub_id": "stabilityai/stable-diffusion-xl-base-1.0",
        "pipeline": "StableDiffusionXLPipeline",
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "act_fn": "silu",
            "addition_embed_type": "text_time",
            "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256,
            "attention_head_dim": [5, 10, 20],
            "block_out_channels": [320, 640, 1280],
            "center_input_sample": False,
            "class_embed_type": None,
            "class_embeddings_concat": False,
            "conv_in_kernel": 3,
            "conv_out_kernel": 3,
            "cross_attention_dim": 2048,
            "cross_attention_norm": None,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "downsample_padding": 1,
            "dual_cross_attention": False,
            "encoder_hid_dim": None,
            "encoder_hid_dim_type": None,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "in_channels": 4,
            "layers_per_block": 2,
            "mid_block_only_cross_attention": None,
            "mid_block_scale_factor": 1,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "norm_eps": 1e-05,
            "norm_num_groups": 32,
            "num_attention_heads": None,
            "num_class_embeds": None,
            "only_cross_attention": False,
            "out_channels": 4,
            "projection_class_embeddings_input_dim": 2816,
            "resnet_out_scale_factor": 1.0,
            "resnet_skip_time_act": False,
            "resnet_time_scale_shift": "default",
            "sample_size": 128,
            "time_cond_proj_dim": None,
            "time_embedding_act_fn": None,
            "time_embedding_dim": None,
            "time_embedding_type": "positional",
            "timestep_post_act": None,
            "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "upcast_attention": None,
            "use_linear_projection": True,
        },
        "text_encoder": dict(_CLIP_VIT_L),
        "text_encoder_2": {
            "_class_name": "CLIPTextModelWithProjection",
            "attention_dropout": 0.0,
            "bos_token_id": 0,
            "dropout": 0.0,
            "eos_token_id": 2,
            "hidden_act": "gelu",
            "hidden_size": 1280,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": 5120,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": 77,
            "num_attention_heads": 20,
            "num_hidden_layers": 32,
            "pad_token_id": 1,
            "projection_dim": 1280,
            "vocab_size": 49408,
        },
        "tokenizer": {"pad_token": "<|endoftext|>", "model_max_length": 77},
        "tokenizer_2": {"pad_token": "!", "model_max_length": 77},
        "vae": {**_SD_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025},
        "scheduler": {
            "_class_name": "EulerDiscreteScheduler",
            **_SD_BETAS,
            "interpolation_type": "linear",
            "prediction_type": "epsilon",
            "sample_max_value": 1.0,
            "timestep_spacing": "leading",
            "use_karras_sigmas": False,
        },
        "pipeline_kwargs": {"force_zeros_for_empty_prompt": True},
    },
}


def _tiny_clip(cls: str, hidden_act: str) -> dict[str, Any]:
    # As diffusers' own pipeline tests (get_dummy_components), but with the real vocabulary and
    # 77 positions so that the real tokenizer's ids fit.
    return {
        "_class_name": cls,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": hidden_act,
        "hidden_size": 32,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "pad_token_id": 1,
        "projection_dim": 32,
        "vocab_size": 49408,
    }


_TINY_VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "out_channels": 3,
    "sample_size": 64,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
}

TINY: dict[str, dict[str, Any]] = {
    # SD v1 layout (cross-attention in the high-resolution blocks, 77x32 text states), tiny.
    "tiny-sd": {
        "hub_id": None,
        "pipeline": "StableDiffusionPipeline",
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "attention_head_dim": 8,
            "block_out_channels": [32, 64],
            "cross_attention_dim": 32,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "in_channels": 4,
            "layers_per_block": 1,
            "out_channels": 4,
            "sample_size": 32,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        },
        "text_encoder": _tiny_clip("CLIPTextModel", "quick_gelu"),
        "tokenizer": {"pad_token": "<|endoftext|>", "model_max_length": 77},
        "vae": dict(_TINY_VAE),
        "scheduler": {"_class_name": "PNDMScheduler", **_SD_BETAS},
    },
    # SDXL layout (two text towers concatenated to 32 + 32 = 64, "text_time" added conditioning with
    # 6 time ids of addition_time_embed_dim each plus text_encoder_2's pooled projection), tiny.
    "tiny-sdxl": {
        "hub_id": None,
        "pipeline": "StableDiffusionXLPipeline",
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "attention_head_dim": [2, 4],
            "block_out_channels": [32, 64],
            "cross_attention_dim": 64,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "in_channels": 4,
            "layers_per_block": 1,
            "out_channels": 4,
            "projection_class_embeddings_input_dim": 6 * 8 + 32,
            "sample_size": 32,
            "transformer_layers_per_block": [1, 2],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "use_linear_projection": True,
        },
        "text_encoder": _tiny_clip("CLIPTextModel", "quick_gelu"),
        "text_encoder_2": _tiny_clip("CLIPTextModelWithProjection", "gelu"),
        "tokenizer": {"pad_token": "<|endoftext|>", "model_max_length": 77},
        "tokenizer_2": {"pad_token": "!", "model_max_length": 77},
        "vae": {**_TINY_VAE, "force_upcast": True, "scaling_factor": 0.13025},
        "scheduler": ARCHITECTURES["sdxl-base-1.0"]["scheduler"],
        "pipeline_kwargs": {"force_zeros_for_empty_prompt": True},
    },
}

#: The model components (``nn.Module``) a pipeline of each layout holds, in build order.
MODEL_COMPONENTS: dict[str, tuple[str, ...]] = {
    "StableDiffusionPipeline": ("text_encoder", "unet", "vae"),
    "StableDiffusionXLPipeline": ("text_encoder", "text_encoder_2", "unet", "vae"),
}

_ALL = {**ARCHITECTURES, **TINY}


def names() -> list[str]:
    """Every name ``build_pipeline`` accepts: the published architectures, then the tiny ones."""
    return list(_ALL)


def architecture(arch: str) -> dict[str, Any]:
    """A deep copy of the description of ``arch`` (ValueError listing the names if unknown)."""
    if arch not in _ALL:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(names())}")
    return copy.deepcopy(_ALL[arch])


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Make ``dtype`` torch's default inside the block, so modules are allocated in it directly."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _build_model(config: dict[str, Any]) -> torch.nn.Module:
    config = dict(config)
    cls_name = config.pop("_class_name")
    if cls_name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        import transformers

        return getattr(transformers, cls_name)(transformers.CLIPTextConfig(**config)).eval()
    import diffusers

    return getattr(diffusers, cls_name)(**config).eval()


def _tokenizer(tokenizer_dir: str | Path | None, **kwargs: Any):
    from eraser.families.clip_tokenizer import clip_tokenizer

    return clip_tokenizer(tokenizer_dir, pad_token=kwargs["pad_token"], max_length=kwargs["model_max_length"])


def build_pipeline(
    arch: str,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    components: tuple[str, ...] | None = None,
    tokenizer_dir: str | Path | None = None,
) -> DiffusionPipeline:
    """A ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` of ``arch`` with random weights.

    ``arch`` is a key of ``ARCHITECTURES`` (real sizes, for timing and memory) or ``TINY`` (tests).
    Weights are drawn from ``torch.manual_seed(seed)`` (which reseeds torch's global generator), so
    equal arguments give equal pipelines; each model is allocated directly in ``dtype`` (no float32 copy first). ``components`` names the
    models to build among ``MODEL_COMPONENTS`` (``None``: all); the others are passed to the
    pipeline as ``None``, which the diffusers constructors accept (e.g. without ``"vae"`` the
    pipeline still encodes prompts and denoises with ``output_type="latent"``). Tokenizers (the real
    CLIP one, its vocabulary files kept in ``tokenizer_dir`` or a per-process temporary folder) and
    the scheduler are always included; there is no safety checker. ``pipe.name_or_path`` is
    ``"random:<hub id>"`` for the published architectures and the arch name for tiny ones.
    """
    spec = architecture(arch)
    import diffusers

    pipeline_cls = getattr(diffusers, spec["pipeline"])
    models = MODEL_COMPONENTS[spec["pipeline"]]
    wanted = models if components is None else tuple(components)
    unknown = sorted(set(wanted) - set(models))
    if unknown:
        raise ValueError(f"unknown components {unknown} for {arch!r}; known: {', '.join(models)}")

    # One seed per model, drawn from ``seed``: a model's weights do not depend on which others are built.
    torch.manual_seed(seed)
    seeds = torch.randint(2**62, (len(models),)).tolist()
    kwargs: dict[str, Any] = {}
    with default_dtype(dtype):
        for name, model_seed in zip(models, seeds):
            if name in wanted:
                torch.manual_seed(model_seed)
                kwargs[name] = _build_model(spec[name])
            else:
                kwargs[name] = None
    sched = dict(spec["scheduler"])
    kwargs["scheduler"] = getattr(diffusers, sched.pop("_class_name")).from_config(sched)
    for name in ("tokenizer", "tokenizer_2"):
        if name in spec:
            kwargs[name] = _tokenizer(tokenizer_dir, **spec[name])
    if spec["pipeline"] == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        kwargs.update(add_watermarker=False)
    kwargs.update(spec.get("pipeline_kwargs", {}))
    pipe = pipeline_cls(**kwargs)
    # DiffusionPipeline.name_or_path is a read-only property over config._name_or_path.
    pipe.register_to_config(_name_or_path=f"random:{spec['hub_id']}" if spec["hub_id"] else arch)
    return pipe
