import pytest
import torch

from eraser import forget_basis, project_out
from eraser.projection import apply_factor, edit_factor


def setup(d=32, d_out=10, k=3, dtype=torch.float32):
    W = torch.randn(d_out, d).to(dtype)
    U, _ = torch.linalg.qr(torch.randn(d, k, dtype=torch.float64))
    return W, U


def test_forget_directions_are_removed_and_the_rest_kept():
    W, U = setup()
    W2 = project_out(W, U)
    assert W2.dtype == W.dtype
    for i in range(U.shape[1]):
        u = U[:, i].float()
        assert (W2 @ u).norm() / (W @ u).norm() < 1e-5
    x = torch.randn(100, 32, dtype=torch.float64)
    x = (x - x @ U @ U.T).float()  # orthogonal to U
    rel = (x @ W2.T - x @ W.T).norm() / (x @ W.T).norm()
    assert rel < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_weights(dtype):
    W, U = setup(dtype=dtype)
    W2 = project_out(W, U)
    assert W2.dtype == dtype
    ref = project_out(W.double(), U)
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    assert (W2.double() - ref).abs().max() < tol * W.double().abs().max()
    # forget directions are gone up to the dtype's rounding of the result
    assert (W2.double() @ U).norm() / (W.double() @ U).norm() < tol


def test_eta_scales_removal():
    W, U = setup(k=1)
    W2 = project_out(W, U, eta=torch.tensor([0.5], dtype=torch.float64))
    u = U[:, 0].float()
    torch.testing.assert_close(W2 @ u, 0.5 * (W @ u), rtol=1e-5, atol=1e-6)


def test_undo_factor_reverts_exactly():
    W, U = setup()
    A = edit_factor(W, U)
    W2 = apply_factor(W, A, U)
    W3 = apply_factor(W2, A, U, sign=+1.0)
    assert (W3 - W).norm() / W.norm() < 1e-6


def test_dimension_mismatch_and_nonfinite():
    W, U = setup()
    with pytest.raises(ValueError, match="dimension"):
        project_out(W[:, :-1], U)
    W[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        project_out(W, U)


def test_basis_from_features_then_projection():
    d = 20
    U, _ = torch.linalg.qr(torch.randn(d, 2, dtype=torch.float64))
    X = torch.randn(64, 2, dtype=torch.float64) @ U.T
    Ub = forget_basis(X, k=2)
    W = torch.randn(5, d)
    assert (project_out(W, Ub).double() @ X.T).norm() / (W.double() @ X.T).norm() < 1e-6
