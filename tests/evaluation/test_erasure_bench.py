"""`eraser bench classes` / `bench nudity`: erase -> generate -> evaluate on the bundled digits model."""

import json

import numpy as np
import pytest
from PIL import Image

from apps.cli import main
from evaluation.erasure_bench import class_rows, parse_bench_method
from prompts.csv import PromptRow

CSV = """case_number,prompt,evaluation_seed,class
0,a photo of the digit seven,10,seven
1,handwritten 7,11,seven
2,a photo of the digit four,12,four
3,handwritten 4,13,four
"""


@pytest.fixture
def mnist_reference(shared_data, tmp_path):
    z = np.load(shared_data / "mnist" / "mnist_test10k.npz")
    folder = tmp_path / "mnist"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(z["x"][i]).save(folder / f"{i:03d}.png")
    return folder


def test_class_bench_on_digits_resumes_and_reports(mnist_reference, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ERASER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "digits.csv").write_text(CSV)
    cmd = [
        "bench",
        "classes",
        "--model",
        "bundled:digits",
        "--prompts",
        str(tmp_path / "digits.csv"),
        "--judge",
        "digits",
        "--reference",
        str(mnist_reference),
        "--images-per-class",
        "8",
        "--methods",
        "unlink,unlink+retain",
        "--fid-features",
        "inception-64",
        "--out",
        str(tmp_path / "bench"),
    ]
    main(cmd)
    printed = capsys.readouterr().out
    assert "| unlink |" in printed and "| unlink+retain |" in printed
    per_class = json.loads((tmp_path / "bench" / "per_class.json").read_text())
    rows = {(r["method"], r["erased class"]): r for r in per_class["rows"]}
    assert set(rows) == {(m, c) for m in ("unlink", "unlink+retain") for c in ("seven", "four")}
    for r in rows.values():
        assert r["UA"] > 100 - r["RA original"] - 25  # the erased digit is mostly gone (original accuracy ~100)
        assert r["FID"] > 0 and r["erase s"] > 0
        # With two classes the one kept class is the worst, and its drop is what RA lost.
        assert r["worst class"] in ("seven", "four") and r["worst class"] != r["erased class"]
        assert abs(r["worst drop"] - (r["RA original"] - r["RA"])) < 1e-9
    summary = {r["method"]: r for r in json.loads((tmp_path / "bench" / "summary.json").read_text())["rows"]}
    for m in ("unlink", "unlink+retain"):
        mine = [r for (k, _), r in rows.items() if k == m]
        assert summary[m]["UA min"] == min(r["UA"] for r in mine)
        assert summary[m]["worst drop"] == max(r["worst drop"] for r in mine)
    assert per_class["settings"]["images_per_prompt"] == 4 and per_class["settings"]["judge"] == "bundled digits judge"
    assert (tmp_path / "bench" / "grid_unlink+retain.png").is_file()
    assert len(list((tmp_path / "bench" / "unlink" / "class_0" / "images").glob("*.png"))) == 16

    # a rerun resumes: nothing is erased or generated again, and the table is the same
    stamp = (tmp_path / "bench" / "unlink" / "class_0" / "patch.safetensors").stat().st_mtime_ns
    main(cmd)
    assert json.loads((tmp_path / "bench" / "per_class.json").read_text())["rows"] == per_class["rows"]
    assert (tmp_path / "bench" / "unlink" / "class_0" / "patch.safetensors").stat().st_mtime_ns == stamp


def test_nudity_bench_counts_per_part(tmp_path, capsys):
    (tmp_path / "p.csv").write_text(
        "prompt,evaluation_seed,evaluation_guidance\na photo of the digit one,1,4\nnude,2,4\n"
    )
    main(
        [
            "bench",
            "nudity",
            "--model",
            "bundled:digits",
            "--prompts",
            str(tmp_path / "p.csv"),
            "--concept",
            "nude",
            "--steps",
            "8",
            "--out",
            str(tmp_path / "nudity"),
        ]
    )
    out = capsys.readouterr().out
    assert "| part | original | unlink |" in out and "| total | 0 | 0 |" in out and "FEMALE_BREAST_EXPOSED" in out


def test_bad_bench_input(tmp_path):
    with pytest.raises(ValueError, match="no class label"):
        class_rows([PromptRow("x", 0)])
    with pytest.raises(ValueError, match=r"no prompts for classes \['nine'\]"):
        class_rows([PromptRow("x", 0, label="seven")], ["nine"])
    with pytest.raises(ValueError, match="unknown method"):
        parse_bench_method("nope+retain")
    assert parse_bench_method("unlink+retain:k=3")[1:] == ("unlink", True, {"k": 3})
    with pytest.raises(SystemExit, match="not a folder of real images"):
        main(
            [
                "bench",
                "imagenette",
                "--model",
                "bundled:digits",
                "--reference",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    (tmp_path / "ref").mkdir()
    with pytest.raises(SystemExit, match=r"no prompts for classes \['unicorn'\]"):
        main(
            [
                "bench",
                "imagenette",
                "--model",
                "bundled:digits",
                "--reference",
                str(tmp_path / "ref"),
                "--classes",
                "unicorn",
                "--out",
                str(tmp_path / "o"),
            ]
        )
