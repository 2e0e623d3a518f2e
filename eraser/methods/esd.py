"""ESD: Erased Stable Diffusion (Gandikota et al., ICCV 2023), negative-guidance distillation.

The UNet is fine-tuned so that its prediction for a concept equals the frozen model's prediction
guided *away* from it:

    eps_theta(x_t, t, c)  ->  eps*(x_t, t, "") - eta * (eps*(x_t, t, c) - eps*(x_t, t, ""))

where x_t comes from partially denoising a random latent with the concept prompt (DDIM, guidance
``guidance_scale``) for a random number of steps, with the model being trained (as the reference
code samples). ``esd_x`` trains cross-attention, ``esd_u`` everything else, ``esd_x_strict`` only
the cross-attention key/value weights.

Differences from the reference code (github.com/rohitgandikota/erasing): several concepts are
cycled in order (the reference draws one at random per step); the target is the paper's
(``esd_sd.py`` anchors it at eps*(c) instead, where its default eta=2 equals the paper's eta=1);
``esd_sd.py``/``esd_sdxl.py`` sample x_t with the frozen model (the CompVis and first diffusers
scripts, followed here, with the model being trained). SDXL: x_t is sampled against the
pipeline's own negative conditioning (zeros), the frozen "" prediction uses the encoded empty
prompt, as ``esd_sdxl.py`` does. SD3-layout transformers (the reference code has none): joint
attention stands in for cross-attention (:func:`eraser.training.diffusion.select_parameters`), x_t
comes from the pipeline's own rectified-flow Euler sampler, and the target is the same combination
of the frozen model's velocity predictions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..patch import ErasurePatch
from ..registry import register_method
from ..training.diffusion import (
    TRAIN_METHODS,
    DenoiserTrainer,
    DiffusionTrainConfig,
    concept_lists,
    patch_metadata,
    select_parameters,
)

__all__ = ["ESDConfig", "ESDUConfig", "ESDXStrictConfig", "esd_erase"]


@dataclass
class ESDConfig(DiffusionTrainConfig):
    """ESD (paper defaults: 1000 steps, lr 1e-5, batch 1, 50 DDIM steps, start guidance 3).

    negative_guidance: eta, how far the target is pushed away from the concept.
    train_method: the UNet parameters trained (``xattn``, ``noxattn``, ``kv``, ``full``; see
        :func:`eraser.training.diffusion.select_parameters`).
    guidance_scale: classifier-free guidance used to make x_t (the paper's start guidance).
    The reference scripts use other values: ``esd_diffusers.py`` lr 2e-5 and 200 iterations,
    ``esd_sd.py`` lr 5e-5, 200 iterations and eta 2 on its anchored target, ``esd_sdxl.py``
    lr 2e-4 and guidance 2.
    """

    steps: int = 1000
    lr: float = 1e-5
    guidance_scale: float = 3.0
    negative_guidance: float = 1.0
    train_method: str = "xattn"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_method not in TRAIN_METHODS:
            raise ValueError(f"train_method must be one of {TRAIN_METHODS}; got {self.train_method!r}")


@dataclass
class ESDUConfig(ESDConfig):
    """ESD-u: trains every UNet parameter but cross-attention, time embedding and output head."""

    train_method: str = "noxattn"


@dataclass
class ESDXStrictConfig(ESDConfig):
    """ESD-x-strict: trains only the cross-attention key/value weights."""

    train_method: str = "kv"


def esd_erase(
    pipe: Any,
    concepts: Any,
    retain: Any = None,
    *,
    config: ESDConfig,
    method: str = "esd_x",
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ErasurePatch:
    """Fine-tune ``pipe``'s UNet with ESD to erase ``concepts``; returns the applied dense patch."""
    cfg = config
    words, _, keep = concept_lists(concepts, retain)
    if keep:
        warnings.warn("ESD has no retain term; the retain prompts are ignored.", stacklevel=3)
    names = select_parameters(pipe, cfg.train_method)
    with DenoiserTrainer(pipe, names, cfg, device=device, progress=progress) as tr:
        concept = tr.encode(words)
        null = tr.encode([""])
        uncond = tr.unconditional(1)
        b = cfg.batch_size

        def loss(step: int) -> torch.Tensor:
            c = concept[[step % len(words)] * b]
            k = int(tr.randint(cfg.ddim_steps))
            t = tr.timestep(k)
            with torch.no_grad():
                x_t = tr.sample(c, steps=k, uncond=uncond[[0] * b])
            with tr.original():
                e_c = tr.predict(x_t, t, c)
                e_0 = tr.predict(x_t, t, null[[0] * b])
            target = e_0 - cfg.negative_guidance * (e_c - e_0)
            return F.mse_loss(tr.predict(x_t, t, c), target)

        tr.fit(loss, desc=method)
    return tr.patch(patch_metadata(pipe, method, cfg, words, keep, train_method=cfg.train_method, losses=tr.losses))


@register_method("esd_x", config=ESDConfig, training_free=False, family="diffusion")
def esd_x(
    pipe: Any,
    concepts: Any,
    retain: Any = None,
    *,
    config: ESDConfig | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ErasurePatch:
    """ESD-x: fine-tune cross-attention to steer a concept's prediction away from it (Gandikota et al. 2023)."""
    return esd_erase(
        pipe, concepts, retain, config=config or ESDConfig(), method="esd_x", device=device, progress=progress
    )


@register_method("esd_u", config=ESDUConfig, training_free=False, family="diffusion")
def esd_u(
    pipe: Any,
    concepts: Any,
    retain: Any = None,
    *,
    config: ESDConfig | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ErasurePatch:
    """ESD-u: fine-tune all but cross-attention to erase a concept everywhere (Gandikota et al. 2023)."""
    return esd_erase(
        pipe, concepts, retain, config=config or ESDUConfig(), method="esd_u", device=device, progress=progress
    )


@register_method("esd_x_strict", config=ESDXStrictConfig, training_free=False, family="diffusion")
def esd_x_strict(
    pipe: Any,
    concepts: Any,
    retain: Any = None,
    *,
    config: ESDConfig | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ErasurePatch:
    """ESD-x-strict: fine-tune only cross-attention keys/values with ESD's objective."""
    return esd_erase(
        pipe,
        concepts,
        retain,
        config=config or ESDXStrictConfig(),
        method="esd_x_strict",
        device=device,
        progress=progress,
    )
