"""What applying and reverting a patch costs on a real Stable Diffusion architecture (random weights),
for this tree's code and, with ``--compare REV``, for another git revision, in one run.

    python benchmarks/patch_cost.py --arch sd-v1-4 --compare a40804c --rounds 2 --repeats 5

Each measurement runs in a worker process of its own that imports ``eraser`` from the code being
measured (this tree, or a ``git worktree`` of REV made under the system's temp folder and removed
afterwards), builds the pipeline, erases one concept with the defaults (Unlink), saves the patch,
then times, ``--repeats`` times each: ``revert`` and ``apply`` of the patch made in the process
(the fast path: exact originals kept on SD 1.x), and ``apply`` and ``revert`` of the same patch
read from its file (the path that checks a stranger's file). Workers for the two codes alternate
for ``--rounds`` rounds, so that machine load falls on both. Prints a Markdown table of medians
(seconds) and the ratio of this tree's to REV's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURES = ("revert", "apply", "apply (file)", "revert (file)")


def worker(arch: str, repeats: int) -> dict[str, list[float]]:
    """Times of each measure in this process (``eraser`` as found on ``sys.path``)."""
    import torch

    import eraser
    from eraser.families.architectures import build_pipeline

    torch.set_grad_enabled(False)
    pipe = build_pipeline(arch, seed=0)
    patch = eraser.erase_concepts(pipe, "church")
    times: dict[str, list[float]] = {m: [] for m in MEASURES}
    with tempfile.TemporaryDirectory() as tmp:
        path = patch.save(Path(tmp) / "church.safetensors")
        for _ in range(repeats):
            t0 = time.perf_counter()
            patch.revert(pipe)
            t1 = time.perf_counter()
            patch.apply(pipe)
            t2 = time.perf_counter()
            times["revert"].append(t1 - t0)
            times["apply"].append(t2 - t1)
        patch.revert(pipe)
        for _ in range(repeats):
            loaded = eraser.ErasurePatch.load(path)
            t0 = time.perf_counter()
            loaded.apply(pipe)
            t1 = time.perf_counter()
            loaded.revert(pipe)
            t2 = time.perf_counter()
            times["apply (file)"].append(t1 - t0)
            times["revert (file)"].append(t2 - t1)
    return times


def run_worker(code: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """One worker process with ``eraser`` imported from ``code``; its times."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--arch",
        args.arch,
        "--repeats",
        str(args.repeats),
    ]
    out = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"worker for {code} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    where = Path(result.pop("eraser_file")).resolve()
    if code.resolve() not in where.parents:  # an installed copy was imported instead of the code asked for
        raise SystemExit(f"the worker for {code} imported eraser from {where}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sd-v1-4")
    ap.add_argument("--compare", default=None, help="a git revision to measure beside this tree")
    ap.add_argument("--rounds", type=int, default=2, help="workers per code, alternating")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each measure per worker")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import eraser

        print(json.dumps({**worker(args.arch, args.repeats), "eraser_file": eraser.__file__}))
        return
    codes: dict[str, Path] = {"this tree": ROOT}
    tmp = None
    if args.compare:
        tmp = Path(tempfile.mkdtemp(prefix="eraser_rev_"))
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tmp), args.compare], cwd=ROOT, check=True, capture_output=True
        )
        codes = {args.compare: tmp, **codes}
    try:
        times: dict[str, dict[str, list[float]]] = {c: {m: [] for m in MEASURES} for c in codes}
        for r in range(args.rounds):
            for label, code in codes.items():
                print(f"round {r + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)
                for m, ts in run_worker(code, args).items():
                    times[label][m].extend(ts)
    finally:
        if tmp is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp)], cwd=ROOT, capture_output=True)
    med = {c: {m: statistics.median(ts) for m, ts in t.items()} for c, t in times.items()}
    labels = list(codes)
    head = ["measure", *[f"{c} (s)" for c in labels]] + (["ratio"] if len(labels) == 2 else [])
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for m in MEASURES:
        cells = [f"{med[c][m]:.4f}" for c in labels]
        if len(labels) == 2:
            cells.append(f"{med[labels[1]][m] / med[labels[0]][m]:.3f}")
        print(f"| {m} | " + " | ".join(cells) + " |")
    import torch

    print(
        f"\n({args.arch}, random weights, float32; median of {args.rounds} workers x {args.repeats} repeats per code; "
        f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')})"
    )


if __name__ == "__main__":
    main()
