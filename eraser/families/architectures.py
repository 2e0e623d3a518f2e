"""Stable Diffusion pipelines with random weights: the published architectures, and tiny ones.

No Stable Diffusion checkpoint is available offline, so this module rebuilds the models from their
published ``config.json`` files (``ARCHITECTURES``: SD v1.4, SD v2.1, SDXL base 1.0, SD3 medium, FLUX.1-dev) with random
weights. Those pipelines have the real layer shapes and parameter counts, so they are good for timing
and memory benchmarks (never for judging image quality). ``TINY`` holds the same classes at tiny
sizes (``tiny-sd``, ``tiny-sdxl``, ``tiny-sd3``, ``tiny-flux``) for fast functional tests. Every pipeline uses the real CLIP
tokenizer (built offline by :mod:`eraser.families.clip_tokenizer`), so prompts tokenize as in SD.

    pipe = build_pipeline("tiny-sd")                                   # < 1 s
    pipe = build_pipeline("sdxl-base-1.0", dtype=torch.bfloat16,       # ~6.8 GB, no float32 copy
                          components=("unet", "text_encoder", "text_encoder_2"))
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

__all__ = [
    "ARCHITECTURES",
    "TINY",
    "MODEL_COMPONENTS",
    "architecture",
    "build_pipeline",
    "default_dtype",
    "names",
    "t5_tokenizer",
]

# The offline T5 tokenizer's vocabulary size (and the tiny T5's embedding rows): T5's own
# sentencepiece vocabulary (32,128 pieces) is on the hub only.
T5_TINY_VOCAB = 1024


@functools.lru_cache(maxsize=4)
def _t5_tokenizer_object(vocab_size: int) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from prompts import CONCEPT_BANK, DEFAULT_TEMPLATES, GENERIC_RETAIN

    # The corpus: every phrase this project puts in prompts (concepts, retain subjects, templates),
    # and the printable ASCII characters, so that any English text tokenizes (unknown words into
    # pieces, as sentencepiece does), never to <unk>.
    corpus = [t.replace("{}", c) for t in DEFAULT_TEMPLATES for c in (*CONCEPT_BANK, *GENERIC_RETAIN)]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    alphabet = [chr(c) for c in range(33, 127)]
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(corpus + alphabet, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return tok


def t5_tokenizer(max_length: int = 256, vocab_size: int = T5_TINY_VOCAB) -> Any:
    """A small T5-style tokenizer (``T5TokenizerFast``: sentencepiece-like unigram pieces, ``<pad>``
    0, ``</s>`` 1, ``<unk>`` 2, ``</s>`` appended) trained offline on this project's prompt phrases.

    T5's real vocabulary cannot be downloaded here; random-weight pipelines only need token ids that
    fit the encoder's table and tokenize like T5 (words into pieces, an end token, padding with
    ``<pad>``). Users' real pipelines keep their own tokenizer. Deterministic (same pieces every call).
    """
    from transformers import T5TokenizerFast

    obj = _t5_tokenizer_object(vocab_size)
    return T5TokenizerFast(
        tokenizer_object=copy.deepcopy(obj),
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=max_length,
    )


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


# SD3's VAE: the SD layout with 16 latent channels, a latent shift, and no (post-)quant convs.
_SD3_VAE: dict[str, Any] = {
    **_SD_VAE,
    "force_upcast": True,
    "latent_channels": 16,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}
# SD3's rectified-flow sampler (scheduler/scheduler_config.json).
_SD3_SCHEDULER: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
}

# Mirrors the hub repo stabilityai/stable-diffusion-3-medium-diffusers (an MMDiT of 24 joint blocks;
# the hub is unreachable here: the transformer config was checked against public copies of its
# config.json in other projects, the T5 v1.1 XXL sizes are the published ones, not read from the files;
# text towers CLIP ViT-L/14 and OpenCLIP ViT-bigG/14, both with projection, plus T5 v1.1 XXL).
# The text features enter through ``transformer.context_embedder`` (4096 -> 1536) on the joint
# sequence [CLIP-L | CLIP-bigG | zeros] (77 x 4096) followed by T5 (256 x 4096), and through the
# pooled CLIP projections (768 + 1280 = 2048). The T5 tokenizer built here is the small offline one
# of :func:`t5_tokenizer` (its ids fit T5's 32,128-entry table): good for timing, not for meaning.
ARCHITECTURES["sd3-medium"] = {
    "hub_id": "stabilityai/stable-diffusion-3-medium-diffusers",
    "pipeline": "StableDiffusion3Pipeline",
    "transformer": {
        "_class_name": "SD3Transformer2DModel",
        "attention_head_dim": 64,
        "caption_projection_dim": 1536,
        "in_channels": 16,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 24,
        "out_channels": 16,
        "patch_size": 2,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "sample_size": 128,
    },
    "text_encoder": {**_CLIP_VIT_L, "_class_name": "CLIPTextModelWithProjection"},
    "text_encoder_2": dict(ARCHITECTURES["sdxl-base-1.0"]["text_encoder_2"]),
    "text_encoder_3": {
        "_class_name": "T5EncoderModel",
        "d_ff": 10240,
        "d_kv": 64,
        "d_model": 4096,
        "decoder_start_token_id": 0,
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-06,
        "num_heads": 64,
        "num_layers": 24,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False,
        "vocab_size": 32128,
    },
    "tokenizer": {"pad_token": "<|endoftext|>", "model_max_length": 77},
    "tokenizer_2": {"pad_token": "!", "model_max_length": 77},
    "tokenizer_3": {"kind": "t5", "model_max_length": 256},
    "vae": dict(_SD3_VAE),
    "scheduler": dict(_SD3_SCHEDULER),
}


# Mirrors the hub repo black-forest-labs/FLUX.1-dev (the hub is unreachable here: the sizes are the
# published ones, checked against public copies of its configs). A 12B-parameter transformer of 19
# double-stream and 38 single-stream blocks of width 3072; text towers CLIP ViT-L/14 (pooled vector
# only, 768) and T5 v1.1 XXL, whose 512 positions (FluxPipeline's max_sequence_length) enter through
# ``transformer.context_embedder`` (4096 -> 3072). 1024 px images are 128 x 128 latents of 16
# channels, packed 2 x 2 into 4096 tokens of 64. In bfloat16 the whole pipeline needs about 33 GB:
# on this machine build it with fewer blocks (``build_pipeline(..., overrides={"transformer":
# {"num_layers": 2, "num_single_layers": 4}})``), as benchmarks/sd_erase_cost.py's ``--depth`` does.
ARCHITECTURES["flux-dev"] = {
    "hub_id": "black-forest-labs/FLUX.1-dev",
    "pipeline": "FluxPipeline",
    "transformer": {
        "_class_name": "FluxTransformer2DModel",
        "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56],
        "guidance_embeds": True,
        "in_channels": 64,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 19,
        "num_single_layers": 38,
        "patch_size": 1,
        "pooled_projection_dim": 768,
    },
    "text_encoder": dict(_CLIP_VIT_L),
    "text_encoder_2": dict(ARCHITECTURES["sd3-medium"]["text_encoder_3"]),
    "tokenizer": {"pad_token": "<|endoftext|>", "model_max_length": 77},
    "tokenizer_2": {"kind": "t5", "model_max_length": 512},
    "vae": {**_SD3_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
    "scheduler": {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
    },
}


def _tiny_t5(width: int) -> dict[str, Any]:
    """A 2-layer T5 encoder of ``width`` (the joint attention width, as SD3's and FLUX's 4096) whose
    table fits the offline tokenizer's ids."""
    return {
        "_class_name": "T5EncoderModel",
        "d_ff": 37,
        "d_kv": 8,
        "d_model": width,
        "decoder_start_token_id": 0,
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-06,
        "num_heads": 4,
        "num_layers": 2,
        "pad_token_id": 0,
        "relative_attention_max_distance": 32,
        "relative_attention_num_buckets": 8,
        "tie_word_embeddings": False,
        "vocab_size": T5_TINY_VOCAB,
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
    # SD3 layout (MMDiT), tiny: two CLIP towers with projection (32 + 32 = 64 features, padded to the
    # joint width 96, and 64 pooled), a 2-layer T5 encoder of width 96 (the joint attention width, as
    # in SD3 where T5's 4096 is the joint width) with the offline tokenizer, two joint blocks of
    # width 32, a 16-channel VAE. 32 px images are 16 x 16 latents, 8 x 8 = 64 image tokens.
    "tiny-sd3": {
        "hub_id": None,
        "pipeline": "StableDiffusion3Pipeline",
        "transformer": {
            "_class_name": "SD3Transformer2DModel",
            "attention_head_dim": 8,
            "caption_projection_dim": 32,
            "in_channels": 16,
            "joint_attention_dim": 96,
            "num_attention_heads": 4,
            "num_layers": 2,
            "out_channels": 16,
            "patch_size": 2,
            "pooled_projection_dim": 64,
            "pos_embed_max_size": 32,
            "sample_size": 16,
        },
        "text_encoder": _tiny_clip("CLIPTextModelWithProjection", "quick_gelu"),
        "text_encoder_2": _tiny_clip("CLIPTextModelWithProjection", "gelu"),
        "text_encoder_3": _tiny_t5(96),
        "tokenizer": {"pad_token": "<|endoftext|>", "model_max_length": 77},
        "tokenizer_2": {"pad_token": "!", "model_max_length": 77},
        "tokenizer_3": {"kind": "t5", "model_max_length": 256},
        "vae": {
            **_TINY_VAE,
            **{k: _SD3_VAE[k] for k in ("latent_channels", "scaling_factor", "shift_factor", "use_quant_conv")},
            "use_post_quant_conv": False,
            "sample_size": 32,
        },
        "scheduler": dict(_SD3_SCHEDULER),
    },
    # FLUX layout (diffusers FluxPipeline), tiny, as diffusers' own FLUX pipeline tests: a CLIP
    # tower for the pooled vector (32), a 2-layer T5 encoder of width 32 (the joint attention width,
    # as FLUX's 4096) with the offline tokenizer at FLUX's 512 positions, one double-stream and one
    # single-stream block, a VAE with one latent channel (packed 2 x 2 into the transformer's 4).
    "tiny-flux": {
        "hub_id": None,
        "pipeline": "FluxPipeline",
        "transformer": {
            "_class_name": "FluxTransformer2DModel",
            "patch_size": 1,
            "in_channels": 4,
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": 32,
            "pooled_projection_dim": 32,
            "axes_dims_rope": [4, 4, 8],
        },
        "text_encoder": _tiny_clip("CLIPTextModel", "gelu"),
        "text_encoder_2": _tiny_t5(32),
        "tokenizer": {"pad_token": "<|endoftext|>", "model_max_length": 77},
        "tokenizer_2": {"kind": "t5", "model_max_length": 512},
        "vae": {
            "_class_name": "AutoencoderKL",
            "block_out_channels": [4],
            "down_block_types": ["DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D"],
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 1,
            "layers_per_block": 1,
            "norm_num_groups": 1,
            "sample_size": 32,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "shift_factor": 0.0609,
            "scaling_factor": 1.5035,
        },
        "scheduler": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0},
    },
}

#: The model components (``nn.Module``) a pipeline of each layout holds, in build order.
MODEL_COMPONENTS: dict[str, tuple[str, ...]] = {
    "StableDiffusionPipeline": ("text_encoder", "unet", "vae"),
    "StableDiffusionXLPipeline": ("text_encoder", "text_encoder_2", "unet", "vae"),
    "StableDiffusion3Pipeline": ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"),
    "FluxPipeline": ("text_encoder", "text_encoder_2", "transformer", "vae"),
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
    if cls_name == "T5EncoderModel":
        import transformers

        return transformers.T5EncoderModel(transformers.T5Config(**config)).eval()
    import diffusers

    return getattr(diffusers, cls_name)(**config).eval()


def _tokenizer(tokenizer_dir: str | Path | None, **kwargs: Any):
    from eraser.families.clip_tokenizer import clip_tokenizer

    if kwargs.get("kind") == "t5":
        return t5_tokenizer(max_length=kwargs["model_max_length"])
    return clip_tokenizer(tokenizer_dir, pad_token=kwargs["pad_token"], max_length=kwargs["model_max_length"])


def build_pipeline(
    arch: str,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    components: tuple[str, ...] | None = None,
    tokenizer_dir: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
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
    ``overrides`` updates models' configurations (e.g. ``{"transformer": {"num_layers": 2}}`` for a
    reduced depth); the name then gains a ``+reduced`` suffix, so such a pipeline is never taken
    for the published one.
    """
    spec = architecture(arch)
    for name, changes in (overrides or {}).items():
        if name not in spec or not isinstance(spec[name], dict) or "_class_name" not in spec[name]:
            raise ValueError(f"overrides: {arch!r} has no model {name!r}")
        unknown = sorted(set(changes) - set(spec[name]))
        if unknown:
            raise ValueError(f"overrides: {name} of {arch!r} has no setting {unknown[0]!r}")
        spec[name].update(changes)
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
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        if name in spec:
            kwargs[name] = _tokenizer(tokenizer_dir, **spec[name])
    if spec["pipeline"] == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif spec["pipeline"] == "StableDiffusionXLPipeline":
        kwargs.update(add_watermarker=False)
    kwargs.update(spec.get("pipeline_kwargs", {}))
    pipe = pipeline_cls(**kwargs)
    # DiffusionPipeline.name_or_path is a read-only property over config._name_or_path.
    name = f"random:{spec['hub_id']}" if spec["hub_id"] else arch
    pipe.register_to_config(_name_or_path=name + ("+reduced" if overrides else ""))
    return pipe
