import pytest
import torch

from eraser import Gram, forget_basis, forget_subspace, rayleigh_basis, rayleigh_subspace
from eraser.subspace import as_gram, regression_subspace


def planted(n=200, d=16, k=3, noise=1e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, k, dtype=torch.float64, generator=g))
    coeff = torch.randn(n, k, dtype=torch.float64, generator=g) * torch.tensor(
        [10.0, 5.0, 2.0][:k], dtype=torch.float64
    )
    X = coeff @ basis.T + noise * torch.randn(n, d, dtype=torch.float64, generator=g)
    return X, basis


def test_top_k_recovers_planted_subspace():
    X, basis = planted()
    U = forget_basis(X, k=3)
    assert U.shape == (16, 3)
    torch.testing.assert_close(U.T @ U, torch.eye(3, dtype=U.dtype), atol=1e-10, rtol=0)
    # same span: projecting the planted basis onto U loses nothing
    assert torch.linalg.norm(basis - U @ (U.T @ basis)) < 1e-3


def test_top_k_matches_svd_and_gram_input():
    X = torch.randn(50, 8, dtype=torch.float64)
    U = forget_basis(X, k=2)
    Vh = torch.linalg.svd(X, full_matrices=False).Vh[:2].T
    torch.testing.assert_close((U @ U.T), (Vh @ Vh.T), atol=1e-10, rtol=0)
    Ug = forget_basis(Gram(X.T @ X, 50), k=2)
    torch.testing.assert_close(Ug @ Ug.T, U @ U.T, atol=1e-10, rtol=0)


def test_energy_picks_smallest_k():
    X, _ = planted(noise=0.0)
    s2 = torch.linalg.svdvals(X) ** 2
    frac = (s2.cumsum(0) / s2.sum()).tolist()
    assert forget_subspace(X, energy=frac[0] - 1e-6).k == 1
    assert forget_subspace(X, energy=frac[0] + 1e-6).k == 2
    assert forget_subspace(X, energy=1.0).k == 3  # never beyond the rank


def test_tail_selects_small_nonzero_singular_values():
    X, _ = planted(noise=0.0)  # singular values about 10:5:2 (times sqrt n)
    sub = forget_subspace(X, tail_beta=0.3)
    assert sub.k == 1
    s = torch.linalg.svdvals(X)
    assert torch.linalg.norm(X @ sub.basis) == pytest.approx(float(s[2]), rel=1e-8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 20}, "exceeds the feature dimension"),
        ({"k": 4}, "exceeds the rank"),
        ({"k": 0}, "positive"),
        ({"energy": 1.5}, "energy"),
        ({"k": 1, "energy": 0.5}, "only one"),
    ],
)
def test_bad_k(kwargs, message):
    X, _ = planted(noise=0.0)
    with pytest.raises(ValueError, match=message):
        forget_basis(X, **kwargs)


def test_empty_and_nonfinite():
    with pytest.raises(ValueError, match="empty"):
        forget_basis(torch.zeros(0, 4))
    X = torch.randn(5, 4)
    X[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        forget_basis(X, k=1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        rayleigh_basis(torch.randn(5, 4), X, k=1)


def test_rayleigh_is_a_generalised_eigenbasis():
    Xf, _ = planted(n=100, d=12)
    Xr = torch.randn(300, 12, dtype=torch.float64)
    U, eta = rayleigh_basis(Xf, Xr, k=2, ridge=0.1)
    c_ff = Xf.T @ Xf / 100
    c_rr = Xr.T @ Xr / 300
    c_rr = c_rr + 0.1 * torch.trace(c_rr) / 12 * torch.eye(12, dtype=torch.float64)
    torch.testing.assert_close(U.T @ c_rr @ U, torch.eye(2, dtype=torch.float64), atol=1e-8, rtol=0)
    for i in range(2):
        lam = (U[:, i] @ c_ff @ U[:, i]) / (U[:, i] @ c_rr @ U[:, i])
        torch.testing.assert_close(c_ff @ U[:, i], lam * (c_rr @ U[:, i]), atol=1e-6, rtol=1e-6)
        assert eta[i] == pytest.approx(min(1.0, float(lam)))


def test_rayleigh_oblique_dual_is_a_projection():
    Xf, _ = planted(n=100, d=12)
    Xr = torch.randn(30, 12, dtype=torch.float64)  # rank-deficient retain set: the hard case
    sub = rayleigh_subspace(Xf, Xr, k=3, ridge=0.1)
    P = sub.dual @ sub.basis.T
    torch.testing.assert_close(P @ P, P, atol=1e-8, rtol=1e-8)


def test_rayleigh_prefers_directions_retain_data_lacks():
    d = 6
    e = torch.eye(d, dtype=torch.float64)
    # forget data spread along e0 and e1; retain data lives mostly along e0
    Xf = torch.cat([5 * e[0:1], 5 * e[1:2]]).repeat(10, 1)
    Xr = torch.cat([10 * e[0:1], 0.1 * e[1:2], e[2:3], e[3:4], e[4:5], e[5:6]]).repeat(10, 1)
    U, eta = rayleigh_basis(Xf, Xr, k=1, ridge=0.0)
    u = U[:, 0] / U[:, 0].norm()
    assert abs(float(u[1])) > 0.99
    assert eta[0] == 1.0


def test_sv_ratio_keeps_directions_above_a_fraction_of_the_top():
    X, _ = planted(noise=0.0)  # singular values in ratio 10:5:2
    assert forget_subspace(X, sv_ratio=0.6).k == 1
    assert forget_subspace(X, sv_ratio=0.45).k == 2
    assert forget_subspace(X, sv_ratio=0.1).k == 3
    with pytest.raises(ValueError, match="sv_ratio"):
        forget_subspace(X, sv_ratio=0.0)


def test_rayleigh_clip_k_lowers_k_to_the_rank():
    Xf, _ = planted(n=50, d=12, k=2, noise=0.0)
    Xr = torch.randn(100, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="exceeds the rank"):
        rayleigh_subspace(Xf, Xr, k=3)
    assert rayleigh_subspace(Xf, Xr, k=3, clip_k=True).k == 2


def test_few_rows_give_the_same_subspaces_as_the_gram():
    """With fewer rows than dimensions the rows' thin SVD replaces the d x d eigendecomposition."""
    from eraser.subspace import Gram, forget_subspace, rayleigh_subspace

    torch.manual_seed(0)
    xf, xr = torch.randn(12, 40, dtype=torch.float64), torch.randn(200, 40, dtype=torch.float64)
    with_rows = Gram(xf.T @ xf, 12, xf)
    matrix_only = Gram(xf.T @ xf, 12)
    a, b = forget_subspace(with_rows, k=4), forget_subspace(matrix_only, k=4)
    torch.testing.assert_close(a.basis @ a.basis.T, b.basis @ b.basis.T)  # same subspace
    torch.testing.assert_close(a.spectrum, b.spectrum, atol=1e-9, rtol=1e-9)
    r1, r2 = rayleigh_subspace(with_rows, xr, 3), rayleigh_subspace(matrix_only, xr, 3)
    torch.testing.assert_close(r1.eta, r2.eta)
    torch.testing.assert_close(r1.dual @ r1.basis.T, r2.dual @ r2.basis.T)  # same oblique projector


def test_rayleigh_reuses_the_retain_factorisation_and_gives_the_same_subspace():
    g = torch.Generator().manual_seed(3)
    xf, xr = torch.randn(5, 12, generator=g), torch.randn(40, 12, generator=g)
    retain = as_gram(xr)
    first = rayleigh_subspace(xf, retain, 2, ridge=0.1)
    assert len(retain.cache) == 1
    again = rayleigh_subspace(xf, retain, 2, ridge=0.1)
    assert len(retain.cache) == 1 and torch.equal(first.basis, again.basis) and torch.equal(first.dual, again.dual)
    fresh = rayleigh_subspace(xf, xr, 2, ridge=0.1)  # no cache involved
    torch.testing.assert_close(fresh.basis, first.basis)
    rayleigh_subspace(xf, retain, 2, ridge=0.5)
    assert len(retain.cache) == 2  # another ridge is another factorisation


def test_balanced_rayleigh_weighs_concepts_not_rows():
    from eraser.subspace import balanced_rayleigh_subspace, rayleigh_subspace

    g = torch.Generator().manual_seed(0)
    xf = torch.randn(6, 12, generator=g, dtype=torch.float64)
    a, b = torch.randn(4, 12, generator=g, dtype=torch.float64), torch.randn(4, 12, generator=g, dtype=torch.float64)
    # equal row counts: the balanced statistics are the pooled ones
    sub, w, damage = balanced_rayleigh_subspace(xf, [a, b], 2)
    pooled = rayleigh_subspace(xf, torch.cat([a, b]), 2)
    torch.testing.assert_close(sub.basis.abs(), pooled.basis.abs())
    assert damage.shape == (2,) and (damage >= 0).all() and torch.equal(w, torch.ones(2, dtype=torch.float64))
    # a concept given many more rows still weighs one concept's share
    many = torch.cat([b] * 10)
    torch.testing.assert_close(balanced_rayleigh_subspace(xf, [a, many], 2)[0].basis.abs(), sub.basis.abs())
    assert not torch.allclose(rayleigh_subspace(xf, torch.cat([a, many]), 2).basis.abs(), sub.basis.abs())


def test_balanced_rayleigh_shared_statistics_are_scale_free():
    from eraser.subspace import Gram, balanced_rayleigh_subspace

    g = torch.Generator().manual_seed(1)
    xf = torch.randn(5, 10, generator=g, dtype=torch.float64)
    parts = [torch.randn(3, 10, generator=g, dtype=torch.float64) for _ in range(3)]
    ctx = torch.randn(4, 10, generator=g, dtype=torch.float64)
    one = balanced_rayleigh_subspace(xf, parts, 2, shared=Gram(ctx.T @ ctx, 4))[0]
    big = balanced_rayleigh_subspace(xf, parts, 2, shared=Gram(1e6 * ctx.T @ ctx, 4))[0]  # e.g. CLIP's start token
    torch.testing.assert_close(one.basis, big.basis)
    none = balanced_rayleigh_subspace(xf, parts, 2)[0]
    assert not torch.allclose(one.basis.abs(), none.basis.abs())
    with pytest.raises(ValueError, match="at least one"):
        balanced_rayleigh_subspace(xf, [], 2)


def test_balanced_rayleigh_fragility_weighs_the_least_separable_concept_most():
    from eraser.subspace import balanced_rayleigh_subspace

    g = torch.Generator().manual_seed(2)
    xf = torch.randn(6, 12, generator=g, dtype=torch.float64)
    a = torch.randn(4, 12, generator=g, dtype=torch.float64)
    b = a + 0.05 * torch.randn(4, 12, generator=g, dtype=torch.float64)  # a and b are hard to tell apart
    c = 5 * torch.eye(12, dtype=torch.float64)[:4]  # c is easy: its own directions
    _, w, damage_plain = balanced_rayleigh_subspace(xf, [a, b, c], 2)
    assert torch.equal(w, torch.ones(3, dtype=torch.float64))
    _, w, damage = balanced_rayleigh_subspace(xf, [a, b, c], 2, fragility=1.0)
    assert w.mean().item() == pytest.approx(1.0) and w[2] < min(w[0], w[1])
    # the concepts weighed up lose less of their features than before
    assert damage[:2].sum() < damage_plain[:2].sum()
    with pytest.raises(ValueError, match="contrast and fragility"):
        balanced_rayleigh_subspace(xf, [a, b, c], 2, fragility=-1.0)


def test_balanced_rayleigh_contrast_protects_what_tells_concepts_apart():
    from eraser.subspace import balanced_rayleigh_subspace

    g = torch.Generator().manual_seed(3)
    shared = torch.randn(12, generator=g, dtype=torch.float64)
    apart = torch.zeros(12, dtype=torch.float64)
    apart[0] = 1.0  # the one direction in which the two retain concepts differ
    a = 10 * shared + apart + 0.01 * torch.randn(4, 12, generator=g, dtype=torch.float64)
    b = 10 * shared - apart + 0.01 * torch.randn(4, 12, generator=g, dtype=torch.float64)
    xf = torch.randn(6, 12, generator=g, dtype=torch.float64) + 3 * apart
    plain = balanced_rayleigh_subspace(xf, [a, b], 1)[0]
    kept = balanced_rayleigh_subspace(xf, [a, b], 1, contrast=1.0)[0]
    # the edit's input direction loads less on the contrast direction once it is protected
    assert abs(float(kept.basis[0, 0]) / float(kept.basis.norm())) < abs(
        float(plain.basis[0, 0]) / float(plain.basis.norm())
    )


def _least_squares_map(f, r, v, weight, lam):
    """argmin_M E_f||M f - (I - V V^T) f||^2 + weight E_r||M r - r||^2 + lam ||M - I||_F^2, by lstsq."""
    d = f.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    x = torch.cat([f / f.shape[0] ** 0.5, r * (weight / r.shape[0]) ** 0.5, eye * lam**0.5])
    y = torch.cat([(f - f @ v @ v.T) / f.shape[0] ** 0.5, r * (weight / r.shape[0]) ** 0.5, eye * lam**0.5])
    return torch.linalg.lstsq(x, y).solution.T  # rows: M x^T = y^T


def test_regression_subspace_is_the_least_squares_edit():
    from eraser.subspace import regression_subspace

    g = torch.Generator().manual_seed(0)
    d, k, w, ridge = 12, 3, 2.0, 0.01
    f = torch.randn(40, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    r = torch.randn(60, d, generator=g, dtype=torch.float64)
    sub = regression_subspace(Gram(f.T @ f, 40), Gram(r.T @ r, 60), k, retain_weight=w, ridge=ridge)
    v = sub.dual
    torch.testing.assert_close(v.T @ v, torch.eye(k, dtype=torch.float64))
    c_f = f.T @ f / 40
    top = torch.linalg.eigh(c_f).eigenvectors[:, -k:]  # V: the forget features' top-k directions
    torch.testing.assert_close((v @ v.T), top @ top.T, atol=1e-8, rtol=0)
    lam = ridge * float(torch.trace(c_f + w * r.T @ r / 60)) / d
    expected = _least_squares_map(f, r, v, w, lam)
    got = torch.eye(d, dtype=torch.float64) - sub.dual @ torch.diag(sub.eta) @ sub.basis.T
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-6)


def test_regression_subspace_removes_forget_and_keeps_orthogonal_retain():
    from eraser.subspace import regression_subspace

    g = torch.Generator().manual_seed(1)
    f = torch.zeros(30, 8, dtype=torch.float64)
    f[:, :2] = torch.randn(30, 2, generator=g, dtype=torch.float64)
    r = torch.zeros(30, 8, dtype=torch.float64)
    r[:, 4:] = torch.randn(30, 4, generator=g, dtype=torch.float64)
    sub = regression_subspace(f, r, 2, retain_weight=1.0, ridge=1e-9)
    m = torch.eye(8, dtype=torch.float64) - sub.dual @ torch.diag(sub.eta) @ sub.basis.T
    assert (f @ m.T).abs().max() < 1e-6  # the forget features' span is removed
    torch.testing.assert_close(r @ m.T, r)  # what lies elsewhere is untouched
    with pytest.raises(ValueError, match="retain_weight"):
        regression_subspace(f, r, 2, retain_weight=0.0)
    with pytest.raises(ValueError, match="k="):
        regression_subspace(f, r, 3)  # the forget features have rank 2


@pytest.mark.parametrize("with_rows", [True, False])
def test_regression_edit_on_zero_padded_features_equals_the_full_solve(with_rows):
    # SD3 pads CLIP features with zeros to T5's width: the fit solves on the occupied coordinates
    # only, and must give the edit the full d x d solve gives.
    g = torch.Generator().manual_seed(0)
    d, used = 24, 10
    xf = torch.zeros(6 if with_rows else 40, d, dtype=torch.float64)
    xr = torch.zeros(50, d, dtype=torch.float64)
    xf[:, :used] = torch.randn(xf.shape[0], used, generator=g, dtype=torch.float64)
    xr[:, :used] = torch.randn(50, used, generator=g, dtype=torch.float64)
    sub = regression_subspace(xf, xr, 3, retain_weight=0.5, ridge=0.1)
    c_ff, c_rr = xf.T @ xf / xf.shape[0], xr.T @ xr / xr.shape[0]
    a = c_ff + 0.5 * c_rr
    a = a + (0.1 + 1e-9) * float(torch.trace(a)) / d * torch.eye(d, dtype=torch.float64)
    v = torch.linalg.eigh(c_ff).eigenvectors.flip(-1)[:, :3]
    want = v @ torch.linalg.solve(a, c_ff @ v).T
    torch.testing.assert_close(sub.dual @ sub.basis.T, want, atol=1e-10, rtol=1e-8)
    assert sub.basis[used:].abs().max() == 0 and sub.dual[used:].abs().max() == 0
    assert sub.spectrum.shape == (d,)
