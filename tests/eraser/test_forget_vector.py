"""Forget vectors: the loss, the wrapper, arithmetic, files, the class-wise bank and composition."""

import pytest
import torch
from conftest import ToyCNN

import eraser
from eraser.methods.forget_vector import (
    ComposeConfig,
    ForgetVectorConfig,
    build_bank,
    compose,
    learn_vector,
    margin_loss,
)
from eraser.training import accuracy
from eraser.vectors import ForgetVector, VectorBank, VectorError, perturb

FAST = {"max_steps": 30, "batch_size": 64, "lr": 0.1, "lr_decay": 0.97}


def test_margin_loss_is_the_cw_margin_clipped_at_minus_tau():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 5.0, 1.0]])
    labels = torch.tensor([0, 0])
    # sample 1: 3 - 1 = 2; sample 2: 0 - 5 = -5 -> clipped to -1
    assert margin_loss(logits, labels, tau=1.0).item() == pytest.approx((2.0 - 1.0) / 2)


def test_perturb_in_pixel_space_respects_normalisation_and_clamp():
    mean, std = (0.5,), (0.25,)
    pixels = torch.full((1, 1, 2, 2), 0.9)
    x = (pixels - 0.5) / 0.25
    out = perturb(x, torch.full((1, 2, 2), 0.2), mean=mean, std=std, clamp=True)
    assert torch.allclose(out * 0.25 + 0.5, torch.ones_like(out))  # 0.9 + 0.2 clamped to 1
    out = perturb(x, torch.full((1, 2, 2), -0.2), mean=mean, std=std)
    assert torch.allclose(out * 0.25 + 0.5, torch.full_like(out, 0.7))


def test_forget_vector_forgets_the_class_and_leaves_weights_alone(toy_model, toy_task):
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}
    vec = eraser.run_method(toy_model, toy_task["forget"], toy_task["retain"], method="forget_vector", **FAST).model
    assert isinstance(vec, ForgetVector) and vec.model is toy_model
    for k, v in toy_model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed (BatchNorm statistics included)"
    assert all(p.requires_grad for p in toy_model.parameters())
    assert accuracy(toy_model, toy_task["forget"]) > 90
    assert accuracy(vec, toy_task["forget"]) < 10
    assert accuracy(vec, toy_task["test_forget"]) < 20  # unseen images of the class
    assert accuracy(vec, toy_task["retain"]) > accuracy(toy_model, toy_task["retain"]) - 15
    assert vec.metadata["config"]["max_steps"] == 30 and vec.metadata["fit"]["steps"] == 30


def test_kl_retain_loss_keeps_the_original_predictions(toy_model, toy_task):
    from eraser.methods.forget_vector import VectorObjective, _Perturbed

    cfg = ForgetVectorConfig(**FAST, retain_loss="kl")
    xr, yr = toy_task["retain"]
    wrapper = _Perturbed(toy_model, cfg, tuple(xr.shape[1:]))
    assert VectorObjective(cfg)._retain(wrapper, xr, yr).item() == pytest.approx(0.0, abs=1e-6)  # delta = 0
    with torch.no_grad():
        wrapper.delta.copy_(2 * torch.randn(wrapper.delta.shape, generator=torch.Generator().manual_seed(0)))
    assert VectorObjective(cfg)._retain(wrapper, xr, yr).item() > 0.01
    vec = learn_vector(toy_model, toy_task["forget"], toy_task["retain"], cfg)
    assert accuracy(vec, toy_task["forget"]) < 10
    with torch.no_grad():
        agree = (vec(xr).argmax(1) == toy_model(xr).argmax(1)).float().mean().item()
    assert agree > 0.85 and vec.metadata["config"]["retain_loss"] == "kl"
    with pytest.raises(ValueError, match="retain_loss must be one of"):
        ForgetVectorConfig(retain_loss="mse")


def test_norm_penalty_variants_shrink_the_vector(toy_model, toy_task):
    weak = learn_vector(toy_model, toy_task["forget"], toy_task["retain"], ForgetVectorConfig(**FAST, norm_weight=0.0))
    strong = learn_vector(
        toy_model, toy_task["forget"], toy_task["retain"], ForgetVectorConfig(**FAST, norm_weight=1.0)
    )
    code = learn_vector(
        toy_model,
        toy_task["forget"],
        toy_task["retain"],
        ForgetVectorConfig(**FAST, norm="per_batch", norm_weight=50.0),
    )
    assert strong.norm < 0.8 * weak.norm
    assert code.norm < weak.norm
    with pytest.raises(ValueError, match="norm must be one of"):
        ForgetVectorConfig(norm="l3")


def test_wrong_input_shape_and_wrong_model_are_clear_errors(toy_model, toy_task, tmp_path):
    vec = learn_vector(
        toy_model, toy_task["forget"], toy_task["retain"], ForgetVectorConfig(**{**FAST, "max_steps": 3})
    )
    with pytest.raises(VectorError, match=r"inputs of shape \(1, 8, 8\)"):
        vec(torch.zeros(2, 1, 9, 9))
    path = vec.save(tmp_path / "v.safetensors")
    other = ToyCNN()
    with pytest.raises(VectorError, match="different model"):
        ForgetVector.load(path, other)
    loaded = ForgetVector.load(path, toy_model)
    assert torch.equal(loaded.delta, vec.delta) and loaded.metadata["config"] == vec.metadata["config"]
    assert ForgetVector.load(path, other, force=True).model is other
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(VectorError, match="not a readable"):
        ForgetVector.load(tmp_path / "bad.safetensors", toy_model)


def test_arithmetic_sums_negates_scales_and_refuses_other_models(toy_model):
    a = ForgetVector(toy_model, torch.ones(1, 8, 8), metadata={"name": "a"})
    b = ForgetVector(toy_model, torch.full((1, 8, 8), 2.0), metadata={"name": "b"})
    assert torch.equal((a + b).delta, torch.full((1, 8, 8), 3.0))
    assert torch.equal((a - b).delta, -torch.ones(1, 8, 8))
    assert torch.equal((0.5 * b).delta, torch.ones(1, 8, 8)) and torch.equal((b * 0.5).delta, torch.ones(1, 8, 8))
    assert (a + b).metadata["expression"] == "(a + b)"
    c = ForgetVector(ToyCNN(), torch.ones(1, 8, 8))
    with pytest.raises(VectorError, match="different models"):
        a + c


def _hand_written(path, tensors, meta):
    """A vector file written by hand (as a stranger might), bypassing ForgetVector.save."""
    import json

    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"eraser": json.dumps(meta)})
    return path


def test_hostile_vector_files_are_refused_with_the_vector_error(toy_model, tmp_path):
    good = ForgetVector(toy_model, torch.ones(1, 8, 8), mean=[0.5], std=[0.25], metadata={"name": "a"})
    meta = dict(good.metadata)
    delta = {"delta": torch.ones(1, 8, 8)}
    cases = [
        (delta, ["not", "a", "dict"], "metadata must be a JSON object"),
        (delta, {**meta, "model_fingerprint": 123}, "model_fingerprint must be a string"),
        (delta, {**meta, "clamp": "no"}, "clamp must be true or false"),
        (delta, {**meta, "clamp": 1}, "clamp must be true or false"),
        (delta, {**meta, "mean": "abc"}, "mean must be a list of numbers"),
        (delta, {**meta, "std": [0.25, "x"]}, "std must be a list of numbers"),
        (delta, {**meta, "std": [0.0]}, "std must be positive"),
        (delta, {**meta, "mean": [0.5, 0.5], "std": [0.2, 0.2]}, "1 value or one per channel"),
        (delta, {**meta, "input_shape": "big"}, "input_shape"),
        ({"delta": torch.full((1, 8, 8), float("nan"))}, meta, "non-finite"),
        ({"delta": torch.full((1, 8, 8), float("inf"))}, meta, "non-finite"),
        ({"delta": torch.ones(1, 8, 8, dtype=torch.int32)}, meta, "floating-point"),
    ]
    for i, (tensors, bad, message) in enumerate(cases):
        path = _hand_written(tmp_path / f"v{i}.safetensors", tensors, bad)
        with pytest.raises(VectorError, match=message):
            ForgetVector.load(path, toy_model)
        with pytest.raises(VectorError, match=message):
            ForgetVector.load(path, toy_model, force=True)
    bank = _hand_written(tmp_path / "bank.safetensors", {"class.0": torch.ones(1, 8, 8)}, [1, 2])
    with pytest.raises(VectorError, match="metadata must be a JSON object"):
        VectorBank.load(bank)
    fingerprint = {"format": "eraser.vector_bank/1", "model_fingerprint": ["x"]}
    bank = _hand_written(tmp_path / "bank2.safetensors", {"class.0": torch.ones(1, 8, 8)}, fingerprint)
    with pytest.raises(VectorError, match="model_fingerprint must be a string"):
        VectorBank.load(bank)
    loaded = ForgetVector.load(_hand_written(tmp_path / "ok.safetensors", delta, meta), toy_model)
    assert loaded.clamp is False and torch.equal(loaded.delta, delta["delta"])


def test_clamp_takes_only_booleans_and_scales_must_be_finite(toy_model):
    with pytest.raises(VectorError, match="clamp must be true or false"):
        ForgetVector(toy_model, torch.ones(1, 8, 8), clamp="no")
    assert ForgetVector(toy_model, torch.ones(1, 8, 8), clamp=True).clamp is True
    fv = ForgetVector(toy_model, torch.ones(1, 8, 8))
    for scale in (float("nan"), float("inf"), -float("inf"), 10**400):
        with pytest.raises(VectorError, match="finite"):
            fv * scale
        with pytest.raises(VectorError, match="finite"):
            scale * fv
    with pytest.raises(VectorError, match="non-finite"):
        fv * 1e38 * 1e38  # finite scales whose product overflows float32
    with pytest.raises(VectorError, match="non-finite"):
        ForgetVector(toy_model, torch.full((1, 8, 8), float("nan")))
    with pytest.raises(VectorError, match="metadata must be a dict"):
        ForgetVector(toy_model, torch.ones(1, 8, 8), metadata=["a"])


def test_bank_is_resumable_and_combines_only_its_classes(toy_model, toy_task, tmp_path):
    data = (
        torch.cat([toy_task["forget"][0], toy_task["retain"][0]]),
        torch.cat([toy_task["forget"][1], toy_task["retain"][1]]),
    )
    cfg = ForgetVectorConfig(**{**FAST, "max_steps": 5})
    path = tmp_path / "bank.safetensors"
    partial = build_bank(toy_model, data, cfg, classes=[0, 1], path=path, progress=False)
    assert partial.classes == [0, 1]
    full = build_bank(toy_model, data, cfg, path=path, progress=False)  # resumes: learns 2 and 3 only
    assert full.classes == [0, 1, 2, 3]
    assert torch.equal(full.deltas[0], partial.deltas[0])
    loaded = VectorBank.load(path)
    v = loaded.vector(toy_model, {0: 1.0, 2: -0.5})
    assert torch.allclose(v.delta, loaded.deltas[0] - 0.5 * loaded.deltas[2])
    with pytest.raises(VectorError, match=r"no vector for classes \[7\]"):
        loaded.vector(toy_model, {7: 1.0})
    with pytest.raises(VectorError, match="another config"):
        build_bank(toy_model, data, ForgetVectorConfig(max_steps=6), path=path, progress=False)


def test_bank_with_tuple_settings_resumes(toy_model, toy_task, tmp_path):
    # normalisation given as tuples (as the classify bench passes a dataset's mean/std) reads back
    # from the file's JSON as lists: still the same configuration
    x, y = toy_task["forget"]
    n = x.shape[1]
    cfg = ForgetVectorConfig(**{**FAST, "max_steps": 2}, mean=(0.0,) * n, std=(1.0,) * n)
    path = tmp_path / "bank.safetensors"
    data = (torch.cat([x, toy_task["retain"][0]]), torch.cat([y, toy_task["retain"][1]]))
    build_bank(toy_model, data, cfg, classes=[0], path=path, progress=False)
    assert build_bank(toy_model, data, cfg, path=path, progress=False).classes == [0, 1, 2, 3]


def test_composition_learns_weights_that_forget_a_random_subset(toy_model, toy_task):
    data = (
        torch.cat([toy_task["forget"][0], toy_task["retain"][0]]),
        torch.cat([toy_task["forget"][1], toy_task["retain"][1]]),
    )
    bank = build_bank(toy_model, data, ForgetVectorConfig(**FAST), progress=False)
    # a new task: forget class 1 (not learned as such; composed from the bank's vectors)
    x, y = data
    f = y == 1
    vec = compose(toy_model, (x[f], y[f]), (x[~f], y[~f]), bank, ComposeConfig(**FAST))
    weights = vec.metadata["bank_weights"]
    assert set(weights) == {"0", "1", "2", "3"}
    assert accuracy(vec, (x[f], y[f])) < 50
    with pytest.raises(VectorError, match="no vector for classes"):
        compose(toy_model, (x[f], y[f]), (x[~f], y[~f]), bank, ComposeConfig(**FAST, classes="1/9"))


def test_compose_method_builds_its_own_bank_when_none_is_given(toy_model, toy_task):
    out = eraser.run_method(
        toy_model, toy_task["forget"], toy_task["retain"], method="forget_vector_compose", **{**FAST, "max_steps": 5}
    ).model
    assert isinstance(out, ForgetVector) and len(out.metadata["bank_weights"]) == 4


def test_nan_loss_stops_and_keeps_the_last_finite_vector(toy_model, toy_task):
    with pytest.warns(RuntimeWarning, match="kept the last finite vector"):
        vec = learn_vector(
            toy_model,
            toy_task["forget"],
            toy_task["retain"],
            ForgetVectorConfig(**{**FAST, "lr": 1e30, "lr_decay": 1.0}),
        )
    assert torch.isfinite(vec.delta).all()
    assert "stopped" in vec.metadata["fit"]


def test_options_from_the_command_line_are_typed():
    from eraser.options import parse_method

    name, opts = parse_method("forget_vector:mean=0.5/0.5/0.5,std=0.2/0.2/0.2,clamp=true,retain_weight=5")
    cfg = ForgetVectorConfig(**opts)
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.2, 0.2, 0.2) and cfg.clamp and cfg.retain_weight == 5.0
    with pytest.raises(ValueError, match="separated by '/'"):
        ForgetVectorConfig(mean="a/b", std="1/1")


def test_exponential_schedule_multiplies_the_rate_every_step(monkeypatch):
    import eraser.training.loop as loop
    from eraser.training import Objective, TrainConfig, fit

    optimizers, seen = [], []
    real = loop._optimizer
    monkeypatch.setattr(loop, "_optimizer", lambda params, cfg: optimizers.append(real(params, cfg)) or optimizers[-1])

    class Probe(Objective):
        streams = ("retain",)

        def backward(self, model, batches, info):
            seen.append(optimizers[-1].param_groups[0]["lr"])
            return 0.0

    data = (torch.zeros(8, 2), torch.zeros(8, dtype=torch.long))
    cfg = TrainConfig(epochs=4, batch_size=2, lr=1.0, schedule="exponential", lr_decay=0.5, max_steps=5)
    fit(torch.nn.Linear(2, 2), Probe(), {"retain": data}, cfg)
    assert seen == pytest.approx([1.0, 0.5, 0.25, 0.125, 0.0625])
