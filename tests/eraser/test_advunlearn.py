"""AdvUnlearn (eraser/methods/advunlearn.py): adversarially trained ESD on the text encoder, with
the UNet frozen; the trainer's text-encoder parameters (eraser/training/diffusion.py)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import same_state, state

import eraser
from eraser import ErasurePatch
from eraser.families.architectures import build_pipeline
from eraser.methods.advunlearn import text_encoder_parameters
from eraser.training.diffusion import DenoiserTrainer, DiffusionTrainConfig
from eraser.training.soft_prompts import encode_hidden, prompt_ids

FAST = dict(steps=4, warmup=2, attack_steps=2, attack_every=1, ddim_steps=3, resolution=32, lr=1e-3, retain_batch=2)


@pytest.fixture()
def sd():
    pipe = build_pipeline("tiny-sd", seed=11)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_trains_only_the_text_encoders_layers_and_reverts_exactly(sd, tmp_path):
    unet, text = state(sd.unet), state(sd.text_encoder)
    patch = eraser.erase_concepts(sd, "a cat", retain=["a dog", "a car"], method="advunlearn", **FAST)
    assert same_state(sd.unet, unet), "the UNet must stay frozen"
    changed = sorted(patch.deltas)
    assert changed and all(n.startswith("text_encoder.") and ".encoder.layers." in n for n in changed)
    assert not same_state(sd.text_encoder, text)
    # two warm-up steps of plain ESD, then an attack before each of the last two steps
    assert len(patch.metadata["losses"]) == 4 and len(patch.metadata["attacks"]) == 2
    assert all(torch.isfinite(torch.tensor(patch.metadata["losses"])))
    after = state(sd.text_encoder)
    path = patch.save(tmp_path / "adv.safetensors")
    patch.revert(sd)
    assert same_state(sd.text_encoder, text) and same_state(sd.unet, unet)
    fresh = build_pipeline("tiny-sd", seed=11)
    ErasurePatch.load(path).apply(fresh)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(state(fresh.text_encoder).values(), after.values()))


def test_first_layer_only(sd):
    names = text_encoder_parameters(sd.text_encoder, "first")
    assert names and all(".encoder.layers.0." in f".{n}" for n in names)
    patch = eraser.erase_concepts(sd, "a cat", retain=["a dog"], method="advunlearn", train_layers="first", **FAST)
    assert {n.removeprefix("text_encoder.") for n in patch.deltas} <= set(names)
    patch.revert(sd)


def test_the_trainers_text_parameters_and_conditioning(sd):
    """Trained text-encoder parameters are keyed under text_encoder., get their gradient through the
    frozen UNet, and are restored when the block fails; the trainer's conditioning is the encoder's."""
    text = state(sd.text_encoder)
    flags = [p.requires_grad for p in sd.text_encoder.parameters()]
    names = text_encoder_parameters(sd.text_encoder, "first")
    cfg = DiffusionTrainConfig(steps=1, lr=1e-2, ddim_steps=3, resolution=32, mixed_precision="no")
    ids = prompt_ids(sd.tokenizer, "a cat", [])[0]
    with pytest.raises(RuntimeError, match="stop"):
        with DenoiserTrainer(sd, [], cfg, text_names=names) as tr:
            assert set(tr.params) == {f"text_encoder.{n}" for n in names}
            torch.testing.assert_close(tr.encode(["a cat"]).hidden, encode_hidden(sd.text_encoder, ids))
            x, t = tr.noise(1), tr.timestep(1)

            def loss(step):
                from eraser.training.diffusion import Conditioning

                return tr.predict(x, t, Conditioning(encode_hidden(sd.text_encoder, ids))).pow(2).mean()

            tr.fit(loss)
            assert not same_state(sd.text_encoder, text)
            raise RuntimeError("stop")
    assert same_state(sd.text_encoder, text), "a failure inside the block must restore the text encoder"
    assert [p.requires_grad for p in sd.text_encoder.parameters()] == flags


def test_bad_input_is_refused_and_changes_nothing(sd):
    unet, text = state(sd.unet), state(sd.text_encoder)
    with pytest.raises(ValueError, match="retain"):
        eraser.erase_concepts(sd, "a cat", method="advunlearn", **FAST)
    with pytest.raises(ValueError, match="train_layers"):
        eraser.erase_concepts(sd, "a cat", retain=["a dog"], method="advunlearn", train_layers="last")
    with pytest.raises(ValueError, match="attack_tokens"):
        eraser.erase_concepts(sd, "a cat", retain=["a dog"], method="advunlearn", attack_tokens=0)
    sdxl = build_pipeline("tiny-sdxl", seed=0)
    with pytest.raises(NotImplementedError, match="single-text-encoder"):
        eraser.erase_concepts(sdxl, "a cat", retain=["a dog"], method="advunlearn", **FAST)
    assert same_state(sd.unet, unet) and same_state(sd.text_encoder, text)
