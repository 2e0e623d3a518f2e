import copy

import pytest
import torch

import eraser
from eraser import ErasurePatch, PatchError


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model, ref, rtol=0.0):
    for k, v in model.state_dict().items():
        if rtol:
            assert (v - ref[k]).norm() <= rtol * ref[k].norm() + 1e-12, k
        else:
            assert torch.equal(v, ref[k]), k


def head_gain(model, U):
    """||W U|| / ||W||: how much of the erased subspace the head still sees."""
    W = model.head.weight.detach().double()
    return float((W @ U).norm() / W.norm())


def test_revert_restores_weights(tiny, images):
    before = weights(tiny)
    patch = eraser.erase_classes(tiny, images, k=2)
    assert not torch.equal(tiny.head.weight, before["head.weight"])
    patch.revert(tiny)
    assert_same(tiny, before, rtol=1e-6)


def test_patch_stores_only_low_rank_factors(tiny, images):
    patch = eraser.erase_classes(tiny, images, k=2)
    e = patch.edits["head"]
    assert e.basis.shape == (1, 16, 2) and e.undo.shape == (1, 10, 2)
    assert patch.num_parameters() < tiny.head.weight.numel()
    md = patch.metadata
    assert md["method"] == "unlink" and md["layers"] == ["head"] and md["config"]["k"] == 2
    assert md["base_fingerprint"].startswith("ck1:") and md["library_version"] == eraser.__version__


def test_save_load_apply_reproduces_edit(tiny, images, tmp_path):
    fresh = copy.deepcopy(tiny)
    patch = eraser.erase_classes(tiny, images, k=2, names=["cat"])
    path = patch.save(tmp_path / "cat.safetensors")
    loaded = ErasurePatch.load(path)
    assert loaded.metadata["names"] == ["cat"] and loaded.metadata["config"] == patch.metadata["config"]
    loaded.apply(fresh)
    torch.testing.assert_close(fresh.head.weight, tiny.head.weight, rtol=1e-6, atol=1e-7)
    # the loaded patch can undo its own application, and a directory path works too
    loaded.revert(fresh)
    patch.save(tmp_path / "dir")
    assert ErasurePatch.load(tmp_path / "dir").layers == ["head"]


def test_revert_of_a_reloaded_edited_model(tiny, images, tmp_path):
    before = weights(tiny)
    patch = eraser.erase_classes(tiny, images, k=1)
    edited = copy.deepcopy(tiny.state_dict())
    patch.save(tmp_path / "p.safetensors")
    other = type(tiny)()
    other.load_state_dict(edited)  # a model shipped with the edit baked in
    ErasurePatch.load(tmp_path / "p.safetensors").revert(other)
    assert_same(other, before, rtol=1e-6)


def test_composition_revert_a_keeps_b(tiny):
    base = weights(tiny)
    xa, xb = torch.randn(16, 3, 8, 8), torch.randn(16, 3, 8, 8) + 2.0
    pa = eraser.erase_classes(tiny, xa, k=2, names=["A"], variant="svd")  # orthogonal projections of every row
    pb = eraser.erase_classes(tiny, xb, k=2, names=["B"], variant="svd")
    Ub = pb.edits["head"].basis[0]
    Ua = pa.edits["head"].basis[0]
    pa.revert(tiny)
    assert head_gain(tiny, Ub) < 1e-6  # B is still erased
    assert head_gain(tiny, Ua) > 1e-2  # A is back
    # and the weights are exactly "base, then B"
    expected = eraser.project_out(base["head.weight"], Ub)
    torch.testing.assert_close(tiny.head.weight, expected, rtol=1e-6, atol=1e-6)
    pb.revert(tiny)
    assert_same(tiny, base, rtol=1e-6)


def test_fingerprint_mismatch_is_refused_unless_forced(tiny, images):
    other = type(tiny)()
    patch = eraser.erase_classes(tiny, images, k=1, variant="svd")  # head_gain needs every row projected
    before = weights(other)
    with pytest.raises(PatchError, match="fingerprint"):
        patch.apply(other)
    assert_same(other, before)
    patch.apply(other, force=True)
    assert head_gain(other, patch.edits["head"].basis[0]) < 1e-6


def test_fingerprint_sees_one_ulp_and_a_row_swap_and_ignores_threads(tiny):
    from eraser.patch import fingerprint

    base = fingerprint(tiny, ["head"])
    assert fingerprint(copy.deepcopy(tiny), ["head"]) == base
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert fingerprint(tiny, ["head"]) == base
    finally:
        torch.set_num_threads(threads)
    w = tiny.head.weight
    with torch.no_grad():
        saved = w.clone()
        w[3, 5] = torch.nextafter(w[3, 5], torch.tensor(float("inf")))
        assert fingerprint(tiny, ["head"]) != base
        w.copy_(saved)
        assert fingerprint(tiny, ["head"]) == base
        w[[0, 1]] = w[[1, 0]]
        assert fingerprint(tiny, ["head"]) != base
        w.copy_(saved)
        tiny.head.weight.data = w.detach().half().float()  # same values rounded: another model
        assert fingerprint(tiny, ["head"]) != base


def test_patches_with_sha256_fingerprints_still_apply_and_are_checked(tiny, images):
    """Patch files written before the ck1 checksums hold a SHA-256 of the bytes."""
    from eraser.patch import fingerprint

    fresh = copy.deepcopy(tiny)
    patch = eraser.erase_classes(tiny, images, k=1)
    legacy = fingerprint(fresh, ["head"], like="0" * 64)
    assert len(legacy) == 64 and not legacy.startswith("ck1:")
    patch.metadata["base_fingerprint"] = legacy
    loaded = ErasurePatch(patch.edits, dict(patch.metadata))
    with pytest.raises(PatchError, match="fingerprint"):
        loaded.apply(type(tiny)())
    loaded.apply(fresh)
    assert torch.equal(fresh.head.weight, tiny.head.weight)


@pytest.mark.parametrize("budget,kept", [(0.0, False), (1.0, True)])
def test_exact_revert_auto_keeps_originals_within_the_memory_budget(tiny, images, monkeypatch, budget, kept):
    import eraser.patch as patch_module

    monkeypatch.setattr(patch_module, "EXACT_REVERT_BUDGET", budget)
    before = weights(tiny)
    patch = eraser.erase_classes(tiny, images, k=2)
    assert patch.metadata["config"]["exact_revert"] == "auto"
    assert bool(patch._originals) is kept
    patch.revert(tiny)
    assert_same(tiny, before, rtol=0.0 if kept else 1e-6)


def test_double_apply_and_foreign_revert(tiny, images):
    patch = eraser.erase_classes(tiny, images, k=1)
    with pytest.raises(PatchError, match="already applied"):
        patch.apply(tiny)
    other = type(tiny)()
    before = weights(other)
    with pytest.raises(PatchError, match="not applied"):
        patch.revert(other)
    assert_same(other, before)


def test_other_architecture_is_refused(tiny, images):
    patch = eraser.erase_classes(tiny, images, k=1)
    wrong = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(PatchError, match="another architecture"):
        patch.apply(wrong, force=True)
    wider = type(tiny)()
    wider.head = torch.nn.Linear(16, 12)
    before = weights(wider)
    with pytest.raises(PatchError, match="shape"):
        patch.apply(wider, force=True)
    assert_same(wider, before)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "no-metadata"])
def test_corrupt_patch_files(tiny, images, tmp_path, damage):
    path = eraser.erase_classes(tiny, images, k=1).save(tmp_path / "p.safetensors")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 8 + raw[8:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(PatchError, match="not a readable erasure patch"):
        ErasurePatch.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(PatchError, match="no patch file"):
        ErasurePatch.load(tmp_path / "nope.safetensors")


def test_nan_weights_refused_on_apply(tiny, images):
    patch = eraser.erase_classes(tiny, images, k=1)
    patch.revert(tiny)
    with torch.no_grad():
        tiny.head.weight[0, 0] = float("nan")
    before = weights(tiny)
    with pytest.raises(PatchError):
        patch.apply(tiny, force=True)
    for k, v in tiny.state_dict().items():
        assert torch.equal(v.isnan(), before[k].isnan()) and torch.equal(v.nan_to_num(), before[k].nan_to_num())


@pytest.mark.parametrize("budget,kept", [(0.0, False), (1.0, True)])
def test_dense_patches_follow_the_same_memory_budget(tiny, monkeypatch, budget, kept):
    import eraser.patch as patch_module

    monkeypatch.setattr(patch_module, "EXACT_REVERT_BUDGET", budget)
    before = weights(tiny)
    patch = ErasurePatch(edits={}, metadata={}, deltas={"head.weight": torch.randn_like(tiny.head.weight) / 3})
    patch.apply(tiny)
    assert bool(patch._originals) is kept and not torch.equal(tiny.head.weight, before["head.weight"])
    patch.revert(tiny)
    assert_same(tiny, before, rtol=0.0 if kept else 1e-6)


def test_exact_revert_option_is_validated(tiny, images):
    from eraser.methods.unlink import UnlinkConfig

    assert UnlinkConfig(exact_revert="false").exact_revert is False
    assert UnlinkConfig(exact_revert="TRUE").exact_revert is True
    before = weights(tiny)
    with pytest.raises(ValueError, match="exact_revert"):
        eraser.erase_classes(tiny, images, exact_revert="maybe")
    assert_same(tiny, before)


def test_fingerprints_taken_while_editing_equal_separate_passes(tiny, images):
    from eraser.patch import fingerprint

    fresh = copy.deepcopy(tiny)
    patch = eraser.erase_classes(tiny, images, k=1, layers=["conv", "body", "head"])
    assert patch.metadata["base_fingerprint"] == fingerprint(fresh, patch.layers)
    assert patch.metadata["applied_fingerprint"] == fingerprint(tiny, patch.layers)
    assert patch.metadata["base_fingerprint"] != patch.metadata["applied_fingerprint"]


@pytest.mark.parametrize("exact_revert", [True, False])
def test_a_failing_layer_puts_back_the_layers_already_edited(tiny, images, exact_revert):
    """Low-rank and dense patches: the second layer holds a NaN, so the edit stops there and the
    first layer gets its values back (exactly when kept, else to rounding)."""
    low_rank = eraser.erase_classes(tiny, images, k=1, layers=["body", "head"])
    low_rank.revert(tiny)
    before = weights(tiny)
    dense = ErasurePatch(
        edits={},
        metadata={},
        deltas={
            "body.weight": torch.full_like(tiny.body.weight, 0.01),
            "head.weight": torch.full_like(tiny.head.weight, 0.01),
        },
    )
    with torch.no_grad():
        tiny.head.weight[0, 0] = float("nan")
    for patch in (ErasurePatch(low_rank.edits, {}), dense):
        patch.exact_revert = exact_revert
        with pytest.raises(PatchError, match="NaN"):
            patch.apply(tiny)
        torch.testing.assert_close(tiny.body.weight, before["body.weight"], rtol=0, atol=0 if exact_revert else 1e-6)
