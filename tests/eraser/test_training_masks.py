"""Direct tests of eraser.training.masks: the one saliency mask and the one masked optimiser step."""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eraser.methods.relabel import saliency_mask
from eraser.training import Objective, StepInfo, TrainConfig, fit
from eraser.training.masks import masked_step, top_fraction_mask, trained_parameters


def count(masks: dict[str, Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


def test_top_fraction_mask_is_global_and_exact_with_ties() -> None:
    scores = {"a": torch.tensor([0.0, 0.0, 5.0, 1.0]), "b": torch.tensor([[0.0, 3.0], [0.0, 0.0]])}
    masks = top_fraction_mask(scores, 0.5)  # 4 of 8: 5, 3, 1 and the first of the tied zeros
    assert masks["a"].tolist() == [True, False, True, True] and masks["b"].tolist() == [[False, True], [False, False]]
    assert count(top_fraction_mask(scores, 0.25)) == 2
    ties = {"t": torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0, 0.5])}
    assert top_fraction_mask(ties, 0.5)["t"].tolist() == [True, True, True, False, False, False]


def test_top_fraction_mask_of_all_zero_scores_keeps_exactly_the_fraction() -> None:
    masks = top_fraction_mask({"z": torch.zeros(10), "w": torch.zeros(2, 5)}, 0.3)
    assert count(masks) == 6 and masks["z"].tolist() == [True] * 6 + [False] * 4 and not masks["w"].any()


@pytest.mark.parametrize("ratio, expected", [(0.0, 0), (1.0, 7), (0.5, 3), (0.99, 6)])
def test_top_fraction_mask_keeps_the_floor_of_the_fraction(ratio: float, expected: int) -> None:
    masks = top_fraction_mask({"a": torch.arange(7.0).reshape(7, 1)}, ratio)
    assert masks["a"].shape == (7, 1) and masks["a"].dtype == torch.bool and count(masks) == expected
    assert masks["a"][7 - expected :].all()  # the largest scores


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_top_fraction_mask_refuses_a_fraction_outside_0_1(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"ratio must lie in \[0, 1\]"):
        top_fraction_mask({"a": torch.ones(4)}, ratio)


class CE(Objective):
    def loss(self, model: nn.Module, batches: dict, info: StepInfo) -> Tensor:
        x, y = batches["forget"]
        return F.cross_entropy(model(x), y)


def test_salun_saliency_mask_does_not_overshoot_on_tied_gradients() -> None:
    """Inputs with two dead features give 6 of the 15 weights a zero gradient; 80% = 12 entries
    (a `>=` threshold at 0 would take all 15)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(12, 4)
    x[:, 2:] = 0
    masks = saliency_mask(model, (x, torch.arange(12) % 3), 0.8)
    assert count(masks) == 12 and masks["weight"][:, :2].all() and masks["bias"].all()


def test_trained_parameters_leave_out_fully_masked_ones() -> None:
    a, b, c = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    params = {"a": a, "b": b, "c": c}
    masks = {"a": torch.tensor([True, False]), "b": torch.zeros(2, dtype=torch.bool)}
    assert trained_parameters(params, masks) == [a, c]
    with pytest.raises(ValueError, match="no parameter entry to train"):
        trained_parameters({"b": b}, masks)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_masked_step_moves_only_the_unmasked_entries(optimizer: str) -> None:
    p, q = nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0])), nn.Parameter(torch.tensor([1.0, 1.0]))
    make = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.5),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.5),
    }[optimizer]
    opt = make([p, q])
    masks = {"p": torch.tensor([True, False, True, False])}
    frozen = {"p": p.detach().clone()}
    ref = nn.Parameter(torch.tensor([1.0, 3.0]))  # the unmasked entries alone, trained without masks
    ref_opt = make([ref])
    seen = []
    for _ in range(3):
        p.grad, q.grad = torch.tensor([1.0, 5.0, -2.0, 7.0]), torch.tensor([1.0, -1.0])
        ref.grad = torch.tensor([1.0, -2.0])
        masked_step(opt, {"p": p, "q": q}, masks, frozen, clip=lambda: seen.append(p.grad.clone()))
        ref_opt.step()
    assert torch.equal(seen[0], torch.tensor([1.0, 0.0, -2.0, 0.0]))  # clipping sees masked gradients only
    assert torch.equal(p.detach()[[1, 3]], torch.tensor([2.0, 4.0]))  # momentum and decay did not move them
    assert torch.equal(p.detach()[[0, 2]], ref.detach())
    assert not torch.equal(q.detach(), torch.tensor([1.0, 1.0]))  # unmasked parameters train normally


class Linear2(nn.Module):
    """Two scalar weights; the loss ``100 * (w0 + w1)`` has gradient 100 for both."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))


class Slope(Objective):
    def loss(self, model: nn.Module, batches: dict, info: StepInfo) -> Tensor:
        return 100.0 * model.w.sum() + 0.0 * batches["retain"][0].sum()


def test_fit_clips_only_the_trained_entries_gradient() -> None:
    """With w1 masked out, grad_clip=1 scales w0's gradient of 100 to 1 (not to 1/sqrt(2))."""
    model = Linear2()
    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.1, momentum=0.0, weight_decay=0.0, grad_clip=1.0)
    fit(
        model,
        Slope(),
        {"retain": (torch.zeros(1, 1), torch.zeros(1))},
        cfg,
        trainable={"w": torch.tensor([True, False])},
    )
    assert model.w.detach().tolist() == pytest.approx([-0.1, 0.0])
