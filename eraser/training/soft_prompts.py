"""Learned prompt embeddings against a frozen text-to-image model: the optimisation engine the
attacks (``evaluation.attacks``: soft_prompt, discrete_prompt, textual_inversion) and the
adversarial rounds of ``unlink_robust`` share.

A few token embeddings, appended to a prompt at the text encoder's input (:func:`soft_tokens`, a
forward hook: the weights are never touched), are optimised with Adam so that the frozen denoiser
(:class:`Denoiser`) reconstructs images of a concept: :func:`learn_soft_prompt`. Timesteps come
from the top of the noise schedule (``t_min``), several starting points share the first half of
the steps (:func:`optimise`, :func:`gradient_starts`), and every generator is seeded from
``OPTIMISATION_SEED_OFFSET`` up, apart from the seeds that generate evaluation images.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..families.diffusion import encode_ids, text_towers
from ..layers import KeptModes

__all__ = [
    "OPTIMISATION_SEED_OFFSET",
    "T_MIN",
    "RESTARTS",
    "SearchBudget",
    "SoftPromptConfig",
    "SoftPrompt",
    "Denoiser",
    "check_pipeline",
    "check_scheduler",
    "check_optimised",
    "clean_latents",
    "encode_hidden",
    "extra_starts",
    "frozen",
    "gradient_starts",
    "learn_soft_prompt",
    "optimisation_generator",
    "optimise",
    "prompt_ids",
    "random_tokens",
    "soft_tokens",
    "special_ids",
]

# Optimisation generators are seeded from here up; evaluation images use image_seed(seed, 0, k),
# below 10**7 * (seed + 1): the two ranges meet only for evaluation seeds near 4.6e11.
OPTIMISATION_SEED_OFFSET = 1 << 62

# The optimised attacks draw timesteps from the top of the noise schedule, t >= T_MIN * T: that is
# where the conditioning decides what is drawn. Below it the denoising loss is mostly noise that no
# prompt changes, and its gradient drowned the concept's signal (docs/benchmarks.md, "Attack budget").
T_MIN = 0.5
# Optimised attacks try this many starting points (a short run from each, then the best continues).
RESTARTS = 8


def check_pipeline(pipe: Any, attack: str) -> tuple[Any, nn.Module, nn.Module]:
    """``(tokenizer, text encoder, unet)`` of a pipeline an attack can work on, or a clear error."""
    enc, tok, unet = getattr(pipe, "text_encoder", None), getattr(pipe, "tokenizer", None), getattr(pipe, "unet", None)
    if not isinstance(enc, nn.Module) or tok is None:
        raise ValueError(
            f"the {attack} attack needs a pipeline with a text encoder and tokenizer; "
            f"{type(pipe).__name__} has {'no text_encoder' if not isinstance(enc, nn.Module) else 'no tokenizer'}"
        )
    if not isinstance(unet, nn.Module):
        raise ValueError(f"the {attack} attack needs a pipeline with a UNet; {type(pipe).__name__} has none")
    # SDXL-style UNets also read pooled text and time ids, which the result does not carry yet.
    if getattr(unet.config, "addition_embed_type", None) is not None or len(text_towers(pipe)) > 1:
        raise NotImplementedError(
            f"the {attack} attack supports single-text-encoder pipelines (SD 1.x/2.x, the bundled digits "
            f"model); {type(pipe).__name__} has {len(text_towers(pipe))} text encoders / added conditioning"
        )
    return tok, enc, unet


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Inside: every module in eval mode with no parameter recording gradients (gradients flow only to
    the attack's own tensors); afterwards the modes and ``requires_grad`` flags are what they were."""
    mods = [m for m in modules if isinstance(m, nn.Module)]
    kept = [KeptModes(m) for m in mods]
    flags = [(p, p.requires_grad) for m in mods for p in m.parameters()]
    try:
        for m in mods:
            m.eval().requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for k in kept:
            k.restore()


@contextlib.contextmanager
def soft_tokens(enc: nn.Module, start: int | Sequence[int], soft: Tensor | Callable[[], Tensor]) -> Iterator[None]:
    """While active, the text encoder's input embeddings at positions ``start .. start + n`` are
    ``soft`` (n x D) instead of the looked-up rows: a forward hook, so the weights are never touched.
    ``start``: one position for every row of the batch, or one per row; ``soft``: the rows, or a
    function giving them at each forward (e.g. a projection of the learned ones)."""

    def hook(module: nn.Module, args: Any, out: Tensor) -> Tensor:
        rows = (soft() if callable(soft) else soft).to(out.dtype)
        n = rows.shape[0]
        if isinstance(start, int):
            block = rows.unsqueeze(0).expand(out.shape[0], -1, -1)
            return torch.cat([out[:, :start], block, out[:, start + n :]], dim=1)
        if len(start) != out.shape[0]:
            raise ValueError(f"{len(start)} soft-token positions for a batch of {out.shape[0]} prompts")
        return torch.stack([torch.cat([out[b, :s], rows, out[b, s + n :]]) for b, s in enumerate(start)])

    handle = enc.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def prompt_ids(tokenizer: Any, prompt: str, extra: Sequence[int], after: str = "") -> tuple[Tensor, int]:
    """Token ids (1 x L) of ``prompt`` with ``extra`` tokens appended (then the tokens of ``after``)
    before the end-of-text token, padded as the pipeline pads, and the position of the first extra token."""
    body = tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids
    tail = tokenizer(after, add_special_tokens=False, truncation=False).input_ids if after.strip() else []
    length = int(tokenizer.model_max_length)
    ids = [tokenizer.bos_token_id, *body, *extra, *tail, tokenizer.eos_token_id]
    if len(ids) > length:
        raise ValueError(
            f"prompt {prompt[:60]!r} has {len(body) + len(tail)} tokens; with {len(extra)} attack tokens it exceeds "
            f"the text encoder's {length} positions"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return torch.tensor([ids + [pad] * (length - len(ids))]), 1 + len(body)


def optimisation_generator(seed: int, stream: int) -> torch.Generator:
    """An optimisation generator: its own seed range, apart from every evaluation seed."""
    return torch.Generator().manual_seed(OPTIMISATION_SEED_OFFSET + 4 * int(seed) + stream)


def encode_hidden(enc: nn.Module, ids: Tensor) -> Tensor:
    """The text encoder's last hidden states for token ids (what single-tower pipelines condition on)."""
    out = enc(ids)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def check_scheduler(pipe: Any, attack: str) -> None:
    if getattr(getattr(pipe, "scheduler", None), "config", None) is None:
        raise ValueError(f"the {attack} attack needs the pipeline's noise scheduler; {type(pipe).__name__} has none")


def check_optimised(attack: str, cfg: Any, counts: Sequence[str]) -> None:
    """Raise a ValueError naming the first budget or size setting of ``cfg`` out of range."""
    for name in counts:
        if int(getattr(cfg, name)) < 1:
            raise ValueError(f"{attack}: {name} must be >= 1; got {getattr(cfg, name)}")
    if not cfg.time_budget > 0:
        raise ValueError(f"{attack}: time_budget must be > 0 seconds; got {cfg.time_budget}")
    if not cfg.lr > 0:
        raise ValueError(f"{attack}: lr must be > 0; got {cfg.lr}")
    if int(cfg.seed) < 0:
        raise ValueError(f"{attack}: seed must be >= 0; got {cfg.seed}")
    if isinstance(cfg.t_min, bool) or not 0.0 <= float(cfg.t_min) < 1.0:
        raise ValueError(f"{attack}: t_min must be a fraction of the noise schedule in [0, 1); got {cfg.t_min!r}")


@torch.no_grad()
def clean_latents(pipe: Any, unet: nn.Module, targets: Any, batch: int) -> Tensor:
    """The denoiser's clean inputs for ``targets`` (images N x C x H x W in [0, 1]): the pixels in
    [-1, 1] for a pixel-space pipeline, the VAE's latent means times its scaling factor otherwise."""
    if not isinstance(targets, Tensor) or targets.numel() == 0:
        got = (
            "nothing"
            if targets is None
            else f"{type(targets).__name__} of shape {tuple(getattr(targets, 'shape', ()))}"
        )
        raise ValueError(
            f"targets must be a non-empty tensor of images of the concept (N x C x H x W, in [0, 1]); got {got}"
        )
    if targets.ndim != 4:
        raise ValueError(f"targets must be images N x C x H x W; got shape {tuple(targets.shape)}")
    x = targets.detach().float()
    if not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3:
        raise ValueError(
            "targets must be finite images in [0, 1] (the pipeline's output_type='pt'); "
            f"got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]"
        )
    x = x.clamp(0, 1) * 2 - 1
    vae = getattr(pipe, "vae", None)
    if not isinstance(vae, nn.Module):
        if x.shape[1] != unet.config.in_channels:
            raise ValueError(
                f"targets have {x.shape[1]} channels; this pixel-space pipeline draws {unet.config.in_channels}"
            )
        p = next(unet.parameters())
        return x.to(p.device)
    if x.shape[1] != vae.config.in_channels:
        raise ValueError(f"targets have {x.shape[1]} channels; the pipeline's VAE reads {vae.config.in_channels}")
    p = next(vae.parameters())
    scale = float(vae.config.scaling_factor)
    out = [
        vae.encode(x[i : i + batch].to(p.device, p.dtype)).latent_dist.mean.float() * scale
        for i in range(0, len(x), batch)
    ]
    return torch.cat(out)


class Denoiser:
    """The frozen UNet's denoising loss on the target images under the pipeline's forward process:
    random training draws (:meth:`draw`), and fixed probe draws (:meth:`probe`: the same images,
    timesteps and noise before and after, so the two losses compare; a step's own loss moves with
    its random timesteps)."""

    def __init__(self, pipe: Any, unet: nn.Module, targets: Any, cfg: Any, g_probe: torch.Generator) -> None:
        from diffusers import DDPMScheduler

        # The forward process of the pipeline's own schedule (DDPM's add_noise is the same q(x_t | x_0)
        # for every diffusers scheduler built on betas; a fresh object leaves the pipeline's untouched).
        self.sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.n_train = int(self.sched.config.num_train_timesteps)
        self.kind = self.sched.config.prediction_type
        self.unet, self.batch = unet, int(cfg.batch_size)
        self.dtype = next(unet.parameters()).dtype
        self.x0 = clean_latents(pipe, unet, targets, self.batch).to(next(unet.parameters()).device)
        self.t_lo = int(float(cfg.t_min) * self.n_train)
        self.px = self.x0[: cfg.probe_images].repeat_interleave(cfg.probe_timesteps, 0)
        span = (self.n_train - self.t_lo) / cfg.probe_timesteps
        pt = torch.tensor([self.t_lo + int((k + 0.5) * span) for k in range(cfg.probe_timesteps)])
        self.pt = pt.repeat(min(cfg.probe_images, len(self.x0)))
        self.pn = torch.randn(self.px.shape, generator=g_probe).to(self.px.device, self.px.dtype)

    def loss(self, cond: Tensor, x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Mean squared error of the UNet's prediction for ``x`` noised to timesteps ``t``; ``cond`` is
        one conditioning (1 x L x D) for every image or one per image."""
        t = t.to(x.device)
        x_t = self.sched.add_noise(x, noise, t)
        kind = self.kind
        target = noise if kind == "epsilon" else self.sched.get_velocity(x, noise, t) if kind == "v_prediction" else x
        hidden = cond.to(self.dtype).expand(len(x), -1, -1)
        pred = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=hidden, return_dict=False)[0]
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    def draw(self, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """A training batch: ``batch_size`` target images (with replacement), noise and timesteps."""
        idx = torch.randint(0, len(self.x0), (self.batch,), generator=g)
        t = torch.randint(self.t_lo, self.n_train, (self.batch,), generator=g)
        noise = torch.randn((self.batch, *self.x0.shape[1:]), generator=g).to(self.x0.device, self.x0.dtype)
        return self.x0[idx.to(self.x0.device)], noise, t

    @torch.no_grad()
    def probe(self, cond: Tensor | Callable[[], Tensor]) -> float:
        """The loss on the fixed probe draws (``cond``: a conditioning, or a function computing it)."""
        cond = cond() if callable(cond) else cond
        b, total = self.batch, 0.0
        for i in range(0, len(self.px), b):
            total += float(self.loss(cond, self.px[i : i + b], self.pn[i : i + b], self.pt[i : i + b])) * len(
                self.px[i : i + b]
            )
        return total / len(self.px)


def extra_starts(cfg: Any) -> int:
    """How many starting points besides the initial one ``cfg`` asks for: ``restarts - 1``, or none
    when the budget leaves no steps for short runs (``steps < 2 * restarts``)."""
    return int(cfg.restarts) - 1 if int(cfg.steps) // (2 * int(cfg.restarts)) else 0


def gradient_starts(
    param: Tensor, step_loss: Callable[[], Tensor], table: Tensor, n: int, blocked: Any = (), draws: int = 4
) -> list[Tensor]:
    """``n`` starting points for ``param`` (tokens x D): at each position, the vocabulary rows the loss's
    gradient favours most (first-order change ``(e_v - p) . grad``, averaged over ``draws`` training
    draws; GCG-style), the r-th start taking every position's r-th choice. ``blocked``: token ids never
    chosen."""
    if n < 1:
        return []
    grad = torch.zeros_like(param)
    for _ in range(draws):
        g = torch.autograd.grad(step_loss(), param)[0]
        grad += g.detach() / draws
    rows = table.detach().float()
    change = rows @ grad.T - (param.detach() * grad).sum(1)  # vocab x tokens
    if len(blocked):
        change[sorted(blocked)] = torch.inf
    picks = change.topk(n, dim=0, largest=False).indices  # n x tokens
    return [rows[picks[r]].clone() for r in range(n)]


def optimise(
    attack: str,
    desc: str,
    params: Sequence[Tensor],
    step_loss: Callable[[], Tensor],
    cfg: Any,
    t0: float,
    progress: bool,
    after_step: Callable[[int], None] | None = None,
    starts: Sequence[Tensor] = (),
    score: Callable[[], float] | None = None,
) -> tuple[list[float], str]:
    """At most ``cfg.steps`` Adam steps (``cfg.lr``) on ``step_loss()``, stopping once ``cfg.time_budget``
    seconds have passed since ``t0``; ``after_step(step)`` runs after each (in the final run). With
    ``starts`` (other initial values of ``params[0]``) and ``score`` (the probe loss of the current
    value), half the steps are shared among short runs from the current value and each start, and
    the rest continue from the run that scored best. Returns every step's loss and why it stopped
    ("steps" or "time")."""
    from tqdm.auto import tqdm

    losses: list[float] = []
    stopped = "steps"
    param = params[0]
    runs = [param.detach().clone(), *[s.detach().to(param) for s in starts]] if score is not None else []
    warm = cfg.steps // (2 * len(runs)) if len(runs) > 1 else 0
    with tqdm(total=cfg.steps, desc=desc, unit="step", disable=not progress) as bar:

        def run(steps: int, last: bool) -> bool:
            opt = torch.optim.Adam(list(params), lr=cfg.lr)
            for _ in range(steps):
                loss = step_loss()
                if not torch.isfinite(loss):
                    raise RuntimeError(f"{attack}: the loss became {float(loss)} at step {len(losses)}; lower lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                if last and after_step is not None:
                    after_step(len(losses) - 1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                bar.update()
                if time.perf_counter() - t0 > cfg.time_budget:
                    return False
            return True

        finished = True
        if warm:  # multi-start: a plateau near one start (a neutral word) trapped single runs
            best: tuple[float, Tensor] | None = None
            for value in runs:
                with torch.no_grad():
                    param.copy_(value)
                finished = run(warm, False)
                got = score()
                if best is None or got < best[0]:
                    best = (got, param.detach().clone())
                if not finished:
                    break
            with torch.no_grad():
                param.copy_(best[1])
        if finished:
            finished = run(cfg.steps - len(losses), True)
        if not finished:
            stopped = "time"
    return losses, stopped


@dataclass
class SearchBudget:
    """The budget and draws every learned-prompt search shares: at most ``steps`` Adam steps
    (learning rate ``lr``) or ``time_budget`` seconds, each step on ``batch_size`` target images at
    random timesteps ``t >= t_min * T`` (T: the schedule's length); ``seed`` seeds the initial
    tokens, the draws and the probe. ``restarts``: the first half of the steps is shared by short
    runs from the initial tokens and from ``restarts - 1`` others that the loss's gradient favours
    (GCG-style), and the run with the lowest probe loss continues. The reported loss is the mean over
    ``probe_images`` targets x ``probe_timesteps`` fixed timesteps (spread over ``[t_min * T, T)``)
    with fixed noise, the same draws before and after."""

    steps: int = 160
    time_budget: float = 600.0
    lr: float = 0.01
    batch_size: int = 16
    seed: int = 0
    probe_images: int = 16
    probe_timesteps: int = 4
    t_min: float = T_MIN
    restarts: int = RESTARTS

    ATTACK = "search"
    COUNTS = ("steps", "batch_size", "probe_images", "probe_timesteps", "restarts")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first setting out of range."""
        check_optimised(self.ATTACK, self, self.COUNTS)


@dataclass
class SoftPromptConfig(SearchBudget):
    """``n_tokens`` learned input embeddings appended to the prompt (budget and draws: :class:`SearchBudget`)."""

    n_tokens: int = 4

    ATTACK = "soft_prompt"
    COUNTS = ("n_tokens", *SearchBudget.COUNTS)


def special_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return {int(i) for i in (*ids, *getattr(tokenizer, "all_special_ids", ())) if i is not None}


def random_tokens(tokenizer: Any, vocab: int, n: int, g: torch.Generator, exclude: Any = ()) -> list[int]:
    """``n`` token ids drawn uniformly from the vocabulary, never a special token nor one of ``exclude``."""
    special = special_ids(tokenizer) | set(exclude)
    out: list[int] = []
    while len(out) < n:
        t = int(torch.randint(0, vocab, (1,), generator=g))
        if t not in special:
            out.append(t)
    return out


@dataclass
class SoftPrompt:
    """What :func:`learn_soft_prompt` found: the prompt's token ids with the learned tokens' slots
    (``ids``, 1 x L; the learned rows sit at ``start .. start + n``), the learned input embeddings
    (``learned``, n x D), the text encoder's output for the whole prompt (``prompt_embeds``, 1 x L x D:
    what the UNet is conditioned on), the probe loss before and after, every step's loss, why it
    stopped, the initial tokens and the number of target images."""

    ids: Tensor
    start: int
    learned: Tensor
    prompt_embeds: Tensor
    initial_loss: float
    loss: float
    losses: list[float] = field(default_factory=list)
    stopped: str = "steps"
    init_ids: list[int] = field(default_factory=list)
    n_targets: int = 0


def learn_soft_prompt(
    pipe: Any,
    prompt: str,
    targets: Tensor,
    config: SoftPromptConfig | None = None,
    *,
    what: str = "soft_prompt",
    desc: str = "soft_prompt",
    progress: bool = False,
    t0: float | None = None,
) -> SoftPrompt:
    """``config.n_tokens`` embeddings appended to ``prompt`` that minimise ``pipe``'s denoising loss on
    ``targets`` (images N x C x H x W in [0, 1]) with the model frozen; the pipeline is not changed."""
    cfg = config if config is not None else SoftPromptConfig()
    cfg.validate()
    tok, enc, unet = check_pipeline(pipe, what)
    check_scheduler(pipe, what)
    table = enc.get_input_embeddings().weight
    t0 = time.perf_counter() if t0 is None else t0
    g_init, g_train, g_probe = (optimisation_generator(cfg.seed, s) for s in range(3))
    init_ids = random_tokens(tok, table.shape[0], cfg.n_tokens, g_init)
    ids, start = prompt_ids(tok, prompt, init_ids)
    ids = ids.to(table.device)

    with frozen(unet, enc, getattr(pipe, "vae", None)):
        den = Denoiser(pipe, unet, targets, cfg, g_probe)
        soft = nn.Parameter(table[init_ids].detach().float().clone())
        with soft_tokens(enc, start, soft):
            initial = den.probe(lambda: encode_hidden(enc, ids))
            losses, stopped = optimise(
                what,
                desc,
                [soft],
                lambda: den.loss(encode_hidden(enc, ids), *den.draw(g_train)),
                cfg,
                t0,
                progress,
                starts=gradient_starts(
                    soft,
                    lambda: den.loss(encode_hidden(enc, ids), *den.draw(g_train)),
                    table,
                    extra_starts(cfg),
                    special_ids(tok) & set(range(table.shape[0])),
                ),
                score=lambda: den.probe(lambda: encode_hidden(enc, ids)),
            )
            final = den.probe(lambda: encode_hidden(enc, ids))
            embeds = encode_ids(pipe, [ids]).float().cpu()
    return SoftPrompt(
        ids=ids.cpu(),
        start=start,
        learned=soft.detach().float().cpu(),
        prompt_embeds=embeds,
        initial_loss=initial,
        loss=final,
        losses=losses,
        stopped=stopped,
        init_ids=init_ids,
        n_targets=len(den.x0),
    )
