"""The one runner: every classifier method through ``erase_classes`` / ``run_method``, one result type."""

import copy
from dataclasses import fields

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import eraser
from eraser import ErasurePatch
from eraser.registry import register_method


def _fast(name: str) -> dict:
    """Options that keep a trained method to a couple of steps on the toy task."""
    known = {f.name for f in fields(eraser.get_method(name).config_cls)}
    return {k: v for k, v in {"max_steps": 2, "epochs": 1}.items() if k in known}


@pytest.mark.parametrize("name", eraser.list_methods())
def test_erase_classes_serves_every_classifier_method(name, toy_model, toy_task):
    spec = eraser.get_method(name)
    model = copy.deepcopy(toy_model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    if spec.returns == "wrapper":
        with pytest.raises(ValueError, match="does not change the model's weights"):
            eraser.erase_classes(model, toy_task["forget"], retain_data=toy_task["retain"], method=name, **_fast(name))
        result = eraser.run_method(model, toy_task["forget"], toy_task["retain"], method=name, **_fast(name))
        assert result.patch is None and result.model is not model
        assert result.model(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
        return
    patch = eraser.erase_classes(
        model, toy_task["forget"], retain_data=toy_task["retain"], method=name, names=["class 0"], **_fast(name)
    )
    assert isinstance(patch, ErasurePatch)
    assert name.startswith(patch.metadata["method"]) and patch.metadata["names"] == [
        "class 0"
    ]  # unlink_rayleigh: unlink, variant rayleigh
    patch.revert(model)
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), before[k], rtol=0, atol=0, msg=f"{name}: {k} not restored")


@pytest.mark.parametrize("name", eraser.list_methods())
def test_retain_data_identical_to_the_forget_data_is_refused(name, toy_model, toy_task):
    model = copy.deepcopy(toy_model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = toy_task["forget"]
    dataset = TensorDataset(x, y)
    for forget, retain in [
        (toy_task["forget"], toy_task["forget"]),  # the same object
        (toy_task["forget"], (x.clone(), y.clone())),  # equal tensors
        (x, x.clone()),
        (dataset, dataset),
        (DataLoader(dataset, batch_size=8), DataLoader(dataset, batch_size=16)),
    ]:
        with pytest.raises(ValueError, match="retain data is the same as the forget data"):
            eraser.run_method(model, forget, retain, method=name, **_fast(name))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_trained_patch_records_its_change_and_what_revert_cannot_undo(toy_model, toy_task):
    model = copy.deepcopy(toy_model)
    patch = eraser.erase_classes(model, toy_task["forget"], retain_data=toy_task["retain"], method="ft", epochs=1)
    assert patch.parameters and not patch.layers  # dense changes, no low-rank edit
    assert patch.metadata["config"]["epochs"] == 1 and patch.metadata["family"] == "classifier"
    # The toy model has BatchNorm: training moves its running statistics, which a patch of
    # parameters does not hold; the patch says so.
    assert "bn.running_mean" in patch.metadata["buffers_changed"]
    trained = {k: v.detach().clone() for k, v in model.named_parameters()}
    patch.revert(model)
    patch.apply(model)
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), trained[k])


def test_run_method_computes_on_a_device_and_hands_the_model_back(toy_model, toy_task):
    result = eraser.run_method(toy_model, toy_task["forget"], toy_task["retain"], method="ft", device="cpu", epochs=1)
    assert result.model is toy_model and next(toy_model.parameters()).device.type == "cpu"
    assert result.family == "classifier" and result.method == "ft"


def test_list_methods_filters_by_wildcard():
    assert eraser.list_methods("unlink*") == ["unlink", "unlink_rayleigh"]
    assert eraser.list_methods("unlink*", family="diffusion") == ["unlink", "unlink_rayleigh", "unlink_robust"]
    assert set(eraser.list_methods("*", training_free=True)) < set(eraser.list_methods())
    assert eraser.list_methods("no-such-*") == []


def test_register_method_checks_what_a_method_returns():
    with pytest.raises(ValueError, match="returns must be one of"):
        register_method("bogus_returns", config=eraser.UnlinkConfig, training_free=True, returns="tensor")
    assert "bogus_returns" not in eraser.list_methods()
