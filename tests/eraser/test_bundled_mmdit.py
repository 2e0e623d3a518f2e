"""The digits MMDiT pipeline (eraser/bundled/mmdit.py) with a random transformer: SD3's text
reading, sampling, the judge, erasure through the SD3 family adapter, and its bundled files."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import eraser
from eraser.bundled import BundledWeightsError, digit_prompt
from eraser.bundled.evaluate import judge_digits
from eraser.bundled.mmdit import (
    CONTEXT_LENGTH,
    MMDIT_REBUILD,
    DigitsMMDiTPipeline,
    digits_mmdit_pipeline,
    random_digits_mmdit_pipeline,
)
from eraser.bundled.models import digits_clip
from eraser.bundled.pipeline import save_t2i_folder
from eraser.families import pipeline_family
from eraser.families.mmdit import SD3


@pytest.fixture(scope="module")
def clip():
    return digits_clip()[0]


@pytest.fixture(scope="module")
def pipe(clip):
    p = random_digits_mmdit_pipeline(clip_model=clip, num_layers=2)
    p.set_progress_bar_config(disable=True)
    return p


def gen(pipe, prompt, n=2, steps=3, **kw):
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    return pipe([prompt] * n, num_inference_steps=steps, generator=gens, output_type="pt", **kw).images


def test_reads_text_as_the_sd3_adapter_does(pipe):
    """The pipeline's prompt_embeds are the SD3 family's features on the CLIP positions (the
    adapter's T5 stand-in zeros are not fed here: an edit of the context embedder keeps zeros)."""
    assert pipeline_family(pipe) is SD3
    prompts = [digit_prompt(7), "handwritten 3"]
    ours, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    conditioning = SD3.conditioning
    theirs = conditioning.encode(pipe, conditioning.tokenize(pipe, prompts))
    assert theirs.shape[1] == CONTEXT_LENGTH + 256 and ours.shape[1] == CONTEXT_LENGTH
    assert torch.allclose(theirs[:, :CONTEXT_LENGTH], ours, atol=1e-6)
    assert torch.count_nonzero(theirs[:, CONTEXT_LENGTH:]) == 0
    assert pooled.shape == (2, pipe.transformer.config.pooled_projection_dim)


def test_generates_deterministically_with_guidance_and_embeddings(pipe):
    a, b = gen(pipe, "seven"), gen(pipe, "seven")
    assert a.shape == (2, 1, 32, 32) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    kw = pipe.prompt_kwargs(["seven"] * 2, True)
    assert set(kw) == {
        "prompt_embeds",
        "pooled_prompt_embeds",
        "negative_prompt_embeds",
        "negative_pooled_prompt_embeds",
    }
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    c = pipe(num_inference_steps=3, generator=gens, output_type="pt", **kw).images
    assert torch.allclose(a, c, atol=1e-6)
    assert not torch.allclose(gen(pipe, "seven", guidance_scale=1.0), a)


def test_embeddings_without_their_pooled_part_are_refused(pipe):
    cond = pipe.encode_prompt(["seven"], device="cpu", do_classifier_free_guidance=False)[0]
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        pipe(prompt_embeds=cond, num_inference_steps=2)


def test_the_judge_runs_on_it(pipe):
    ev = judge_digits(pipe, 1, steps=2, batch=10)
    assert set(ev["accuracy"]) == set(range(10)) and ev["per_digit"] == 1


def test_erase_concepts_edits_the_text_inputs_and_reverts_exactly(pipe):
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    x = gen(pipe, digit_prompt(7))
    patch = eraser.erase_concepts(pipe, "seven")
    try:
        assert list(patch.edits) == [
            "transformer.time_text_embed.text_embedder.linear_1",
            "transformer.context_embedder",
        ]
        assert patch.metadata["variant"] == "regression" and "eight" in patch.metadata["retain"]
        assert not torch.allclose(gen(pipe, digit_prompt(7)), x)
    finally:
        patch.revert(pipe)
    assert all(torch.equal(before[k], v) for k, v in pipe.transformer.state_dict().items())


def test_bundled_files_round_trip_and_damage_names_the_rebuild(pipe, tmp_path):
    folder = tmp_path / "mm"
    save_t2i_folder(pipe.transformer, pipe.scheduler, folder, {"clip_weights_sha256": None})
    loaded = digits_mmdit_pipeline(folder=folder)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, DigitsMMDiTPipeline)
    saved = loaded.transformer.state_dict()  # float16 on disk, float32 loaded
    assert all(torch.equal(v.half().float(), saved[k]) for k, v in pipe.transformer.state_dict().items())
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "train_t2i --arch mmdit" in MMDIT_REBUILD
    with pytest.raises(BundledWeightsError, match="damaged.*train_t2i --arch mmdit"):
        digits_mmdit_pipeline(folder=folder)
    (folder / "meta.json").unlink()
    with pytest.raises(BundledWeightsError, match=r"meta\.json is missing"):
        digits_mmdit_pipeline(folder=folder)


# ----------------------------------------------------------------------------------------------
# the shipped weights (eraser/bundled/weights/t2i_mmdit, trained by recipes/train_t2i.py --arch mmdit)


@pytest.fixture(scope="module")
def shipped():
    from eraser.loading import load_pipeline

    p = load_pipeline("bundled:digits-mmdit")
    p.set_progress_bar_config(disable=True)
    return p


def test_shipped_model_loads_in_the_sd3_layout(shipped):
    from eraser.bundled.mmdit import MMDIT_DIR

    cfg = shipped.transformer.config
    assert (cfg.in_channels, cfg.out_channels, cfg.sample_size) == (1, 1, 32)
    assert cfg.joint_attention_dim == 2 * shipped.text_encoder.config.hidden_size
    assert shipped.tokenizer.model_max_length == CONTEXT_LENGTH and not shipped.transformer.training
    files = [f for f in MMDIT_DIR.rglob("*") if f.is_file() and "checkpoint" not in f.relative_to(MMDIT_DIR).parts]
    assert sum(f.stat().st_size for f in files) <= 10e6


def test_shipped_model_draws_the_asked_digit(shipped):
    ev = judge_digits(shipped, 4, seed=7)
    assert sum(ev["accuracy"].values()) / 10 >= 85, ev["accuracy"]


def test_esd_x_runs_on_it_and_reverts(pipe):
    """ESD-x trains the MMDiT's joint attention with the digits model's DDIM sampler."""
    from conftest import same_state, state

    saved = state(pipe.transformer)
    patch = eraser.erase_concepts(pipe, digit_prompt(7), method="esd_x", steps=2, ddim_steps=3)
    try:
        assert patch.deltas and all(
            n.startswith("transformer.transformer_blocks.") and ".attn." in n for n in patch.deltas
        )
        assert patch.metadata["config"]["train_method"] == "xattn"
        assert not same_state(pipe.transformer, saved)
    finally:
        patch.revert(pipe)
    assert same_state(pipe.transformer, saved)
