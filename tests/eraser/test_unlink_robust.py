"""The robust Unlink (eraser/methods/unlink_robust.py) and its maths (eraser/subspace.py)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import eraser
from eraser import ErasurePatch
from eraser.bundled import digit_prompt, digits_judge, digits_pipeline
from eraser.families.architectures import build_pipeline
from eraser.methods.unlink_diffusion import ConceptUnlinkConfig
from eraser.methods.unlink_robust import RobustUnlinkConfig
from eraser.subspace import (
    Gram,
    Subspace,
    complement_basis,
    energy_basis,
    gram_without,
    private_basis,
    protected_statistics,
    with_cut,
)


@pytest.fixture(scope="module")
def pipe():
    p = digits_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def kv_weights(pipe):
    return {
        n: m.weight.detach().clone() for n, m in pipe.unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))
    }


def unet_state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def judged(pipe, judge, digit, n=16, seed=0):
    gens = [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]
    x = pipe([digit_prompt(digit)] * n, generator=gens, output_type="pt").images
    return int((judge(x).argmax(-1) == digit).sum())


# ----------------------------------------------------------------------------------------------
# maths


def orthonormal(d, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, k, dtype=torch.float64, generator=g))[0]


def test_energy_and_complement_bases():
    q = orthonormal(12, 3, 0)
    m = q @ torch.diag(torch.tensor([9.0, 4.0, 1.0], dtype=torch.float64)) @ q.T
    assert energy_basis(m, 0.6).shape == (12, 1)
    assert energy_basis(m, 0.9).shape == (12, 2)
    assert energy_basis(m, 1.0).shape == (12, 3)  # never beyond the rank
    keep = energy_basis(m, 1.0)
    c = complement_basis(keep)
    assert c.shape == (12, 9)
    torch.testing.assert_close(c.T @ c, torch.eye(9, dtype=torch.float64), atol=1e-10, rtol=0)
    assert float((c.T @ keep).abs().max()) < 1e-10
    with pytest.raises(ValueError, match="energy"):
        energy_basis(m, 0.0)
    with pytest.raises(ValueError, match="all zero"):
        energy_basis(torch.zeros(4, 4, dtype=torch.float64), 0.5)


def test_private_basis_finds_what_the_kept_subspace_lacks():
    d = 10
    keep = orthonormal(d, 4, 1)
    private = complement_basis(keep)[:, :1]
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(30, 4, dtype=torch.float64, generator=g) @ keep.T
    rows = rows + 0.5 * torch.randn(30, 1, dtype=torch.float64, generator=g) @ private.T
    for forget in (rows, Gram(rows.T @ rows, 30)):  # from rows and from the Gram alone
        found, share = private_basis(forget, keep, ratio=0.5)
        assert found.shape == (d, 1)
        assert abs(float((found.T @ private).abs())) == pytest.approx(1.0, abs=1e-8)
        expected = float((rows @ private).pow(2).sum() / rows.pow(2).sum())
        assert share == pytest.approx(expected, rel=1e-8)
    inside, share = private_basis(rows @ keep @ keep.T, keep)  # nothing outside: nothing to cut
    assert inside.shape == (d, 0) and share == 0.0
    with pytest.raises(ValueError, match="ratio"):
        private_basis(rows, keep, ratio=0.0)
    with pytest.raises(ValueError, match="basis"):
        private_basis(rows, keep[:5])


def test_with_cut_is_the_composed_input_map():
    d = 8
    g = torch.Generator().manual_seed(3)
    basis = torch.randn(d, 2, dtype=torch.float64, generator=g)
    dual = torch.randn(d, 2, dtype=torch.float64, generator=g)
    sub = Subspace(basis, torch.tensor([1.5, 0.4], dtype=torch.float64), dual)
    cut = orthonormal(d, 3, 4)
    eye = torch.eye(d, dtype=torch.float64)
    expected = (eye - dual @ torch.diag(sub.eta) @ basis.T) @ (eye - cut @ cut.T)
    both = with_cut(sub, cut)
    assert both.k == 5
    torch.testing.assert_close(eye - both.dual @ torch.diag(both.eta) @ both.basis.T, expected)
    assert with_cut(sub, torch.zeros(d, 0, dtype=torch.float64)) is sub
    with pytest.raises(ValueError, match="cut"):
        with_cut(sub, cut[:5])


def test_protected_statistics_weigh_concepts_and_context_alike():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(3, 6, generator=g), 10 * torch.randn(7, 6, generator=g)
    shared = Gram(torch.eye(6, dtype=torch.float64) * 100, 1)
    m = protected_statistics(Gram(torch.zeros(6, 6, dtype=torch.float64), 2, parts=[a, b], shared=shared))
    ca, cb = (x.double().T @ x.double() / x.shape[0] for x in (a, b))
    concepts = (ca + cb) / 2
    torch.testing.assert_close(m, concepts + torch.eye(6, dtype=torch.float64) * torch.trace(concepts) / 6)
    plain = Gram(a.double().T @ a.double(), 3)
    torch.testing.assert_close(protected_statistics(plain), plain.covariance())


# ----------------------------------------------------------------------------------------------
# the method


def test_registered_as_a_training_free_diffusion_method():
    spec = eraser.get_method("unlink_robust", family="diffusion")
    assert spec.training_free and spec.returns == "patch"
    assert issubclass(spec.config_cls, ConceptUnlinkConfig) and spec.config_cls is RobustUnlinkConfig


def test_reversible_bit_exact_and_metadata(pipe, tmp_path):
    before = unet_state(pipe)
    patch = eraser.erase_concepts(pipe, "seven", method="unlink_robust", adversarial_rounds=0)
    try:
        meta = patch.metadata
        assert meta["method"] == "unlink_robust" and meta["variant"] == "rayleigh"
        assert meta["concepts"] == ["seven", "7"] and meta["family"] == "diffusion"
        robust = meta["robust"]
        assert robust["closure"] == "private" and robust["protected_energy"] == 0.999
        assert robust["private_ratio"] == 0.5
        assert robust["cut_rank"] >= 1 and robust["reflected_rank"] >= 1
        assert 0 < robust["protected_rank"] < 64 and 0 < robust["private_share"] < 0.5
        assert meta["config"]["closure"] == "private" and meta["config"]["strength"] == 1.5
        assert set(meta["timing_s"]) == {"encode", "fit", "apply", "images", "attack", "total"}
        assert meta["robust"]["adversarial"]["rounds"] == 0 and meta["timing_s"]["attack"] == 0
        # the cut directions (the first columns of the basis) are removed: no input reaches them
        for name, e in patch.edits.items():
            cut = e.basis[0][:, : robust["cut_rank"]].float()
            w = dict(pipe.unet.named_modules())[name.removeprefix("unet.")].weight.detach()
            assert float((w @ cut).abs().max()) < 1e-5 * float(w.abs().max()), name
        changed = [k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])]
        assert changed and all("attn2.to_k" in k or "attn2.to_v" in k for k in changed)
        path = patch.save(tmp_path / "robust")
        edited = kv_weights(pipe)
    finally:
        patch.revert(pipe)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    loaded = ErasurePatch.load(path)
    assert loaded.metadata["robust"]["closure"] == "private"
    loaded.apply(pipe)
    try:
        assert all(torch.allclose(edited[n], w, atol=1e-6) for n, w in kv_weights(pipe).items())
    finally:
        loaded.revert(pipe)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_closure_none_is_unlinks_edit_and_settings_reach_the_config(pipe):
    # the robust variant builds on Unlink's Rayleigh fit (its measured settings), not the regression default
    plain = eraser.erase_concepts(pipe, "seven", variant="rayleigh", strength=1.5, ridge=0.1)
    w_plain = kv_weights(pipe)
    plain.revert(pipe)
    none = eraser.erase_concepts(pipe, "seven", method="unlink_robust", closure="none", adversarial_rounds=0)
    try:
        assert none.metadata["robust"]["cut_rank"] == 0
        assert all(torch.allclose(w_plain[n], w, atol=1e-6) for n, w in kv_weights(pipe).items())
    finally:
        none.revert(pipe)
    full = eraser.erase_concepts(
        pipe, "seven", method="unlink_robust", closure="full", protected_energy=0.99, adversarial_rounds=0
    )
    try:
        robust = full.metadata["robust"]
        assert robust["closure"] == "full" and robust["protected_energy"] == 0.99
        assert robust["cut_rank"] == 64 - robust["protected_rank"]
    finally:
        full.revert(pipe)


def test_on_the_regression_fit_closure_none_is_the_default_erasure_with_its_ridge_ladder(pipe):
    # eight needs the ladder (test_bundled_t2i): the robust fit bounds its edit the same way
    plain = eraser.erase_concepts(pipe, "eight")
    w_plain = kv_weights(pipe)
    plain.revert(pipe)
    none = eraser.erase_concepts(
        pipe,
        "eight",
        method="unlink_robust",
        variant="regression",
        strength=2.0,
        ridge=1e-3,
        closure="none",
        adversarial_rounds=0,
    )
    try:
        assert none.metadata["variant"] == "regression"
        assert none.metadata["regression_ridge"] == plain.metadata["regression_ridge"] > 1e-3
        assert all(torch.allclose(w_plain[n], w, atol=1e-6) for n, w in kv_weights(pipe).items())
    finally:
        none.revert(pipe)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"closure": "everything"}, "closure must be one of"),
        ({"protected_energy": 0.0}, "protected_energy must be in"),
        ({"protected_energy": 1.5}, "protected_energy must be in"),
        ({"private_ratio": -1}, "private_ratio must be in"),
        ({"variant": "svd"}, "variant='svd' has none"),
        ({"retain": "none"}, "retain='none' gives none"),
        ({"retain": ["seven"]}, "both concepts to erase and retain"),
        ({"strength": 3.0}, "strength must be in"),
        ({"adversarial_rounds": -1}, "adversarial_rounds must be an integer >= 0"),
        ({"adversarial_steps": 0}, "adversarial_steps must be an integer >= 1"),
        ({"adversarial_protected_energy": 0.0}, "adversarial_protected_energy must be in"),
        ({"adversarial_prompt": 3}, "adversarial_prompt must be a string"),
    ],
)
def test_bad_input_is_refused_and_leaves_the_pipeline_unchanged(pipe, kwargs, error):
    before = unet_state(pipe)
    with pytest.raises(ValueError, match=error):
        eraser.erase_concepts(pipe, "seven", method="unlink_robust", **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_bad_config_type():
    with pytest.raises(TypeError, match="RobustUnlinkConfig"):
        eraser.erase_concepts(digits_pipeline(), "seven", method="unlink_robust", config=ConceptUnlinkConfig())


def test_erases_the_digit_and_keeps_another(pipe):
    judge = digits_judge()
    assert judged(pipe, judge, 7) >= 15 and judged(pipe, judge, 1) >= 15
    patch = eraser.erase_concepts(pipe, "seven", method="unlink_robust")
    try:
        assert judged(pipe, judge, 7) <= 1
        assert judged(pipe, judge, 1) >= 15
    finally:
        patch.revert(pipe)


def test_runs_on_a_stable_diffusion_layout():
    sd = build_pipeline("tiny-sd")
    before = kv_weights(sd)
    patch = eraser.erase_concepts(sd, "nude", method="unlink_robust", adversarial_rounds=0)
    try:
        assert patch.metadata["robust"]["reflected_rank"] >= 1 and patch.layers
    finally:
        patch.revert(sd)
    assert all(torch.equal(kv_weights(sd)[n], w) for n, w in before.items())


def test_gram_without_removes_the_cut_from_rows_and_gram():
    g = torch.Generator().manual_seed(6)
    rows = torch.randn(5, 7, dtype=torch.float64, generator=g)
    cut = orthonormal(7, 2, 7)
    p = torch.eye(7, dtype=torch.float64) - cut @ cut.T
    out = gram_without(rows, cut)
    torch.testing.assert_close(out.rows, rows @ p)
    torch.testing.assert_close(out.matrix, p @ rows.T @ rows @ p)
    assert out.n == 5
    big = gram_without(Gram(rows.T @ rows, 5), cut)  # the Gram alone
    torch.testing.assert_close(big.matrix, out.matrix)
    same = Gram(rows.T @ rows, 5)
    assert gram_without(same, cut[:, :0]) is same


TINY_ROUNDS = dict(adversarial_rounds=2, adversarial_steps=2, adversarial_images=2)


def test_adversarial_rounds_add_what_the_attack_found_and_revert_exactly(pipe, monkeypatch):
    import eraser.methods.unlink_robust as robust_module

    before = unet_state(pipe)
    calls = []
    real = robust_module.learn_soft_prompt

    def spy(p, prompt, targets, config, **kw):
        calls.append((prompt, tuple(targets.shape), config.seed, config.steps))
        return real(p, prompt, targets, config, **kw)

    monkeypatch.setattr(robust_module, "learn_soft_prompt", spy)
    plain = eraser.erase_concepts(pipe, "seven", method="unlink_robust", closure="none", adversarial_rounds=0)
    rank_plain = plain.metadata["robust"]["reflected_rank"]
    plain.revert(pipe)
    patch = eraser.erase_concepts(pipe, "seven", method="unlink_robust", closure="none", **TINY_ROUNDS)
    try:
        adv = patch.metadata["robust"]["adversarial"]
        assert adv["rounds"] == 2 and [f["round"] for f in adv["found"]] == [1, 2]
        # each round attacks the erased model from its own seed, on the concept's images drawn before the edit
        assert [c[2] for c in calls] == [1000, 1001] and all(c[:2] == ("a photo of", (2, 1, 32, 32)) for c in calls)
        assert patch.metadata["robust"]["reflected_rank"] > rank_plain  # the attacks' rows got their own directions
        assert patch.metadata["timing_s"]["attack"] > 0
    finally:
        patch.revert(pipe)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_a_failed_adversarial_round_leaves_the_pipeline_unchanged(pipe, monkeypatch):
    import eraser.methods.unlink_robust as robust_module

    before = unet_state(pipe)

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(robust_module, "learn_soft_prompt", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        eraser.erase_concepts(pipe, "seven", method="unlink_robust", **TINY_ROUNDS)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_rounds_on_a_pipeline_the_search_does_not_support_say_what_to_do():
    sdxl = build_pipeline("tiny-sdxl")
    before = {k: v.clone() for k, v in sdxl.unet.state_dict().items()}
    with pytest.raises(NotImplementedError, match="adversarial_rounds=0"):
        eraser.erase_concepts(sdxl, "nude", method="unlink_robust")
    assert all(torch.equal(v, before[k]) for k, v in sdxl.unet.state_dict().items())
    patch = eraser.erase_concepts(sdxl, "nude", method="unlink_robust", adversarial_rounds=0)
    patch.revert(sdxl)
