"""Unlink on CLIP towers: transformers CLIPModel and open_clip CLIP (tiny configs, random weights)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import eraser
from eraser.families.clip import image_tower, text_view
from eraser.families.clip_tokenizer import clip_tokenizer


@pytest.fixture
def hf_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=16,
    )
    return CLIPModel(cfg).eval()


@pytest.fixture
def oc_clip():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    return CLIP(16, dict(layers=3, width=32, head_width=8, image_size=32, patch_size=8),
                dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=2)).eval()


def weight_of(mod):
    return mod.in_proj_weight if isinstance(mod, torch.nn.MultiheadAttention) else mod.weight


@pytest.mark.parametrize("which", ["hf", "open_clip"])
def test_image_tower_presets_and_erasure(which, hf_clip, oc_clip):
    model = hf_clip if which == "hf" else oc_clip
    tower = image_tower(model)
    assert tower is (model.vision_model if which == "hf" else model.visual)
    images = torch.randn(12, 3, 32, 32)
    last = eraser.resolve_targets(tower, "clip_last_mlp")
    expected = {"hf": ("encoder.layers.2.mlp.fc1", "encoder.layers.2.mlp.fc2"),
                "open_clip": ("transformer.resblocks.2.mlp.c_fc", "transformer.resblocks.2.mlp.c_proj")}[which]
    assert tuple(last) == expected
    assert len(eraser.resolve_targets(tower, "clip_mlp")) == 6
    attn = eraser.resolve_targets(tower, "clip_attn")
    assert len(attn) == (12 if which == "hf" else 3)  # q/k/v/out per block vs one fused MHA
    before = {n: weight_of(m).detach().clone() for n, m in attn.items()}
    patch = eraser.erase_classes(tower, images, layers="clip_attn", k=2, exact_revert=True)  # attention is most of this tiny tower
    mods = dict(tower.named_modules())
    for name in attn:
        assert (weight_of(mods[name]).double() @ patch.edits[name].basis[0]).abs().max() < 1e-5
    patch.revert(tower)
    assert all(torch.equal(weight_of(mods[n]), w) for n, w in before.items())
    eraser.erase_classes(tower, images, layers="clip_last_mlp", k=2)


def test_text_tower_of_transformers_clip(hf_clip):
    tok = clip_tokenizer()
    view = text_view(hf_clip, tok)
    assert text_view(hf_clip, tok) is view
    with pytest.raises(ValueError, match="no UNet"):
        eraser.erase_concepts(view, "seven")
    patch = eraser.erase_concepts(view, ["seven", "7"], targets="text_encoder_mlp", variant="svd", k=2)
    assert patch.layers and all(n.startswith("text_encoder.") for n in patch.layers)
    mods = dict(eraser.as_module(view).named_modules())
    for name in patch.layers:
        assert (mods[name].weight.double() @ patch.edits[name].basis[0]).abs().max() < 1e-5
    patch.revert(view)


def test_open_clip_text_tower_is_refused_clearly(oc_clip):
    with pytest.raises(TypeError, match="open_clip text towers"):
        text_view(oc_clip, clip_tokenizer())


def test_image_encoder_reaches_the_projection(hf_clip):
    from eraser.families.clip import ImageEncoder

    enc = ImageEncoder(hf_clip)
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        before = enc(images)
    assert before.shape == (6, 16)
    patch = eraser.erase_classes(enc, images, layers=["model.visual_projection"], k=2)
    assert patch.layers == ["model.visual_projection"]
    patch.revert(enc)
    with torch.no_grad():
        torch.testing.assert_close(enc(images), before)
    with pytest.raises(TypeError, match="not a CLIP model"):
        ImageEncoder(torch.nn.Linear(2, 2))
