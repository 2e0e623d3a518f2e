"""The retain-free default on a classifier head (issue 18): the forget subspace leaves the forget
classes' rows only, the other classes' rows are protected (see docs/defaults.md)."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import eraser
from eraser import UnlinkConfig
from eraser.methods.unlink import DEFAULT_HEAD_SV_RATIO, fit_subspace, forget_classes_from_counts
from eraser.subspace import as_gram, head_rows_subspace, rayleigh_subspace

D, C, FORGET = 12, 5, 2


def make_task(seed: int = 0):
    """A linear head on features that share one direction (like pooled ReLU features): class j's
    features are 3 * common + 2 * e_j + noise, and the head reads each class's mean."""
    g = torch.Generator().manual_seed(seed)
    common = torch.ones(D) / D**0.5
    means = torch.stack([3 * common + 2 * torch.eye(D)[j] for j in range(C)])
    body = nn.Linear(D, D)
    with torch.no_grad():
        body.weight.copy_(torch.eye(D))
        body.bias.zero_()
    head = nn.Linear(D, C)
    with torch.no_grad():
        head.weight.copy_(means)
        head.bias.zero_()
    model = nn.Sequential(OrderedDict(body=body, head=head)).eval()

    def sample(j: int, n: int) -> torch.Tensor:
        return means[j] + 0.3 * torch.randn(n, D, generator=g)

    forget = sample(FORGET, 40)
    retain = torch.cat([sample(j, 40) for j in range(C) if j != FORGET])
    return model, forget, retain


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_default_protects_the_other_classes_logits_better_than_svd():
    model, forget, retain = make_task()
    others = [j for j in range(C) if j != FORGET]
    before = logits(model, retain)[:, others]
    changes = {}
    for variant in ("auto", "svd"):
        patch = eraser.erase_classes(model, forget, k=1, variant=variant)
        after = logits(model, retain)
        changes[variant] = (after[:, others] - before).abs().max().item()
        if variant == "auto":  # the forget features are no longer called FORGET
            assert patch.metadata["variant"] == "head"
            assert (logits(model, forget).argmax(1) != FORGET).all()
        patch.revert(model)
    # svd removes the shared direction from every row; the head variant leaves the others' rows
    # all but untouched (only what the ridge lets through)
    assert changes["svd"] > 1.0
    assert changes["auto"] < 0.05 * changes["svd"]


def test_default_records_the_choice_and_the_protected_classes():
    model, forget, _ = make_task()
    patch = eraser.erase_classes(model, forget)
    md = patch.metadata
    assert md["variant"] == "head" and md["head_layer"] == "head"
    assert md["forget_classes"] == [FORGET] and md["forget_classes_from"] == "predictions"
    assert md["protected_classes"] == [j for j in range(C) if j != FORGET]
    assert md["forget_predictions"][0] == [FORGET, 40]
    assert patch.edits["head"].dual is not None
    patch.revert(model)
    patch = eraser.erase_classes(model, forget, classes=[1, FORGET])  # explicit forget classes
    assert patch.metadata["forget_classes"] == [1, FORGET] and patch.metadata["forget_classes_from"] == "config"
    assert patch.metadata["protected_classes"] == [0, 3, 4]


def test_head_rows_subspace_edits_the_forget_rows_exactly():
    torch.manual_seed(0)
    W = torch.randn(C, D, dtype=torch.float64)
    X = torch.randn(30, D, dtype=torch.float64)
    sub = head_rows_subspace(X, W, [1, 3], ridge=1e-6, k=2)
    U = sub.basis
    edited = W - W @ sub.dual @ torch.diag(sub.eta) @ U.T
    torch.testing.assert_close(edited[[1, 3]], W[[1, 3]] @ (torch.eye(D, dtype=torch.float64) - U @ U.T))
    # C <= D: the protected rows have a null space to work in, so they barely move
    assert (edited[[0, 2, 4]] - W[[0, 2, 4]]).abs().max() < 1e-4
    with pytest.raises(ValueError, match="no class left to protect"):
        head_rows_subspace(X, W, range(C), k=1)


def test_head_default_rank_rule_and_the_retain_path_unchanged():
    model, forget, retain = make_task()
    W = model.head.weight.detach()
    fg, rg = as_gram(forget), as_gram(retain)
    sub = fit_subspace(fg, None, UnlinkConfig(), head_weight=W, forget_classes=[FORGET])
    s = torch.linalg.svdvals(forget.double())
    assert DEFAULT_HEAD_SV_RATIO == 0.1 and sub.k == int((s >= 0.1 * s[0]).sum())
    # with retain data the head's rows play no part: the oblique Rayleigh fit as before
    with_head = fit_subspace(fg, rg, UnlinkConfig(), head_weight=W, forget_classes=[FORGET])
    plain = rayleigh_subspace(fg, rg, 3, ridge=0.1, clip_k=True)
    torch.testing.assert_close(with_head.basis, plain.basis)
    torch.testing.assert_close(with_head.dual, plain.dual)
    patch = eraser.erase_classes(model, forget, retain_data=retain)
    assert patch.metadata["variant"] == "rayleigh" and "forget_classes" not in patch.metadata


def test_other_layers_and_random_forgetting_keep_the_svd_variant():
    model, forget, retain = make_task()
    patch = eraser.erase_classes(model, forget, layers=["body"])
    assert patch.metadata["variant"] == "svd" and patch.edits["body"].dual is None
    patch.revert(model)
    patch = eraser.erase_classes(model, forget, layers=["body", "head"])
    assert patch.metadata["layer_variants"] == {"body": "svd", "head": "head"}
    patch.revert(model)
    patch = eraser.erase_classes(model, forget, tail_beta=0.9)  # random/instance forgetting
    assert patch.metadata["variant"] == "svd"
    patch.revert(model)
    everything = torch.cat([forget, retain])  # predicted as every class: nothing to protect
    patch = eraser.erase_classes(model, everything)
    assert patch.metadata["variant"] == "svd" and "every class" in patch.metadata["notes"]["head"]
    patch.revert(model)
    with pytest.raises(ValueError, match="variant='head' edits the classifier head"):
        eraser.erase_classes(model, forget, layers=["body"], variant="head")


def test_forget_classes_from_counts():
    assert forget_classes_from_counts(torch.tensor([0, 41, 6, 1])) == [1]
    assert forget_classes_from_counts(torch.tensor([48, 0, 25, 5])) == [0, 2]  # a confusion as common as half
    with pytest.raises(ValueError, match="classes must be"):
        UnlinkConfig(classes=[-1])


def test_head_variant_patch_saves_reverts_and_runs_in_half_precision(tmp_path):
    model, forget, _ = make_task()
    W = model.head.weight.detach().clone()
    patch = eraser.erase_classes(model, forget)
    edited = model.head.weight.detach().clone()
    patch.save(tmp_path / "p.safetensors")
    patch.revert(model)
    torch.testing.assert_close(model.head.weight.detach(), W, atol=1e-6, rtol=0)
    loaded = eraser.ErasurePatch.load(tmp_path / "p.safetensors")
    assert loaded.metadata["forget_classes"] == [FORGET]
    fresh = make_task()[0]
    loaded.apply(fresh)  # a copy of the same weights gets the same edit
    torch.testing.assert_close(fresh.head.weight.detach(), edited)
    half = make_task()[0].to(torch.bfloat16)
    hp = eraser.erase_classes(half, forget)
    assert hp.metadata["variant"] == "head"
    torch.testing.assert_close(half.head.weight.float(), edited, atol=0.05, rtol=0.02)
