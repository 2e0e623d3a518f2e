"""Unlink on CLIP towers: transformers CLIPModel and open_clip CLIP (tiny configs, random weights)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import eraser
from eraser.families.clip import embedding, image_tower, text_view
from eraser.families.clip_tokenizer import clip_tokenizer


@pytest.fixture
def hf_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    return CLIPModel(cfg).eval()


@pytest.fixture
def oc_clip():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    return CLIP(
        16,
        dict(layers=3, width=32, head_width=8, image_size=32, patch_size=8),
        dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=2),
    ).eval()


def weight_of(mod):
    return mod.in_proj_weight if isinstance(mod, torch.nn.MultiheadAttention) else mod.weight


@pytest.mark.parametrize("which", ["hf", "open_clip"])
def test_image_tower_presets_and_erasure(which, hf_clip, oc_clip):
    model = hf_clip if which == "hf" else oc_clip
    tower = image_tower(model)
    assert tower is (model.vision_model if which == "hf" else model.visual)
    images = torch.randn(12, 3, 32, 32)
    last = eraser.resolve_targets(tower, "clip_last_mlp")
    expected = {
        "hf": ("encoder.layers.2.mlp.fc1", "encoder.layers.2.mlp.fc2"),
        "open_clip": ("transformer.resblocks.2.mlp.c_fc", "transformer.resblocks.2.mlp.c_proj"),
    }[which]
    assert tuple(last) == expected
    assert len(eraser.resolve_targets(tower, "clip_mlp")) == 6
    attn = eraser.resolve_targets(tower, "clip_attn")
    assert len(attn) == (12 if which == "hf" else 3)  # q/k/v/out per block vs one fused MHA
    before = {n: weight_of(m).detach().clone() for n, m in attn.items()}
    patch = eraser.erase_classes(
        tower, images, layers="clip_attn", k=2, exact_revert=True
    )  # attention is most of this tiny tower
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
    patch = eraser.erase_concepts(view, ["seven", "7"], targets="text_encoder_mlp", variant="svd", k=2, strength=1.0)
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


# ------------------------------------------------------------------------ zero-shot classifier (issue 18)


def clustered(model, classes, seed=0, per_class=40):
    """Images in ``classes`` clusters and a ZeroShotClassifier over them (random weights have no
    meaningful text tower, so the class embeddings come from the clusters' mean image embeddings)."""
    from eraser.families.clip import ImageEncoder, ZeroShotClassifier

    g = torch.Generator().manual_seed(seed)
    bases = torch.randn(classes, 3, 32, 32, generator=g)
    x = torch.cat([bases[c] + 0.2 * torch.randn(per_class, 3, 32, 32, generator=g) for c in range(classes)])
    y = torch.arange(classes).repeat_interleave(per_class)
    with torch.no_grad():
        e = torch.nn.functional.normalize(ImageEncoder(model)(x), dim=-1)
        means = torch.stack([e[y == c].mean(0) for c in range(classes)])
    zs = ZeroShotClassifier(model, means - 0.5 * means.mean(0))  # less of what they share: separable
    with torch.no_grad():
        pred = zs(x).argmax(1)
    assert (pred == y).float().mean() > 0.9
    return zs, x[(y == pred) & (y == 2)], x[(y == pred) & (y != 2)]


def test_zero_shot_default_edits_the_projection_and_keeps_the_other_classes_exactly(hf_clip):
    zs, forget, others = clustered(hf_clip, 5)
    head = zs.head.weight.detach().clone()
    probe = torch.randn(40, 3, 32, 32)
    keep = [0, 1, 3, 4]

    def raw(x):  # logits before normalising the embedding
        return zs.encoder(x) @ zs.head.weight.T

    with torch.no_grad():
        before, before_f = raw(probe), raw(forget)
        emb_before = embedding(hf_clip.get_image_features(pixel_values=forget))
    patch = eraser.erase_classes(zs, forget)
    md = patch.metadata
    assert patch.layers == ["encoder.model.visual_projection"]
    assert md["variant"] == "head" and md["protection"] == "exact" and md["read_through"] == patch.layers[0]
    assert (
        md["forget_classes"] == [2] and md["forget_classes_from"] == "predictions" and md["protected_classes"] == keep
    )
    assert torch.equal(zs.head.weight, head)  # the head is not edited
    with torch.no_grad():
        after, after_f = raw(probe), raw(forget)
        emb_after = embedding(hf_clip.get_image_features(pixel_values=forget))
        assert (zs(forget).argmax(1) != 2).all()
        assert (zs(others).argmax(1) != 2).all()
    # the other classes read exactly what they read; the forget class reads less of its images
    torch.testing.assert_close(after[:, keep], before[:, keep], atol=1e-5, rtol=1e-5)
    assert (after_f[:, 2] < before_f[:, 2]).all()
    # the CLIP model itself (shared, edited in place) embeds the forget images differently
    assert (emb_after - emb_before).norm() > 0.05 * emb_before.norm()
    patch.revert(zs)
    with torch.no_grad():
        torch.testing.assert_close(raw(probe), before)


def test_zero_shot_head_edit_is_a_classifier_edit_and_moves_the_other_rows(hf_clip):
    """layers=["head"] takes the generic head variant: the embeddings stay, the other rows move by its ridge."""
    zs, forget, _ = clustered(hf_clip, 5)
    with torch.no_grad():
        emb = embedding(hf_clip.get_image_features(pixel_values=forget))
    w = zs.head.weight.detach().clone()
    patch = eraser.erase_classes(zs, forget, layers=["head"])
    assert patch.layers == ["head"] and "protection" not in patch.metadata
    with torch.no_grad():
        torch.testing.assert_close(embedding(hf_clip.get_image_features(pixel_values=forget)), emb)
    assert (zs.head.weight - w)[[0, 1, 3, 4]].abs().max() > 1e-3 * w.abs().max()
    patch.revert(zs)


def test_zero_shot_options_and_fallbacks(hf_clip):
    zs, forget, others = clustered(hf_clip, 5)
    p = eraser.erase_classes(zs, forget, k=1, classes=[2, 4])
    assert p.edits[p.layers[0]].rank == 1 and p.metadata["forget_classes"] == [2, 4]
    assert p.metadata["forget_classes_from"] == "config" and p.metadata["protected_classes"] == [0, 1, 3]
    p.revert(zs)
    p = eraser.erase_classes(zs, forget, variant="svd")  # an explicit variant: the generic path (the head)
    assert p.layers == ["head"] and p.metadata["variant"] == "svd"
    p.revert(zs)
    p = eraser.erase_classes(zs, forget, retain_data=others)  # retain data: generic Rayleigh on the head
    assert p.layers == ["head"] and p.metadata["variant"] == "rayleigh"
    p.revert(zs)
    p = eraser.erase_classes(zs, torch.cat([forget, others]))  # predicted as every class: generic path, noted
    assert p.layers == ["head"] and "every class" in p.metadata["notes"]["head"]
    p.revert(zs)
    with pytest.raises(ValueError, match=r"class indices in \[0, 5\)"):
        eraser.erase_classes(zs, forget, classes=[7])


def test_protected_rows_subspace_maths():
    from eraser.subspace import head_rows_subspace
    from eraser.subspace import protected_rows_subspace as zero_shot_rows_subspace

    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 12, generator=g, dtype=torch.float64)
    W = torch.randn(5, 12, generator=g, dtype=torch.float64)
    sub, how = zero_shot_rows_subspace(X, W, [1], k=3)
    assert how == "exact" and sub.k == 3
    edited = W - W @ sub.dual @ torch.diag(sub.eta) @ sub.basis.T
    torch.testing.assert_close(edited[[0, 2, 3, 4]], W[[0, 2, 3, 4]], atol=1e-10, rtol=0)
    torch.testing.assert_close(edited[1], W[1] @ (torch.eye(12, dtype=torch.float64) - sub.basis @ sub.basis.T))
    # the ridge -> 0 limit of the head variant
    limit = head_rows_subspace(X, W, [1], k=3, ridge=1e-9)
    torch.testing.assert_close(limit.dual, sub.dual, atol=1e-5, rtol=1e-4)
    # more protected rows than dimensions: no exact solution, the ridge decides
    many = torch.randn(20, 12, generator=g, dtype=torch.float64)
    sub, how = zero_shot_rows_subspace(X, many, [3], k=2, ridge=0.1)
    assert how == "ridge"
    torch.testing.assert_close(sub.dual, head_rows_subspace(X, many, [3], k=2, ridge=0.1).dual)
    with pytest.raises(ValueError, match="no class left"):
        zero_shot_rows_subspace(X, W, range(5), k=1)


def test_open_clip_zero_shot_default_edits_the_head_exactly(oc_clip):
    zs, forget, others = clustered(oc_clip, 4)
    assert zs.projection_layer() is None  # open_clip's proj is a bare parameter
    with torch.no_grad():
        before = zs(others)
    patch = eraser.erase_classes(zs, forget)
    assert patch.layers == ["head"] and patch.metadata["protection"] == "exact"
    with torch.no_grad():
        assert (zs(forget).argmax(1) != 2).all()
        torch.testing.assert_close(zs(others)[:, [0, 1, 3]], before[:, [0, 1, 3]], atol=1e-5, rtol=1e-5)
    patch.revert(zs)


def test_image_encoder_default_layers_are_refused_clearly(hf_clip):
    from eraser.families.clip import ImageEncoder

    enc = ImageEncoder(hf_clip)
    w = hf_clip.visual_projection.weight.detach().clone()
    with pytest.raises(ValueError, match="zero_shot_classifier"):
        eraser.erase_classes(enc, torch.randn(6, 3, 32, 32))
    assert torch.equal(hf_clip.visual_projection.weight, w)


@pytest.fixture(scope="module")
def bundled_clip():
    from eraser.bundled import digits_clip

    return digits_clip()


def test_bundled_clip_default_erases_a_digit_and_keeps_the_others(bundled_clip, shared_data):
    """Issue 18 on real digits: digit 7 (the hardest for the retain-data recipe), 500 test images."""
    import numpy as np

    from eraser.bundled import digit_prompt
    from eraser.bundled.models import clip_pixel_values, zero_shot_logits
    from eraser.families.clip import zero_shot_classifier

    clip, tok = bundled_clip
    with np.load(shared_data / "mnist" / "mnist_train10k.npz") as z:
        x, y = torch.from_numpy(z["x"]).float().div(255).unsqueeze(1), torch.from_numpy(z["y"]).long()
    with np.load(shared_data / "mnist" / "mnist_test10k.npz") as z:
        xt, yt = torch.from_numpy(z["x"][:500]).float().div(255).unsqueeze(1), torch.from_numpy(z["y"][:500]).long()
    zs = zero_shot_classifier(clip, tok, [digit_prompt(d) for d in range(10)])
    px = clip_pixel_values(xt)
    with torch.no_grad():
        pred = zs(px).argmax(1)
    assert torch.equal(pred[:100], zero_shot_logits(clip, tok, xt[:100]).argmax(1))

    def acc(p):
        return [float((p[yt == d] == d).float().mean()) * 100 for d in range(10)]

    before = acc(pred)
    own = torch.nonzero(y == 7).flatten()
    forget = clip_pixel_values(x[own[torch.randperm(len(own), generator=torch.Generator().manual_seed(7))[:32]]])
    patch = eraser.erase_classes(zs, forget)
    try:
        after = acc(zero_shot_logits(clip, tok, xt).argmax(1))  # the CLIP model itself is edited
    finally:
        patch.revert(zs)
    assert 100 - after[7] >= 95
    assert max(before[j] - after[j] for j in range(10) if j != 7) <= 3
