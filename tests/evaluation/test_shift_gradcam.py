"""Evaluation under data shift (Gaussian, elastic, PGD; shifted UA/RA/TA, PR) and Grad-CAM maps/grids."""

import numpy as np
import pytest
import torch
from conftest import TinyNet, ToyCNN
from PIL import Image
from torch import nn

from evaluation.gradcam import MIN_CELL, PAD, TITLE_HEIGHT, grad_cam, save_gradcam_grid
from evaluation.shift import (
    DEFAULT_SHIFTS,
    Shift,
    make_shifted_splits,
    parse_shift,
    pr_metric,
    shift_inputs,
    shifted_metrics,
)

MEAN, STD = (0.5,), (0.25,)


def pixel_data(n_per_class: int, seed: int, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable 1x8x8 images in pixel space [0, 1]: a fixed pattern per class plus noise."""
    g = torch.Generator().manual_seed(99)
    patterns = torch.randn(classes, 1, 8, 8, generator=g)
    g.manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return (0.5 + 0.04 * patterns[y] + 0.02 * torch.randn(len(y), 1, 8, 8, generator=g)).clamp(0, 1), y


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN[0]) / STD[0]


@pytest.fixture(scope="module")
def trained() -> ToyCNN:
    """A ToyCNN trained on normalised ``pixel_data`` (accurate on held-out data)."""
    torch.manual_seed(0)
    x, y = pixel_data(40, seed=1)
    model = ToyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(normalise(x)), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model


class Constant(nn.Module):
    """Always predicts ``cls`` (zero weights, a bias on one class)."""

    def __init__(self, cls: int = 1, classes: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(64, classes)
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            self.fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(cls), classes).float() * 5)

    def forward(self, x):
        return self.fc(x.flatten(1))


# ---- parsing ----------------------------------------------------------------------------------


def test_parse_shift_params_and_labels():
    assert parse_shift("gauss:0.08") == Shift("gauss", (0.08,))
    assert parse_shift("elastic:weak").params == (20.0, 4.0)
    assert parse_shift("elastic:strong").params == (34.0, 4.0)
    assert parse_shift("elastic:10,3") == Shift("elastic", (10.0, 3.0))
    pgd = parse_shift("pgd:8/255")
    assert pgd.kind == "pgd" and pgd.params[0] == pytest.approx(8 / 255) and pgd.params[1] == 7
    assert parse_shift("pgd:0.03,10").params == (0.03, 10.0)
    for text in DEFAULT_SHIFTS + ["elastic:10,3", "pgd:4/255,20"]:
        assert parse_shift(text).label == text
        assert parse_shift(parse_shift(text).label) == parse_shift(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "gauss",
        "gauss:-1",
        "gauss:abc",
        "blur:3",
        "elastic:medium",
        "elastic:1,0",
        "elastic:1,2,3",
        "pgd:8/255,0",
        "pgd:8/0",
        "pgd:eps",
        "pgd:8/255,7,1",
    ],
)
def test_bad_shift_strings_raise(text):
    with pytest.raises(ValueError, match="accepted forms"):
        parse_shift(text)


# ---- shifts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("normalised", [False, True])
def test_gaussian_noise_statistics(normalised):
    x = 0.35 + 0.3 * torch.rand(64, 3, 8, 8)  # far from 0 and 1: no clamping at std 0.05
    mean, std = ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)) if normalised else (None, None)
    inp = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1) if normalised else x
    out = shift_inputs(inp, "gauss:0.05", mean=mean, std=std, seed=3)
    assert out.shape == inp.shape and out.dtype == inp.dtype
    pix = out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1) if normalised else out
    diff = pix - x
    assert diff.std().item() == pytest.approx(0.05, rel=0.03)
    assert abs(diff.mean().item()) < 0.002
    assert torch.equal(out, shift_inputs(inp, "gauss:0.05", mean=mean, std=std, seed=3, batch_size=7))
    assert not torch.equal(out, shift_inputs(inp, "gauss:0.05", mean=mean, std=std, seed=4))


def test_gaussian_noise_is_clamped_to_pixel_range():
    out = shift_inputs(torch.rand(16, 1, 8, 8), "gauss:0.5", seed=0)
    assert out.min() >= 0 and out.max() <= 1 and (out == 0).any() and (out == 1).any()


def test_elastic_deforms_within_range_and_is_seeded():
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    x = torch.stack([((xs // 4 + ys // 4) % 2), torch.sin(xs / 3) * 0.5 + 0.5]).float()[:, None]  # smooth-ish images
    weak = shift_inputs(x, "elastic:weak", seed=0)
    strong = shift_inputs(x, "elastic:strong", seed=0)
    assert weak.shape == x.shape and weak.min() >= 0 and weak.max() <= 1
    assert (weak - x).abs().mean() > 0.02
    assert (strong - x).abs().mean() > (weak - x).abs().mean()
    assert torch.equal(weak, shift_inputs(x, "elastic:weak", seed=0, batch_size=1))
    assert not torch.equal(weak, shift_inputs(x, "elastic:weak", seed=1))
    small = shift_inputs(torch.rand(3, 1, 8, 8), "elastic:strong", mean=MEAN, std=STD)  # kernel wider than the image
    assert small.shape == (3, 1, 8, 8)


@pytest.mark.parametrize("normalised", [False, True])
def test_pgd_stays_in_the_eps_ball_and_lowers_accuracy(trained, normalised):
    x, y = pixel_data(20, seed=2)
    model = trained if normalised else nn.Sequential(_Normalise(), trained)
    inp, mean, std = (normalise(x), MEAN, STD) if normalised else (x, None, None)
    model.train()
    trained.conv.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        adv = shift_inputs(inp, "pgd:8/255", labels=y, attack_model=model, mean=mean, std=std, seed=0)
    finally:
        flags = [p.requires_grad for p in trained.parameters()]
        trained.conv.weight.requires_grad_(True)
    pix = adv * STD[0] + MEAN[0] if normalised else adv
    assert (pix - x).abs().max() <= 8 / 255 + 1e-6 and pix.min() >= 0 and pix.max() <= 1
    assert model.training and flags[0] is False and all(flags[1:])  # mode and flags as they were
    assert all(p.grad is None for p in trained.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN stats untouched: eval mode
    model.eval()
    with torch.no_grad():
        clean = (model(inp).argmax(1) == y).float().mean().item()
        attacked = (model(adv).argmax(1) == y).float().mean().item()
    assert clean > 0.9 and attacked < clean - 0.3
    assert torch.equal(
        adv, shift_inputs(inp, "pgd:8/255", labels=y, attack_model=model, mean=mean, std=std, seed=0, batch_size=13)
    )


class _Normalise(nn.Module):
    def forward(self, x):
        return normalise(x)


def test_pgd_needs_labels_and_model(trained):
    x, y = pixel_data(2, seed=2)
    with pytest.raises(ValueError, match="labels= and attack_model="):
        shift_inputs(x, "pgd:8/255", attack_model=trained)
    with pytest.raises(ValueError, match="labels= and attack_model="):
        shift_inputs(x, "pgd:8/255", labels=y)


# ---- shifted metrics ----------------------------------------------------------------------------


def _splits():
    x, y = pixel_data(10, seed=5)
    return {
        "forget": (x[y == 0], y[y == 0]),
        "retain": (x[(y == 1) | (y == 2)], y[(y == 1) | (y == 2)]),
        "test": (x[y == 1], y[y == 1]),
    }


def test_shifted_metrics_of_a_constant_model():
    shifts = ["gauss:0.08", "elastic:weak", "pgd:8/255"]
    row = shifted_metrics(Constant(cls=1), _splits(), shifts)
    labels = [parse_shift(s).label for s in shifts]
    assert set(row) == {f"{k}@{s}" for k in ("UA", "RA", "TA") for s in labels}
    for s in labels:
        assert (row[f"UA@{s}"], row[f"RA@{s}"], row[f"TA@{s}"]) == (100.0, 50.0, 100.0)


def test_shifted_metrics_share_one_shifted_set(trained):
    splits = {k: (normalise(x), y) for k, (x, y) in _splits().items()}
    shifted = make_shifted_splits(
        splits, ["gauss:0.2", "pgd:8/255"], attack_model=trained, mean=MEAN, std=STD, max_samples=6
    )
    assert set(shifted) == {"gauss:0.2", "pgd:8/255"}
    assert all(len(x) == len(y) == min(6, len(splits[k][0])) for sets in shifted.values() for k, (x, y) in sets.items())
    row = shifted_metrics(trained, shifted=shifted)
    assert row == shifted_metrics(trained, splits, ["gauss:0.2", "pgd:8/255"], mean=MEAN, std=STD, max_samples=6)
    assert all(0 <= v <= 100 for v in row.values()) and len(row) == 6
    other = shifted_metrics(Constant(cls=1), shifted=shifted)  # a second model on the same shifted data
    assert other["TA@pgd:8/255"] == 100.0
    with pytest.raises(ValueError, match="either"):
        shifted_metrics(trained, splits, ["gauss:0.2"], shifted=shifted)


def test_pr_metric():
    x, _ = pixel_data(5, seed=6)
    assert pr_metric(Constant(cls=1), (x, torch.zeros(len(x), dtype=torch.long))) == 100.0
    assert pr_metric(Constant(cls=1), (x, torch.ones(len(x), dtype=torch.long))) == 0.0


# ---- Grad-CAM -----------------------------------------------------------------------------------


class TwoConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


class Wrapper(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


class SignDetector(nn.Module):
    """Class 0 = evidence of positive pixels (channel 0), class 1 = negative pixels (channel 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, x):
        return torch.relu(self.conv(x)).sum((2, 3))


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def test_grad_cam_shape_range_default_layer_and_cleanup():
    model = TwoConv().train()
    x = torch.randn(5, 1, 8, 8)
    maps = grad_cam(model, x)
    assert maps.shape == (5, 8, 8) and maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() in (0.0, 1.0) for m in maps)
    assert torch.equal(maps, grad_cam(model, x, layer="conv2")) and not torch.equal(
        maps, grad_cam(model, x, layer="conv1")
    )
    assert torch.equal(maps, grad_cam(Wrapper(model), x))  # default finds model.conv2 through the wrapper
    assert torch.equal(maps, grad_cam(Wrapper(model), x, layer="model.conv2"))
    assert model.training and _no_hooks(model) and all(p.grad is None for p in model.parameters())
    assert grad_cam(model, x, target=torch.zeros(5, dtype=torch.long)).shape == (5, 8, 8)


def test_grad_cam_with_an_inplace_relu_after_the_conv():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    maps = grad_cam(model, torch.randn(3, 1, 8, 8), layer="0")
    assert maps.shape == (3, 8, 8) and maps.min() >= 0 and maps.max() <= 1 and _no_hooks(model)


def test_grad_cam_errors_leave_no_hooks():
    model = TwoConv()
    with pytest.raises(ValueError, match="conv1"):
        grad_cam(model, torch.randn(2, 1, 8, 8), layer="nope")
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        grad_cam(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), torch.randn(2, 1, 8, 8))
    with pytest.raises(RuntimeError):
        grad_cam(model, torch.randn(2, 1, 8, 8), target=torch.tensor([7, 7]))  # class out of range
    assert _no_hooks(model)


def test_grad_cam_concentrates_on_the_evidence():
    x = torch.rand(4, 1, 8, 8) + 0.5
    x[..., 4:] *= -1  # left half positive, right half negative
    left = grad_cam(SignDetector(), x, target=torch.zeros(4, dtype=torch.long))
    right = grad_cam(SignDetector(), x, target=torch.ones(4, dtype=torch.long))
    assert (left[..., :4].sum() / left.sum()) > 0.9 and (right[..., 4:].sum() / right.sum()) > 0.9


def test_save_gradcam_grid(tmp_path, trained):
    x, y = pixel_data(1, seed=7)
    models = {"original": trained, "unlearned": ToyCNN()}
    path = save_gradcam_grid(models, normalise(x[:3]), y[:3], tmp_path / "out" / "grid.png", mean=MEAN, std=STD)
    cell = MIN_CELL  # 8 px images are upscaled 12x
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == (3 * cell + 4 * PAD, TITLE_HEIGHT + 3 * cell + 4 * PAD)
        pixels = np.asarray(im).astype(int)
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary file left
    for c in range(3):
        x0 = PAD + c * (cell + PAD)
        assert (pixels[:TITLE_HEIGHT, x0 : x0 + cell] < 128).any()  # column title: image, original, unlearned
        for r in range(3):
            # every cell's corner tag (y=... / pred ...) is a pure black box; the grey images and
            # their heat-map overlays never are
            y0 = TITLE_HEIGHT + PAD + r * (cell + PAD)
            assert (pixels[y0 : y0 + 18, x0 : x0 + 50] == 0).all(-1).sum() > 50
            assert not (pixels[y0 + 30 : y0 + cell, x0 : x0 + cell] == 0).all(-1).any()
    rgb = {"a": TinyNet(), "b": TinyNet()}  # 3-channel 32 px images are upscaled 3x
    plain = save_gradcam_grid(rgb, torch.rand(2, 3, 32, 32), None, tmp_path / "rgb.png", titles=False, layer="conv")
    with Image.open(plain) as im:
        assert im.size == (3 * 96 + 4 * PAD, 2 * 96 + 3 * PAD)
        corners = [np.asarray(im)[PAD : PAD + 18, x0 : x0 + 50] for x0 in (PAD, PAD + 96 + PAD)]
    assert not (corners[0] == 0).all(-1).any()  # no true labels given: the image column is untagged
    assert (corners[1] == 0).all(-1).sum() > 50  # the models' predictions are
