"""The worst digit and the means of an `eraser bench attack` report, per method and attack.

    python benchmarks/attack_summary.py docs/results/bench_attack_strong/attack_bench.json

Prints the table `eraser bench attack` writes as attack_bench_summary.md (for reports written
before it did).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evaluation.attack_bench import SUMMARY_NOTES, summarise


def main(argv: list[str] | None = None) -> None:
    """Print the summary of one or more attack_bench.json files as Markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="attack_bench.json files")
    args = ap.parse_args(argv)
    for path in args.reports:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise SystemExit(f"{path}: not an eraser bench attack report (no 'rows' list)")
        rows = summarise(data["rows"])
        cols = list(rows[0])
        print(f"{path}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
        print("\n" + "\n".join(f"- {n}" for n in SUMMARY_NOTES) + "\n")


if __name__ == "__main__":
    main()
