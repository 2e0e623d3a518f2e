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
        data_root=str(mnist_root), scenarios=["class:3"], seeds=[0],
        methods=["ft", "unlink:variant=svd", "unlink_rayleigh"],
        recipe={"epochs": 1}, mia_samples=1000, out_dir=str(tmp_path / "run"),
    )
    rows = run_classify_bench(cfg, progress=False)
    by = {r["method"]: r for r in rows}
    assert set(by) == {"original", "retrain", "ft", "unlink:variant=svd", "unlink_rayleigh"}
    # The original knows digit 3; Retrain never saw it; Unlink (Rayleigh) removes it without training.
    assert by["original"]["UA"] < 10 and by["retrain"]["UA"] == 100.0
    assert by["unlink_rayleigh"]["UA"] > 90 and by["unlink_rayleigh"]["TA"] > by["original"]["TA"] - 3
    assert by["unlink_rayleigh"]["RTE_s"] < by["retrain"]["RTE_s"]
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
