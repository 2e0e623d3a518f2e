import json
import os
import subprocess
import sys

import pytest
import torch

import eraser
from apps.cli import main


def test_methods_lists_unlink(capsys):
    main(["methods"])
    assert "unlink" in capsys.readouterr().out


def test_patch_info_reads_a_saved_patch(tiny, images, tmp_path, capsys):
    path = eraser.erase_classes(tiny, images, k=1, names=["cat"]).save(tmp_path / "p.safetensors")
    main(["patch-info", str(path)])
    info = json.loads(capsys.readouterr().out)
    assert info["metadata"]["names"] == ["cat"] and info["layers"]["head"]["rank"] == 1


def test_patch_info_on_a_bad_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a patch")
    with pytest.raises(SystemExit, match="not a readable erasure patch"):
        main(["patch-info", str(bad)])


def test_demo_without_data_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="--data DIR"):
        main(["demo-classifier", "--data", str(tmp_path)])


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "apps.cli", "methods"], capture_output=True, text=True, check=True)
    assert "unlink" in out.stdout


@pytest.mark.slow
def test_demo_on_real_data(shared_data, capsys):
    main(["demo-classifier", "--data", str(shared_data), "--val-per-class", "10", "--forget", "50"])
    out = capsys.readouterr().out
    assert "UA (erased class no longer top-1)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0,0"], "seeds must be distinct"),
        (["--scenario", "digit:3"], "cannot read scenario"),
        (["--methods", "ft,nope"], "unknown method"),
        (["--methods", "ft:lr=fast"], "takes a float"),
        (["--recipe", "epochs=x"], "takes a int"),
        (["--data-root", "/nonexistent/mnist"], "does not exist"),
        (["--shift", "blur:3"], "gauss"),
        (["--original", "/nonexistent/weights.pt"], "does not exist"),
    ],
)
def test_bench_classify_bad_input_says_what_is_wrong(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(["bench", "classify", "--out", str(tmp_path / "out"), "--quiet", *argv])


def test_bench_classify_runs_from_the_command_line(shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    main(
        [
            "bench",
            "classify",
            "--data-root",
            str(shared_data / "mnist"),
            "--scenario",
            "classes:1,7",
            "--methods",
            "unlink_rayleigh,ga:lr=0.001;epochs=1",
            "--recipe",
            "epochs=1",
            "--mia-samples",
            "500",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert "| classes:1,7 | unlink_rayleigh |" in printed and "| classes:1,7 | ga:lr=0.001,epochs=1 |" in printed
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    ga = next(r for r in rows if r["method"].startswith("ga"))
    assert ga["config"]["lr"] == 0.001 and ga["config"]["epochs"] == 1 and ga["n_forget"] > 2000


def test_vector_bank_from_the_command_line_resumes(shared_data, tmp_path, capsys):
    argv = [
        "vector",
        "bank",
        "--data-root",
        str(shared_data / "mnist"),
        "--recipe",
        "epochs=1",
        "--recipe",
        "max_steps=30",
        "--option",
        "max_steps=2",
        "--out",
        str(tmp_path / "b"),
        "--quiet",
    ]
    main(argv)
    first = capsys.readouterr().out
    assert "vector bank:" in first
    from eraser.vectors import VectorBank

    path = first.split("vector bank: ")[1].split(" (")[0]
    bank = VectorBank.load(path)
    assert bank.classes == list(range(10)) and bank.metadata["config"]["max_steps"] == 2
    main(argv)  # resumes: nothing left to learn, the same file
    assert path in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no option 'steps'"):
        main([*argv[:-3], "--option", "steps=2", "--out", str(tmp_path / "c")])


def test_erase_writes_a_patch_and_an_erased_pipeline(tmp_path, capsys):
    out, folder = tmp_path / "nude.safetensors", tmp_path / "erased"
    main(
        [
            "erase",
            "--model",
            "random:tiny-sd",
            "--concept",
            "nude",
            "--preset",
            "imagenette:tench",
            "--retain",
            "a woman",
            "--k",
            "2",
            "--template",
            "{}",
            "--template",
            "a photo of {}",
            "--out",
            str(out),
            "--save-pipeline",
            str(folder),
        ]
    )
    text = capsys.readouterr().out
    assert "erased ['nude', 'tench']" in text and "rank [2]" in text
    patch = eraser.ErasurePatch.load(out)
    assert patch.metadata["retain"] == ["a woman"] and patch.metadata["config"]["templates"] == ["{}", "a photo of {}"]
    # the saved pipeline loads offline, holds the erased weights, and the patch reverts it
    from eraser.families.architectures import build_pipeline
    from eraser.loading import load_pipeline

    erased = load_pipeline(str(folder))
    base = build_pipeline("tiny-sd")
    patch.apply(base)
    mods = dict(eraser.as_module(erased).named_modules())
    for name in patch.layers:
        assert (mods[name].weight - dict(eraser.as_module(base).named_modules())[name].weight).abs().max() < 1e-6
    patch.revert(erased)
    assert patch.fingerprint_of(erased) == patch.metadata["base_fingerprint"]


def test_erase_refuses_to_overwrite_and_bad_models(tmp_path):
    out = tmp_path / "p.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["erase", "--model", "random:tiny-sd", "--concept", "nude", "--out", str(out)])
    assert out.read_bytes() == b"keep me"
    new = tmp_path / "new.safetensors"
    for model, msg in [
        (str(tmp_path / "missing"), "no pipeline folder"),
        (str(tmp_path), "model_index.json"),
        ("random:sd-v9", "unknown architecture"),
        ("org/not-cached-model", "offline"),
    ]:
        with pytest.raises(SystemExit, match=msg):
            main(["erase", "--model", model, "--concept", "nude", "--out", str(new)])
    assert not new.exists()
    with pytest.raises(SystemExit, match="no option 'nope'"):
        main(["erase", "--model", "random:tiny-sd", "--concept", "nude", "--option", "nope=1", "--out", str(new)])
    with pytest.raises(SystemExit, match="empty"):
        main(["erase", "--model", "random:tiny-sd", "--out", str(new)])


def test_erase_bundled_digits_with_grid_and_check(tmp_path, capsys):
    from PIL import Image

    out, grid = tmp_path / "seven.safetensors", tmp_path / "seven.png"
    main(
        [
            "erase",
            "--model",
            "bundled:digits",
            "--concept",
            "seven",
            "--concept",
            "7",
            "--out",
            str(out),
            "--grid",
            str(grid),
            "--seeds",
            "0,1",
            "--steps",
            "4",
            "--check",
            "--check-images",
            "2",
        ]
    )
    captured = capsys.readouterr()
    text = captured.out
    assert out.is_file() and "erased ['seven', '7']" in text
    img = Image.open(grid)
    assert img.size[0] > 4 * 96 and img.size[1] > 4 * 96  # 4 image columns (2 seeds x before/after), 4 prompt rows
    table = text[text.index("| digit | judge accuracy before | after | drop |") :].splitlines()
    assert table[2].startswith("| 0 | ") and table[9].startswith("| 7 (erased) | ") and table[11].startswith("| 9 | ")
    assert "2 generations of 'a photo of the digit <word>' per digit (20 per model)" in table[12]
    assert "one image = 50.0 points" in table[12]
    summary = table[13]
    assert summary.startswith("erased 7 (seven): UA ") and "worst drop" in summary and "mean drop" in summary
    assert summary.endswith(("| PASS", "| FAIL"))
    # one progress bar over the images of each phase
    bars = captured.err.replace("\r", "\n")
    for desc, n in [("grid: original", 8), ("check: original", 20), ("grid: erased", 8), ("check: erased", 20)]:
        assert f"{desc}: 100%" in bars and f"{n}/{n}" in bars, desc


def test_erase_check_table_reports_what_it_measured(capsys, monkeypatch):
    """The check's numbers reach the table unchanged: the same seeds before and after, UA = 100 -
    accuracy after on the erased digit, drops of the kept digits against the 5-point target."""
    import apps.cli as cli

    results = iter([{d: 100.0 for d in range(10)}, {**{d: 100.0 for d in range(10)}, 7: 5.0, 3: 90.0}])
    seen = []

    def fake_judge(pipe, per_digit, *, steps=None, seed=1234, progress=False):
        seen.append((per_digit, seed, progress))
        return {"accuracy": next(results)}

    monkeypatch.setattr("eraser.bundled.evaluate.judge_digits", fake_judge)
    args = cli.build_parser().parse_args(
        ["erase", "--model", "bundled:digits", "--concept", "seven", "--out", "x", "--check"]
    )
    look = cli._Look(object(), args, ["seven"], [0])
    look.after(object())
    text = capsys.readouterr().out
    assert seen == [(20, 1234, "check: original"), (20, 1234, "check: erased")]
    assert "| 3 | 100.0 | 90.0 | +10.0 |" in text and "| 7 (erased) | 100.0 | 5.0 | +95.0 |" in text
    assert "20 generations" in text and "(200 per model)" in text and "one image = 5.0 points" in text
    assert (
        "erased 7 (seven): UA 95.0 (target >= 95) | kept digits: worst drop +10.0 (digit 3), mean drop +1.1 "
        "(target: every drop <= 5) | FAIL"
    ) in text


def test_erased_digits_from_concepts():
    from apps.cli import _erased_digits

    assert _erased_digits(["seven", "7"]) == [7]
    assert _erased_digits(["a photo of the digit Two", "the number 5"]) == [2, 5]
    assert _erased_digits(["seventeen", "17", "cat"]) == []


def test_erase_check_needs_the_bundled_model(tmp_path):
    with pytest.raises(SystemExit, match="--check runs the digit judge"):
        main(
            [
                "erase",
                "--model",
                "random:tiny-sd",
                "--concept",
                "cat",
                "--out",
                str(tmp_path / "p.safetensors"),
                "--check",
            ]
        )
    with pytest.raises(SystemExit, match="--check-images must be >= 1"):
        main(
            [
                "erase",
                "--model",
                "bundled:digits",
                "--concept",
                "7",
                "--out",
                str(tmp_path / "p.safetensors"),
                "--check",
                "--check-images",
                "0",
            ]
        )
    assert not (tmp_path / "p.safetensors").exists()


def test_demo_subcommand_help(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "Gradio" in capsys.readouterr().out


def test_exit_codes_mean_something(tmp_path):
    def code(*args):
        return subprocess.run(
            [sys.executable, "-m", "apps.cli", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )

    usage = code("generate", "--model")  # argparse: the command line itself is wrong
    unusable = code("evaluate", "nudenet", str(tmp_path / "missing"))  # the input cannot be used
    assert usage.returncode == 2 and unusable.returncode == 1
    assert "image folder not found" in unusable.stderr and "Traceback" not in unusable.stderr
    assert "Exit codes" in code("--help").stdout


def test_erase_compact_writes_the_basis_only(tmp_path, capsys):
    from eraser.bundled import digits_pipeline

    full, small = tmp_path / "full.safetensors", tmp_path / "small.safetensors"
    main(["erase", "--model", "bundled:digits", "--concept", "seven", "--out", str(full)])
    main(["erase", "--model", "bundled:digits", "--concept", "seven", "--out", str(small), "--compact"])
    assert small.stat().st_size < 0.6 * full.stat().st_size
    compact = eraser.ErasurePatch.load(small)
    assert all(e.undo is None for e in compact.edits.values())
    pipe, other = digits_pipeline(), digits_pipeline()
    compact.apply(pipe)
    eraser.ErasurePatch.load(full).apply(other)
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), other.unet.state_dict().values()))
