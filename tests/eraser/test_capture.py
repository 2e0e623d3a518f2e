"""Direct tests of eraser.capture: hooks, Gram accumulation, row masks and collect_* errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from eraser.capture import FeatureRows, GramAccumulator, capture_features, collect_features, collect_grams


def gram(rows: Tensor) -> Tensor:
    """``X^T X`` of (m, D) rows, in float64."""
    r = rows.double()
    return r.T @ r


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_grams_of_a_sequential_equal_xtx_by_hand() -> None:
    """Each target's Gram is X^T X of the inputs that layer actually sees."""
    model = mlp()
    x = torch.randn(10, 5)
    grams = collect_grams(model, {"0": model[0], "2": model[2]}, x)
    hidden = torch.relu(model[0](x)).detach()
    assert [len(g) for g in grams.values()] == [1, 1]
    first, second = grams["0"][0], grams["2"][0]
    assert first.matrix.dtype == torch.float64 and first.n == 10 and second.n == 10
    close(first.matrix, gram(x))
    close(second.matrix, gram(hidden))


def test_conv_gram_is_the_gram_of_unfolded_patches() -> None:
    conv = nn.Conv2d(2, 3, 3)
    x = torch.randn(4, 2, 6, 5)
    (g,) = collect_grams(conv, {"c": conv}, x)["c"]
    patches = F.unfold(x, 3).transpose(1, 2).reshape(-1, 2 * 9)
    assert g.n == patches.shape[0] == 4 * 4 * 3
    close(g.matrix, gram(patches))


def test_grouped_conv_gives_one_gram_per_group() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    x = torch.randn(3, 4, 5, 5)
    grams = collect_grams(conv, {"c": conv}, x)["c"]
    assert len(grams) == 2
    for i, g in enumerate(grams):
        patches = F.unfold(x[:, 2 * i : 2 * i + 2], 3, padding=1).transpose(1, 2).reshape(-1, 2 * 9)
        assert g.n == patches.shape[0]
        close(g.matrix, gram(patches))


def test_self_attention_gram_is_that_of_the_query_tokens() -> None:
    mha = nn.MultiheadAttention(6, 2, batch_first=True)
    s = torch.randn(2, 4, 6)
    with capture_features({"a": mha}) as accs:
        mha(s, s, s, need_weights=False)
    (g,) = accs["a"].compute()
    assert g.n == 8
    close(g.matrix, gram(s.reshape(-1, 6)))


def test_batching_gives_the_same_grams_as_one_batch() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    targets = {"conv": model[0], "fc": model[3]}
    x = torch.randn(11, 2, 5, 5)
    whole = collect_grams(model, targets, x, batch_size=64)
    split = collect_grams(model, targets, x, batch_size=3)
    for name in targets:
        assert split[name][0].n == whole[name][0].n
        torch.testing.assert_close(split[name][0].matrix, whole[name][0].matrix, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda x, y: x,
        lambda x, y: (x, y),
        lambda x, y: TensorDataset(x, y),
        lambda x, y: DataLoader(TensorDataset(x, y), batch_size=4),
        lambda x, y: DataLoader([{"pixel_values": xi} for xi in x], batch_size=5),
    ],
    ids=["tensor", "pair", "dataset", "loader", "dict-loader"],
)
def test_every_data_form_gives_the_same_gram(wrap) -> None:
    model = mlp()
    x, y = torch.randn(9, 5), torch.arange(9)
    (g,) = collect_grams(model, {"0": model[0]}, wrap(x, y), batch_size=2)["0"]
    assert g.n == 9
    close(g.matrix, gram(x))


def test_inputs_are_cast_to_the_model_dtype() -> None:
    model = mlp()
    x = torch.randn(6, 5, dtype=torch.float64)
    (g,) = collect_grams(model, {"0": model[0]}, x)["0"]
    close(g.matrix, gram(x.float()))


def test_rows_are_kept_only_while_fewer_than_dims() -> None:
    lin = nn.Linear(8, 2)
    x = torch.randn(9, 8)
    (few,) = collect_grams(lin, {"l": lin}, x[:6], batch_size=3)["l"]
    assert few.rows is not None
    close(few.rows, x[:6].double())
    (enough,) = collect_grams(lin, {"l": lin}, x[:8])["l"]
    assert enough.rows is None
    (many,) = collect_grams(lin, {"l": lin}, x, batch_size=3)["l"]
    assert many.rows is None and many.n == 9


def test_row_mask_selects_rows_per_update() -> None:
    lin = nn.Linear(4, 2)
    x1, x2 = torch.randn(2, 3, 4), torch.randn(1, 3, 4)
    m1 = torch.tensor([[True, False, True], [False, False, True]])
    m2 = torch.tensor([[False, True, True]])
    current = {"mask": m1}
    with capture_features({"l": lin}, lambda: GramAccumulator(row_mask=lambda: current["mask"])) as accs:
        lin(x1)
        current["mask"] = m2
        lin(x2)
    (g,) = accs["l"].compute()
    kept = torch.cat([x1.reshape(-1, 4)[m1.reshape(-1)], x2.reshape(-1, 4)[m2.reshape(-1)]])
    assert g.n == 5
    close(g.matrix, gram(kept))


def test_row_mask_of_the_wrong_size_is_refused_and_hooks_removed() -> None:
    lin = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="row mask has 5 entries for 6 feature rows"):
        with capture_features({"l": lin}, lambda: GramAccumulator(row_mask=lambda: torch.ones(5, dtype=torch.bool))):
            lin(torch.randn(2, 3, 4))
    assert len(lin._forward_pre_hooks) == 0


def test_keyword_inputs_are_captured() -> None:
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with capture_features({"l": lin}) as accs:
        lin(input=x)
    close(accs["l"].compute()[0].matrix, gram(x))


def test_hooks_are_removed_after_the_block() -> None:
    lin = nn.Linear(3, 2)
    with capture_features({"l": lin}) as accs:
        lin(torch.randn(4, 3))
    lin(torch.randn(7, 3))
    assert accs["l"].n == 4
    assert len(lin._forward_pre_hooks) == 0


def test_hooks_are_removed_when_the_body_raises() -> None:
    lin = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_features({"l": lin}) as accs:
            lin(torch.randn(2, 3))
            raise RuntimeError("boom")
    lin(torch.randn(5, 3))
    assert accs["l"].n == 2
    assert len(lin._forward_pre_hooks) == 0


def test_unsupported_target_is_refused_and_no_hook_left_behind() -> None:
    lin, act = nn.Linear(3, 2), nn.ReLU()
    with pytest.raises(ValueError, match=r"layer 'act' \(ReLU\) is not a supported kind"):
        with capture_features({"lin": lin, "act": act}):
            pass
    assert len(lin._forward_pre_hooks) == 0 and len(act._forward_pre_hooks) == 0


def test_gram_accumulator_reset_and_nonfinite() -> None:
    acc = GramAccumulator()
    assert acc.compute() == []
    acc.update(torch.randn(1, 3, 2))
    assert acc.n == 3 and len(acc.compute()) == 1
    acc.reset()
    assert acc.n == 0 and acc.compute() == [] and not acc.nonfinite
    acc.update(torch.tensor([[[1.0, float("nan")]]]))
    assert acc.nonfinite and acc.n == 0 and acc.compute() == []


def test_feature_rows_keeps_rows_in_order() -> None:
    model = mlp()
    x = torch.randn(7, 5)
    rows = collect_features(model, {"0": model[0]}, x, FeatureRows, batch_size=3)["0"]
    assert rows.shape == (1, 7, 5)
    torch.testing.assert_close(rows[0], x)


def test_capture_runs_in_eval_mode_without_grad_and_restores_mode() -> None:
    """Dropout is off and BatchNorm statistics untouched during capture; the mode comes back."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.9), nn.Linear(4, 2))
    model.train()
    stats = model[1].running_mean.clone()
    x = torch.randn(12, 4)
    (g,) = collect_grams(model, {"3": model[3]}, x)["3"]
    model.eval()
    close(g.matrix, gram(model[2](model[1](model[0](x))).detach()))
    model.train()
    assert model.training
    assert torch.equal(model[1].running_mean, stats)
    assert not g.matrix.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_capture_keeps_the_modes_of_submodules() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model.train()
    model[1].eval()
    collect_grams(model, {"2": model[2]}, torch.randn(8, 4))
    assert model.training and not model[1].training


def test_empty_data_is_refused() -> None:
    model = mlp()
    with pytest.raises(ValueError, match="forget data is empty"):
        collect_grams(model, {"0": model[0]}, torch.empty(0, 5))
    with pytest.raises(ValueError, match="retain data is empty"):
        collect_features(model, {"0": model[0]}, torch.empty(0, 5), what="retain data")


class WithSpare(nn.Module):
    """A linear layer plus a registered one that ``forward`` never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(5, 3)
        self.spare = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.used(x)


def test_a_layer_that_sees_no_input_is_reported() -> None:
    model = WithSpare()
    with pytest.raises(ValueError, match="layer 'spare' received no input"):
        collect_grams(model, {"used": model.used, "spare": model.spare}, torch.randn(4, 5))
    assert len(model.spare._forward_pre_hooks) == 0


def test_nonfinite_features_are_refused_and_the_model_unchanged() -> None:
    model = mlp()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 5)
    x[3, 1] = float("inf")
    with pytest.raises(ValueError, match="layer '0' contain NaN or Inf for the forget data"):
        collect_grams(model, {"0": model[0]}, x)
    assert model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert len(model[0]._forward_pre_hooks) == 0


def test_a_failing_forward_restores_the_mode_and_removes_hooks() -> None:
    model = mlp()
    model.train()
    with pytest.raises(RuntimeError):
        collect_grams(model, {"0": model[0]}, torch.randn(4, 7))
    assert model.training
    assert len(model[0]._forward_pre_hooks) == 0
