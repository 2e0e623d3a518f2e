"""SCRUB, SSD, IU and Boundary Shrink/Expanding on the toy task (forget = class 0)."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eraser
import eraser.methods.boundary  # noqa: F401  (registers)
import eraser.methods.iu  # noqa: F401
import eraser.methods.scrub  # noqa: F401
import eraser.methods.ssd  # noqa: F401
from eraser.data import mixed_batches, subsample
from eraser.methods.boundary import nearest_wrong_labels
from eraser.methods.finetune import RetainCE
from eraser.methods.iu import influence_step
from eraser.methods.scrub import Scrub, distill_kl
from eraser.methods.ssd import ssd_dampen
from eraser.training import TrainConfig, accuracy, fit, gradient_stats


def ua(model, data) -> float:
    return 100.0 - accuracy(model, data)


def test_registration_flags():
    for name in ("scrub", "ssd", "iu", "boundary_shrink", "boundary_expanding"):
        assert name in eraser.list_methods()
    assert set(eraser.list_methods(training_free=True)) >= {"ssd", "iu"}
    assert eraser.get_method("scrub").summary.startswith("SCRUB")
    assert not eraser.get_method("boundary_shrink").needs_retain
    assert not eraser.get_method("boundary_expanding").needs_retain


@pytest.mark.parametrize("name", ["scrub", "ssd", "iu"])
def test_methods_needing_retain_reject_none(name, toy_task, toy_model):
    with pytest.raises(ValueError, match=name):
        eraser.run_method(toy_model, toy_task["forget"], method=name).model


def test_unknown_option_is_an_error(toy_task, toy_model):
    with pytest.raises(TypeError, match="max_step"):
        eraser.run_method(toy_model, toy_task["forget"], toy_task["retain"], max_step=3, method="scrub").model


# --- SCRUB -----------------------------------------------------------------------------------


def test_distill_kl_is_t_squared_kl():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    assert float(distill_kl(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    q = torch.softmax(t / 2, 1)
    manual = (q * (q.log() - torch.log_softmax(s / 2, 1))).sum(1).mean() * 4
    torch.testing.assert_close(distill_kl(s, t, 2.0), manual)


def test_scrub_phases_follow_msteps():
    obj = Scrub(nn.Identity(), msteps=2, temperature=4.0, gamma=0.99, alpha=0.001)
    assert obj.phases(0) == obj.phases(1) == [("forget",), ("retain",)]
    assert obj.phases(2) == [("retain",)]


def test_scrub_forgets_and_keeps_retain(toy_task, toy_model):
    eraser.run_method(toy_model, toy_task["forget"], toy_task["retain"], method="scrub", lr=0.05)
    assert ua(toy_model, toy_task["forget"]) >= 90
    assert ua(toy_model, toy_task["test_forget"]) >= 90
    assert accuracy(toy_model, toy_task["retain"]) >= 85
    assert accuracy(toy_model, toy_task["test"]) >= 80


def test_scrub_without_max_steps_does_not_forget(toy_task, toy_model):
    # The min-steps alone (retain CE + KL to the teacher) keep class 0: the max-steps do the forgetting.
    eraser.run_method(toy_model, toy_task["forget"], toy_task["retain"], lr=0.05, msteps=0, method="scrub").model
    assert accuracy(toy_model, toy_task["forget"]) >= 90


# --- SSD -------------------------------------------------------------------------------------


def test_ssd_dampen_rule_on_constructed_importances():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    imp_f = {"weight": torch.tensor([[1.0, 5.0], [100.0, 0.0]])}
    imp_d = {"weight": torch.tensor([[1.0, 1.0], [2.0, 0.0]])}
    sel = ssd_dampen(model, imp_f, imp_d, alpha=3.0, lam=1.0)
    assert sel["weight"].tolist() == [[False, True], [True, False]]  # 5 > 3*1, 100 > 3*2; 0 > 0 is not
    torch.testing.assert_close(model.weight.data, torch.tensor([[1.0, 2.0 / 5], [3.0 * 2 / 100, 4.0]]))
    # lam large enough: min(1, .) keeps the selected weights as they are
    ssd_dampen(model, imp_f, imp_d, alpha=3.0, lam=1000.0)
    torch.testing.assert_close(model.weight.data, torch.tensor([[1.0, 2.0 / 5], [3.0 * 2 / 100, 4.0]]))


def pathway_task(seed: int = 0):
    """Linear 4-class data where class 0 (20 samples, the forget set) alone uses input 0 and all
    classes share two noise inputs: a trained linear model has weights only class 0 relies on."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate([20, 100, 100, 100])])
    x = torch.zeros(len(y), 6)
    x[torch.arange(len(y)), y] = 2 + 0.5 * torch.randn(len(y), generator=g)
    x[:, 4:] = torch.randn(len(y), 2, generator=g)
    model = nn.Linear(6, 4)
    fit(model, RetainCE(), {"retain": (x, y)}, TrainConfig(epochs=5, lr=0.1, batch_size=32))
    f = y == 0
    return model, (x[f], y[f]), (x[~f], y[~f])


@pytest.mark.parametrize("seed", [0, 1])
def test_ssd_dampens_exactly_the_forget_only_weights(seed):
    model, f, r = pathway_task(seed)
    assert accuracy(model, f) == accuracy(model, r) == 100
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    imp_f = gradient_stats(model, f, power=2, batch_size=64)
    imp_d = gradient_stats(model, mixed_batches([f, r], 64, 0), power=2)
    eraser.run_method(model, f, r, method="ssd").model
    for n, p in model.named_parameters():  # the documented rule, with alpha 10 and lambda 1
        sel = imp_f[n] > 10 * imp_d[n]
        torch.testing.assert_close(
            p.detach(), torch.where(sel, before[n] * (imp_d[n] / imp_f[n]).clamp(max=1), before[n])
        )
    changed = model.weight.detach() != before["weight"]
    assert bool(changed[:, 0].all())  # input 0 serves the forget class only: dampened
    assert not bool(changed[:, 1:4].any())  # the other classes' inputs: the forget set never uses them
    assert bool((model.weight[:, 0].abs() < 0.5 * before["weight"][:, 0].abs()).all())
    assert accuracy(model, r) == 100
    assert ua(model, f) >= 30


def test_ssd_is_a_no_op_when_forget_is_the_whole_data(toy_task, toy_model):
    # D = forget + forget has the same importance as forget: nothing is 10x more important. The
    # runner refuses retain data equal to the forget data, so the method's function is called.
    spec = eraser.get_method("ssd")
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}
    spec.fn(toy_model, toy_task["forget"], toy_task["forget"], config=spec.config_cls())
    for k, v in toy_model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_ssd_accepts_datasets_and_loaders_like_tensor_pairs(toy_task, toy_model):
    f, r = toy_task["forget"], toy_task["retain"]
    other = type(toy_model)()
    other.load_state_dict(toy_model.state_dict())
    eraser.run_method(toy_model, f, r, method="ssd").model
    eraser.run_method(
        other, TensorDataset(*f), DataLoader(TensorDataset(*r), batch_size=17, shuffle=True), method="ssd"
    ).model
    for a, b in zip(toy_model.parameters(), other.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_mixed_batches_cover_both_sets_once():
    f = (torch.zeros(10, 3), torch.zeros(10, dtype=torch.long))
    r = TensorDataset(torch.ones(30, 3), torch.ones(30, dtype=torch.long))
    batches = list(mixed_batches([f, r], 8, seed=0))
    ys = torch.cat([y for _, y in batches])
    assert len(ys) == 40 and int(ys.sum()) == 30
    assert any(0 < int(y.sum()) < len(y) for _, y in batches)  # batches mix the two sets


# --- IU --------------------------------------------------------------------------------------


def test_influence_step_formula():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    g = {"weight": torch.tensor([[1.0, 2.0]])}
    fisher = {"weight": torch.tensor([[1.0, 3.0]])}  # mean 2, damping 0.5 -> floor 1
    influence_step(model, g, fisher, scale=2.0, damping=0.5)
    torch.testing.assert_close(model.weight.data, torch.tensor([[2.0 * 1 / 2, 2.0 * 2 / 4]]))


def test_subsample_is_seeded_and_bounded(toy_task):
    x, y = toy_task["retain"]
    a, b = subsample((x, y), 20, seed=3), subsample((x, y), 20, seed=3)
    assert len(a[0]) == 20 and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert subsample((x, y), 10_000, seed=3)[0] is x
    assert len(subsample(TensorDataset(x, y), 20, seed=3)) == 20


def test_iu_forgets_and_keeps_retain(toy_task, toy_model):
    # The step that forgets differs by model (see IUConfig): the toy's forget class is learnt
    # perfectly (tiny gradients) while a few hard retain samples dominate the Fisher, so it needs
    # a much larger one. It costs about 20 points of retained accuracy, far less than it forgets.
    eraser.run_method(toy_model, toy_task["forget"], toy_task["retain"], alpha=10.0, damping=1.0, method="iu").model
    assert ua(toy_model, toy_task["forget"]) >= 90
    assert ua(toy_model, toy_task["test_forget"]) >= 90
    assert accuracy(toy_model, toy_task["retain"]) >= 70
    assert accuracy(toy_model, toy_task["test"]) >= 70


def test_iu_alpha_zero_changes_nothing(toy_task, toy_model):
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}
    eraser.run_method(
        toy_model, toy_task["forget"], toy_task["retain"], alpha=0.0, fisher_samples=10, method="iu"
    ).model
    for k, v in toy_model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


# --- Boundary Shrink / Expanding -------------------------------------------------------------


def test_nearest_wrong_labels(toy_task, toy_model):
    x, y = toy_task["forget"]
    toy_model.train()
    labels = nearest_wrong_labels(toy_model, x, y, eps=0.1)
    assert labels.shape == y.shape and bool((labels != y).all())
    assert toy_model.training and all(p.grad is None for p in toy_model.parameters())
    # With eps = 0 the neighbour is the runner-up class of the clean input.
    logits = toy_model.eval()(x).detach()
    logits[torch.arange(len(y)), y] = float("-inf")
    assert torch.equal(nearest_wrong_labels(toy_model, x, y, eps=0.0), logits.argmax(1))


def test_boundary_shrink_forgets(toy_task, toy_model):
    eraser.run_method(toy_model, toy_task["forget"], lr=1e-2, method="boundary_shrink").model
    assert ua(toy_model, toy_task["forget"]) >= 90
    assert ua(toy_model, toy_task["test_forget"]) >= 90
    assert accuracy(toy_model, toy_task["retain"]) >= 90


def test_boundary_expanding_forgets_and_restores_the_head(toy_task, toy_model):
    head = toy_model.head
    keys = {k: v.shape for k, v in toy_model.state_dict().items()}
    eraser.run_method(toy_model, toy_task["forget"], lr=1e-2, method="boundary_expanding").model
    assert toy_model.head is head and head.out_features == 4 and head.weight.shape == (4, 32)
    assert {k: v.shape for k, v in toy_model.state_dict().items()} == keys
    assert toy_model(toy_task["forget"][0][:2]).shape == (2, 4)
    assert ua(toy_model, toy_task["forget"]) >= 90
    assert accuracy(toy_model, toy_task["retain"]) >= 90


def test_boundary_expanding_nested_head_and_failure_restores(toy_task):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Sequential(nn.Dropout(0.0), nn.Linear(16, 4)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError):
        eraser.run_method(
            model, toy_task["forget"], method="boundary_expanding", lr=1e30
        )  # diverges: the head must come back unchanged
    assert model[3][1].out_features == 4
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    eraser.run_method(model, toy_task["forget"], method="boundary_expanding", epochs=1)
    assert model[3][1].weight.shape == (4, 16) and model(toy_task["forget"][0][:3]).shape == (3, 4)
