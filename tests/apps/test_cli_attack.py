"""``eraser attack``: an attack on an erased bundled digits model, scored and written to a folder."""

import json

import pytest
from safetensors import safe_open

import eraser
from apps.cli import main
from eraser.bundled import digits_pipeline

FAST = ["--prompt", "a photo of the digit", "--images", "2", "--target-images", "2", "--option", "steps=2"]


def test_attack_an_erasure_made_here_is_scored_and_written(tmp_path, capsys):
    out = tmp_path / "att"
    main(
        ["attack", "bundled:digits", "seven", "--erase", "unlink", "--judge", "digits", "--label", "7", *FAST]
        + ["--instances", "2", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert "| soft_prompt | seven | erase_concepts(method='unlink') | 2 |" in printed
    report = json.loads((out / "attack.json").read_text())
    row = report["rows"][0]
    assert 0 <= row["ASR (%)"] <= 100 and 0 <= row["image-level (%)"] <= 100 and 0 <= row["no attack (%)"] <= 100
    settings = report["settings"]
    assert settings["label"] == "7" and settings["images_per_instance"] == 2
    assert [a["config"]["seed"] for a in settings["attack"]] == [0, 1]  # independent runs
    assert all(a["config"]["steps"] == 2 for a in settings["attack"])
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0_0.png", "0_1.png", "1_0.png", "1_1.png"]
    assert (out / "grid.png").is_file() and (out / "attack.md").is_file()
    with safe_open(str(out / "attack.safetensors"), framework="pt") as f:
        assert f.get_tensor("prompt_embeds").shape[0] == 2 and f.get_tensor("embeddings").shape[:2] == (2, 4)
        assert len(json.loads(f.metadata()["eraser_attack"])) == 2


def test_attack_a_saved_patch_with_paraphrases_and_no_judge(tmp_path, capsys):
    pipe = digits_pipeline()
    path = eraser.erase_concepts(pipe, "seven").save(tmp_path / "seven.safetensors")
    out = tmp_path / "para"
    main(
        ["attack", "bundled:digits", "seven", "--patch", str(path), "--attack", "paraphrase"]
        + ["--paraphrase", "a handwritten 7", "--paraphrase", "the number seven", "--images", "2", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert "prompts: ['a handwritten 7', 'the number seven']" in printed
    report = json.loads((out / "attack.json").read_text())
    assert report["settings"]["erasure"] == f"patch {path}" and report["settings"]["patch_metadata"]["names"]
    assert "ASR (%)" not in report["rows"][0]  # nothing to score with: the images are written for evaluators
    assert len(list((out / "images").iterdir())) == 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--judge", "digits"], "--judge and --label together"),
        (["--patch", "missing.safetensors"], "missing.safetensors"),
        (["--patch", "x.safetensors", "--erase", "unlink"], "not both"),
        (["--attack", "paraphrase"], "needs prompts"),
        (["--attack", "nope"], "unknown attack 'nope'"),
        (["--option", "steps"], "key=value"),
        (["--option", "stepz=3"], "no option 'stepz'"),
        (["--erase", "unlink:strenght=2"], "no option 'strenght'"),
        (["--images", "0"], "--images must be >= 1"),
    ],
)
def test_attack_bad_input_says_what_to_do(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        main(["attack", "bundled:digits", "seven", "--out", str(tmp_path / "o"), *extra])
    assert not (tmp_path / "o").exists()


def test_attack_targets_folder_without_images_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no .png"):
        main(["attack", "bundled:digits", "seven", "--targets", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])


def test_attack_reads_target_images_from_a_folder(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "sevens"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # other sizes and modes are fitted to the model's 32 x 32 grey images
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "att"
    main(["attack", "bundled:digits", "seven", "--targets", str(folder), *FAST, "--instances", "1", "--out", str(out)])
    settings = json.loads((out / "attack.json").read_text())["settings"]
    assert settings["targets"] == str(folder) and settings["erasure"] == "none (the ceiling)"
