"""The generation runner (evaluation/generate.py) and `eraser generate` on the bundled digits model."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

import eraser
from apps.cli import main
from eraser.bundled import digits_pipeline
from evaluation.generate import GenerationConfig, generate_images, plan_batches, plan_jobs, read_index
from prompts.csv import PromptRow
from tests.conftest import launch_two_processes

ROOT = Path(__file__).resolve().parents[2]
CSV = """case_number,prompt,evaluation_seed,evaluation_guidance,class
0,a photo of the digit seven,11,4,seven
1,handwritten 3,12,4,three
2,the number two,13,3,two
3,a photo of the digit one,,3,one
"""
STEPS = 8


@pytest.fixture(scope="module")
def pipe():
    return digits_pipeline()


@pytest.fixture
def rows(tmp_path):
    from prompts import load_prompts

    path = tmp_path / "p.csv"
    path.write_text(CSV)
    return load_prompts(path), path


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


def config(**kw) -> GenerationConfig:
    return GenerationConfig(**{"images_per_prompt": 2, "batch_size": 3, "num_inference_steps": STEPS, **kw})


def test_plan_seeds_names_and_batches(rows):
    rows, _ = rows
    jobs = plan_jobs(rows, config(seed=100))
    assert [j.name for j in jobs[:3]] == ["00000_00.png", "00000_01.png", "00001_00.png"]
    assert jobs[0].seed == 11 and jobs[1].seed == 11 + 2**32  # image 0 keeps the row's own seed
    assert jobs[6].seed == 100 + 3  # no seed in the row: base seed + case number
    assert len({j.seed for j in jobs}) == len(jobs)
    batches = plan_batches(jobs, 3)
    # guidance changes between rows 1 and 2, so the second batch ends early: a batch never mixes 4 and 3
    assert [[j.name for j in b] for b in batches][:2] == [
        ["00000_00.png", "00000_01.png", "00001_00.png"],
        ["00001_01.png"],
    ]
    assert all(len({j.guidance for j in b}) == 1 and len(b) <= 3 for b in batches)


def test_shards_and_resume_give_byte_identical_images(pipe, rows, tmp_path):
    rows, csv = rows
    whole = generate_images(
        pipe, rows, tmp_path / "one", config(), prompts_file=csv, process_index=0, num_processes=1, progress=False
    )
    assert (whole.generated, whole.skipped, whole.total) == (8, 0, 8)
    for i in range(2):  # two processes, one after the other
        generate_images(
            pipe, rows, tmp_path / "two", config(), prompts_file=csv, process_index=i, num_processes=2, progress=False
        )
    assert digests(tmp_path / "one") == digests(tmp_path / "two") and len(digests(tmp_path / "one")) == 8

    # a crash: two images missing, a temporary file left behind; the rerun makes exactly what is missing
    (tmp_path / "one" / "00002_01.png").unlink()
    (tmp_path / "one" / "00000_00.png").unlink()
    (tmp_path / "one" / ".00003_00.png.123.tmp").write_bytes(b"half")
    before = digests(tmp_path / "two")
    again = generate_images(
        pipe, rows, tmp_path / "one", config(), prompts_file=csv, process_index=0, num_processes=1, progress=False
    )
    # batches: [0_0 0_1 1_0] [1_1] [2_0 2_1 3_0] [3_1]; the first and third are redone, writing only what is missing
    assert again.generated == 2 and again.skipped == 2
    assert digests(tmp_path / "one") == before and not list((tmp_path / "one").glob(".*.tmp"))

    index = read_index(tmp_path / "one")
    assert index["00001_00.png"] == {
        "file": "00001_00.png",
        "prompt": "handwritten 3",
        "seed": 12,
        "guidance": 4.0,
        "case_number": 1,
        "image": 0,
        "label": "three",
    }
    settings = json.loads((tmp_path / "one" / "generation.json").read_text())
    assert settings["config"]["num_inference_steps"] == STEPS and settings["prompts"]["rows"] == 4


def test_changed_settings_refuse_to_resume(pipe, rows, tmp_path):
    rows, csv = rows
    generate_images(
        pipe, rows[:1], tmp_path, config(), prompts_file=csv, process_index=0, num_processes=1, progress=False
    )
    before = digests(tmp_path)
    with pytest.raises(ValueError, match="config differ.*--overwrite"):
        generate_images(
            pipe,
            rows[:1],
            tmp_path,
            config(num_inference_steps=STEPS + 1),
            prompts_file=csv,
            process_index=0,
            num_processes=1,
            progress=False,
        )
    assert digests(tmp_path) == before
    redone = generate_images(
        pipe,
        rows[:1],
        tmp_path,
        config(num_inference_steps=STEPS + 1),
        prompts_file=csv,
        overwrite=True,
        process_index=0,
        num_processes=1,
        progress=False,
    )
    assert redone.generated == 2 and digests(tmp_path) != before


def test_patch_is_applied_then_reverted(pipe, rows, tmp_path):
    rows, csv = rows
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    patch = eraser.erase_concepts(pipe, ["seven", "7"])
    patch.revert(pipe)
    path = patch.save(tmp_path / "seven.safetensors")
    base = generate_images(
        pipe, rows[:1], tmp_path / "base", config(), process_index=0, num_processes=1, progress=False
    )
    erased = generate_images(
        pipe, rows[:1], tmp_path / "erased", config(), patch=path, process_index=0, num_processes=1, progress=False
    )
    assert digests(base.out_dir) != digests(erased.out_dir)
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in weights.items())
    assert erased.settings["patch"]["metadata"]["concepts"] == patch.metadata["concepts"]


def test_a_patch_for_another_model_leaves_no_record_behind(pipe, rows, tmp_path):
    """A refused patch writes nothing, so the next correct run in that folder is not refused."""
    from eraser.bundled.pipeline import random_digits_pipeline
    from eraser.loading import load_pipeline

    rows, csv = rows
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    run = dict(prompts_file=csv, process_index=0, num_processes=1, progress=False)
    same_layout = eraser.erase_concepts(random_digits_pipeline(seed=3), "seven").save(tmp_path / "other.safetensors")
    other_layout = eraser.erase_concepts(load_pipeline("random:tiny-sd"), "seven").save(tmp_path / "sd.safetensors")
    out = tmp_path / "gen"
    for foreign in (same_layout, other_layout):
        with pytest.raises(eraser.PatchError, match="fingerprint mismatch|another architecture"):
            generate_images(pipe, rows[:1], out, config(), patch=foreign, **run)
        assert not (out / "generation.json").exists() and not list(out.glob("*.png"))
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in weights.items())
    done = generate_images(pipe, rows[:1], out, config(), **run)  # the correct run: not refused
    assert done.generated == 2 and json.loads((out / "generation.json").read_text())["patch"] is None


def test_bad_rows(pipe, tmp_path):
    with pytest.raises(ValueError, match="appears twice"):
        plan_jobs([PromptRow("a", 1), PromptRow("b", 1)], config())
    with pytest.raises(ValueError, match="empty prompt"):
        plan_jobs([PromptRow("  ", 0)], config())
    with pytest.raises(ValueError, match="batch_size"):
        GenerationConfig(batch_size=0)


def test_cli_generate_and_missing_prompt_column(tmp_path, capsys):
    out = tmp_path / "gen"
    main(
        [
            "generate",
            "--model",
            "bundled:digits",
            "--prompt",
            "a photo of the digit four",
            "--images-per-prompt",
            "3",
            "--steps",
            str(STEPS),
            "--out",
            str(out),
        ]
    )
    assert "3 images generated" in capsys.readouterr().out and len(digests(out)) == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("text_en,seed\nhello,1\n")
    with pytest.raises(SystemExit, match="no 'prompt' column.*columns: \\['text_en', 'seed'\\]"):
        main(["generate", "--model", "bundled:digits", "--prompts", str(bad), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_two_processes_under_accelerate_match_one(rows, tmp_path):
    """The real thing: `accelerate launch` starts two processes (torchrun; gloo on CPU)."""
    _, csv = rows
    common = [
        "generate",
        "--model",
        "bundled:digits",
        "--prompts",
        str(csv),
        "--steps",
        str(STEPS),
        "--images-per-prompt",
        "2",
    ]
    launched = launch_two_processes([*common, "--out", str(tmp_path / "two")], timeout=300)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert "process 1/2" in launched.stdout and "process 2/2" in launched.stdout
    main([*common, "--out", str(tmp_path / "one")])
    assert digests(tmp_path / "one") == digests(tmp_path / "two") and len(digests(tmp_path / "two")) == 8
    assert (tmp_path / "one" / "index.jsonl").read_text() == (tmp_path / "two" / "index.jsonl").read_text()
