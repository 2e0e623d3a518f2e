"""Train the bundled tiny CLIP contrastively on the 10,000 real MNIST training digits.

    OMP_NUM_THREADS=1 python -m recipes.train_clip --data ../shared/data/mnist --out eraser/bundled/weights/clip

Model: transformers ``CLIPModel`` (see ``eraser.bundled.models.clip_config``): a text tower with
the real CLIP vocabulary (49,408 tokens, 77 positions, hidden 64, 4 layers, 4 heads; its
77x64 hidden states are what a diffusion UNet cross-attends to) and a ViT image tower (1-channel
28x28, 4x4 patches, hidden 96, 4 layers, 4 heads), both projected to 64 dimensions.

Data: each training digit is paired with a caption drawn from ``CAPTION_TEMPLATES``
(``caption(d, rng)``), tokenised by the real CLIP tokenizer and padded to 77 tokens with
``<|endoftext|>`` as in Stable Diffusion (training feeds only the positions up to the longest
caption's ``<|endoftext|>``: the tower is causal and pools there, so the embedding is the same).
Images are [0, 1] pixels normalised to ``(x - 0.5) / 0.5``, with light random affine
augmentation (rotation within +-10 degrees, scale 0.9-1.1, shift within +-2 pixels).

Loss: symmetric InfoNCE (image->text and text->image cross-entropy over the batch) with a
learnable temperature (``logit_scale``, clamped at ln(100)). With only ten digits, a batch holds
many pairs of the same digit, so every pair with the same digit is a positive (targets spread
uniformly over them) rather than a false negative.

Start-up (measured: without it this small model sits near the collapsed solution for hundreds of
steps): at initialisation the features of both towers are nearly identical for all inputs (cosine
~0.99), and with CLIP's usual initial scale 1/0.07 the random logits cost more than uniform ones,
so the quickest descent is full collapse (loss = log(batch)). Two changes avoid it: (1) a
data-dependent centring init, subtracting the mean pooled feature of 512 training images /
of all captions from the bias of ``post_layernorm`` / ``final_layer_norm`` (so features start
decorrelated), and (2) the scale starts at 1 (``--init-temperature``) and learns 20x faster than
the rest (``--scale-lr-mult``), rising to about 10-20 during training.

Optimiser: AdamW (betas 0.9/0.98, weight decay 0.1 on matrices only), linear warm-up then
cosine decay; seeded. Resumable: a checkpoint (model and optimiser state, safetensors) is written
to ``<out>/checkpoint/`` every ``--ckpt-every`` steps; a rerun continues from it, and it is
removed once the final weights are written. Batches, captions and augmentations are derived from
(seed, epoch, step), so a resumed run follows the same path as an uninterrupted one.

Output: ``model.safetensors`` (float16; the loader returns float32), ``config.json`` (the
``CLIPConfig``) and ``meta.json`` (data sha256s, training arguments, times and the zero-shot
accuracies on the real MNIST test set).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from eraser.bundled.captions import CAPTION_TEMPLATES, DIGIT_WORDS, all_captions, digit_prompt
from eraser.bundled.models import (
    CLIP_MEAN,
    CLIP_STD,
    _tokenizer,
    clip_config,
    clip_image_embeddings,
    clip_text_embeddings,
    file_sha256,
    load_clip_folder,
)
from eraser.families.clip import embedding

FILES = ("mnist_train10k.npz", "mnist_test10k.npz")
TRAIN_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup",
    "seed",
    "text_hidden",
    "vision_hidden",
    "projection_dim",
    "layers",
    "heads",
    "init_temperature",
    "scale_lr_mult",
)


def load_npz(path: Path) -> tuple[Tensor, Tensor]:
    """(N, 1, 28, 28) float images in [0, 1] and int64 labels."""
    with np.load(path, allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    return torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def random_affine(
    x: Tensor, generator: torch.Generator, degrees: float = 10.0, scale=(0.9, 1.1), shift_px: float = 2.0
) -> Tensor:
    from recipes.train_judge import random_affine as f

    return f(x, generator, degrees, scale, shift_px)


def caption_ids(tokenizer) -> Tensor:
    """Token ids (10 * T, 77) of every caption; row ``d * T + t`` is template ``t`` for digit ``d``."""
    caps = [c for d in range(10) for c in all_captions(d)]
    return tokenizer(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def contrastive_loss(img: Tensor, txt: Tensor, labels: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE over the batch; every (image, caption) pair of the same digit is a positive."""
    img, txt = nn.functional.normalize(img, dim=-1), nn.functional.normalize(txt, dim=-1)
    logits = logit_scale.exp() * img @ txt.T
    pos = (labels[:, None] == labels[None, :]).float()
    targets = pos / pos.sum(1, keepdim=True)
    i2t = -(targets * logits.log_softmax(1)).sum(1).mean()
    t2i = -(targets * logits.T.log_softmax(1)).sum(1).mean()  # pos is symmetric
    return 0.5 * (i2t + t2i)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: nn.Module, weight_decay: float, scale_lr_mult: float = 1.0):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if name != "logit_scale":
            (decay if p.dim() >= 2 and "embedding" not in name else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": [model.logit_scale], "weight_decay": 0.0, "lr_mult": scale_lr_mult},
    ]


@torch.no_grad()
def centring_init(model, images: Tensor, ids: Tensor) -> None:
    """Subtract the mean pooled feature of ``images`` / caption ``ids`` from the bias of the last
    layer norm of each tower, so the towers' features start decorrelated (see the module doc)."""
    vision = model.vision_model(pixel_values=images).pooler_output
    model.vision_model.post_layernorm.bias.sub_(vision.mean(0))
    text = model.text_model(input_ids=ids).pooler_output
    model.text_model.final_layer_norm.bias.sub_(text.mean(0))


def save_checkpoint(
    folder: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, train_args: dict, elapsed: float
) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                for key in ("exp_avg", "exp_avg_sq"):
                    tensors[f"opt.{key}.{names[id(p)]}"] = st[key].contiguous()
                tensors[f"opt.step.{names[id(p)]}"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    tmp = folder / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "state.safetensors")
    (folder / "progress.json").write_text(json.dumps({"step": step, "train_args": train_args, "elapsed_s": elapsed}))


def load_checkpoint(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, train_args: dict) -> tuple[int, float]:
    """(step, elapsed seconds) of a compatible checkpoint in ``folder``, loaded; (0, 0) if none."""
    from safetensors.torch import load_file

    prog, state = folder / "progress.json", folder / "state.safetensors"
    if not (prog.is_file() and state.is_file()):
        return 0, 0.0
    info = json.loads(prog.read_text())
    if info.get("train_args") != train_args:
        print(f"ignoring checkpoint in {folder}: it was made with other training arguments")
        return 0, 0.0
    tensors = load_file(str(state))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = dict(model.named_parameters())
    for name, p in params.items():
        if f"opt.exp_avg.{name}" in tensors:
            opt.state[p] = {
                "step": tensors[f"opt.step.{name}"].reshape(()).clone(),
                "exp_avg": tensors[f"opt.exp_avg.{name}"].clone(),
                "exp_avg_sq": tensors[f"opt.exp_avg_sq.{name}"].clone(),
            }
    print(f"resuming from step {info['step']} ({folder})")
    return int(info["step"]), float(info.get("elapsed_s", 0.0))


@torch.no_grad()
def evaluate(model, tokenizer, x: Tensor, y: Tensor) -> dict:
    """Zero-shot accuracies (%) on (x, y): the canonical prompt, each template, and the ensemble
    (mean of the normalised embeddings of all templates per digit)."""
    was = model.training
    model.eval()
    try:
        img = clip_image_embeddings(model, x)
        acc = lambda text: 100.0 * float(((img @ text.T).argmax(1) == y).float().mean())  # noqa: E731
        by_digit = torch.stack(
            [clip_text_embeddings(model, tokenizer, all_captions(d)) for d in range(10)]
        )  # (10, T, D)
        canonical = acc(clip_text_embeddings(model, tokenizer, [digit_prompt(d) for d in range(10)]))
        per_template = [acc(by_digit[:, t]) for t in range(len(CAPTION_TEMPLATES))]
        ensemble = acc(nn.functional.normalize(by_digit.mean(1), dim=-1))
    finally:
        model.train(was)
    return {
        "canonical": canonical,
        "ensemble": ensemble,
        "template_mean": sum(per_template) / len(per_template),
        "per_template": dict(zip(CAPTION_TEMPLATES, per_template)),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder with mnist_train10k.npz and mnist_test10k.npz")
    ap.add_argument("--out", required=True, help="output folder (model.safetensors, config.json, meta.json)")
    ap.add_argument("--epochs", type=int, default=13)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=20, help="linear warm-up steps")
    ap.add_argument("--init-temperature", type=float, default=1.0, help="initial exp(logit_scale)")
    ap.add_argument("--scale-lr-mult", type=float, default=20.0, help="learning-rate multiplier of logit_scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-hidden", type=int, default=64)
    ap.add_argument("--vision-hidden", type=int, default=96)
    ap.add_argument("--projection-dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ckpt-every", type=int, default=200, help="checkpoint every N steps")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after N steps without saving (timing probe)")
    ap.add_argument("--force", action="store_true", help="retrain even if finished weights with these arguments exist")
    args = ap.parse_args(argv)

    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import CLIPModel

    data_dir, out = Path(args.data), Path(args.out)
    train_args = {k: getattr(args, k) for k in TRAIN_KEYS}
    ckpt_dir = out / "checkpoint"
    meta_path = out / "meta.json"
    if not args.force and args.max_steps is None and meta_path.is_file() and not ckpt_dir.exists():
        old = json.loads(meta_path.read_text())
        if old.get("train_args") == train_args and "zero_shot_test" in old:
            z = old["zero_shot_test"]
            print(
                f"{out} is already trained with these arguments (use --force to retrain): zero-shot MNIST test "
                f"accuracy {z['canonical']:.2f}% (canonical prompt), {z['ensemble']:.2f}% (ensemble)"
            )
            return old

    x_train, y_train = load_npz(data_dir / FILES[0])
    x_test, y_test = load_npz(data_dir / FILES[1])
    tokenizer = _tokenizer()
    ids = caption_ids(tokenizer)
    # The text tower is causal and pools at the first <|endoftext|>, so the projected embedding of a
    # caption does not depend on the padding after it: train on the first positions only (faster).
    ids = ids[:, : int((ids == tokenizer.eos_token_id).int().argmax(1).max()) + 1]
    n_templates = len(CAPTION_TEMPLATES)

    torch.manual_seed(args.seed)
    config = clip_config(args.text_hidden, args.vision_hidden, args.projection_dim, args.layers, args.heads)
    model = CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(args.init_temperature))
    sample = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(args.seed))[:512]
    centring_init(model, (x_train[sample] - CLIP_MEAN) / CLIP_STD, ids)
    opt = torch.optim.AdamW(
        _param_groups(model, args.weight_decay, args.scale_lr_mult), lr=args.lr, betas=(0.9, 0.98), eps=1e-6
    )
    steps_per_epoch = math.ceil(len(y_train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    step, elapsed0 = load_checkpoint(ckpt_dir, model, opt, train_args)
    stop = total if args.max_steps is None else min(total, step + args.max_steps)
    max_scale = math.log(100.0)

    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc="tiny CLIP", dynamic_ncols=True)
    loss_ema = None
    while step < stop:
        epoch, i = divmod(step, steps_per_epoch)
        perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
        idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        x = (random_affine(x_train[idx], g) - CLIP_MEAN) / CLIP_STD
        labels = y_train[idx]
        rng = random.Random(args.seed * 1_000_003 + step)
        rows = labels * n_templates + torch.tensor([rng.randrange(n_templates) for _ in range(len(idx))])
        unique, inverse = torch.unique(rows, return_inverse=True)  # encode each distinct caption once
        for group in opt.param_groups:
            group["lr"] = group["lr_mult"] * lr_at(step, total, args.lr, args.warmup)
        txt = embedding(model.get_text_features(input_ids=ids[unique]))[inverse]
        img = embedding(model.get_image_features(pixel_values=x))
        loss = contrastive_loss(img, txt, labels, model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_scale)
        step += 1
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
        bar.set_postfix(loss=f"{loss_ema:.3f}", T=f"{model.logit_scale.exp().item():.1f}", refresh=False)
        bar.update(1)
        if step % args.ckpt_every == 0 and step < total:
            save_checkpoint(ckpt_dir, model, opt, step, train_args, elapsed0 + time.perf_counter() - t0)
    bar.close()
    elapsed = elapsed0 + time.perf_counter() - t0
    if step < total:  # --max-steps probe
        print(
            f"stopped at step {step}/{total}: {(time.perf_counter() - t0) / max(1, args.max_steps):.3f} s/step "
            f"(a full run is about {total * (time.perf_counter() - t0) / max(1, args.max_steps) / 60:.1f} min)"
        )
        if args.max_steps and step % args.ckpt_every:
            save_checkpoint(ckpt_dir, model, opt, step, train_args, elapsed)
        return {"step": step, "loss": loss_ema}

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    tmp = out / "model.safetensors.tmp"
    save_file(
        {k: v.detach().half().contiguous() for k, v in model.state_dict().items()},
        str(tmp),
        metadata={"format": "pt", "model": "transformers CLIPModel (eraser.bundled tiny MNIST CLIP)"},
    )
    tmp.chmod(0o644)  # safetensors creates the file owner-only
    tmp.replace(weights)
    cfg = config.to_dict()
    cfg.pop("dtype", None), cfg.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
    meta = {
        "model": "tiny CLIP (transformers CLIPModel) trained contrastively on MNIST",
        "params": sum(p.numel() for p in model.parameters()),
        "weights_dtype": "float16 (loaded as float32)",
        "weights_sha256": file_sha256(weights),
        "data": {name: {"sha256": file_sha256(data_dir / name)} for name in FILES},
        "train_args": train_args,
        "steps": total,
        "train_seconds": round(elapsed, 1),
        "final_loss_ema": loss_ema,
        "input": {
            "pixel_values": "(N, 1, 28, 28) = (x - 0.5) / 0.5 for x in [0, 1]",
            "text": "real CLIP tokenizer, padded to 77 with <|endoftext|>",
        },
        "canonical_prompt": digit_prompt(0).replace(DIGIT_WORDS[0], "{word}"),
        "caption_templates": list(CAPTION_TEMPLATES),
        "loss": "symmetric InfoNCE, same-digit pairs are positives, learnable temperature",
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "transformers": __import__("transformers").__version__,
        },
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    loaded, tok = load_clip_folder(out)  # measure the shipped (float16-rounded) weights
    meta["zero_shot_test"] = evaluate(loaded, tok, x_test, y_test)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    z = meta["zero_shot_test"]
    print(
        f"tiny CLIP: {meta['params']} params, {weights.stat().st_size / 1e6:.2f} MB, {total} steps in {elapsed / 60:.1f} min; "
        f"zero-shot MNIST test accuracy {z['canonical']:.2f}% (canonical prompt), {z['ensemble']:.2f}% (ensemble of "
        f"{len(CAPTION_TEMPLATES)} templates), {z['template_mean']:.2f}% (mean over single templates)"
    )
    return meta


if __name__ == "__main__":
    main()
