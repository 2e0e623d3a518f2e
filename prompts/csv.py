"""Prompt sets stored as CSV (the I2P / Imagenette / COCO files the field shares)."""

from __future__ import annotations

import csv
import errno
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

__all__ = ["PromptRow", "load_prompts", "PROMPT_COLUMNS", "SEED_COLUMNS", "GUIDANCE_COLUMNS", "LABEL_COLUMNS"]

# Column names the shared prompt files use for each field, first present wins.
PROMPT_COLUMNS = ("prompt", "text", "caption")
SEED_COLUMNS = ("evaluation_seed", "sd_seed", "seed")
GUIDANCE_COLUMNS = ("evaluation_guidance", "sd_guidance_scale", "guidance", "guidance_scale")
LABEL_COLUMNS = ("class", "concept", "label")
CASE_COLUMN = "case_number"

# The index column pandas writes (header cell empty, or "Unnamed: 0" once read back and saved again).
_INDEX_COLUMN = re.compile(r"(Unnamed: \d+)?")


@dataclass
class PromptRow:
    """One prompt with the seed, guidance and label its benchmark prescribes (None where the file has none)."""

    prompt: str
    case_number: int
    seed: int | None = None
    guidance: float | None = None
    extra: dict[str, str] = field(default_factory=dict)
    label: str | None = None


def _int(value: str | None) -> int | None:
    """An exact int from "4261553411", "000000203564" or "4889.0"; None when blank."""
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not an integer: {value!r}") from None
    if not number.is_finite() or number != number.to_integral_value():
        raise ValueError(f"not an integer: {value!r}")
    return int(number)


def _float(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"not a number: {value!r}") from None


def _first(names: tuple[str, ...], columns: list[str]) -> str | None:
    return next((name for name in names if name in columns), None)


def load_prompts(path: str | Path, limit: int | None = None, column: str | None = None) -> list[PromptRow]:
    """The first ``limit`` rows (all when None) of a prompt CSV.

    The prompt is read from ``column``, by default the first of ``prompt``, ``text``, ``caption``.
    ``seed``, ``guidance`` and ``label`` come from the first present of :data:`SEED_COLUMNS`,
    :data:`GUIDANCE_COLUMNS` and :data:`LABEL_COLUMNS`; ``case_number`` from ``case_number``
    (the row index when absent or blank). Unnamed index columns are dropped, every other column
    goes to ``extra``. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming
    the row for a value that does not parse.
    """
    path = Path(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    try:
        f = path.open(newline="", encoding="utf-8-sig")  # utf-8-sig drops a leading BOM
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "prompt CSV not found", str(path)) from None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty (no header row)")
        names = [name.strip() for name in header]
        columns = [name for name in names if not _INDEX_COLUMN.fullmatch(name)]
        if column is not None:
            if column not in columns:
                raise ValueError(f"{path} has no {column!r} column (columns: {columns})")
            prompt_col = column
        else:
            prompt_col = _first(PROMPT_COLUMNS, columns)
            if prompt_col is None:
                raise ValueError(
                    f"{path} has no 'prompt' column (nor {', '.join(map(repr, PROMPT_COLUMNS[1:]))}; "
                    f"columns: {columns}); name it with column="
                )
        seed_col = _first(SEED_COLUMNS, columns)
        guidance_col = _first(GUIDANCE_COLUMNS, columns)
        label_col = _first(LABEL_COLUMNS, columns)
        case_col = CASE_COLUMN if CASE_COLUMN in columns else None
        mapped = {prompt_col, seed_col, guidance_col, label_col, case_col} - {None}
        extra_cols = [name for name in columns if name not in mapped]

        rows: list[PromptRow] = []
        for cells in reader:
            if limit is not None and len(rows) >= limit:
                break
            if not cells:  # a blank line: skipped, as csv.DictReader does
                continue
            where = f"{path}, row {len(rows) + 2}"  # the header is row 1
            if len(cells) != len(names):
                raise ValueError(f"{where}: {len(cells)} fields, the header has {len(names)}")
            row = dict(zip(names, cells))
            current = None
            try:
                current = case_col
                case = _int(row[case_col]) if case_col else None
                current = seed_col
                seed = _int(row[seed_col]) if seed_col else None
                current = guidance_col
                guidance = _float(row[guidance_col]) if guidance_col else None
            except ValueError as err:
                raise ValueError(f"{where}, column {current!r}: {err}") from None
            label = row[label_col] if label_col else None
            rows.append(
                PromptRow(
                    prompt=row[prompt_col],
                    case_number=len(rows) if case is None else case,
                    seed=seed,
                    guidance=guidance,
                    extra={name: row[name] for name in extra_cols},
                    label=label if label is not None and label.strip() != "" else None,
                )
            )
    return rows
