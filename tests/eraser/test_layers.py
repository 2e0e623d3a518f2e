import pytest
import torch
from torch import nn

from eraser.capture import FeatureRows, capture_features
from eraser.layers import layer_kind
from eraser.projection import project_out

CONVS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), dilation=2, padding=(2, 1)),
    dict(in_channels=4, out_channels=8, kernel_size=3, groups=2, padding=1),
    dict(in_channels=4, out_channels=4, kernel_size=3, groups=4, padding="same"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="circular", bias=False),
]


def conv_via_features(conv, feats, weight_matrix, out_hw, n):
    """The unfold formulation: output = W_mat @ patches (+ bias)."""
    g, m, _ = feats.shape
    out = torch.einsum("gmd,god->gmo", feats, weight_matrix)  # (G, n*L, out/G)
    out = out.permute(1, 0, 2).reshape(n, out_hw[0] * out_hw[1], -1).transpose(1, 2)
    out = out.reshape(n, -1, *out_hw)
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, 1, 1)
    return out


@pytest.mark.parametrize("spec", CONVS)
def test_conv2d_features_match_unfold_formulation(spec):
    conv = nn.Conv2d(**spec).double()
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    kind = layer_kind(conv)
    with capture_features({"c": conv}, FeatureRows) as acc:
        y = conv(x)
    feats = acc["c"].compute()
    assert feats.shape[0] == conv.groups
    torch.testing.assert_close(conv_via_features(conv, feats, kind.as_matrix(conv), y.shape[-2:], 2), y)


@pytest.mark.parametrize("spec", CONVS)
def test_conv2d_projection_equals_unfold_formulation(spec):
    conv = nn.Conv2d(**spec).double()
    kind = layer_kind(conv)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    with capture_features({"c": conv}, FeatureRows) as acc:
        conv(x)
    feats = acc["c"].compute()
    D = feats.shape[-1]
    U = torch.linalg.qr(torch.randn(conv.groups, D, 2, dtype=torch.float64))[0]
    new = torch.stack([project_out(w, U[i]) for i, w in enumerate(kind.as_matrix(conv).detach())])
    with torch.no_grad():
        conv.weight.copy_(kind.from_matrix(conv, new))
    y = conv(x)
    torch.testing.assert_close(conv_via_features(conv, feats, new, y.shape[-2:], 2), y)
    # forget directions no longer reach the output
    for i in range(conv.groups):
        assert (new[i] @ U[i]).norm() < 1e-10


def test_linear_and_mha_features():
    lin = nn.Linear(5, 3)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 7, 5)
    s = torch.randn(2, 4, 8)
    with capture_features({"lin": lin, "mha": mha}, FeatureRows) as acc:
        lin(x)
        mha(s, s, s, need_weights=False)
    assert acc["lin"].compute().shape == (1, 14, 5)
    assert acc["mha"].compute().shape == (1, 8, 8)
    assert layer_kind(mha).weight(mha) is mha.in_proj_weight


def test_mha_cross_attention_is_refused():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    q, kv = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    with pytest.raises(NotImplementedError, match="self-attention"):
        with capture_features({"m": mha}):
            mha(q, kv, kv)


def test_hooks_are_removed_even_on_error():
    lin = nn.Linear(3, 2)
    with pytest.raises(RuntimeError):
        with capture_features({"l": lin}):
            raise RuntimeError("boom")
    assert not lin._forward_pre_hooks


def test_unsupported_kind():
    assert layer_kind(nn.ReLU()) is None
    assert layer_kind(nn.Conv1d(2, 2, 3)) is None
