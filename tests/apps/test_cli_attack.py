"""``eraser attack`` and ``eraser bench attack``: attacks on an erased bundled digits model, scored,
written to a folder, replayed, and methods x attacks in one resumable table."""

import json

import pytest
import torch
from safetensors import safe_open

import eraser
from apps.cli import main
from eraser.bundled import digits_pipeline
from evaluation import attack_bench

FAST = ["--prompt", "a photo of the digit", "--images", "2", "--target-images", "2", "--option", "steps=2"]
DIGITS = ["--model", "bundled:digits", "--concept", "seven"]


def test_attack_an_erasure_made_here_is_scored_and_written(tmp_path, capsys):
    out = tmp_path / "att"
    main(
        ["attack", *DIGITS, "--erase", "unlink", "--judge", "digits", "--target-class", "7", *FAST]
        + ["--instances", "2", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert "| soft_prompt | seven | erase_concepts(method='unlink') | 2 |" in printed
    report = json.loads((out / "attack.json").read_text())
    row = report["rows"][0]
    assert 0 <= row["ASR (%)"] <= 100 and 0 <= row["image-level (%)"] <= 100 and 0 <= row["no attack (%)"] <= 100
    settings = report["settings"]
    assert settings["target_class"] == "7" and settings["images_per_instance"] == 2
    assert [a["config"]["seed"] for a in settings["attack"]] == [0, 1]  # independent runs
    assert all(a["config"]["steps"] == 2 for a in settings["attack"])
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0_0.png", "0_1.png", "1_0.png", "1_1.png"]
    assert (out / "grid.png").is_file() and (out / "attack.md").is_file()
    # the summary the issue asks for
    summary = json.loads((out / "report.json").read_text())
    assert summary["attack"] == "soft_prompt" and summary["instances"] == 2 and summary["target_class"] == 7
    assert summary["asr"] == row["ASR (%)"] and summary["image_asr"] == row["image-level (%)"]
    assert summary["settings"]["erasure"] == "erase_concepts(method='unlink')" and summary["judge"]
    with safe_open(str(out / "attack.safetensors"), framework="pt") as f:
        assert f.get_tensor("prompt_embeds").shape[0] == 2 and f.get_tensor("embeddings").shape[:2] == (2, 4)
        assert len(json.loads(f.metadata()["eraser_attack"])) == 2
        ident = json.loads(f.metadata()["text_encoder"])
    assert ident["pipeline"] == "DigitsPipeline" and ident["hidden_size"] == 64 and ident["sequence_length"] == 77
    assert ident["token_embedding"] == summary["settings"]["text_encoder"]["token_embedding"]


def test_older_positional_form_and_label_alias_still_work(tmp_path):
    out = tmp_path / "old"
    main(
        ["attack", "bundled:digits", "seven", "--attack", "ring_a_bell", "--option", "strengths=1|2"]
        + ["--judge", "digits", "--label", "7", "--images", "2", "--out", str(out)]
    )
    summary = json.loads((out / "report.json").read_text())
    assert summary["attack"] == "ring_a_bell" and summary["instances"] == 2  # one instance per strength
    assert summary["settings"]["targets"] is None  # ring_a_bell needs no images of the concept
    assert summary["settings"]["attack"][0]["config"]["strengths"] == [1.0, 2.0]
    assert len(summary["prompts"]) == 2 and summary["settings"]["label"] == "7"


def test_attack_a_saved_patch_with_paraphrases_and_no_judge(tmp_path, capsys):
    pipe = digits_pipeline()
    path = eraser.erase_concepts(pipe, "seven").save(tmp_path / "seven.safetensors")
    out = tmp_path / "para"
    main(
        ["attack", *DIGITS, "--patch", str(path), "--attack", "paraphrase"]
        + ["--paraphrase", "a handwritten 7", "--paraphrase", "the number seven", "--images", "2", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert "prompts: ['a handwritten 7', 'the number seven']" in printed
    report = json.loads((out / "attack.json").read_text())
    assert report["settings"]["erasure"] == f"patch {path}" and report["settings"]["patch_metadata"]["names"]
    assert "ASR (%)" not in report["rows"][0]  # nothing to score with: the images are written for evaluators
    assert len(list((out / "images").iterdir())) == 4
    summary = json.loads((out / "report.json").read_text())
    assert summary["asr"] is None and summary["image_asr"] is None and summary["instances"] == 2


def test_replay_scores_a_saved_attack_again_and_refuses_another_text_encoder(tmp_path):
    first = tmp_path / "first"
    main(
        ["attack", *DIGITS, "--erase", "unlink", "--attack", "discrete_prompt", *FAST, "--instances", "1"]
        + ["--judge", "digits", "--target-class", "7", "--out", str(first)]
    )
    again = tmp_path / "again"
    main(
        ["attack", "--model", "bundled:digits", "--erase", "unlink", "--replay", str(first / "attack.safetensors")]
        + ["--judge", "digits", "--target-class", "7", "--images", "2", "--out", str(again)]
    )
    a, b = (json.loads((d / "report.json").read_text()) for d in (first, again))
    assert b["attack"] == "discrete_prompt" and b["concept"] == "seven" and b["prompts"] == a["prompts"]
    assert (b["asr"], b["image_asr"]) == (a["asr"], a["image_asr"])  # the same conditioning on the same seeds
    assert b["settings"]["replay"] == str(first / "attack.safetensors")
    with (
        safe_open(str(first / "attack.safetensors"), framework="pt") as f,
        safe_open(str(again / "attack.safetensors"), framework="pt") as g,
    ):
        assert torch.equal(f.get_tensor("prompt_embeds"), g.get_tensor("prompt_embeds"))
    replay = ["attack", "--model", "random:tiny-sd", "--replay", str(first / "attack.safetensors")]
    with pytest.raises(SystemExit, match=r"made for another text encoder: its conditioning is 77 x 64"):
        main([*replay, "--images", "1", "--out", str(tmp_path / "sd")])
    # a text attack (discrete_prompt) replays on another model through that model's own encoder
    main([*replay, "--replay-as-text", "--images", "1", "--out", str(tmp_path / "sd")])
    moved = json.loads((tmp_path / "sd" / "report.json").read_text())
    assert moved["prompts"] == a["prompts"] and moved["settings"]["replay_as_text"] is True
    with pytest.raises(SystemExit, match="holds a discrete_prompt attack, not soft_prompt"):
        main(
            [
                "attack",
                *DIGITS,
                "--replay",
                str(first / "attack.safetensors"),
                "--attack",
                "soft_prompt",
                "--out",
                str(tmp_path / "x"),
            ]
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--judge", "digits"], "--judge and --target-class together"),
        (["--judge", "digits", "--target-class", "12"], r"has 10 classes \(0..9\); target class '12'"),
        (["--patch", "missing.safetensors"], "missing.safetensors"),
        (["--patch", "x.safetensors", "--erase", "unlink"], "not both"),
        (["--attack", "paraphrase"], "needs prompts"),
        (["--attack", "nope"], "unknown attack 'nope'"),
        (["--option", "steps"], "key=value"),
        (["--option", "stepz=3"], "no option 'stepz'"),
        (["--option", "steps=0"], "soft_prompt: steps must be >= 1"),
        (["--option", "time_budget=0"], "soft_prompt: time_budget must be > 0"),
        (["--attack", "textual_inversion", "--option", "steps=0"], "textual_inversion: steps must be >= 1"),
        (["--attack", "ring_a_bell", "--option", "strengths="], "strengths must list at least one"),
        (["--erase", "unlink:strenght=2"], "no option 'strenght'"),
        (["--images", "0"], "--images must be >= 1"),
        (["--replay", "missing.safetensors"], "no attack file at missing.safetensors"),
        (["--replay-as-text"], "--replay-as-text needs --replay"),
    ],
)
def test_attack_bad_input_says_what_to_do(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        main(["attack", *DIGITS, "--out", str(tmp_path / "o"), *extra])
    assert not (tmp_path / "o").exists()


def test_attack_needs_a_model_and_a_concept(tmp_path):
    with pytest.raises(SystemExit, match="give the erased concept to bring back: --concept"):
        main(["attack", "--model", "bundled:digits", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="give the model to attack: --model"):
        main(["attack", "--concept", "seven", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="disagree"):
        main(["attack", "bundled:digits", "--model", "random:tiny-sd", "--concept", "x", "--out", str(tmp_path / "o")])


def test_attack_targets_folder_without_images_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no .png"):
        main(["attack", *DIGITS, "--targets", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])


def test_attack_reads_target_images_from_a_folder(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "sevens"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # other sizes and modes are fitted to the model's 32 x 32 grey images
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "att"
    main(["attack", *DIGITS, "--targets", str(folder), *FAST, "--instances", "1", "--out", str(out)])
    settings = json.loads((out / "attack.json").read_text())["settings"]
    assert settings["targets"] == str(folder) and settings["erasure"] == "none (the ceiling)"


# -- eraser bench attack --------------------------------------------------------------------------
BENCH = ["bench", "attack", "--digits", "7", "--method", "unlink", "--instances", "1", "--images", "2"]
SOFT = "soft_prompt:steps=2,batch_size=2,probe_images=2,probe_timesteps=1"


def test_bench_attack_writes_the_table_and_resumes_without_recomputing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    calls = []
    real = attack_bench.run_instances

    def counting(name, *a, **k):
        calls.append(name)
        return real(name, *a, **k)

    monkeypatch.setattr(attack_bench, "run_instances", counting)
    main([*BENCH, "--targets", "2", "--attack", SOFT, "--out", str(out)])
    assert calls.count("soft_prompt") == 2  # the original row and unlink
    report = json.loads((out / "attack_bench.json").read_text())
    rows = report["rows"]
    assert [(r["digit"], r["method"], r["attack"]) for r in rows] == [
        (7, "original (no erasure)", SOFT),
        (7, "unlink", SOFT),
    ]
    assert rows[0]["erase s"] == "-" and rows[1]["erase s"] > 0
    assert all(0 <= r["ASR (%)"] <= 100 and 0 <= r["no attack (%)"] <= 100 and r["instances"] == 1 for r in rows)
    assert rows[0]["no attack (%)"] >= rows[1]["no attack (%)"]  # the erasure works on the plain prompt
    assert len(list((out / "cells").glob("*.json"))) == 2 and (out / "attack_bench.md").is_file()
    assert report["settings"]["attacks"] == [SOFT] and "2 cells computed, 0 found" in capsys.readouterr().out

    # a rerun with one more attack computes only the new column (the finished cells are read back)
    calls.clear()
    main([*BENCH, "--targets", "2", "--attack", SOFT, "--attack", "ring_a_bell:strengths=1|2", "--out", str(out)])
    assert calls.count("soft_prompt") == 0 and calls.count("ring_a_bell") == 2
    again = json.loads((out / "attack_bench.json").read_text())["rows"]
    assert [r for r in again if r["attack"] == SOFT] == rows
    assert [r["instances"] for r in again if r["attack"] != SOFT] == [2, 2]  # one per strength

    # a crash-free rerun of finished cells computes nothing at all: not even the erasure
    def fail(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(attack_bench, "run_instances", fail)
    monkeypatch.setattr(eraser, "erase_concepts", fail)
    main([*BENCH, "--targets", "2", "--attack", SOFT, "--attack", "ring_a_bell:strengths=1|2", "--out", str(out)])
    assert json.loads((out / "attack_bench.json").read_text())["rows"] == again
    assert "0 cells computed, 4 found" in capsys.readouterr().out


def test_bench_attack_resumes_after_a_crash(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    real = attack_bench.run_instances
    seen = []

    def crash_on_unlink(name, pipe, *a, **k):
        seen.append(name)
        if len(seen) == 4:  # original: plain prompt, attack; unlink: plain prompt, attack <- killed
            raise RuntimeError("killed")
        return real(name, pipe, *a, **k)

    monkeypatch.setattr(attack_bench, "run_instances", crash_on_unlink)
    with pytest.raises(SystemExit, match="killed"):
        main([*BENCH, "--attack", "ring_a_bell:strengths=1", "--out", str(out)])
    assert len(list((out / "cells").glob("*.json"))) == 1  # the original row's cell survived the crash
    # the crashed run left the model unerased: the rerun's original row is read back, unlink computed
    seen.clear()
    monkeypatch.setattr(attack_bench, "run_instances", lambda name, *a, **k: seen.append(name) or real(name, *a, **k))
    main([*BENCH, "--attack", "ring_a_bell:strengths=1", "--out", str(out)])
    assert seen == ["paraphrase", "ring_a_bell"]  # the unlink row only: its plain-prompt rate, then the attack


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--digits", "12"], "digits must list digits in 0..9"),
        (["--digits", "x"], "comma-separated digits"),
        (["--attack", "nope"], "unknown attack 'nope'"),
        (["--attack", "soft_prompt:steps=0"], "soft_prompt: steps must be >= 1"),
        (["--attack", "paraphrase"], "needs prompts"),
        (["--attack", "soft_prompt:seed=1234"], "eval_seed 1234 is one of soft_prompt:seed=1234's optimisation seeds"),
        (["--method", "nope"], "nope"),
        (["--images", "0"], "images must be >= 1"),
    ],
)
def test_bench_attack_bad_input(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        main(["bench", "attack", *extra, "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_bench_cell_key_holds_every_attack_setting_not_only_the_given_ones():
    from evaluation.attack_bench import AttackBenchConfig, cell_key
    from evaluation.attacks import T_MIN

    cfg = AttackBenchConfig(digits=(7,), attacks=("soft_prompt:steps=2",))
    plain = cell_key(cfg, 7, "unlink", "soft_prompt:steps=2")
    # a default the user did not write is part of the key: changing it makes a new cell
    assert plain["attack_config"]["t_min"] == T_MIN and plain["attack_config"]["steps"] == 2
    other = cell_key(cfg, 7, "unlink", "soft_prompt:steps=2,t_min=0.25")
    assert other["attack_config"]["t_min"] == 0.25 and other != plain
    # the method's resolved config too (its defaults change between versions)
    original = cell_key(cfg, 7, "original (no erasure)", "soft_prompt")
    assert plain["method_config"]["strength"] == 2.0 and "method_config" not in original
    robust = cell_key(cfg, 7, "unlink_robust:closure=none", "soft_prompt:steps=2")["method_config"]
    assert robust["closure"] == "none" and robust["adversarial_rounds"] >= 0


def test_bench_summary_puts_the_worst_digit_first():
    from evaluation.attack_bench import summarise

    def row(d, method, asr, drop):
        return {
            "digit": d,
            "method": method,
            "attack": "soft_prompt",
            "ASR (%)": asr,
            "image-level (%)": asr,
            "no attack (%)": 0.0,
            "erase s": 0.5,
            "worst drop": drop,
        }

    rows = [
        row(7, "unlink", 100.0, "+0.0"),
        row(2, "unlink", 0.0, "+50.0 (digit 8)"),
        row(9, "unlink", 50.0, "+10.0 (digit 4)"),
    ]
    (s,) = summarise(rows)
    assert s["ASR max (%)"] == "100.0 (7)" and s["ASR min (%)"] == "0.0 (2)" and s["ASR mean (%)"] == 50.0
    assert s["worst kept drop"] == "50.0 (2 -> 8)" and s["digits"] == 3 and s["erase s"] == 0.5
