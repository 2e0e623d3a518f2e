import json

import pytest
import torch

from classifiers.models import build_model, list_architectures
from classifiers.splits import Scenario, make_split
from evaluation.checkpoints import cache_key, cached_model
from evaluation.report import mean_std, write_report


def test_scenarios_parse_and_label():
    assert Scenario.parse("class:3").classes == (3,)
    assert Scenario.parse("classes:1,7").label == "classes:1,7"
    assert Scenario.parse("random:0.1").fraction == 0.1
    assert Scenario.parse("instance:32").count == 32
    for bad in ("class:", "random:x", "forget:3", "instance"):
        with pytest.raises(ValueError, match="cannot read scenario"):
            Scenario.parse(bad)


def test_classwise_split_partitions_and_drops_class_from_test():
    train = torch.arange(5).repeat(20)
    test = torch.arange(5).repeat(4)
    s = make_split(train, test, Scenario.parse("classes:1,3"), seed=0)
    assert set(train[s.forget].tolist()) == {1, 3}
    assert sorted(torch.cat([s.forget, s.retain]).tolist()) == list(range(100))
    assert not set(test[s.test].tolist()) & {1, 3}
    assert set(test[s.test_forget].tolist()) == {1, 3}
    with pytest.raises(ValueError, match="forgets every class"):
        make_split(train, test, Scenario.parse("classes:0,1,2,3,4"))
    with pytest.raises(ValueError, match="no training samples"):
        make_split(train, test, Scenario.parse("class:9"))


def test_random_and_instance_splits_are_seeded():
    train, test = torch.arange(10).repeat(50), torch.arange(10)
    a = make_split(train, test, Scenario.parse("random:0.1"), seed=1)
    b = make_split(train, test, Scenario.parse("random:0.1"), seed=1)
    c = make_split(train, test, Scenario.parse("random:0.1"), seed=2)
    assert len(a.forget) == 50 and torch.equal(a.forget, b.forget) and not torch.equal(a.forget, c.forget)
    assert len(set(a.forget.tolist()) & set(a.retain.tolist())) == 0 and len(a.test) == 10
    assert len(make_split(train, test, Scenario.parse("instance:8")).forget) == 8
    with pytest.raises(ValueError):
        make_split(train, test, Scenario.parse("random:1.5"))


def test_architectures_build_with_the_right_outputs():
    assert {"small_cnn", "cifar_resnet20", "resnet18", "vgg16_bn", "vit_b_16", "swin_t", "resnet50"} <= set(
        list_architectures()
    )
    assert build_model("small_cnn", 10)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert build_model("cifar_resnet20", 7)(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert build_model("resnet18", 5, small_input=True)(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet9000", 10)


def test_cached_model_trains_once(tmp_path):
    calls = []

    def build():
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2)

    def train(m, checkpoint):
        calls.append(checkpoint)
        with torch.no_grad():
            m.weight.add_(1.0)

    key = cache_key(kind="t", data=torch.arange(3), seed=0)
    assert key != cache_key(kind="t", data=torch.arange(3), seed=1)
    a, rec_a = cached_model(build, train, key, tmp_path)
    b, rec_b = cached_model(build, train, key, tmp_path)
    assert calls == [tmp_path / f"{key}.partial.safetensors"] and torch.equal(a.weight, b.weight)
    assert rec_a["weights_sha256"] == rec_b["weights_sha256"]
    # A damaged checkpoint is not used: the model is trained again and the cache rewritten.
    path = tmp_path / f"{key}.safetensors"
    path.write_bytes(path.read_bytes()[:-8])
    c, rec_c = cached_model(build, train, key, tmp_path)
    assert len(calls) == 2 and torch.equal(c.weight, a.weight) and rec_c["weights_sha256"] == rec_a["weights_sha256"]


def test_cached_model_counts_the_training_seconds_of_every_epoch(tmp_path):
    def build():
        return torch.nn.Linear(3, 2)

    # a training resumed from its checkpoint reports the epochs of its earlier runs too
    _, rec = cached_model(
        build, lambda m, c: [{"epoch": 0, "seconds": 100.0}, {"epoch": 1, "seconds": 20.5}], "a", tmp_path
    )
    assert rec["train_s"] == 120.5 and "train_s_covers" not in rec
    # epochs that kept no time (a state written by an older version): said, not hidden
    _, rec = cached_model(build, lambda m, c: [{"epoch": 0}, {"epoch": 1, "seconds": 20.5}], "b", tmp_path)
    assert rec["train_s"] < 100 and rec["train_s_covers"] == "this run only: 1 of 2 epochs ran before it"


def test_report_writes_markdown_csv_json(tmp_path):
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert mean_std([1.0, float("nan"), 3.0]) == (2.0, pytest.approx(2**0.5))  # undefined values left out
    assert all(v != v for v in mean_std([float("nan")]))
    rows = [{"method": "ft", "UA": (10.0, 1.0), "n": 3}, {"method": "ga", "UA": (20.0, 0.0), "n": 3}]
    paths = write_report(tmp_path, "t", ["method", "UA", "n"], rows, {"seeds": [0, 1, 2]}, notes=["a note"])
    md = paths["md"].read_text()
    assert "| ft | 10.00 ± 1.00 | 3 |" in md and '"seeds"' in md and "a note" in md
    assert paths["csv"].read_text().splitlines()[0] == "method,UA_mean,UA_std,n"
    assert json.loads(paths["json"].read_text())["rows"][1]["UA"] == {"mean": 20.0, "std": 0.0}
