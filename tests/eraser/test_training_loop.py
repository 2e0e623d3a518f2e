"""Direct tests of eraser.training.loop: TrainConfig, fit's steps, schedules, masks and seeds."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eraser.training.loop import Objective, StepInfo, TrainConfig, fit


class CE(Objective):
    """Cross-entropy on the retain stream."""

    def loss(self, model: nn.Module, batches: dict, info: StepInfo) -> Tensor:
        x, y = batches["retain"]
        return F.cross_entropy(model(x), y)


class Recorder(Objective):
    """Records what each step receives and returns ``loss_of(step)`` without training."""

    def __init__(self, streams: tuple[str, ...] = ("retain",), loss_of=float) -> None:
        self.streams = streams
        self.loss_of = loss_of
        self.calls: list[dict] = []

    def backward(self, model: nn.Module, batches: dict, info: StepInfo) -> float:
        self.calls.append({"batches": batches, "info": info, "training": model.training})
        return self.loss_of(info.step)


class Scalar(nn.Module):
    """One scalar parameter ``p``; the loss ``scale * p`` has gradient ``scale``."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))


class Slope(Objective):
    """Loss ``scale * p``; records ``p`` before every step."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.before: list[float] = []

    def loss(self, model: nn.Module, batches: dict, info: StepInfo) -> Tensor:
        self.before.append(float(model.p.detach()))
        return self.scale * model.p


def blobs(n: int = 48, d: int = 4, classes: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Well separated Gaussian blobs."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, d, generator=g)
    y = torch.arange(n) % classes
    return centres[y] + 0.3 * torch.randn(n, d, generator=g), y


def zeros(n: int) -> tuple[Tensor, Tensor]:
    return torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)


def params_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def lr_steps(cfg: TrainConfig, n: int) -> list[float]:
    """The learning rate of every step, read off the moves of a plain-SGD scalar."""
    model, obj = Scalar(), Slope()
    fit(model, obj, {"retain": zeros(n)}, cfg)
    after = obj.before[1:] + [float(model.p.detach())]
    return [b - a for b, a in zip(obj.before, after)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"augment": "mixup"}, "augment must be one of"),
        ({"schedule": "step"}, "schedule must be one of"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of"),
        ({"epochs": -1}, "need epochs >= 0"),
        ({"batch_size": 0}, "batch_size >= 1"),
        ({"lr": -0.1}, "lr >= 0"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_step_info_progress() -> None:
    assert StepInfo(0, 3, 12).progress == 0.25
    assert StepInfo(0, 0, 0).progress == 0.0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_loss_goes_down_on_a_toy_task(optimizer: str) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = blobs()
    first = F.cross_entropy(model(x), y).item()
    logs = fit(model, CE(), {"retain": (x, y)}, TrainConfig(epochs=15, lr=0.05, batch_size=16, optimizer=optimizer))
    assert len(logs) == 15
    assert logs[-1]["loss"] < 0.25 * logs[0]["loss"]
    assert F.cross_entropy(model(x), y).item() < 0.25 * first
    assert (model(x).argmax(1) == y).float().mean() > 0.95


def test_logs_count_steps_and_average_the_epoch_losses() -> None:
    obj = Recorder()
    logs = fit(nn.Linear(1, 1), obj, {"retain": zeros(20)}, TrainConfig(epochs=2, batch_size=8))
    assert all(e.pop("seconds") >= 0 for e in logs)
    assert logs == [{"epoch": 0, "steps": 3, "loss": 1.0}, {"epoch": 1, "steps": 6, "loss": 4.0}]
    assert [(c["info"].epoch, c["info"].step, c["info"].total_steps) for c in obj.calls] == [
        (e, s, 6) for e, s in [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4), (1, 5)]
    ]
    assert [len(c["batches"]["retain"][0]) for c in obj.calls] == [8, 8, 4] * 2


def test_each_epoch_visits_every_sample_once_in_a_fresh_order() -> None:
    obj = Recorder()
    x = torch.arange(12.0).unsqueeze(1)
    fit(nn.Linear(1, 1), obj, {"retain": (x, torch.zeros(12))}, TrainConfig(epochs=2, batch_size=5))
    seen = [c["batches"]["retain"][0].flatten().tolist() for c in obj.calls]
    first, second = sum(seen[:3], []), sum(seen[3:], [])
    assert sorted(first) == sorted(second) == list(range(12))
    assert first != second


def test_batches_reach_the_objective_in_train_mode_on_model_dtype_with_long_labels() -> None:
    model = nn.Linear(2, 2).eval()
    obj = Recorder()
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0, 1, 1, 0], dtype=torch.int32)
    fit(model, obj, {"retain": (x, y)}, TrainConfig(epochs=1, batch_size=4))
    (call,) = obj.calls
    bx, by = call["batches"]["retain"]
    assert call["training"] and not model.training
    assert bx.dtype == torch.float32 and by.dtype == torch.long
    assert sorted(by.tolist()) == [0, 0, 1, 1]


def test_max_steps_stops_across_epochs_and_sets_the_total() -> None:
    obj = Recorder()
    logs = fit(nn.Linear(1, 1), obj, {"retain": zeros(10)}, TrainConfig(epochs=5, batch_size=4, max_steps=4))
    assert len(obj.calls) == 4
    assert {c["info"].total_steps for c in obj.calls} == {4}
    assert [entry["steps"] for entry in logs] == [3, 4]


def test_zero_epochs_leave_the_model_unchanged() -> None:
    model = nn.Linear(3, 2).eval()
    before = params_of(model)
    obj = Recorder()
    assert fit(model, obj, {"retain": blobs(8, 3, 2)}, TrainConfig(epochs=0)) == []
    assert obj.calls == []
    assert not model.training
    assert all(torch.equal(p, before[n]) for n, p in params_of(model).items())


def test_missing_streams_are_reported_even_for_zero_epochs() -> None:
    obj = Recorder(streams=("forget", "retain"))
    for data in ({"retain": zeros(4)}, {"retain": zeros(4), "forget": None}):
        with pytest.raises(ValueError, match=r"needs data streams \['forget'\]"):
            fit(nn.Linear(1, 1), obj, data, TrainConfig(epochs=0))


def test_other_streams_are_cycled_alongside_the_driver() -> None:
    obj = Recorder(streams=("retain", "forget"))
    forget = (torch.full((1, 1), 7.0), torch.ones(1, dtype=torch.long))
    fit(nn.Linear(1, 1), obj, {"retain": zeros(9), "forget": forget}, TrainConfig(epochs=1, batch_size=3))
    assert len(obj.calls) == 3
    assert all(c["batches"]["forget"][0].item() == 7.0 and set(c["batches"]) == {"retain", "forget"} for c in obj.calls)


def test_an_empty_secondary_stream_is_an_error() -> None:
    with pytest.raises(ValueError, match="a data stream of the objective is empty"):
        fit(
            nn.Linear(1, 1),
            Recorder(streams=("retain", "forget")),
            {"retain": zeros(4), "forget": zeros(0)},
            TrainConfig(epochs=1),
        )


class TwoPhases(Recorder):
    """Each epoch: one pass over ``forget``, then one over ``retain``; stops after ``stop_after`` epochs."""

    def __init__(self, stop_after: int = 99) -> None:
        super().__init__(streams=("retain",))
        self.stop_after = stop_after
        self.epochs_done = 0

    def phases(self, epoch: int) -> list[tuple[str, ...]]:
        return [("forget",), ("retain",)]

    def finished(self, model: nn.Module) -> bool:
        self.epochs_done += 1
        return self.epochs_done >= self.stop_after


def test_phases_run_in_order_and_count_towards_the_total() -> None:
    obj = TwoPhases()
    data = {"forget": zeros(2), "retain": zeros(6)}
    logs = fit(nn.Linear(1, 1), obj, data, TrainConfig(epochs=2, batch_size=2))
    assert [next(iter(c["batches"])) for c in obj.calls] == (["forget"] + ["retain"] * 3) * 2
    assert obj.calls[0]["info"].total_steps == 8
    assert [entry["steps"] for entry in logs] == [4, 8]


def test_finished_stops_after_the_epoch() -> None:
    obj = TwoPhases(stop_after=1)
    logs = fit(nn.Linear(1, 1), obj, {"forget": zeros(2), "retain": zeros(2)}, TrainConfig(epochs=5, batch_size=2))
    assert len(logs) == 1 and len(obj.calls) == 2


@pytest.mark.parametrize(
    "schedule, factor",
    [
        ("constant", lambda s, t: 1.0),
        ("linear", lambda s, t: 1 - s / t),
        ("cosine", lambda s, t: 0.5 * (1 + math.cos(math.pi * s / t))),
        ("exponential", lambda s, t: 0.5**s),
        # warm-up from 1/25 over the first quarter (here steps 0-2 of 12), then a cosine to 0
        (
            "onecycle",
            lambda s, t: (
                0.04 + 0.96 * s / (t / 4) if s < t / 4 else 0.5 * (1 + math.cos(math.pi * (s - t / 4) / (0.75 * t)))
            ),
        ),
    ],
)
def test_schedules_set_the_learning_rate_of_every_step(schedule: str, factor) -> None:
    cfg = TrainConfig(epochs=2, batch_size=1, lr=0.1, momentum=0.0, weight_decay=0.0, schedule=schedule, lr_decay=0.5)
    assert lr_steps(cfg, 6) == pytest.approx([0.1 * factor(s, 12) for s in range(12)], abs=1e-7)


def test_grad_clip_bounds_the_step() -> None:
    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.1, momentum=0.0, weight_decay=0.0, grad_clip=1.0)
    model, obj = Scalar(), Slope(scale=100.0)
    fit(model, obj, {"retain": zeros(2)}, cfg)
    assert obj.before == pytest.approx([0.0, -0.1]) and float(model.p.detach()) == pytest.approx(-0.2)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masked_entries_do_not_move(optimizer: str) -> None:
    """Masked-out entries survive momentum and weight decay; a fully masked parameter is untouched."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    before = params_of(model)
    mask = {"0.weight": torch.rand(8, 4) > 0.5, "2.bias": torch.zeros(3, dtype=torch.bool)}
    cfg = TrainConfig(epochs=3, lr=0.1, batch_size=16, optimizer=optimizer, weight_decay=0.1)
    fit(model, CE(), {"retain": blobs()}, cfg, trainable=mask)
    after = params_of(model)
    m = mask["0.weight"]
    assert torch.equal(after["0.weight"][~m], before["0.weight"][~m])
    assert (after["0.weight"][m] != before["0.weight"][m]).all()
    assert torch.equal(after["2.bias"], before["2.bias"])
    assert not torch.equal(after["2.weight"], before["2.weight"])


def test_parameters_without_grad_are_left_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model[0].weight.requires_grad_(False)
    before = params_of(model)
    fit(model, CE(), {"retain": blobs()}, TrainConfig(epochs=2, lr=0.1, batch_size=16, weight_decay=0.1))
    after = params_of(model)
    assert torch.equal(after["0.weight"], before["0.weight"])
    assert not torch.equal(after["0.bias"], before["0.bias"])


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))


def images() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(30, 1, 8, 8, generator=g), torch.arange(30) % 3


def run(seed: int, augment: str = "none", **kw) -> dict[str, Tensor]:
    model = conv_net()
    fit(
        model,
        CE(),
        {"retain": images()},
        TrainConfig(epochs=2, lr=0.05, batch_size=8, seed=seed, augment=augment, **kw),
    )
    return params_of(model)


def test_channels_last_trains_the_same_model_up_to_rounding() -> None:
    a, b = run(0, "crop_flip"), run(0, "crop_flip", channels_last=True)
    assert all(torch.allclose(a[n], b[n], atol=1e-5) for n in a)


class Interrupt(CE):
    """Cross-entropy that stops the process (as a kill would) at a given step."""

    def __init__(self, at: int) -> None:
        self.at = at

    def backward(self, model: nn.Module, batches: dict, info: StepInfo) -> float:
        if info.step == self.at:
            raise KeyboardInterrupt
        return super().backward(model, batches, info)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_run_resumed_from_its_checkpoint_equals_an_uninterrupted_one(tmp_path, optimizer: str) -> None:
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=8, optimizer=optimizer, augment="crop_flip", schedule="onecycle")
    whole = conv_net()
    logs = fit(whole, CE(), {"retain": images()}, cfg)
    ckpt = tmp_path / "state.safetensors"
    model = conv_net()
    with pytest.raises(KeyboardInterrupt):  # killed in the second epoch (4 steps per epoch)
        fit(model, Interrupt(at=6), {"retain": images()}, cfg, checkpoint=ckpt)
    assert ckpt.is_file()
    resumed = fit(conv_net(), CE(), {"retain": images()}, cfg, checkpoint=ckpt)

    # the third call starts from a fresh model: everything it ends with came from the file
    def untimed(entries):
        return [{k: v for k, v in e.items() if k != "seconds"} for e in entries]

    assert not ckpt.exists() and untimed(resumed) == untimed(logs)
    # the epoch finished before the kill keeps its time: the run's cost counts every session
    assert len(resumed) == 3 and all(e["seconds"] > 0 for e in resumed)
    restarted = conv_net()
    fit(restarted, CE(), {"retain": images()}, cfg, checkpoint=ckpt)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), restarted.state_dict().values()))


def test_a_checkpoint_of_another_config_or_a_damaged_one_is_not_resumed(tmp_path) -> None:
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=8)
    ckpt = tmp_path / "state.safetensors"
    with pytest.raises(KeyboardInterrupt):
        fit(conv_net(), Interrupt(at=5), {"retain": images()}, cfg, checkpoint=ckpt)
    expected = run(0)
    other = conv_net()
    with pytest.warns(UserWarning, match="another training config"):
        fit(other, CE(), {"retain": images()}, TrainConfig(epochs=2, lr=0.1, batch_size=8), checkpoint=ckpt)
    # ``run`` trains the same config from scratch, so a refused checkpoint must leave no trace
    ckpt.write_bytes(b"not a checkpoint")
    damaged = conv_net()
    with pytest.warns(UserWarning, match="cannot resume"):
        fit(damaged, CE(), {"retain": images()}, cfg, checkpoint=ckpt)
    assert all(torch.equal(expected[n], p) for n, p in params_of(damaged).items())


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_same_seed_same_run_other_seed_other_run(augment: str) -> None:
    a, b, c = run(0, augment), run(0, augment), run(1, augment)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_labels_beyond_the_classes_are_a_value_error_before_any_step() -> None:
    model = nn.Linear(4, 3)
    before = params_of(model)
    x, _ = blobs(8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, number of classes\)"):
        fit(model, CE(), {"retain": (x, torch.full((8,), 5))}, TrainConfig(epochs=1))
    assert all(torch.equal(p, before[n]) for n, p in params_of(model).items())


def test_a_nonfinite_loss_stops_training() -> None:
    obj = Recorder(loss_of=lambda step: float("nan") if step == 1 else 0.0)
    model = nn.Linear(1, 1).eval()
    with pytest.raises(FloatingPointError, match="mine: the loss became nan at step 1"):
        fit(model, obj, {"retain": zeros(4)}, TrainConfig(epochs=1, batch_size=1), desc="mine")
    assert len(obj.calls) == 2 and not model.training


def test_a_mask_of_the_wrong_shape_is_refused_before_training() -> None:
    model = nn.Linear(4, 3)
    before = params_of(model)
    with pytest.raises(
        ValueError, match=r"mask 'weight' has shape \(4, 3\); the parameter 'weight' has shape \(3, 4\)"
    ):
        fit(
            model,
            CE(),
            {"retain": blobs()},
            TrainConfig(epochs=1, lr=0.1),
            trainable={"weight": torch.ones(4, 3, dtype=torch.bool)},
        )
    assert torch.equal(model.weight.detach(), before["weight"])


def test_a_mask_naming_no_parameter_is_refused() -> None:
    model = nn.Linear(4, 3)
    before = params_of(model)
    with pytest.raises(ValueError, match="mask 'wieght' names no parameter of the model; parameters: weight, bias"):
        fit(
            model,
            CE(),
            {"retain": blobs()},
            TrainConfig(epochs=1, lr=0.1),
            trainable={"wieght": torch.zeros(3, 4, dtype=torch.bool)},
        )
    assert all(torch.equal(p, before[n]) for n, p in params_of(model).items())


class ModesSeen(CE):
    """Cross-entropy that records every module's train/eval flag at each step."""

    def __init__(self) -> None:
        self.modes: list[list[bool]] = []

    def loss(self, model: nn.Module, batches: dict, info: StepInfo) -> Tensor:
        self.modes.append([m.training for m in model.modules()])
        return super().loss(model, batches, info)


def test_a_submodule_frozen_in_eval_stays_frozen_and_every_mode_comes_back() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    model.train()
    model[1].eval()
    stats = model[1].running_mean.clone()
    obj = ModesSeen()
    fit(model, obj, {"retain": blobs()}, TrainConfig(epochs=1, batch_size=16))
    assert len(obj.modes) == 3 and all(m == [True, True, False, True] for m in obj.modes)
    assert torch.equal(model[1].running_mean, stats)
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_a_model_in_eval_trains_wholly_in_train_mode_and_comes_back_in_eval() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).eval()
    obj = ModesSeen()
    fit(model, obj, {"retain": blobs()}, TrainConfig(epochs=1, batch_size=16))
    assert obj.modes and all(all(m) for m in obj.modes)
    assert not any(m.training for m in model.modules())
