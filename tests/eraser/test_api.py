import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eraser


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def unchanged(model, ref):
    return all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_registry_lists_unlink():
    assert "unlink" in eraser.list_methods()
    spec = eraser.get_method("unlink")
    assert spec.training_free and spec.config_cls is eraser.UnlinkConfig
    with pytest.raises(ValueError, match="unknown method"):
        eraser.get_method("nope")


@pytest.mark.parametrize("wrap", ["tensor", "dataset", "loader", "loader-dict"])
def test_forget_data_forms_give_the_same_patch(tiny, images, wrap):
    labels = torch.zeros(len(images), dtype=torch.long)
    data = {
        "tensor": images,
        "dataset": TensorDataset(images, labels),
        "loader": DataLoader(TensorDataset(images, labels), batch_size=5),
        "loader-dict": DataLoader([{"pixel_values": x, "label": 0} for x in images], batch_size=7),
    }[wrap]
    ref = type(tiny)()
    ref.load_state_dict(tiny.state_dict())
    expected = eraser.erase_classes(ref, images, k=2)
    patch = eraser.erase_classes(tiny, data, k=2)
    P = lambda p: p.edits["head"].basis[0] @ p.edits["head"].basis[0].T  # noqa: E731
    torch.testing.assert_close(
        P(patch), P(expected), atol=1e-6, rtol=0
    )  # float32 forwards differ slightly by batch size


def test_erased_inputs_no_longer_reach_the_head(tiny, images):
    feats = {}
    tiny.head.register_forward_hook(lambda m, i, o: feats.__setitem__("x", i[0]))
    tiny(images)
    before = tiny.head(feats["x"]).detach() - tiny.head.bias.detach()
    eraser.erase_classes(tiny, images, energy=1.0, variant="svd")  # the whole span of the forget features, every row
    after = tiny.head(feats["x"]).detach() - tiny.head.bias.detach()
    assert after.norm() / before.norm() < 1e-5


def test_strength_two_reflects_the_subspace_and_reverts(tiny, images):
    W = tiny.head.weight.detach().clone()
    patch = eraser.erase_classes(tiny, images, k=2, strength=2.0, variant="svd")
    U = patch.edits["head"].basis[0].to(W.dtype)
    reflected = W @ (torch.eye(W.shape[1]) - 2 * U @ U.T)
    torch.testing.assert_close(tiny.head.weight.detach(), reflected, atol=1e-5, rtol=0)
    # a reflection keeps the norm of every row's component along the subspace, with its sign flipped
    torch.testing.assert_close(tiny.head.weight.detach() @ U, -(W @ U), atol=1e-5, rtol=0)
    assert patch.metadata["config"]["strength"] == 2.0
    patch.revert(tiny)  # the head is over 5% of this tiny model: revert adds the factors back
    torch.testing.assert_close(tiny.head.weight.detach(), W, atol=1e-6, rtol=0)


def test_retain_data_selects_the_rayleigh_variant(tiny, images):
    patch = eraser.erase_classes(tiny, images, retain_data=torch.randn(40, 3, 8, 8), k=1)
    assert patch.metadata["variant"] == "rayleigh"
    assert patch.edits["head"].dual is not None
    with pytest.raises(ValueError, match="needs retain data"):
        eraser.erase_classes(tiny, images, variant="rayleigh")


@pytest.mark.parametrize("labelled", [False, True])
def test_retain_samples_caps_the_retain_capture_at_a_seeded_draw(tiny, images, labelled):
    from eraser.data import subsample

    retain = torch.randn(40, 3, 8, 8)
    data = (retain, torch.zeros(40, dtype=torch.long)) if labelled else retain
    capped = eraser.erase_classes(tiny, images, retain_data=data, k=1, retain_samples=10, seed=3)
    capped.revert(tiny)
    drawn = subsample(data, 10, 3)
    direct = eraser.erase_classes(tiny, images, retain_data=drawn, k=1)
    direct.revert(tiny)
    whole = eraser.erase_classes(tiny, images, retain_data=data, k=1)
    torch.testing.assert_close(capped.edits["head"].dual, direct.edits["head"].dual)
    assert not torch.allclose(capped.edits["head"].dual, whole.edits["head"].dual)
    assert capped.metadata["config"]["retain_samples"] == 10


def test_layer_patterns_conv_and_regex(tiny, images):
    patch = eraser.erase_classes(tiny, images, layers=["conv", "body"], k=2)
    assert set(patch.layers) == {"conv", "body"}
    assert patch.edits["conv"].basis.shape == (1, 27, 2)
    patch.revert(tiny)
    patch = eraser.erase_classes(tiny, images, layers=r"(body|head)", k=1)
    assert set(patch.layers) == {"body", "head"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_models(tiny, images, dtype):
    model = tiny.to(dtype)
    before = model.head.weight.detach().clone()
    patch = eraser.erase_classes(model, images, k=2, variant="svd")  # float32 images are cast to the model dtype
    assert model.head.weight.dtype == dtype
    U = patch.edits["head"].basis[0]
    assert (model.head.weight.double() @ U).norm() / (before.double() @ U).norm() < 2e-2
    patch.revert(model)
    assert (model.head.weight.double() - before.double()).abs().max() < 1e-2


def test_device_argument_keeps_model_where_it_was(tiny, images):
    patch = eraser.erase_classes(tiny, images, k=1, device="cpu")
    assert next(tiny.parameters()).device.type == "cpu" and patch.layers == ["head"]


def test_mha_self_attention_layers():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, batch_first=True)
    layer.eval()
    x = torch.randn(6, 5, 16)
    patch = eraser.erase_classes(layer, x, layers=["self_attn"], k=3)
    e = patch.edits["self_attn"]
    assert e.kind == "mha" and e.shape == (48, 16)
    U = e.basis[0]
    assert (layer.self_attn.in_proj_weight.double() @ U).norm() < 1e-5


def test_timm_style_head_preset():
    class TimmLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = nn.Linear(4, 3)
            self.aux = nn.Linear(3, 3)  # registered last, but not the classifier

        def get_classifier(self):
            return self.classifier

        def forward(self, x):
            return self.aux(self.classifier(x))

    patch = eraser.erase_classes(TimmLike(), torch.randn(5, 4), k=1)
    assert patch.layers == ["classifier"]


# -- bad input: a clear error, and the model exactly as it was ---------------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"forget_data": torch.zeros(0, 3, 8, 8)}, ValueError, "empty"),
        ({"k": 17}, ValueError, "exceeds the feature dimension"),
        ({"k": 5, "forget_data": torch.randn(3, 3, 8, 8)}, ValueError, "exceeds the rank"),
        ({"layers": ["nope"]}, ValueError, "matches no module"),
        ({"layers": r"ba.*"}, ValueError, "matches no module"),
        ({"layers": ["bogus"], "model": nn.Sequential(nn.ReLU())}, ValueError, "matches no module"),
        ({"method": "nope"}, ValueError, "unknown method"),
        ({"ridge": 0.1, "bogus_option": 1}, TypeError, "unknown options"),
        ({"variant": "weird"}, ValueError, "variant must be"),
        ({"energy": 0.9, "k": 2}, ValueError, "only one"),
        ({"strength": 0.0}, ValueError, "strength must be"),
        ({"strength": 2.5}, ValueError, "strength must be"),
        ({"retain_samples": 0}, ValueError, "retain_samples must be"),
    ],
)
def test_bad_input_changes_nothing(tiny, images, kwargs, error, message):
    model = kwargs.pop("model", tiny)
    data = kwargs.pop("forget_data", images)
    before = weights(model)
    with pytest.raises(error, match=message):
        eraser.erase_classes(model, data, **kwargs)
    assert unchanged(model, before)


def test_retain_data_equal_to_the_forget_data_is_refused(tiny, images):
    before = weights(tiny)
    for retain in (images, images.clone()):
        with pytest.raises(ValueError, match="retain data is the same as the forget data.*different samples"):
            eraser.erase_classes(tiny, images, retain_data=retain)
    assert unchanged(tiny, before)
    # different samples of the same shape, or a part of the forget data, are not the same data
    eraser.erase_classes(tiny, images, retain_data=images.flip(0)[:-1], k=1).revert(tiny)
    eraser.erase_classes(tiny, images, retain_data=images + 1, k=1).revert(tiny)


def test_model_without_supported_layers():
    model = nn.Sequential(nn.ReLU(), nn.Flatten())
    with pytest.raises(ValueError, match="no supported layer"):
        eraser.erase_classes(model, torch.randn(2, 3))
    with pytest.raises(ValueError, match="unsupported kinds"):
        eraser.erase_classes(nn.Sequential(nn.Conv1d(2, 2, 1)), torch.randn(2, 2, 4), layers=r"0")


def test_nan_inputs_and_weights_change_nothing(tiny, images):
    before = weights(tiny)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        eraser.erase_classes(tiny, bad)
    assert unchanged(tiny, before)
    with torch.no_grad():
        tiny.head.weight[0, 0] = float("inf")
    before = weights(tiny)
    with pytest.raises(ValueError, match="NaN or Inf"):
        eraser.erase_classes(tiny, images)
    assert unchanged(tiny, before)


def test_functionally_called_layer_is_reported():
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True).eval()
    before = weights(layer)
    with pytest.raises(ValueError, match="received no input"):
        eraser.erase_classes(layer, torch.randn(2, 3, 8), layers=["self_attn.out_proj"])
    assert unchanged(layer, before)


def test_training_mode_is_restored(tiny, images):
    tiny.train()
    eraser.erase_classes(tiny, images)
    assert tiny.training


def test_svd_variant_ignores_retain_data(tiny, images):
    patch = eraser.erase_classes(tiny, images, retain_data=torch.randn(8, 3, 8, 8), variant="svd", k=1)
    assert patch.metadata["variant"] == "svd" and patch.edits["head"].dual is None


def test_config_object_and_keyword_overrides(tiny, images):
    cfg = eraser.UnlinkConfig(layers=["body"], k=2)
    patch = eraser.erase_classes(tiny, images, config=cfg)
    assert patch.layers == ["body"] and patch.edits["body"].rank == 2
    patch.revert(tiny)
    patch = eraser.erase_classes(tiny, images, config=cfg, k=1, layers="head")
    assert patch.layers == ["head"] and patch.metadata["config"]["k"] == 1
