"""The default rank rule of Unlink (see docs/defaults.md)."""

import torch

from eraser import Gram, UnlinkConfig
from eraser.methods.unlink import DEFAULT_RAYLEIGH_K, DEFAULT_SV_RATIO, fit_subspace


def spectrum_gram(svals, d=32):
    U, _ = torch.linalg.qr(torch.randn(d, len(svals), dtype=torch.float64))
    X = U @ torch.diag(torch.tensor(svals, dtype=torch.float64))
    return Gram(X @ X.T, 100)


def test_retain_free_default_follows_the_spectrum():
    dominant = spectrum_gram([10.0, 2.0, 1.5, 1.0])  # one direction dominates: k=1
    spread = spectrum_gram([10.0, 4.0, 3.5, 2.0])  # several strong directions: k=3
    assert DEFAULT_SV_RATIO == 0.3
    assert fit_subspace(dominant, None, UnlinkConfig()).k == 1
    assert fit_subspace(spread, None, UnlinkConfig()).k == 3


def test_default_with_retain_is_oblique_rayleigh_k3_clipped_to_rank():
    retain = Gram(torch.eye(32, dtype=torch.float64) * 5, 200)
    sub = fit_subspace(spectrum_gram([10.0, 4.0, 3.5, 2.0, 1.0]), retain, UnlinkConfig())
    assert sub.k == DEFAULT_RAYLEIGH_K == 3 and sub.dual is not None
    assert fit_subspace(spectrum_gram([10.0, 4.0]), retain, UnlinkConfig()).k == 2
