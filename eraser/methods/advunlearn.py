"""AdvUnlearn (Zhang et al., NeurIPS 2024): ESD on the text encoder, trained against adversarial
prompt tokens, with a term that keeps retain prompts' predictions.

The text encoder is fine-tuned (the UNet stays frozen) so that, for the concept prompt with an
adversarial token in front of it, the UNet's prediction is ESD's negatively guided target:

    eps(x_t, t, E_theta([adv] c))  ->  eps*(x_t, t, "") - eta * (eps*(x_t, t, c) - eps*(x_t, t, ""))

and, for retain prompts r, the original prediction: ``retain_weight * MSE(eps(x_t^r, t,
E_theta(r)), eps*(x_t^r, t, r))`` (the reference's ``retain_train='reg'``). x_t is the original
model's partial DDIM sample of the prompt, as in ESD; ``*`` marks the original text encoder. After
``warmup`` steps of plain ESD, every ``attack_every`` steps the adversarial token embedding
(``attack_tokens`` rows, in the text encoder's input-embedding space, started from random vocabulary
rows and then from its last value) takes ``attack_steps`` Adam steps that make the current model's
prediction for ``[adv] c`` match the original model's for ``c`` (the reference's ``prefix_k``
``word_embd`` attack). The patch holds the text encoder's changed weights.

Differences from the reference code (github.com/OPTML-Group/AdvUnlearn, ``train-scripts``): its
attack never zeroes the adversarial embedding's gradient, so Adam steps on gradients summed over
all earlier attack steps; here each step uses its own gradient. Retain prompts are the ``retain``
argument (the reference draws batches of COCO object captions); they are required. The trained
parameters are the encoder layers (``text_encoder_full`` without the final layer norm, the
reference's default) or, with ``train_layers="first"``, only the first layer. Single-text-encoder
pipelines (SD 1.x/2.x, the bundled digits model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..patch import ErasurePatch
from ..registry import register_method
from ..training.diffusion import Conditioning, DenoiserTrainer, DiffusionTrainConfig, concept_lists, patch_metadata
from ..training.soft_prompts import (
    check_pipeline,
    encode_hidden,
    optimisation_generator,
    prompt_ids,
    random_tokens,
    soft_tokens,
)

__all__ = ["AdvUnlearnConfig", "advunlearn", "TRAIN_LAYERS"]

TRAIN_LAYERS = ("all", "first")


@dataclass
class AdvUnlearnConfig(DiffusionTrainConfig):
    """AdvUnlearn (reference defaults: 1000 steps, lr 1e-5, start guidance 3, eta 1, 50 DDIM steps,
    warm-up 200, one adversarial token, 30 attack steps at lr 1e-3 before every step).

    negative_guidance: eta of ESD's target.
    warmup: steps of plain ESD (no adversarial token) before the attacks start.
    attack_tokens: adversarial token embeddings put in front of the concept.
    attack_steps / attack_lr: Adam steps and learning rate of each attack.
    attack_every: steps between two attacks (the adversarial token is kept in between).
    retain_weight: weight of the retain prompts' term.
    retain_batch: retain prompts per step (cycled in order).
    train_layers: ``"all"`` encoder layers or the ``"first"`` one.
    """

    steps: int = 1000
    lr: float = 1e-5
    guidance_scale: float = 3.0
    negative_guidance: float = 1.0
    gradient_checkpointing: bool = False  # the UNet is frozen: there are no UNet activations to save
    warmup: int = 200
    attack_tokens: int = 1
    attack_steps: int = 30
    attack_lr: float = 1e-3
    attack_every: int = 1
    retain_weight: float = 1.0
    retain_batch: int = 5
    train_layers: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_layers not in TRAIN_LAYERS:
            raise ValueError(f"train_layers must be one of {TRAIN_LAYERS}; got {self.train_layers!r}")
        for name in ("attack_tokens", "attack_every", "retain_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("warmup", "attack_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if not self.attack_lr > 0 or self.retain_weight < 0:
            raise ValueError(f"need attack_lr > 0 and retain_weight >= 0; got {self.attack_lr}, {self.retain_weight}")


def text_encoder_parameters(enc: nn.Module, layers: str) -> list[str]:
    """The text encoder's trained parameters: every encoder layer's, or the first layer's."""
    names = [n for n, _ in enc.named_parameters() if ".encoder.layers." in f".{n}"]
    if layers == "first":
        names = [n for n in names if ".encoder.layers.0." in f".{n}"]
    if not names:
        raise ValueError(f"{type(enc).__name__} has no encoder layers to train (expected CLIP's text_model.encoder)")
    return names


@register_method("advunlearn", config=AdvUnlearnConfig, training_free=False, family="diffusion")
def advunlearn(
    pipe: Any,
    concepts: Any,
    retain: Any = None,
    *,
    config: AdvUnlearnConfig | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ErasurePatch:
    """AdvUnlearn: adversarially trained ESD on the text encoder, with retain prompts kept (Zhang et al. 2024)."""
    cfg = config or AdvUnlearnConfig()
    words, _, keep = concept_lists(concepts, retain)
    if not keep:
        raise ValueError(
            "advunlearn keeps retain prompts' predictions while it trains the text encoder; pass retain=[...] "
            "(the reference uses COCO object captions). The model was not changed."
        )
    tok, enc, _ = check_pipeline(pipe, "advunlearn")
    text_names = text_encoder_parameters(enc, cfg.train_layers)
    with DenoiserTrainer(pipe, [], cfg, text_names=text_names, device=device, progress=progress) as tr:
        # the original text encoder's conditionings (nothing is trained yet)
        concept, kept, null = tr.encode(words), tr.encode(keep), tr.encode([""])
        uncond = tr.unconditional(1)
        table = enc.get_input_embeddings().weight
        g_attack = optimisation_generator(cfg.seed, 0)
        init = random_tokens(tok, table.shape[0], cfg.attack_tokens, g_attack)
        adv = table[init].detach().float().clone()
        # "[adv] c": the adversarial tokens right after the start token (the reference's prefix_k)
        with_adv = [prompt_ids(tok, "", init, after=w) for w in words]
        plain = [prompt_ids(tok, w, [])[0] for w in words]
        retain_ids = [prompt_ids(tok, r, [])[0] for r in keep]
        attacks: list[dict[str, float]] = []

        def encoded(ids: Tensor, soft: Tensor | None = None, start: int = 1) -> Tensor:
            """The trained text encoder's conditioning, with gradients (and ``soft`` rows at ``start``)."""
            ids = ids.to(tr.device)
            if soft is None:
                return encode_hidden(enc, ids)
            with soft_tokens(enc, start, soft):
                return encode_hidden(enc, ids)

        def draw(cond: Conditioning) -> tuple[Tensor, Tensor]:
            """x_t: the original model's partial DDIM sample of ``cond``, and its timestep."""
            k = int(tr.randint(cfg.ddim_steps))
            with torch.no_grad():
                x = tr.sample(cond, steps=k, uncond=uncond[[0] * len(cond)])
            return x, tr.timestep(k)

        def attack(i: int) -> None:
            nonlocal adv
            ids, start = with_adv[i]
            soft = nn.Parameter(adv.clone())
            opt = torch.optim.Adam([soft], lr=cfg.attack_lr)
            before = after = float("nan")
            for s in range(cfg.attack_steps):
                x, t = draw(concept[[i]])
                with torch.no_grad():
                    target = tr.predict(x, t, concept[[i]])  # the UNet is frozen: the original's prediction
                loss = F.mse_loss(tr.predict(x, t, Conditioning(encoded(ids, soft, start))), target)
                (grad,) = torch.autograd.grad(loss, soft)  # the attack moves its tokens, never the weights
                soft.grad = grad
                opt.step()
                after = float(loss.detach())
                before = after if s == 0 else before
            adv = soft.detach()
            attacks.append({"concept": i, "loss_first": before, "loss_last": after})

        def loss(step: int) -> Tensor:
            i = step % len(words)
            adversarial = step >= cfg.warmup and cfg.attack_steps > 0
            if adversarial and (step - cfg.warmup) % cfg.attack_every == 0:
                attack(i)
            x, t = draw(concept[[i]])
            with torch.no_grad():
                e_c, e_0 = tr.predict(x, t, concept[[i]]), tr.predict(x, t, null)
            target = e_0 - cfg.negative_guidance * (e_c - e_0)
            cond = encoded(with_adv[i][0], adv, with_adv[i][1]) if adversarial else encoded(plain[i])
            total = F.mse_loss(tr.predict(x, t, Conditioning(cond)), target)
            if cfg.retain_weight > 0:
                rows = [(step * cfg.retain_batch + j) % len(keep) for j in range(cfg.retain_batch)]
                xr, tr_t = draw(kept[rows])
                with torch.no_grad():
                    e_r = tr.predict(xr, tr_t, kept[rows])
                ids = torch.cat([retain_ids[r] for r in rows])
                total = total + cfg.retain_weight * F.mse_loss(tr.predict(xr, tr_t, Conditioning(encoded(ids))), e_r)
            return total

        tr.fit(loss, desc="advunlearn")
    return tr.patch(
        patch_metadata(
            pipe,
            "advunlearn",
            cfg,
            words,
            keep,
            train_parameters=len(text_names),
            attacks=attacks,
            losses=tr.losses,
        )
    )
