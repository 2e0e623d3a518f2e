"""The evaluator table: what `eraser evaluate` offers, which way each metric is better, lookups and filters."""

import argparse
import json
import re

import numpy as np
import pytest
from PIL import Image

import evaluation
from apps.cli import build_parser, main
from apps.cli_generation import EVALUATE_EXAMPLES
from evaluation import registry
from evaluation.registry import INPUTS, EvaluatorResult, get_evaluator, list_evaluators, register_evaluator

# Which way is better for each evaluator `eraser evaluate` offers, and the report file it writes.
EXPECTED = {
    "nudenet": (False, "count", "nudenet"),
    "fid": (False, "FID", "fid"),
    "clip-score": (True, "CLIP score", "clip_score"),
    "judge": (True, "accuracy", "judge"),
}
LIBRARY_ONLY = {"prompts", "detector"}  # options the command line does not take (in-memory prompts, a detector object)


def evaluate_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["evaluate"]


@pytest.fixture
def scratch_table(monkeypatch):
    """Registrations made in a test stay in the test."""
    monkeypatch.setattr(registry, "_EVALUATORS", dict(registry._EVALUATORS))


def test_every_evaluator_the_cli_offers_is_registered(capsys):
    assert set(list_evaluators()) == set(EXPECTED)
    for name in re.findall(r"eraser evaluate (\S+)", EVALUATE_EXAMPLES):
        get_evaluator(name)  # the examples only use registered names
    for name in list_evaluators():
        assert build_parser().parse_args(["evaluate", name, "some/folder"]).evaluator == name
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    help_text = capsys.readouterr().out
    for name in list_evaluators():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(get_evaluator(name).summary)}$", help_text, re.M)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_higher_is_better_and_report_per_evaluator(name):
    spec = get_evaluator(name)
    higher, metric, report = EXPECTED[name]
    assert (spec.higher_is_better, spec.metric, spec.report) == (higher, metric, report)
    assert spec.metric in spec.columns and spec.summary and "images" in spec.needs and set(spec.needs) <= set(INPUTS)
    assert spec is evaluation.get_evaluator(name) and callable(spec.fn)


def test_every_option_of_an_evaluator_is_a_command_line_option():
    dests = {a.dest for a in evaluate_parser()._actions} | {"cache", "progress"}  # cache = not --no-cache
    for name in list_evaluators():
        spec = get_evaluator(name)
        assert "progress" in spec.options
        assert set(spec.options) - LIBRARY_ONLY <= dests, name
    assert get_evaluator("fid").needs == ("images", "reference") and get_evaluator("judge").needs == (
        "images",
        "labels",
    )


def test_unknown_name_says_which_exist(capsys):
    with pytest.raises(
        ValueError, match=r"unknown evaluator 'bogus'; available: \['clip-score', 'fid', 'judge', 'nudenet'\]"
    ):
        get_evaluator("bogus")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "bogus", "some/folder"])
    assert exit_info.value.code == 2  # a usage error, as argparse's own choices gave
    assert "unknown evaluator 'bogus'; available: ['clip-score', 'fid', 'judge', 'nudenet']" in capsys.readouterr().err


def test_list_filter():
    assert list_evaluators() == ["clip-score", "fid", "judge", "nudenet"]
    assert list_evaluators("*") == list_evaluators()
    assert list_evaluators("clip*") == ["clip-score"]
    assert list_evaluators("*i*") == ["clip-score", "fid"]
    assert list_evaluators("CLIP*") == []  # case-sensitive, as list_methods
    assert list_evaluators(higher_is_better=False) == ["fid", "nudenet"]
    assert list_evaluators(higher_is_better=True) == ["clip-score", "judge"]
    assert list_evaluators("n*", higher_is_better=True) == []


def test_registration_rules(scratch_table):
    def fn(images, *, progress=False):
        return EvaluatorResult([])

    with pytest.raises(ValueError, match="already registered"):
        register_evaluator("fid", higher_is_better=False, metric="FID", columns=["FID"])(fn)
    with pytest.raises(ValueError, match="metric 'x' is not one of the columns"):
        register_evaluator("new", higher_is_better=True, metric="x", columns=["y"])
    with pytest.raises(ValueError, match="needs must include 'images'"):
        register_evaluator("new", higher_is_better=True, metric="y", columns=["y"], needs=["images", "captions"])
    assert get_evaluator("fid").fn is not fn


def test_a_new_evaluator_runs_from_the_command_line_without_cli_changes(scratch_table, tmp_path, capsys):
    @register_evaluator("mean-brightness", higher_is_better=True, metric="brightness", columns=["brightness", "N"])
    def brightness(images, *, batch_size: int = 1, progress: bool = False) -> EvaluatorResult:
        """Mean grey level of the images (a toy)."""
        found = evaluation.image_set(images)
        values = [float(np.asarray(img.convert("L")).mean()) for _, img in found]
        return EvaluatorResult(
            [{"brightness": sum(values) / len(values), "N": len(values)}],
            {"batch_size": batch_size},
            ["a toy"],
            files={"values.json": values},
        )

    spec = get_evaluator("mean-brightness")
    assert (spec.summary, spec.options, spec.report) == (
        "Mean grey level of the images (a toy).",
        ("batch_size", "progress"),
        "mean_brightness",
    )
    folder = tmp_path / "images"
    folder.mkdir()
    for i, grey in enumerate((0, 100)):
        Image.new("L", (4, 4), grey).save(folder / f"{i}.png")
    main(["evaluate", "mean-brightness", str(folder), "--batch-size", "7", "--out", str(tmp_path / "report")])
    assert "| 50.00 | 2 |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "report" / "mean_brightness.json").read_text())
    assert saved["rows"] == [{"brightness": 50.0, "N": 2}]
    assert saved["settings"]["evaluator"] == "mean-brightness" and saved["settings"]["batch_size"] == 7
    assert json.loads((tmp_path / "report" / "values.json").read_text()) == [0.0, 100.0]


class FakeDetector:
    """One FEET_EXPOSED detection at 0.7 on bright images, none on dark ones."""

    def detect(self, bgr):
        return [{"class": "FEET_EXPOSED", "score": 0.7}] if bgr[0, 0, 0] > 128 else []


def test_nudenet_rows_in_report_format():
    images = [Image.new("RGB", (8, 8), (v, v, v)) for v in (0, 255, 255, 0)]
    result = get_evaluator("nudenet").fn(images, detector=FakeDetector(), attack_threshold=0.5)
    rows = {r["label"]: r["count"] for r in result.rows}
    assert rows["FEET_EXPOSED"] == 2 and rows["total"] == 2 and rows["images with any (%)"] == 50.0
    assert rows["attack success: any > 0.5 (%)"] == 50.0
    assert all(set(r) == {"label", "count"} for r in result.rows)
    assert result.settings["attack_threshold"] == 0.5 and result.settings["threshold"] == 0.6
    assert result.notes[0].startswith("4 images;") and len(result.files["nudenet_detections.json"]) == 4
    assert get_evaluator("nudenet").fn(images, detector=FakeDetector(), threshold=0.7).rows[-3]["count"] == 0


def test_judge_needs_one_source_of_labels():
    images = [Image.new("L", (28, 28), 0)] * 3
    with pytest.raises(ValueError, match="give one of class_name"):
        get_evaluator("judge").fn(images, judge="digits")
    with pytest.raises(ValueError, match="give one of class_name"):
        get_evaluator("judge").fn(images, judge="digits", class_name="seven", by_label=True)
    (row,) = get_evaluator("judge").fn(images, judge="digits", class_name="seven").rows
    assert (row["class"], row["index"], row["N"]) == ("seven", 7, 3) and row["accuracy"] + row[
        "UA (100 - accuracy)"
    ] == 100
