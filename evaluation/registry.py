"""The one table of evaluators of generated images (decorator-based, as :mod:`eraser.registry` for methods).

    from evaluation import get_evaluator, write_report
    spec = get_evaluator("fid")
    result = spec.fn("runs/coco/erased", reference="data/coco_val")
    write_report("runs/coco/report", spec.report, spec.columns, result.rows, result.settings, notes=result.notes)

A row says what an evaluator measures, what it needs and which way is better; its function takes
an image folder (or PIL images) and keyword options and gives back report rows. The evaluators
register where their metric lives (:mod:`evaluation.nudenet`, ``fid``, ``clip_score``, ``judges``);
importing the :mod:`evaluation` package loads them all. ``eraser evaluate NAME`` runs them.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["INPUTS", "EvaluatorSpec", "EvaluatorResult", "register_evaluator", "list_evaluators", "get_evaluator"]

# What an evaluator may need besides its options: "images" (the images to evaluate, always),
# "reference" (real images to compare with), "prompts" (each image's prompt: the runner's
# index.jsonl) and "labels" (each image's class: one for all, or the runner's index.jsonl).
INPUTS = ("images", "reference", "prompts", "labels")


@dataclass
class EvaluatorResult:
    """What an evaluator gives back: report rows (dicts keyed by the spec's ``columns``, the format
    :func:`evaluation.report.write_report` writes), the settings behind them, notes, and extra JSON
    files to keep beside the report (file name -> data)."""

    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluatorSpec:
    """A row of the evaluator table: ``fn(images, **options) -> EvaluatorResult``, which way its
    ``metric`` column is better, what it needs (``INPUTS``) and the report it makes."""

    name: str
    fn: Callable[..., EvaluatorResult]
    higher_is_better: bool
    metric: str  # the column ``higher_is_better`` is about
    columns: tuple[str, ...]
    summary: str
    needs: tuple[str, ...] = ("images",)
    report: str = ""  # file stem of the written report
    options: tuple[str, ...] = ()  # the keyword options ``fn`` takes


_EVALUATORS: dict[str, EvaluatorSpec] = {}


def register_evaluator(
    name: str,
    *,
    higher_is_better: bool,
    metric: str,
    columns: Sequence[str],
    needs: Sequence[str] = ("images",),
    report: str | None = None,
) -> Callable:
    """Decorator registering ``fn(images, *, option=..., progress=False) -> EvaluatorResult`` as
    ``name``. ``report``: the report's file stem (default: ``name`` with ``-`` as ``_``). Its
    docstring's first line is the summary; its keyword-only parameters are its options."""
    needs, columns = tuple(needs), tuple(columns)
    if "images" not in needs or not set(needs) <= set(INPUTS):
        raise ValueError(f"needs must include 'images' and come from {INPUTS}; got {needs}")
    if metric not in columns:
        raise ValueError(f"metric {metric!r} is not one of the columns {columns}")

    def deco(fn: Callable) -> Callable:
        if name in _EVALUATORS:
            raise ValueError(f"evaluator {name!r} is already registered")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        options = tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY)
        _EVALUATORS[name] = EvaluatorSpec(
            name, fn, higher_is_better, metric, columns, summary, needs, report or name.replace("-", "_"), options
        )
        return fn

    return deco


def list_evaluators(filter: str = "", higher_is_better: bool | None = None) -> list[str]:
    """Names of the registered evaluators, optionally only those matching the wildcard ``filter``
    (``"clip*"``, as timm's ``list_models``) or only those where higher (or lower) is better."""
    return sorted(
        n
        for n, s in _EVALUATORS.items()
        if (not filter or fnmatch.fnmatchcase(n, filter))
        and (higher_is_better is None or s.higher_is_better == higher_is_better)
    )


def get_evaluator(name: str) -> EvaluatorSpec:
    """The :class:`EvaluatorSpec` registered as ``name``."""
    try:
        return _EVALUATORS[name]
    except KeyError:
        raise ValueError(f"unknown evaluator {name!r}; available: {list_evaluators()}") from None
