"""The classifier benchmark end to end on real MNIST digits (reduced: one class, one seed)."""

import json

import pytest

from evaluation.classify_bench import ClassifyBenchConfig, run_classify_bench


@pytest.fixture
def mnist_root(shared_data):
    root = shared_data / "mnist"
    if not (root / "mnist_train10k.npz").is_file():
        pytest.skip("MNIST npz files not found")
    return root


def test_bench_mnist_class_forgetting_resumes(mnist_root, tmp_path):
    cfg = ClassifyBenchConfig(
        data_root=str(mnist_root),
        scenarios=["class:3"],
        seeds=[0],
        methods=["ft", "unlink:variant=svd", "unlink_rayleigh"],
        recipe={"epochs": 1},
        mia_samples=1000,
        out_dir=str(tmp_path / "run"),
    )
    rows = run_classify_bench(cfg, progress=False)
    by = {r["method"]: r for r in rows}
    assert set(by) == {"original", "retrain", "ft", "unlink:variant=svd", "unlink_rayleigh"}
    # The original knows digit 3; Retrain never saw it; Unlink (Rayleigh) removes it without training.
    assert by["original"]["UA"] < 10 and by["retrain"]["UA"] == 100.0
    assert by["unlink_rayleigh"]["UA"] > 90 and by["unlink_rayleigh"]["TA"] > by["original"]["TA"] - 3
    # Run times are recorded (comparing them belongs in benchmarks: a loaded machine reorders them).
    assert all(r["RTE_s"] > 0 for r in rows if r["method"] != "original")
    assert all(r["n_forget"] == 1032 for r in rows)  # the 3s among the first 10k training digits
    table = json.loads((tmp_path / "run" / "table.json").read_text())
    assert {r["method"] for r in table["rows"]} == set(by)
    assert "gap" in table["rows"][0] and table["settings"]["recipe"] == {"epochs": 1}
    md = (tmp_path / "run" / "table.md").read_text()
    assert "| class:3 | retrain |" in md and "0.00 ± 0.00" in md  # Retrain's gap to itself

    # Resume: a finished run adds nothing; a cut-off last line is redone, not duplicated.
    lines = (tmp_path / "run" / "rows.jsonl").read_text().splitlines()
    (tmp_path / "run" / "rows.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    again = run_classify_bench(cfg, progress=False)
    assert sorted(r["method"] for r in again) == sorted(by)
    # Another recipe in the same folder is refused instead of mixing runs.
    with pytest.raises(ValueError, match="other settings"):
        run_classify_bench(ClassifyBenchConfig(**{**cfg.__dict__, "recipe": {"epochs": 2}}), progress=False)


def test_bench_config_rejects_bad_lists():
    with pytest.raises(ValueError, match="distinct"):
        ClassifyBenchConfig(seeds=[0, 0])
    with pytest.raises(ValueError, match="cannot read scenario"):
        ClassifyBenchConfig(scenarios=["digit:3"])
    with pytest.raises(ValueError, match="unknown method"):
        ClassifyBenchConfig(methods=["finetune"])
    with pytest.raises(ValueError, match="reference"):
        ClassifyBenchConfig(methods=["retrain"])


def test_method_presets_are_valid_settings():
    from eraser.registry import get_method, make_config
    from evaluation.classify_bench import METHOD_PRESETS, SCENARIO_PRESETS

    for table in (METHOD_PRESETS, SCENARIO_PRESETS):
        for by_method in table.values():
            for name, settings in by_method.items():
                cfg = make_config(get_method(name).config_cls, None, settings, method=name)  # unknown keys raise
                assert all(getattr(cfg, k) == v for k, v in settings.items())
    # the CIFAR tier's trained methods take a whole epoch at most over the retain set (8-epoch original)
    assert METHOD_PRESETS["cifar10"]["ft"] == {"epochs": 1}


def test_scenario_presets_refine_by_dataset():
    from evaluation.classify_bench import scenario_presets

    mnist, other = scenario_presets("mnist", "random"), scenario_presets("cifar10", "random")
    assert mnist["forget_vector"]["retain_weight"] == 30.0 and other["forget_vector"]["retain_weight"] == 1.0
    assert mnist["unlink"] == other["unlink"] == {"tail_beta": 0.05}  # the kind's settings still apply
    assert mnist["forget_vector_compose"]["lr"] == 0.01 and "forget_vector_compose" not in other
    assert scenario_presets("mnist", "class") == {}


def test_bench_forget_vector_rows_bank_and_shifts(mnist_root, tmp_path, monkeypatch):
    cfg = ClassifyBenchConfig(
        data_root=str(mnist_root),
        scenarios=["class:3"],
        seeds=[0],
        methods=["forget_vector:max_steps=15", "forget_vector_compose:max_steps=15"],
        recipe={"epochs": 1, "max_steps": 40},
        mia_samples=500,
        eval_samples=2000,
        out_dir=str(tmp_path / "fv"),
        shifts=["gauss:0.2", "pgd:8/255,3"],
        shift_samples=200,
        gradcam=2,
    )
    # the bank's vectors are learned with the forget_vector preset; keep them short here
    import evaluation.classify_bench as cb

    monkeypatch.setitem(cb.METHOD_PRESETS["mnist"], "forget_vector", {"max_steps": 5})
    rows = run_classify_bench(cfg, progress=False)
    by = {r["method"]: r for r in rows}
    fv, comp = by["forget_vector:max_steps=15"], by["forget_vector_compose:max_steps=15"]
    assert fv["UA"] > by["original"]["UA"] + 20 and fv["config"]["clamp"] is True
    assert 0 <= fv["PR"] <= 100 and by["original"]["PR"] < 20  # the original knows unseen 3s
    assert {"UA@gauss:0.2", "RA@pgd:8/255,3", "TA@pgd:8/255,3"} <= set(fv)
    assert by["original"]["RA@pgd:8/255,3"] < by["original"]["RA@gauss:0.2"]  # the attack hurts the model it targets
    assert comp["config"]["bank"].endswith(".safetensors") and comp["config"]["bank_build_s"] > 0
    assert (tmp_path / "fv" / "robustness.md").read_text().count("| class:3 |") == 4
    from PIL import Image

    grids = sorted(p.name for p in (tmp_path / "fv" / "gradcam").glob("*.png"))
    assert grids == ["class-3_forget_vector-max_steps15.png", "class-3_forget_vector_compose-max_steps15.png"]
    assert Image.open(tmp_path / "fv" / "gradcam" / grids[0]).size[1] > 4 * 96  # 4 rows of upscaled digits


def test_bench_with_a_pretrained_original_and_no_retrain(mnist_root, tmp_path):
    import torch
    from safetensors.torch import save_file

    from classifiers.models import build_model

    torch.manual_seed(0)
    path = tmp_path / "orig.safetensors"
    save_file(build_model("small_cnn", 10, 1).state_dict(), str(path))
    cfg = ClassifyBenchConfig(
        data_root=str(mnist_root),
        scenarios=["class:1"],
        methods=["unlink:variant=svd"],
        original=str(path),
        retrain=False,
        mia_samples=300,
        eval_samples=1000,
        out_dir=str(tmp_path / "r"),
    )
    rows = run_classify_bench(cfg, progress=False)
    assert sorted(r["method"] for r in rows) == ["original", "unlink:variant=svd"]
    assert rows[0]["config"]["checkpoint"]["checkpoint"] == str(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClassifyBenchConfig(original=str(tmp_path / "missing.pt"))
