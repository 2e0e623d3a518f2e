"""Prompt sets stored as CSV (the I2P / Imagenette / COCO files the field shares)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PromptRow", "load_prompts"]


@dataclass
class PromptRow:
    """One prompt with the seed and guidance its benchmark prescribes (None where the file has none)."""

    prompt: str
    case_number: int
    seed: int | None = None
    guidance: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _number(value: str | None, kind: type):
    if value is None or value.strip() == "":
        return None
    return kind(float(value)) if kind is int else kind(value)


def load_prompts(path: str | Path, limit: int | None = None) -> list[PromptRow]:
    """Rows of a prompt CSV with a ``prompt`` column (``evaluation_seed``, ``evaluation_guidance``
    and ``case_number`` are read when present; other columns go to ``extra``)."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig drops a leading BOM
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise ValueError(f"{path} has no 'prompt' column (columns: {reader.fieldnames})")
        rows = []
        for i, row in enumerate(reader):
            if limit is not None and i >= limit:
                break
            try:
                case = _number(row.get("case_number"), int)
                rows.append(PromptRow(
                    prompt=row["prompt"],
                    case_number=i if case is None else case,
                    seed=_number(row.get("evaluation_seed"), int),
                    guidance=_number(row.get("evaluation_guidance"), float),
                    extra={k: v for k, v in row.items() if k and k not in {"prompt", "case_number", "evaluation_seed", "evaluation_guidance"}},
                ))
            except ValueError as err:
                raise ValueError(f"{path}, row {i + 2}: {err}") from None
    return rows
