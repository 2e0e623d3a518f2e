"""The one training loop of the trained diffusion methods (ESD, SalUn, ...).

A method picks denoiser parameters (:func:`select_parameters`), opens a :class:`DenoiserTrainer`
on the pipeline, encodes its prompts (:meth:`DenoiserTrainer.encode`) and calls
:meth:`DenoiserTrainer.fit` with a per-step loss. The trainer owns the plumbing: ``accelerate``
(mixed precision, and DDP when run under ``accelerate launch``), gradient checkpointing, the
optimiser, parameter masks, NaN stops, progress bars, sampling, the frozen model's predictions
(:meth:`DenoiserTrainer.original`, without a second denoiser) and the dense patch of the change
(:meth:`DenoiserTrainer.patch`). If anything fails inside the ``with`` block, the pipeline's
weights, devices and flags are restored before the error propagates.

    names = select_parameters(pipe, "xattn")
    with DenoiserTrainer(pipe, names, cfg) as tr:
        cond = tr.encode(["a cat"])
        losses = tr.fit(lambda step: ...)
    patch = tr.patch({"method": "..."})

The denoiser is the pipeline's ``unet`` (SD 1.x/2.x, SDXL, the bundled digits model) or an SD3
``transformer`` (diffusers SD3, the bundled digits MMDiT), whose text conditioning is the
pipeline's own ``encode_prompt`` (sequence plus pooled text). Samplers: DDIM on the pipeline's
noise schedule, or, for a rectified-flow scheduler (SD3's ``FlowMatchEulerDiscreteScheduler``),
that scheduler's Euler steps; the forward process and training target follow the schedule
(x_t = (1 - s) x0 + s noise and target noise - x0, s = t / num_train_timesteps, for the flow).
FLUX transformers (packed latents, position ids, guidance embedding) are not supported.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..families.base import pipeline_family
from ..families.diffusion import DIFFUSION, concept_texts, encode_prompts, pipeline_id, text_towers, tokenize_prompts
from ..families.mmdit import SD3
from ..layers import KeptModes
from .masks import masked_step, trained_parameters

__all__ = [
    "DiffusionTrainConfig",
    "Conditioning",
    "DenoiserTrainer",
    "train_denoiser",
    "TRAIN_METHODS",
    "MIXED_PRECISION",
    "DIFFUSION_OPTIMIZERS",
    "select_parameters",
    "resolve_mixed_precision",
    "concept_lists",
    "patch_metadata",
]

TEXT_PREFIX = "text_encoder."  # trained text-encoder parameters' keys in DenoiserTrainer.params
TRAIN_METHODS = tuple(DIFFUSION.train_selections)  # the SD3 family offers the same names
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
DIFFUSION_OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class DiffusionTrainConfig:
    """How a trained diffusion method optimises (method configs subclass this and add their own fields).

    steps: optimiser steps.
    lr: learning rate.
    optimizer: ``adam``, ``adamw`` (decoupled ``weight_decay``) or ``sgd``.
    weight_decay: L2 (adam, sgd) or decoupled (adamw) weight decay.
    batch_size: latents per step.
    mixed_precision: ``auto`` (a half-precision denoiser's own precision; else bf16 on CUDA if
        supported, fp16 on older GPUs, ``no`` on CPU), ``no``, ``fp16`` or ``bf16``. Trained
        parameters are float32 while training (master weights) and get their dtype back after.
    gradient_checkpointing: recompute denoiser activations in the backward pass (saves memory).
    seed: seeds the latents, noise and timesteps (each process adds its rank).
    resolution: image side in pixels (None: the denoiser's ``sample_size`` times the VAE's scale).
    ddim_steps: DDIM steps of the sampler that makes training latents.
    guidance_scale: classifier-free guidance of that sampler.
    grad_clip: clip the gradient norm of the trained parameters to this (None: no clipping).
    """

    steps: int = 1000
    lr: float = 1e-5
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 1
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 0
    resolution: int | None = None
    ddim_steps: int = 50
    guidance_scale: float = 7.5
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in DIFFUSION_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {DIFFUSION_OPTIMIZERS}; got {self.optimizer!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}; got {self.mixed_precision!r}")
        if self.steps < 0 or self.batch_size < 1 or self.lr < 0 or self.ddim_steps < 1:
            raise ValueError(
                f"need steps >= 0, batch_size >= 1, lr >= 0 and ddim_steps >= 1 (got {self.steps}, "
                f"{self.batch_size}, {self.lr}, {self.ddim_steps})"
            )
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"resolution must be at least 8 pixels; got {self.resolution}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None; got {self.grad_clip}")


def select_parameters(pipe: Any, method: str) -> list[str]:
    """Names of the denoiser parameters (``unet`` or ``transformer`` relative) ESD's ``train_method`` trains.

    On a UNet, ``xattn``: every parameter whose name contains ``attn2`` (cross-attention);
    ``noxattn``: all but those, the time embedding and the output head (ESD's CompVis rule in
    diffusers names); ``kv``: the cross-attention key/value weights (``attn2.to_k``/``to_v``);
    ``full``: all. On an SD3 transformer, joint attention stands in for cross-attention and its
    context key/value projections for ``to_k``/``to_v`` (the family adapters' ``train_selections``).
    """
    if method not in TRAIN_METHODS:
        raise ValueError(f"train_method must be one of {TRAIN_METHODS}; got {method!r}")
    name, denoiser = denoiser_of(pipe)
    out = pipeline_family(pipe).train_selections[method](denoiser)
    if not out:
        raise ValueError(
            f"the {name} has no parameters for train_method={method!r} (no cross-attention or joint attention layers?)"
        )
    return out


def denoiser_of(pipe: Any) -> tuple[str, nn.Module]:
    """``("unet", pipe.unet)`` or, for an SD3-family pipeline, ``("transformer", pipe.transformer)``."""
    unet = getattr(pipe, "unet", None)
    if isinstance(unet, nn.Module):
        return "unet", unet
    transformer = getattr(pipe, "transformer", None)
    if isinstance(transformer, nn.Module) and pipeline_family(pipe) is SD3:
        return "transformer", transformer
    raise NotImplementedError(
        f"{type(pipe).__name__} has neither a UNet nor an SD3 transformer; the trained methods support "
        "UNet pipelines (SD 1.x/2.x, SDXL) and SD3-layout transformers. FLUX (packed latents, position ids, "
        "guidance embedding) is not supported: erase it with unlink. The pipeline was not changed."
    )


def resolve_mixed_precision(mode: str, device: torch.device, weights: torch.dtype = torch.float32) -> str:
    """``auto`` -> the precision of half-precision ``weights``; else ``bf16`` on CUDA if supported,
    ``fp16`` on older CUDA GPUs, ``no`` elsewhere. Other modes pass through."""
    if mode not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}; got {mode!r}")
    if mode != "auto":
        return mode
    if weights in (torch.float16, torch.bfloat16):
        return "bf16" if weights == torch.bfloat16 else "fp16"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def concept_lists(concepts: Any, retain: Any) -> tuple[list[str], set[int], list[str]]:
    """Concept texts, the indices of those given as prompt rows, and retain texts (may be empty);
    ValueError for empty concepts or a retain prompt that is also a concept."""
    words, verbatim = concept_texts(concepts, "concepts")
    keep, _ = concept_texts(retain, "retain prompts")
    clash = sorted({w.casefold() for w in words} & {r.casefold() for r in keep})
    if clash:
        raise ValueError(f"{clash} are both concepts to erase and retain prompts; remove them from one list.")
    return words, verbatim, keep


def patch_metadata(
    pipe: Any, method: str, config: Any, concepts: list[str], retain: list[str], **extra: Any
) -> dict[str, Any]:
    """The metadata every diffusion method's patch carries (as ``unlink`` writes it)."""
    return {
        "method": method,
        "family": "diffusion",
        "names": list(concepts),
        "concepts": list(concepts),
        "retain": list(retain),
        "base_model": pipeline_id(pipe),
        "pipeline_class": type(pipe).__name__,
        "config": asdict(config),
        **extra,
    }


@dataclass
class Conditioning:
    """The denoiser's text conditioning for a batch: hidden states (B, L, D) and the added
    conditioning: SDXL's (``text_embeds``: pooled projection, ``time_ids``) or SD3's
    (``pooled_projections``)."""

    hidden: Tensor
    added: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def __getitem__(self, index: Any) -> Conditioning:
        """Rows ``index`` (an int list or tensor; repeats allowed)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.hidden.device).reshape(-1)
        added = {k: v[index.to(v.device)] for k, v in self.added.items()} if self.added else None
        return Conditioning(self.hidden[index], added)

    @staticmethod
    def cat(conds: Sequence[Conditioning]) -> Conditioning:
        """The conditionings' rows one after the other."""
        added = None
        if conds[0].added:
            added = {k: torch.cat([c.added[k] for c in conds]) for k in conds[0].added}
        return Conditioning(torch.cat([c.hidden for c in conds]), added)


def _new_accelerator(mixed_precision: str, cpu: bool) -> Any:
    """An ``Accelerator``; in a single process its global state is re-created if an earlier run
    chose another precision or device (accelerate keeps one state per process)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    kw = dict(mixed_precision=mixed_precision, cpu=cpu, device_placement=False)
    try:
        return Accelerator(**kw)
    except ValueError as err:
        if "already been initialized" not in str(err) or PartialState().num_processes > 1:
            raise
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(**kw)


@dataclass
class _Saved:
    """What the trainer changes on the denoiser besides the trained values, to put back."""

    device: torch.device
    modes: KeptModes
    checkpointing: bool
    requires_grad: list[tuple[nn.Parameter, bool]]
    dtypes: dict[str, torch.dtype]
    instance_attrs: dict[str, Any] = field(default_factory=dict)
    text_device: torch.device | None = None
    text_modes: KeptModes | None = None


class DenoiserTrainer:
    """A pipeline's denoiser (UNet or SD3 transformer) prepared to train the parameters ``names``
    (denoiser-relative, :func:`select_parameters`) and, with ``text_names``, parameters of a
    single-tower pipeline's ``text_encoder`` (keyed ``"text_encoder.<name>"`` in ``params`` and
    ``before``; AdvUnlearn trains them). Use it as a context manager; on an error inside the block
    every trained parameter gets its original value back. ``before`` holds those original values
    (the frozen model)."""

    def __init__(
        self,
        pipe: Any,
        names: Iterable[str],
        config: DiffusionTrainConfig,
        *,
        text_names: Iterable[str] = (),
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> None:
        towers = text_towers(pipe)  # a text-to-image pipeline?
        self.pipe, self.cfg, self.progress = pipe, config, progress
        self.component, self.denoiser = denoiser_of(pipe)
        named = dict(self.denoiser.named_parameters())
        self.names = list(dict.fromkeys(names))
        unknown = [n for n in self.names if n not in named]
        if unknown:
            raise ValueError(f"parameters {unknown[:4]} are not in the {self.component}")
        self.params: dict[str, nn.Parameter] = {n: named[n] for n in self.names}
        text_names = list(dict.fromkeys(text_names))
        self.text_encoder: nn.Module | None = None
        if text_names:
            if len(towers) != 1 or towers[0][0] != "text_encoder":
                raise NotImplementedError(
                    f"training text-encoder parameters supports single-text-encoder pipelines (SD 1.x/2.x, the "
                    f"bundled digits model); {type(pipe).__name__} has {[t[0] for t in towers]}"
                )
            self.text_encoder = towers[0][2]
            text_named = dict(self.text_encoder.named_parameters())
            missing = [n for n in text_names if n not in text_named]
            if missing:
                raise ValueError(f"parameters {missing[:4]} are not in the text encoder")
            self.params.update({f"{TEXT_PREFIX}{n}": text_named[n] for n in text_names})
        if not self.params:
            raise ValueError(f"no {self.component} parameters to train")
        self._device_arg = torch.device(device) if device is not None else None
        self.before: dict[str, Tensor] = {}
        self.losses: list[float] = []
        self.timing: dict[str, float] = {}
        self._saved: _Saved | None = None
        self._t0 = 0.0

    # -- set-up and tear-down ------------------------------------------------------------------
    def __enter__(self) -> DenoiserTrainer:
        self._t0 = time.perf_counter()
        try:
            self._setup()
        except BaseException:
            self._teardown(failed=True)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._teardown(failed=exc_type is not None)
        self.timing["total"] = time.perf_counter() - self._t0
        return False

    def _setup(self) -> None:
        from diffusers import DDIMScheduler

        from .processes import process_state

        cfg, unet = self.cfg, self.denoiser
        state = process_state(self._device_arg)  # before any Accelerator: joins accelerate launch's processes
        device = torch.device(self._device_arg) if self._device_arg is not None else state.device
        dtype = next(unet.parameters()).dtype
        precision = resolve_mixed_precision(cfg.mixed_precision, device, dtype)
        if precision == "no" and dtype in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"the {self.component} is in {dtype}; train it with mixed_precision='fp16' or 'bf16', or load it in float32."
            )
        self.accelerator = _new_accelerator(precision, cpu=device.type == "cpu")
        self.device, self.precision, self.dtype = device, precision, dtype
        self._saved = _Saved(
            device=next(unet.parameters()).device,
            modes=KeptModes(unet),
            checkpointing=bool(getattr(unet, "is_gradient_checkpointing", False)),
            requires_grad=[(p, p.requires_grad) for p in unet.parameters()],
            dtypes={n: p.dtype for n, p in self.params.items()},
            instance_attrs={k: unet.__dict__[k] for k in ("forward", "_original_forward") if k in unet.__dict__},
        )
        enc = self.text_encoder
        if enc is not None:
            if self.accelerator.num_processes > 1:
                raise NotImplementedError(
                    "text-encoder parameters train in one process (DDP wraps only the denoiser); run without "
                    "accelerate launch."
                )
            self._saved.text_device = next(enc.parameters()).device
            self._saved.text_modes = KeptModes(enc)
            self._saved.requires_grad += [(p, p.requires_grad) for p in enc.parameters()]
            enc.to(device).requires_grad_(False)
        unet.to(device)
        self.before = {n: p.detach().clone() for n, p in self.params.items()}
        unet.requires_grad_(False)
        for p in self.params.values():
            if p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()  # Adam on half-precision weights loses small updates
            p.requires_grad_(True)
        if cfg.gradient_checkpointing and hasattr(unet, "enable_gradient_checkpointing"):
            unet.enable_gradient_checkpointing()
        # accelerate wraps the forward in autocast (and in DDP when several processes run).
        self.model = self.accelerator.prepare(unet)
        own = self.pipe.scheduler
        self.flow = type(own).__name__.startswith("FlowMatch")
        if self.flow and getattr(own.config, "use_dynamic_shifting", False):
            raise NotImplementedError(
                "the pipeline's flow-matching scheduler shifts its timesteps by image size "
                "(use_dynamic_shifting, FLUX-style); the trainer samples with a fixed shift only."
            )
        # the pipeline's own rectified-flow sampler, else DDIM on the pipeline's noise schedule
        self.scheduler = type(own).from_config(own.config) if self.flow else DDIMScheduler.from_config(own.config)
        self.scheduler.set_timesteps(cfg.ddim_steps, device=device)
        scale = int(getattr(self.pipe, "vae_scale_factor", 8) or 8)
        self.resolution = cfg.resolution or int(unet.config.sample_size) * scale
        if self.resolution % scale:
            raise ValueError(f"resolution {self.resolution} is not a multiple of the VAE's scale factor {scale}")
        size = self.resolution // scale
        self.latent_shape = (int(unet.config.in_channels), size, size)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1000 * self.accelerator.process_index)
        # A scheduler that clips its x0 estimate (pixel-space models) must derive the noise from the
        # clipped x0, as the bundled digits pipeline samples; no effect when clip_sample is off (SD).
        clips = bool(getattr(self.scheduler.config, "clip_sample", False))
        takes = "use_clipped_model_output" in inspect.signature(self.scheduler.step).parameters
        self._step_kwargs = {"use_clipped_model_output": True} if clips and takes else {}

    def _teardown(self, failed: bool) -> None:
        saved, unet = self._saved, self.denoiser
        if saved is None:
            return
        with torch.no_grad():
            for n, p in self.params.items():
                if failed and n in self.before:
                    p.data = self.before[n].to(saved.dtypes[n])
                elif p.dtype != saved.dtypes[n]:
                    p.data = p.data.to(saved.dtypes[n])
                p.grad = None
        for p, flag in saved.requires_grad:
            p.requires_grad_(flag)
        if hasattr(self, "accelerator"):
            self.accelerator.free_memory()
        for k in ("forward", "_original_forward"):  # undo accelerate's autocast wrapper
            unet.__dict__.pop(k, None)
        unet.__dict__.update(saved.instance_attrs)
        if not saved.checkpointing and getattr(unet, "is_gradient_checkpointing", False):
            unet.disable_gradient_checkpointing()
        saved.modes.restore()
        unet.to(saved.device)
        if self.text_encoder is not None and saved.text_device is not None:
            saved.text_modes.restore()
            self.text_encoder.to(saved.text_device)
        if self.before and next(iter(self.before.values())).device != saved.device:
            self.before = {n: t.to(saved.device) for n, t in self.before.items()}
        self._saved = None

    # -- text conditioning ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """The pipeline's conditioning for ``prompts`` (SDXL: with pooled text and time ids; SD3:
        the pipeline's ``encode_prompt``, sequence and pooled text)."""
        if self.component == "transformer":
            hidden, _, pooled, _ = self.pipe.encode_prompt(
                prompt=list(prompts),
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )
            return Conditioning(hidden.to(self.device), {"pooled_projections": pooled.to(self.device)})
        hidden = encode_prompts(self.pipe, list(prompts)).to(self.device)
        return Conditioning(hidden, self._added(prompts))

    def unconditional(self, n: int = 1) -> Conditioning:
        """The negative conditioning the pipeline's classifier-free guidance uses: zeros when it
        zeroes empty prompts (SDXL's ``force_zeros_for_empty_prompt``), else the empty prompt."""
        null = self.encode([""])
        if getattr(getattr(self.pipe, "config", None), "force_zeros_for_empty_prompt", False):
            added = (
                {k: (torch.zeros_like(v) if k == "text_embeds" else v) for k, v in null.added.items()}
                if null.added
                else None
            )
            null = Conditioning(torch.zeros_like(null.hidden), added)
        return null[[0] * n]

    def _added(self, prompts: Sequence[str]) -> dict[str, Tensor] | None:
        config = self.denoiser.config
        kind = getattr(config, "addition_embed_type", None)
        if kind is None:
            return None
        if kind != "text_time":
            raise NotImplementedError(f"UNets with addition_embed_type={kind!r} are not supported")
        _, _, enc = text_towers(self.pipe)[-1]  # SDXL: text_encoder_2's projected pooled output
        ids = tokenize_prompts(self.pipe, list(prompts))[-1].to(next(enc.parameters()).device)
        out = enc(ids)
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
        n_ids = (int(config.projection_class_embeddings_input_dim) - pooled.shape[-1]) // int(
            config.addition_time_embed_dim
        )
        if n_ids != 6:
            raise NotImplementedError(
                f"this UNet expects {n_ids} time ids (SDXL base uses 6: size, crop, target size); "
                "aesthetic-score conditioning (the SDXL refiner) is not supported"
            )
        # original size, crop top-left, target size: as the SDXL pipeline builds them by default
        side = float(self.resolution)
        time_ids = torch.tensor([[side, side, 0.0, 0.0, side, side]]).repeat(len(prompts), 1)
        return {"text_embeds": pooled.to(self.device), "time_ids": time_ids.to(self.device, pooled.dtype)}

    # -- randomness and the forward process -------------------------------------------------------
    def noise(self, n: int) -> Tensor:
        """Standard normal latents (n, C, H, W), from the trainer's seeded generator."""
        return torch.randn((n, *self.latent_shape), generator=self.generator).to(self.device)

    def randint(self, high: int, n: int = 1) -> Tensor:
        """``n`` integers uniform in [0, high), from the trainer's generator."""
        return torch.randint(0, high, (n,), generator=self.generator)

    def random_timesteps(self, n: int) -> Tensor:
        """``n`` training timesteps, uniform over the schedule's ``num_train_timesteps``."""
        return self.randint(int(self.scheduler.config.num_train_timesteps), n).to(self.device)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t of the forward process."""
        if self.flow:
            s = (t.to(x0.device, torch.float32) / int(self.scheduler.config.num_train_timesteps)).reshape(-1, 1, 1, 1)
            return (1.0 - s) * x0 + s * noise
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the denoiser is trained to predict (noise, velocity or sample, by the scheduler's
        type; the flow's velocity noise - x0 for rectified flow)."""
        if self.flow:
            return noise - x0
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.scheduler.get_velocity(x0, noise, t)
        return x0

    # -- the denoiser -------------------------------------------------------------------------
    def predict(self, latents: Tensor, t: Tensor | int, cond: Conditioning) -> Tensor:
        """The denoiser's output (float32) for ``latents`` at timesteps ``t`` under ``cond``; records
        gradients unless called under ``torch.no_grad()``."""
        t = torch.as_tensor(t, device=self.device)
        if t.ndim == 0:
            t = t.expand(latents.shape[0])
        dtype = self.dtype if self.precision == "no" else torch.float32
        added = {k: v.to(dtype) for k, v in cond.added.items()} if cond.added else None
        with self.accelerator.autocast():
            if self.component == "transformer":
                out = self.model(
                    hidden_states=latents.to(dtype),
                    encoder_hidden_states=cond.hidden.to(dtype),
                    pooled_projections=added["pooled_projections"],
                    timestep=t,
                    return_dict=False,
                )[0]
            else:
                out = self.model(
                    latents.to(dtype),
                    t,
                    encoder_hidden_states=cond.hidden.to(dtype),
                    added_cond_kwargs=added,
                    return_dict=False,
                )[0]
        return out.float()

    @contextmanager
    def original(self) -> Iterator[None]:
        """Inside, the trained parameters hold their original values and no gradients are
        recorded: the frozen model's predictions, without a second copy of the denoiser."""
        current = {}
        with torch.no_grad():
            try:
                for n, p in self.params.items():
                    current[n] = p.data
                    p.data = self.before[n]
                yield
            finally:
                for n, data in current.items():
                    self.params[n].data = data

    @torch.no_grad()
    def sample(
        self,
        cond: Conditioning,
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        uncond: Conditioning | None = None,
        latents: Tensor | None = None,
    ) -> Tensor:
        """Latents after the first ``steps`` (None: all) of ``ddim_steps`` DDIM steps from noise
        (or from ``latents``), with classifier-free guidance against ``uncond`` (default: the
        pipeline's), using the denoiser's current weights."""
        n = len(cond)
        scale = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
        if self.flow:  # the Euler scheduler counts its steps: start it afresh
            self.scheduler.set_timesteps(self.cfg.ddim_steps, device=self.device)
        sigma = float(getattr(self.scheduler, "init_noise_sigma", 1.0))
        x = latents if latents is not None else self.noise(n) * sigma
        guided = scale > 1.0
        both = Conditioning.cat([uncond if uncond is not None else self.unconditional(n), cond]) if guided else cond
        for t in self.scheduler.timesteps[: self.cfg.ddim_steps if steps is None else steps]:
            inp = torch.cat([x, x]) if guided else x
            if not self.flow:
                inp = self.scheduler.scale_model_input(inp, t)
            out = self.predict(inp, t, both)
            if guided:
                out_u, out_c = out.chunk(2)
                out = out_u + scale * (out_c - out_u)
            x = self.scheduler.step(out, t, x, **self._step_kwargs).prev_sample
        return x

    def timestep(self, index: int) -> Tensor:
        """The timestep of sampler step ``index`` (0: the noisiest)."""
        return self.scheduler.timesteps[index]

    # -- optimisation -------------------------------------------------------------------------
    def backward(self, loss: Tensor) -> None:
        """Backpropagate ``loss`` (scaled for fp16, synchronised across processes)."""
        self.accelerator.backward(loss)

    def gradients(self, loss_fn: Callable[[int], Tensor], batches: int) -> dict[str, Tensor]:
        """The trained parameters' gradients of ``loss_fn(i)`` summed over ``i < batches`` (float32)."""
        total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params.items()}
        for i in range(batches):
            loss = loss_fn(i)
            _check_finite(float(loss.detach()), i, "saliency")
            self.backward(loss)
            for n, p in self.params.items():
                if p.grad is not None:
                    total[n] += p.grad.float()
                    p.grad = None
        return total

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def fit(
        self, loss_fn: Callable[[int], Tensor], *, masks: dict[str, Tensor] | None = None, desc: str = "train"
    ) -> list[float]:
        """Minimise ``loss_fn(step)`` for ``config.steps`` steps; returns the losses.

        ``masks`` (name -> boolean tensor, True = may change) restrict training to those entries:
        their gradients are masked and the other entries are restored after every step, so
        momentum and weight decay cannot move them either.
        """
        t0 = time.perf_counter()
        masks = {n: m.to(self.device, torch.bool) for n, m in (masks or {}).items()}
        for n, m in masks.items():
            if n not in self.params or tuple(m.shape) != tuple(self.params[n].shape):
                raise ValueError(f"mask {n!r} does not match a trained parameter")
        # Fully masked tensors stay out of the optimiser but keep requires_grad: DDP expects a
        # gradient for every parameter that had one when it was wrapped.
        trained = trained_parameters(self.params, masks)
        opt = self.accelerator.prepare(self._optimizer(trained))
        clip = (
            (lambda: self.accelerator.clip_grad_norm_(trained, self.cfg.grad_clip))
            if self.cfg.grad_clip is not None
            else None
        )
        self.denoiser.train()
        bar = tqdm(
            range(self.cfg.steps),
            desc=desc,
            leave=False,
            disable=not self.progress or not self.accelerator.is_main_process,
        )
        for step in bar:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(step)
            value = float(loss.detach())
            _check_finite(value, step, desc)
            self.backward(loss)
            masked_step(opt, self.params, masks, self.before, clip)
            self.losses.append(value)
            bar.set_postfix(loss=f"{value:.4g}")
        bar.close()
        opt.zero_grad(set_to_none=True)
        self._check_processes_agree()
        self.timing["train"] = self.timing.get("train", 0.0) + time.perf_counter() - t0
        return list(self.losses)

    def _check_processes_agree(self) -> None:
        """Under ``accelerate launch`` every process must end with the same weights (DDP averages
        the gradients); a difference means the processes did not train together."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return
        with torch.no_grad():
            sums = torch.stack([p.detach().double().sum() for p in self.params.values()]).to(acc.device)
            everyone = acc.gather(sums[None])
        if not torch.equal(everyone, everyone[:1].expand_as(everyone)):
            raise RuntimeError(
                f"the {acc.num_processes} processes ended with different weights, so they did not train "
                "together; launch with `accelerate launch` and leave the device to it."
            )

    def patch(self, metadata: dict[str, Any]) -> Any:
        """The dense :class:`~eraser.patch.ErasurePatch` of the trained parameters' change,
        registered as applied to the pipeline (call after the ``with`` block)."""
        from ..patch import ErasurePatch

        if self._saved is not None:
            raise RuntimeError("call patch() after the trainer's `with` block has closed")
        meta = dict(metadata)
        meta.setdefault("timing_s", {}).update(self.timing)
        meta["steps"] = len(self.losses)
        meta["final_loss"] = self.losses[-1] if self.losses else None
        meta["mixed_precision"] = getattr(self, "precision", None)
        meta["num_processes"] = self.accelerator.num_processes if hasattr(self, "accelerator") else 1
        before = {n if n.startswith(TEXT_PREFIX) else f"{self.component}.{n}": t for n, t in self.before.items()}
        patch = ErasurePatch.from_changes(self.pipe, before, meta)
        if not patch.deltas:
            warnings.warn(
                "training left every parameter unchanged (lr=0 or steps=0?); the patch is empty.", stacklevel=2
            )
        return patch


def train_denoiser(
    pipe: Any,
    names: Iterable[str],
    loss_fn: Callable[[DenoiserTrainer, int], Tensor],
    config: DiffusionTrainConfig,
    *,
    metadata: dict[str, Any] | None = None,
    masks: dict[str, Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "train",
) -> Any:
    """Train the denoiser parameters ``names`` on ``loss_fn(trainer, step)``; returns the applied
    dense patch (the pipeline is restored if anything fails). For set-up work before training
    (encoding prompts, sampling data, masks), use :class:`DenoiserTrainer` directly."""
    with DenoiserTrainer(pipe, names, config, device=device, progress=progress) as tr:
        tr.fit(lambda step: loss_fn(tr, step), masks=masks, desc=desc)
    return tr.patch(metadata or {"method": desc})


def _check_finite(value: float, step: int, desc: str) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(
            f"{desc}: the loss became {value} at step {step}; the pipeline was restored. Lower the "
            "learning rate, set grad_clip, or train with mixed_precision='no' or 'bf16'."
        )
