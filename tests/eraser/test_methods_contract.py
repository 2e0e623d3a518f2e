"""Every registered method honours the unlearning contract on a small trained model."""

import pytest
import torch

import eraser
from eraser.options import parse_method
from eraser.training import accuracy

CONTRACT_IDS = [
    "retrain",
    "ft",
    "rl",
    "ga",
    "neggrad_plus",
    "l1_sparse",
    "salun",
    "scrub",
    "ssd",
    "boundary_shrink",
    "boundary_expanding",
    "iu",
    "unlink",
    "unlink_rayleigh",
    "neggrad",
    "correct",
    "adv",
    "adv_imp",
    "soft_relabel",
    "grad_surgery",
    "activation_pruning",
]


def test_every_contract_id_is_registered():
    assert set(CONTRACT_IDS) <= set(eraser.list_methods())


@pytest.mark.parametrize("name", CONTRACT_IDS)
def test_method_returns_the_model_and_changes_it(name, toy_model, toy_task):
    before = {k: v.detach().clone() for k, v in toy_model.named_parameters()}
    out = eraser.run_method(
        toy_model, toy_task["forget"], toy_task["retain"], **TOY_STEPS.get(name, {}), method=name
    ).model
    assert isinstance(out, torch.nn.Module)
    changed = any(not torch.equal(before[k], v) for k, v in out.named_parameters() if k in before)
    assert changed or name == "ssd", f"{name} left the weights unchanged"
    out.eval()
    assert out(torch.zeros(2, 1, 8, 8)).shape == (2, 4)


# The defaults are sized for CIFAR-scale data (hundreds of steps); on this 240-sample task one
# epoch is a single step and the model is very confident (forget loss ~1e-4), so the
# small-learning-rate ascent methods get larger steps here.
TOY_STEPS = {
    "ga": {"lr": 0.1, "epochs": 20},
    "neggrad_plus": {"lr": 0.01, "epochs": 20, "batch_size": 32, "grad_clip": 1.0},
    "neggrad": {"lr": 0.1},
    "grad_surgery": {"ascent_normalize": True, "ascent_lr": 0.1, "ascent_epochs": 10, "batch_size": 32},
    "scrub": {"lr": 0.05},
    "boundary_shrink": {"lr": 1e-2},
    "boundary_expanding": {"lr": 1e-2},
    "iu": {"alpha": 10.0, "damping": 1.0},
}


# FT and l1-sparse only rely on catastrophic forgetting, which a few steps on this easy task do
# not produce; Retrain re-learns from scratch. SSD dampens nothing here (a few hard retain samples
# dominate the full-data importance); test_methods_scrub_ssd_iu_boundary.py checks it on a task
# built for it. Every other method acts on the forget set itself.
@pytest.mark.parametrize("name", [n for n in CONTRACT_IDS if n not in ("retrain", "ft", "l1_sparse", "ssd")])
def test_method_lowers_forget_accuracy(name, toy_model, toy_task):
    assert accuracy(toy_model, toy_task["forget"]) > 90.0
    out = eraser.run_method(
        toy_model, toy_task["forget"], toy_task["retain"], **TOY_STEPS.get(name, {}), method=name
    ).model
    assert accuracy(out, toy_task["forget"]) < 100.0, name


def test_methods_needing_retain_say_so(toy_model, toy_task):
    needing = [n for n in CONTRACT_IDS if eraser.get_method(n).needs_retain]
    assert {"ft", "retrain", "salun", "unlink_rayleigh"} <= set(needing)
    for name in needing:
        with pytest.raises(ValueError, match=name):
            eraser.run_method(toy_model, toy_task["forget"], None, method=name).model
        empty = (toy_task["retain"][0][:0], toy_task["retain"][1][:0])
        with pytest.raises(ValueError, match="non-empty retain"):
            eraser.run_method(toy_model, toy_task["forget"], empty, method=name).model


def test_bad_input_leaves_the_model_unchanged(toy_model, toy_task):
    state = {k: v.clone() for k, v in toy_model.state_dict().items()}
    x, y = toy_task["forget"]
    with pytest.raises(ValueError, match="labels must lie"):
        eraser.run_method(toy_model, (x, y + 10), toy_task["retain"], method="ft").model
    with pytest.raises(ValueError, match="image size"):
        eraser.run_method(toy_model, (torch.zeros(4, 3, 8, 8), y[:4]), None, method="ga").model
    with pytest.raises(ValueError, match="forget set is empty"):
        eraser.run_method(toy_model, (x[:0], y[:0]), None, method="ga").model
    with pytest.raises(TypeError, match="unknown options"):
        eraser.run_method(toy_model, toy_task["forget"], toy_task["retain"], learning_rate=1.0, method="ft").model
    # A diverging run raises and the weights are put back.
    with pytest.raises(FloatingPointError):
        eraser.run_method(toy_model, toy_task["forget"], lr=1e30, epochs=3, method="ga").model
    for k, v in toy_model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_overrides_reach_the_config(toy_model, toy_task):
    name, opts = parse_method("ft:lr=0.02,epochs=1,schedule=cosine,max_steps=none")
    assert (name, opts) == ("ft", {"lr": 0.02, "epochs": 1, "schedule": "cosine", "max_steps": None})
    assert parse_method("unlink:variant=svd,k=2") == ("unlink", {"variant": "svd", "k": 2})
    # a word option keeps the word "none" (unlink_robust's closure=none), a number option unsets
    assert parse_method("unlink_robust:closure=none", family="diffusion") == ("unlink_robust", {"closure": "none"})
    for bad, msg in (
        ("ft:lr", "key=value"),
        ("ft:bogus=1", "has no option"),
        ("ft:epochs=x", "takes a int"),
        ("nope", "unknown method"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_method(bad)
    # epochs=0 means no step at all: the model must come back unchanged.
    state = {k: v.clone() for k, v in toy_model.state_dict().items()}
    eraser.run_method(toy_model, toy_task["forget"], toy_task["retain"], epochs=0, method="ft").model
    assert all(torch.equal(v, state[k]) for k, v in toy_model.state_dict().items())


def test_masked_weights_survive_momentum_and_weight_decay(toy_model, toy_task):
    from eraser.methods.finetune import RetainCE
    from eraser.training import TrainConfig, fit

    mask = {n: torch.rand(p.shape) > 0.5 for n, p in toy_model.named_parameters()}
    before = {n: p.detach().clone() for n, p in toy_model.named_parameters()}
    fit(
        toy_model,
        RetainCE(),
        {"retain": toy_task["retain"]},
        TrainConfig(epochs=3, lr=0.1, weight_decay=0.1),
        trainable=mask,
    )
    moved = 0
    for n, p in toy_model.named_parameters():
        assert torch.equal(p.detach()[~mask[n]], before[n][~mask[n]]), n
        moved += int((p.detach()[mask[n]] != before[n][mask[n]]).sum())
    assert moved > 0


def test_crop_flip_augmentation_keeps_shapes_and_content():
    from eraser.training import TrainConfig
    from eraser.training.loop import _crop_flip

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
    g = torch.Generator().manual_seed(0)
    outs = [_crop_flip((x, torch.tensor([0, 1])), g)[0] for _ in range(20)]
    assert all(o.shape == x.shape for o in outs)
    assert any(not torch.equal(o, x) for o in outs)  # it does move the images
    # Every output pixel is an input pixel of the same image and channel, or padding (0).
    for o in outs:
        for i in range(2):
            for c in range(3):
                assert set(o[i, c].unique().tolist()) <= set(x[i, c].unique().tolist()) | {0.0}
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="mixup")


def test_training_with_augmentation_runs(toy_model, toy_task):
    from eraser.methods.finetune import RetainCE
    from eraser.training import TrainConfig, fit

    logs = fit(toy_model, RetainCE(), {"retain": toy_task["retain"]}, TrainConfig(epochs=2, augment="crop_flip"))
    assert len(logs) == 2 and all(log["loss"] == log["loss"] for log in logs)


def test_bad_labels_in_a_dataloader_are_reported_and_undone(toy_model, toy_task):
    from torch.utils.data import DataLoader, TensorDataset

    state = {k: v.clone() for k, v in toy_model.state_dict().items()}
    x, y = toy_task["retain"]
    loader = DataLoader(TensorDataset(x, y + 10), batch_size=32)
    with pytest.raises(ValueError, match="labels must lie"):
        eraser.run_method(toy_model, toy_task["forget"], loader, method="ft").model
    assert all(torch.equal(v, state[k]) for k, v in toy_model.state_dict().items())
