"""Forget-vector settings on one class of a real classifier: how the schedule and the weights trade
forgetting against retained accuracy (the evidence behind the defaults and dataset presets).

    python benchmarks/forget_vector_settings.py --dataset mnist --cls 3 --setting "" --setting "max_steps=100;lr_decay=0.97"
    python benchmarks/forget_vector_settings.py --dataset cifar10 --original ../shared/data/models/cifar10_resnet20.th ...

Each ``--setting`` is a list of ForgetVectorConfig options (``key=value`` joined by ';'; empty =
the paper's defaults). Prints UA (forget set), PR (unseen test images of the class), RA (a seeded
subset of the retain set), TA (test without the class), ||delta|| and the seconds of learning.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from classifiers.data import load_dataset
from classifiers.models import build_model
from classifiers.zoo import load_weights
from eraser.data import subsample
from eraser.methods.finetune import RetainCE
from eraser.methods.forget_vector import ForgetVectorConfig, learn_vector
from eraser.options import parse_options
from eraser.training import accuracy, fit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10"])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--model", default=None, help="default: small_cnn (mnist), cifar_resnet20 (cifar10)")
    ap.add_argument(
        "--original", default=None, help="pretrained checkpoint; default: train with the dataset recipe (seed 0)"
    )
    ap.add_argument("--cls", type=int, default=3)
    ap.add_argument("--setting", action="append", default=None)
    ap.add_argument("--eval-samples", type=int, default=5000)
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_dataset(args.dataset, args.data_root or DATA / args.dataset)
    name = args.model or ("small_cnn" if args.dataset == "mnist" else "cifar_resnet20")
    model = build_model(name, data.num_classes, data.in_channels)
    if args.original:
        load_weights(model, args.original)
    else:
        from evaluation.classify_bench import RECIPES

        fit(
            model,
            RetainCE(),
            {"retain": data.train},
            replace(RECIPES[args.dataset], seed=0),
            progress=True,
            desc="original",
        )
    model.eval()
    (x, y), (xt, yt) = data.train, data.test
    f, ft = y == args.cls, yt == args.cls
    forget, retain = (x[f], y[f]), (x[~f], y[~f])
    retain_eval = subsample(retain, args.eval_samples, 0)
    base = {"RA": accuracy(model, retain_eval), "TA": accuracy(model, (xt[~ft], yt[~ft]))}
    print(
        f"\n{args.dataset} / {name}, class {args.cls}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads; original RA {base['RA']:.1f}, TA {base['TA']:.1f}, "
        f"PR {100 - accuracy(model, (xt[ft], yt[ft])):.1f}\n"
    )
    print("| setting | UA | PR | RA | dRA | TA | dTA | norm | seconds |\n|---|---|---|---|---|---|---|---|---|")
    for text in args.setting or [""]:
        options = parse_options(ForgetVectorConfig, text.split(";"), where=text)
        cfg = ForgetVectorConfig(**{"mean": data.mean, "std": data.std, "clamp": True, **options})
        t0 = time.perf_counter()
        vec = learn_vector(model, forget, retain, cfg)
        sec = time.perf_counter() - t0
        ra, ta = accuracy(vec, retain_eval), accuracy(vec, (xt[~ft], yt[~ft]))
        print(
            f"| {text or 'paper defaults'} | {100 - accuracy(vec, forget):.1f} | {100 - accuracy(vec, (xt[ft], yt[ft])):.1f} | "
            f"{ra:.1f} | {ra - base['RA']:+.1f} | {ta:.1f} | {ta - base['TA']:+.1f} | {vec.norm:.2f} | {sec:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
