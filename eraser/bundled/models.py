"""Loaders and input conventions of the bundled MNIST models (tiny CLIP and digit judge).

Input convention (both models): grayscale digits as float tensors with pixels in [0, 1]
(white digit on black, as in MNIST), shaped ``(N, 1, 28, 28)`` or ``(N, 1, 32, 32)`` (a single
image without the batch dimension is accepted too). 32x32 images are **centre-cropped** to 28x28
(2 pixels dropped on each side, the inverse of the usual 2-pixel zero padding of MNIST to 32x32);
any other size is resized to 28x28 (bilinear, antialiased). See :func:`to_28`.

The tiny CLIP's vision tower takes ``pixel_values = (x - 0.5) / 0.5`` (so [-1, 1]) of shape
``(N, 1, 28, 28)``; :func:`clip_pixel_values` does this from [0, 1] images. The judge normalises
nothing: it reads [0, 1] pixels, as it was trained.

Weights are safetensors only (never pickles); a missing or damaged file raises
:class:`BundledWeightsError` naming the file and the command that rebuilds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ..families.clip import embedding
from ..hashing import file_sha256

__all__ = [
    "WEIGHTS_DIR",
    "BundledWeightsError",
    "CLIP_MEAN",
    "CLIP_STD",
    "DigitJudge",
    "clip_config",
    "clip_pixel_values",
    "clip_image_embeddings",
    "clip_text_embeddings",
    "digits_clip",
    "digits_judge",
    "to_28",
    "zero_shot_logits",
]

WEIGHTS_DIR = Path(__file__).resolve().with_name("weights")
CLIP_MEAN, CLIP_STD = 0.5, 0.5
CLIP_REBUILD = "python -m recipes.train_clip --data ../shared/data/mnist --out eraser/bundled/weights/clip"
JUDGE_REBUILD = "python -m recipes.train_judge --data ../shared/data/mnist --out eraser/bundled/weights/judge"


class BundledWeightsError(RuntimeError):
    """A bundled weight file is missing or damaged."""


# --------------------------------------------------------------------------------------------
# input conventions


def to_28(x: Tensor) -> Tensor:
    """``(N, 1, H, W)`` (or ``(1, H, W)``) images in [0, 1] -> ``(N, 1, 28, 28)`` float.

    28x28 passes through; 32x32 is centre-cropped (rows/columns 2..29); other sizes are resized
    (bilinear, antialiased). Three-channel inputs are averaged to one channel.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a tensor of images, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images shaped (N, 1, H, W) or (1, H, W); got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected float images with pixels in [0, 1]; got dtype {x.dtype}")
    if x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    h, w = x.shape[-2:]
    if (h, w) == (28, 28):
        return x
    if (h, w) == (32, 32):
        return x[..., 2:30, 2:30]
    return nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)


def clip_pixel_values(images: Tensor) -> Tensor:
    """[0, 1] digits (28x28 or 32x32, see :func:`to_28`) -> the tiny CLIP's ``pixel_values``."""
    return (to_28(images) - CLIP_MEAN) / CLIP_STD


# --------------------------------------------------------------------------------------------
# the tiny CLIP


def clip_config(
    text_hidden: int = 64, vision_hidden: int = 96, projection_dim: int = 64, layers: int = 4, heads: int = 4
):
    """The tiny CLIP's ``CLIPConfig``: real CLIP vocabulary (49,408) and 77 positions; a 1-channel
    28x28 ViT with 4x4 patches (49 patches + class token)."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=text_hidden,
        intermediate_size=4 * text_hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_channels=1,
        image_size=28,
        patch_size=4,
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim)


def clip_text_embeddings(model, tokenizer, prompts: list[str], normalize: bool = True) -> Tensor:
    """Projected text embeddings of ``prompts`` (padded to 77 tokens as Stable Diffusion does)."""
    device = next(model.parameters()).device
    ids = tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    emb = embedding(model.get_text_features(input_ids=ids.to(device)))
    return nn.functional.normalize(emb, dim=-1) if normalize else emb


def clip_image_embeddings(model, images: Tensor, normalize: bool = True, batch_size: int = 1000) -> Tensor:
    """Projected image embeddings of [0, 1] digit images (see :func:`clip_pixel_values`)."""
    param = next(model.parameters())
    outs = []
    for i in range(0, len(images), batch_size):
        px = clip_pixel_values(images[i : i + batch_size]).to(param.device, param.dtype)
        outs.append(embedding(model.get_image_features(pixel_values=px)))
    emb = torch.cat(outs)
    return nn.functional.normalize(emb, dim=-1) if normalize else emb


@torch.no_grad()
def zero_shot_logits(model, tokenizer, images: Tensor, prompts: list[str] | list[list[str]] | None = None) -> Tensor:
    """Cosine similarities (N, classes) of [0, 1] images to one prompt per class, or to the mean
    (prompt-ensemble) embedding of a list of prompts per class. Default: ``digit_prompt(0..9)``."""
    from .captions import digit_prompt

    if prompts is None:
        prompts = [digit_prompt(d) for d in range(10)]
    if all(isinstance(p, str) for p in prompts):
        text = clip_text_embeddings(model, tokenizer, list(prompts))
    else:
        text = torch.stack([clip_text_embeddings(model, tokenizer, list(group)).mean(0) for group in prompts])
        text = nn.functional.normalize(text, dim=-1)
    return clip_image_embeddings(model, images) @ text.T


def _tokenizer():
    from ..families.clip_tokenizer import clip_tokenizer

    return clip_tokenizer()


# --------------------------------------------------------------------------------------------
# loading with clear errors


def _need(path: Path, rebuild: str) -> Path:
    if not path.is_file():
        raise BundledWeightsError(f"bundled weight file {path} is missing; rebuild it with `{rebuild}`")
    return path


def _read_json(path: Path, rebuild: str) -> dict:
    try:
        data = json.loads(_need(path, rebuild).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundledWeightsError(f"bundled file {path} is damaged ({err}); rebuild it with `{rebuild}`") from None
    if not isinstance(data, dict):
        raise BundledWeightsError(f"bundled file {path} is damaged (not a JSON object); rebuild it with `{rebuild}`")
    return data


def _load_state(folder: Path, rebuild: str) -> tuple[dict[str, Tensor], dict, dict]:
    """(float32 state dict, config, meta) of ``folder``; checks the weights' sha256 from meta.json."""
    from safetensors.torch import load_file

    weights = _need(folder / "model.safetensors", rebuild)
    config = _read_json(folder / "config.json", rebuild)
    meta = _read_json(folder / "meta.json", rebuild)
    expected = meta.get("weights_sha256")
    if expected and file_sha256(weights) != expected:
        raise BundledWeightsError(
            f"bundled weight file {weights} is damaged (sha256 differs from {folder / 'meta.json'}); "
            f"rebuild it with `{rebuild}`"
        )
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises SafetensorError / OSError on damaged files
        raise BundledWeightsError(
            f"bundled weight file {weights} is damaged ({err}); rebuild it with `{rebuild}`"
        ) from None
    return {k: v.float() for k, v in state.items()}, config, meta


def _load_into(model: nn.Module, state: dict[str, Tensor], path: Path, rebuild: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BundledWeightsError(
            f"bundled weight file {path} does not fit the model ({str(err)[:300]}); rebuild it with `{rebuild}`"
        ) from None


def load_clip_folder(folder: str | Path, device: str | torch.device = "cpu"):
    """(CLIPModel, CLIPTokenizer) from a folder written by ``recipes/train_clip.py`` (eval mode, float32)."""
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    state, config, _ = _load_state(folder, CLIP_REBUILD)
    try:
        cfg = CLIPConfig.from_dict(config)
        model = CLIPModel(cfg)
    except Exception as err:
        raise BundledWeightsError(
            f"bundled file {folder / 'config.json'} is damaged ({err}); rebuild it with `{CLIP_REBUILD}`"
        ) from None
    _load_into(model, state, folder / "model.safetensors", CLIP_REBUILD)
    return model.float().to(device).eval(), _tokenizer()


def digits_clip(device: str | torch.device = "cpu"):
    """The bundled tiny CLIP trained on MNIST: ``(CLIPModel, CLIPTokenizer)``, eval mode, float32.

    Text: real CLIP tokenizer (49,408 tokens, 77 positions, padded with ``<|endoftext|>``).
    Images: ``pixel_values`` of shape (N, 1, 28, 28) in [-1, 1]; use :func:`clip_pixel_values`.
    """
    return load_clip_folder(WEIGHTS_DIR / "clip", device)


class DigitJudge(nn.Module):
    """The digit judge: 10 logits for [0, 1] digits of 28x28 or 32x32 (centre-cropped, see
    :func:`to_28`). ``net`` is the project's ``SmallCNN``."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        from classifiers.models import SmallCNN

        self.net = SmallCNN(num_classes=10, in_channels=1, width=width)

    def forward(self, x: Tensor) -> Tensor:
        p = next(self.net.parameters())
        return self.net(to_28(x).to(p.device, p.dtype))


def load_judge_folder(folder: str | Path, device: str | torch.device = "cpu") -> DigitJudge:
    """A :class:`DigitJudge` from a folder written by ``recipes/train_judge.py`` (eval mode, float32)."""
    folder = Path(folder)
    state, config, _ = _load_state(folder, JUDGE_REBUILD)
    try:
        model = DigitJudge(width=int(config.get("width", 8)))
    except (TypeError, ValueError) as err:
        raise BundledWeightsError(
            f"bundled file {folder / 'config.json'} is damaged ({err}); rebuild it with `{JUDGE_REBUILD}`"
        ) from None
    _load_into(model.net, state, folder / "model.safetensors", JUDGE_REBUILD)
    return model.to(device).eval()


def digits_judge(device: str | torch.device = "cpu") -> DigitJudge:
    """The bundled MNIST digit classifier (eval mode): [0, 1] images (N, 1, 28|32, 28|32) -> 10 logits."""
    return load_judge_folder(WEIGHTS_DIR / "judge", device)
