"""FLUX pipelines (diffusers FluxPipeline): Unlink edits the context embedder on T5's features."""

from __future__ import annotations

import pytest
import torch
from conftest import same_state, state

import eraser
from eraser import ErasurePatch
from eraser.families.architectures import build_pipeline
from eraser.families.base import pipeline_family
from eraser.families.diffusion import _mask, encode_prompts, expand_concepts, tokenize_prompts
from eraser.families.mmdit import FLUX_MAX_SEQUENCE_LENGTH
from prompts import PromptRow

RETAIN_BOUND = 0.2  # as for the other families: tiny random text encoders are not semantic


@pytest.fixture(scope="module")
def flux():
    pipe = build_pipeline("tiny-flux", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe):
    return pipe(
        "a cat",
        num_inference_steps=1,
        height=32,
        width=32,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images


def prompt_rows(pipe, prompts):
    """The context embedder's input rows of every prompt token (T5, up to </s>)."""
    cp = expand_concepts(pipe.tokenizer, prompts, ("{}",))
    ids = tokenize_prompts(pipe, prompts)
    return encode_prompts(pipe, prompts)[_mask(pipe, ids, cp, slice(None), "concept_eot")]


def test_the_family_is_recognised_and_features_equal_the_pipelines_encode_prompt(flux):
    assert pipeline_family(flux).name == "flux"
    prompts = ["a photo of a cat", "a dog"]
    ours = encode_prompts(flux, prompts)
    with torch.no_grad():
        theirs = flux.encode_prompt(prompts, None, device="cpu", max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH)[0]
    assert ours.shape == theirs.shape == (2, FLUX_MAX_SEQUENCE_LENGTH, 32)
    torch.testing.assert_close(ours, theirs, atol=5e-5, rtol=1e-4)


@torch.no_grad()
def test_erase_a_cat_edits_only_the_text_inputs_and_reverts_bit_for_bit(flux):
    before = generate(flux)
    saved = state(flux.transformer)
    patch = eraser.erase_concepts(flux, "a cat")
    try:
        assert patch.layers == ["transformer.time_text_embed.text_embedder.linear_1", "transformer.context_embedder"]
        assert patch.metadata["family"] == "flux" and patch.metadata["retain_source"] == "neighbours"
        assert patch.metadata["pipeline_class"] == "FluxPipeline"
        changed = [k for k in saved if not torch.equal(saved[k], flux.transformer.state_dict()[k])]
        assert sorted(changed) == ["context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight"]
        assert torch.isfinite(generate(flux)).all()
    finally:
        patch.revert(flux)
    assert same_state(flux.transformer, saved)
    torch.testing.assert_close(generate(flux), before, atol=0, rtol=0)


@torch.no_grad()
def test_concept_features_lose_their_response_retain_barely_moves(flux):
    lin = flux.transformer.context_embedder
    concept = prompt_rows(flux, ["a photo of a cat", "a cat"])
    keep = prompt_rows(flux, ["a photo of a woman", "a man on a beach"])
    c0, r0 = lin(concept), lin(keep)
    rows = [PromptRow(prompt=p, case_number=i) for i, p in enumerate(["a photo of a woman", "a man on a beach"])]
    patch = eraser.erase_concepts(flux, "a cat", retain=rows, strength=1.0)  # removal: the bound is stated for it
    try:
        c_change = float((lin(concept) - c0).norm() / c0.norm())
        r_change = float((lin(keep) - r0).norm() / r0.norm())
        assert r_change < RETAIN_BOUND and r_change < 0.5 * c_change, (r_change, c_change)
    finally:
        patch.revert(flux)


def test_patch_applies_to_a_fresh_pipeline_and_not_to_sd3(flux, tmp_path):
    patch = eraser.erase_concepts(flux, "a cat")
    try:
        edited = flux.transformer.context_embedder.weight.detach().clone()
        path = patch.save(tmp_path / "cat.safetensors")
    finally:
        patch.revert(flux)
    fresh = build_pipeline("tiny-flux", seed=0)
    ErasurePatch.load(path).apply(fresh)
    assert torch.equal(fresh.transformer.context_embedder.weight, edited)
    sd3 = build_pipeline("tiny-sd3", seed=0)
    before = state(sd3.transformer)
    with pytest.raises(eraser.PatchError):
        ErasurePatch.load(path).apply(sd3)
    assert same_state(sd3.transformer, before)


def test_bad_input_is_refused_and_changes_nothing(flux):
    saved = state(flux.transformer)
    with pytest.raises(ValueError, match=r"esd_x.*not supported.*FluxPipeline.*unlink"):
        eraser.erase_concepts(flux, "a cat", method="esd_x")
    with pytest.raises(ValueError, match="do not read the prompt's sequence features"):
        eraser.erase_concepts(flux, "a cat", targets="context_kv")
    with pytest.raises(ValueError, match="UNet preset.*context_embedder"):
        eraser.erase_concepts(flux, "a cat", targets="cross_attn_v")
    assert same_state(flux.transformer, saved)
    no_t5 = build_pipeline("tiny-flux", seed=0, components=("text_encoder", "transformer", "vae"))
    kept = state(no_t5.transformer)
    with pytest.raises(ValueError, match="no T5 tower.*Load the pipeline with it"):
        eraser.erase_concepts(no_t5, "a cat")
    assert same_state(no_t5.transformer, kept)
