"""Seconds per training epoch of a classifier architecture on this machine, with and without
channels-last memory format (what the CIFAR-10 tier's recipe was chosen by).

    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --model cifar_resnet20 --images 45000

Times SGD steps (forward, backward, update) on random 32x32 batches after a warm-up, and prints
the median step time and the implied time of one epoch over ``--images`` samples.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from classifiers.models import build_model


def step_seconds(model_name: str, batch: int, steps: int, channels_last: bool) -> float:
    torch.manual_seed(0)
    model = build_model(model_name, 10, 3)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cifar_resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--images", type=int, default=45000, help="training-set size an epoch covers")
    args = ap.parse_args()
    print(
        f"{args.model}, batch {args.batch}, {args.steps} steps each; {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}"
    )
    print("\n| memory format | s / step | s / epoch |\n|---|---|---|")
    for cl in (False, True):
        s = step_seconds(args.model, args.batch, args.steps, cl)
        print(f"| {'channels-last' if cl else 'contiguous'} | {s:.3f} | {s * args.images / args.batch:.0f} |")


if __name__ == "__main__":
    main()
