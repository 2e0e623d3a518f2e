"""ADV / ADV+IMP (instance-wise, no retain data) and the MSU methods: soft relabeling, gradient
surgery and activation pruning, on the toy task (a trained 4-class ToyCNN, forget = class 0)."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import eraser
import eraser.methods.activation_pruning as ap  # registers
import eraser.methods.grad_surgery as gs  # registers
import eraser.methods.instance as inst  # registers
import eraser.methods.soft_relabel as sr  # registers
from eraser.training import accuracy, logits_of


def assert_forgot(model, task, max_drop: float = 8.0):
    """Class 0 is forgotten (seen and unseen images) while the other classes keep their accuracy
    within ``max_drop`` points of the original model's."""
    original = type(model)()
    original.load_state_dict(task["state"])
    assert accuracy(model, task["forget"]) <= 5.0
    assert accuracy(model, task["test_forget"]) <= 10.0
    for split in ("retain", "test"):
        assert accuracy(model, task[split]) >= accuracy(original, task[split]) - max_drop, split


@pytest.mark.parametrize("train_mode", [True, False])
def test_targeted_l2_pgd_reaches_targets_inside_the_ball_and_leaves_the_model_alone(toy_model, toy_task, train_mode):
    x, y = toy_task["forget"]
    x, target = x[:12], (y[:12] + 1 + torch.arange(12) % 3) % 4
    toy_model.train(train_mode)
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}  # BatchNorm buffers included
    eps = 8.0
    adv = inst.targeted_l2_pgd(toy_model, x, target, eps=eps, step=0.5, iters=40)
    assert (adv - x).flatten(1).norm(dim=1).max() <= eps + 1e-5
    assert torch.equal(logits_of(toy_model, (adv, target))[0].argmax(1), target)
    assert toy_model.training is train_mode
    assert all(torch.equal(v, before[k]) for k, v in toy_model.state_dict().items())
    assert all(p.grad is None for p in toy_model.parameters())
    assert not adv.requires_grad


def test_adversarial_surrogates_target_other_labels(toy_model, toy_task):
    xa, ya = inst.adversarial_surrogates(toy_model, toy_task["forget"], 0.4, 0.05, 3, per_sample=3, seed=0)
    n = len(toy_task["forget"][1])
    assert xa.shape == (3 * n, 1, 8, 8) and ya.shape == (3 * n,)
    assert (ya != 0).all() and set(ya.tolist()) == {1, 2, 3}


def test_mas_importance_is_normalised_per_tensor(toy_model, toy_task):
    omega = inst.mas_importance(toy_model, toy_task["forget"])
    assert set(omega) == {n for n, _ in toy_model.named_parameters()}
    for o in omega.values():
        assert o.min() >= 0 and o.max() <= 1
        assert o.max() == 1 or (o == 0).all()
    assert sum(bool(o.max() == 1) for o in omega.values()) >= len(omega) - 1


@pytest.mark.parametrize("method", ["adv", "adv_imp"])
def test_instance_methods_forget_without_retain_data(toy_model, toy_task, method):
    spec = eraser.get_method(method)
    assert not spec.needs_retain and not spec.training_free
    forget = TensorDataset(*toy_task["forget"])  # any labelled-data form
    eraser.run_method(toy_model, forget, method=method)
    # Without retain data a whole class cannot go for free: the other classes lose ~9 points here.
    assert_forgot(toy_model, toy_task, max_drop=12.0)


def test_soft_labels_mix_other_classes_only():
    feat_f = torch.randn(5, 6)
    y_f = torch.tensor([0, 1, 2, 0, 3])
    feat_r = torch.randn(7, 6)
    y_r = torch.tensor([0, 1, 1, 2, 2, 0, 1])
    labels = sr.soft_labels(feat_f, y_f, feat_r, y_r, num_classes=4, temperature=0.1)
    torch.testing.assert_close(labels.sum(1), torch.ones(5))
    assert (labels[torch.arange(5), y_f] == 0).all()  # own-class retain samples are masked out
    assert (labels[:, 3] == 0).all()  # no retain sample of class 3 to borrow from
    # a forget sample whose batch holds only retain samples of its own class: uniform over the others
    only_own = sr.soft_labels(feat_f[:1], y_f[:1], feat_r[:2], torch.tensor([0, 0]), 4, 0.1)
    torch.testing.assert_close(only_own, torch.tensor([[0.0, 1 / 3, 1 / 3, 1 / 3]]))


def test_soft_relabel_forgets(toy_model, toy_task):
    eraser.run_method(toy_model, toy_task["forget"], toy_task["retain"], method="soft_relabel").model
    assert_forgot(toy_model, toy_task)


def test_projection_is_orthogonal_to_the_retain_gradient():
    g, r = torch.randn(1000, dtype=torch.float64), torch.randn(1000, dtype=torch.float64)
    p = gs.project_orthogonal(g, r)
    assert abs(float(p @ r)) < 1e-9 * float(g.norm() * r.norm())
    # only the component along r was removed
    torch.testing.assert_close(g - p, (g @ r / (r @ r)) * r)
    torch.testing.assert_close(gs.project_orthogonal(g, torch.zeros_like(r)), g)


def test_grad_surgery_forgets(toy_model, toy_task):
    # The toy model is so confident (forget CE ~1e-6) that raw ascent barely moves: use
    # unit-length ascent steps and smaller batches (60 forget samples are one batch of 256).
    eraser.run_method(
        toy_model,
        toy_task["forget"],
        toy_task["retain"],
        ascent_normalize=True,
        ascent_lr=0.1,
        ascent_epochs=10,
        batch_size=32,
        method="grad_surgery",
    ).model
    assert_forgot(toy_model, toy_task)


def test_prune_masks_interpolate_the_quantile():
    means = {name: torch.arange(100.0) for name in ("a", "b", "c")}
    masks = ap.prune_masks(means, q_early=0.99, q_deep=0.90)
    assert [int(m.sum()) for m in masks.values()] == [1, 6, 10]
    assert masks["c"][90:].all() and not masks["c"][:90].any()


def test_activation_pruning_keeps_pruned_rows_at_zero(toy_model, toy_task):
    layers = {"conv": toy_model.conv, "fc": toy_model.fc}  # every Conv2d/Linear but the head
    means = ap.mean_unit_activations(toy_model, layers, toy_task["forget"])
    assert list(means) == ["conv", "fc"] and means["conv"].shape == (8,) and means["fc"].shape == (32,)
    pruned = ap.prune_masks(means, 0.99, 0.8)
    head_before = toy_model.head.weight.detach().clone()
    retain = DataLoader(TensorDataset(*toy_task["retain"]), batch_size=64, shuffle=True)
    # The toy's one hidden Linear has 32 units: q_deep 0.90 prunes 3 of them, which halves class 0's
    # accuracy (MNIST CNN, digit 3: 0.2% left with the defaults); 0.8 prunes 6 and forgets it.
    eraser.run_method(toy_model, toy_task["forget"], retain, q_deep=0.8, method="activation_pruning").model
    for name, rows in pruned.items():
        layer = layers[name]
        assert rows.any()
        assert (layer.weight[rows] == 0).all() and (layer.bias[rows] == 0).all()
        assert (layer.weight[~rows] != 0).any()
    assert not torch.equal(toy_model.head.weight, head_before)  # the head was fine-tuned
    assert_forgot(toy_model, toy_task)


@pytest.mark.parametrize("method", ["soft_relabel", "grad_surgery", "activation_pruning"])
def test_methods_needing_retain_say_so(toy_model, toy_task, method):
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}
    with pytest.raises(ValueError, match=method):
        eraser.run_method(toy_model, toy_task["forget"], method=method).model
    assert all(torch.equal(v, before[k]) for k, v in toy_model.state_dict().items())
