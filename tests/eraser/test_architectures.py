"""Random-weight SD pipelines: tiny ones work end to end, the published ones have the real sizes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from eraser.families.architectures import ARCHITECTURES, TINY, architecture, build_pipeline, names

TINY_NAMES = ["tiny-sd", "tiny-sdxl"]


@pytest.fixture(scope="module")
def tiny_pipes():
    pipes = {name: build_pipeline(name) for name in TINY_NAMES}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_names_and_descriptions():
    assert names() == [
        "sd-v1-4",
        "sd-v2-1",
        "sdxl-base-1.0",
        "sd3-medium",
        "flux-dev",
        "tiny-sd",
        "tiny-sdxl",
        "tiny-sd3",
        "tiny-flux",
    ]
    assert ARCHITECTURES["sd-v1-4"]["hub_id"] == "CompVis/stable-diffusion-v1-4"
    assert set(TINY) == {*TINY_NAMES, "tiny-sd3", "tiny-flux"}  # tests/eraser/test_mmdit.py, test_flux.py
    spec = architecture("sd-v1-4")
    spec["unet"]["block_out_channels"].append(1)  # a copy: the module's dicts are untouched
    assert ARCHITECTURES["sd-v1-4"]["unet"]["block_out_channels"] == [320, 640, 1280, 1280]


@pytest.mark.parametrize("name", TINY_NAMES)
def test_tiny_build(tiny_pipes, name):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipe = tiny_pipes[name]
    assert isinstance(pipe, StableDiffusionXLPipeline if name == "tiny-sdxl" else StableDiffusionPipeline)
    assert pipe.name_or_path == name
    assert pipe.tokenizer.vocab_size == 49408 and pipe.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.vocab_size == 49408
    if name == "tiny-sdxl":
        assert pipe.tokenizer_2.pad_token == "!"
        assert pipe.unet.config.cross_attention_dim == (
            pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        )
    else:
        assert pipe.safety_checker is None


@pytest.mark.parametrize("name", TINY_NAMES)
def test_same_seed_same_weights(tiny_pipes, name):
    again = build_pipeline(name, seed=0)
    other = build_pipeline(name, seed=1)
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if not hasattr(again, comp):
            continue
        a, b, c = (getattr(p, comp).state_dict() for p in (tiny_pipes[name], again, other))
        assert all(torch.equal(a[k], b[k]) for k in a), comp
        assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point()), comp


@pytest.mark.parametrize("name", TINY_NAMES)
def test_tiny_generate(tiny_pipes, name):
    pipe = tiny_pipes[name]
    out = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 3, 32, 32)
    assert torch.isfinite(out.images).all()


@pytest.mark.parametrize("name", TINY_NAMES)
def test_prompt_embeddings_match_cross_attention(tiny_pipes, name):
    pipe = tiny_pipes[name]
    dim = pipe.unet.config.cross_attention_dim
    with torch.no_grad():
        embeds = pipe.encode_prompt(
            "a photo of a cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
        )
    assert embeds[0].shape == (1, 77, dim)
    assert embeds[1].shape == (1, 77, dim)  # the negative (unconditional) embeddings
    to_k = [m.to_k for n, m in pipe.unet.named_modules() if n.endswith("attn2")]
    assert to_k and all(k.in_features == dim for k in to_k)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_dtype(name):
    pipe = build_pipeline(name, dtype=torch.float16)
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if hasattr(pipe, comp):
            assert {p.dtype for p in getattr(pipe, comp).parameters()} == {torch.float16}, comp
    assert torch.get_default_dtype() == torch.float32


def test_skip_vae_and_errors():
    pipe = build_pipeline("tiny-sd", components=("unet", "text_encoder"))
    assert pipe.vae is None and pipe.unet is not None
    with pytest.raises(ValueError, match="sd-v1-4"):
        build_pipeline("sd-v9")
    with pytest.raises(ValueError, match="text_encoder_2"):
        build_pipeline("tiny-sd", components=("unet", "text_encoder_2"))


@pytest.mark.slow
def test_sd_v1_4_parameter_counts():
    pipe = build_pipeline("sd-v1-4", components=("unet", "text_encoder"))
    assert pipe.vae is None
    assert pipe.name_or_path == "random:CompVis/stable-diffusion-v1-4"
    assert n_params(pipe.unet) == 859_520_964
    assert n_params(pipe.text_encoder) == 123_060_480


@pytest.mark.slow
def test_sdxl_unet_parameter_count():
    pipe = build_pipeline("sdxl-base-1.0", dtype=torch.bfloat16, components=("unet",))
    assert pipe.name_or_path == "random:stabilityai/stable-diffusion-xl-base-1.0"
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}
    assert n_params(pipe.unet) == 2_567_463_684


def test_flux_dev_has_the_published_sizes():
    # Built on the meta device: shapes and parameter counts without allocating 17B parameters.
    import diffusers
    import transformers

    spec = architecture("flux-dev")
    with torch.device("meta"):
        transformer = diffusers.FluxTransformer2DModel(**{k: v for k, v in spec["transformer"].items() if k[0] != "_"})
        t5_config = {k: v for k, v in spec["text_encoder_2"].items() if k[0] != "_"}
        t5 = transformers.T5EncoderModel(transformers.T5Config(**t5_config))
    assert n_params(transformer) == 11_901_408_320  # FLUX.1-dev's 11.9B
    assert n_params(t5) == 4_762_310_656  # T5 v1.1 XXL's encoder
    assert transformer.context_embedder.in_features == 4096
    assert spec["tokenizer_2"]["model_max_length"] == 512


def test_overrides_reduce_a_model_and_rename_the_pipeline():
    pipe = build_pipeline("tiny-flux", overrides={"transformer": {"num_single_layers": 2}})
    assert len(pipe.transformer.single_transformer_blocks) == 2
    assert pipe.name_or_path == "tiny-flux+reduced"
    assert TINY["tiny-flux"]["transformer"]["num_single_layers"] == 1  # the table is untouched
    with pytest.raises(ValueError, match="no model 'unet'"):
        build_pipeline("tiny-flux", overrides={"unet": {"num_layers": 1}})
    with pytest.raises(ValueError, match="no setting 'depth'"):
        build_pipeline("tiny-flux", overrides={"transformer": {"depth": 1}})
