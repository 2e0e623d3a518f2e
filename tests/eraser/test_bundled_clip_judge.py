"""The bundled MNIST models: tiny CLIP (zero-shot on real digits), digit judge, captions, loaders."""

import json
import random
import shutil

import numpy as np
import pytest
import torch

import eraser.bundled as bundled
from eraser.bundled import models as bmodels
from eraser.bundled.captions import CAPTION_TEMPLATES, DIGIT_WORDS, all_captions, caption, digit_prompt


@pytest.fixture(scope="module")
def clip():
    return bundled.digits_clip()


@pytest.fixture(scope="module")
def judge():
    return bundled.digits_judge()


@pytest.fixture
def test_digits(shared_data):
    """The first 1000 digits of the official MNIST test set: (N, 1, 28, 28) in [0, 1], labels."""
    with np.load(shared_data / "mnist" / "mnist_test10k.npz", allow_pickle=False) as z:
        x, y = z["x"][:1000], z["y"][:1000]
    return torch.from_numpy(x.astype(np.float32) / 255).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


# ---------------------------------------------------------------------------------- captions


def test_digit_prompt_and_validation():
    assert digit_prompt(7) == "a photo of the digit seven"
    assert [digit_prompt(d).split()[-1] for d in range(10)] == list(DIGIT_WORDS)
    assert digit_prompt(np.int64(3)) == "a photo of the digit three"
    for bad in (-1, 10, 42):
        with pytest.raises(ValueError, match="0..9"):
            digit_prompt(bad)
    for bad in ("7", 7.0, None, True):
        with pytest.raises(TypeError, match="0..9"):
            digit_prompt(bad)


def test_captions_are_varied_and_name_the_digit():
    assert len(CAPTION_TEMPLATES) >= 10 and CAPTION_TEMPLATES[0] == "a photo of the digit {word}"
    for d in range(10):
        caps = all_captions(d)
        assert len(set(caps)) == len(CAPTION_TEMPLATES)
        assert all(DIGIT_WORDS[d] in c.split() or str(d) in c.split() for c in caps)
    rng = random.Random(0)
    drawn = {caption(4, rng) for _ in range(200)}
    assert drawn <= set(all_captions(4)) and len(drawn) > 6
    with pytest.raises(ValueError):
        caption(11, rng)


def test_public_api():
    for name in ("digit_prompt", "digits_clip", "digits_judge"):
        assert name in bundled.__all__ and callable(getattr(bundled, name))
    assert "DIGIT_WORDS" in bundled.__all__ and bundled.DIGIT_WORDS[7] == "seven" and len(bundled.DIGIT_WORDS) == 10


# ---------------------------------------------------------------------------------- tiny CLIP


def test_clip_loader_and_real_tokenizer(clip):
    import open_clip
    from transformers import CLIPModel

    model, tok = clip
    assert isinstance(model, CLIPModel) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.text_config.vocab_size == 49408 == len(tok)
    assert model.config.text_config.max_position_embeddings == 77
    ref = open_clip.tokenizer.SimpleTokenizer()
    assert ref.encode("seven") == [5757]
    prompt = digit_prompt(7)
    ids = tok(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids[0].tolist()
    assert ids[: len(ref.encode(prompt)) + 2] == [49406, *ref.encode(prompt), 49407]
    assert len(ids) == 77 and set(ids[len(ref.encode(prompt)) + 2 :]) == {49407}  # SD's padding
    # the text tower's hidden states (what a diffusion UNet cross-attends to)
    with torch.no_grad():
        h = model.text_model(input_ids=torch.tensor([ids])).last_hidden_state
    assert h.shape == (1, 77, model.config.text_config.hidden_size)


def test_clip_zero_shot_on_real_mnist(clip, test_digits):
    model, tok = clip
    x, y = test_digits
    logits = bmodels.zero_shot_logits(model, tok, x)
    assert logits.shape == (1000, 10)
    acc = (logits.argmax(1) == y).float().mean().item()
    assert acc >= 0.90, acc
    ensemble = bmodels.zero_shot_logits(model, tok, x, [all_captions(d) for d in range(10)])
    assert (ensemble.argmax(1) == y).float().mean().item() >= 0.90
    # 32x32 (2-pixel zero padding) gives the same embeddings as 28x28
    padded = torch.nn.functional.pad(x[:8], (2, 2, 2, 2))
    assert torch.allclose(bmodels.clip_pixel_values(padded), bmodels.clip_pixel_values(x[:8]))


# ---------------------------------------------------------------------------------- judge


def test_judge_on_real_mnist(judge, test_digits):
    x, y = test_digits
    assert not judge.training and isinstance(judge, torch.nn.Module)
    with torch.no_grad():
        logits = judge(x)
        padded = judge(torch.nn.functional.pad(x, (2, 2, 2, 2)))  # 32x32 is centre-cropped
        single = judge(x[0])
    assert logits.shape == (1000, 10) and single.shape == (1, 10)
    assert torch.allclose(logits, padded)
    acc = (logits.argmax(1) == y).float().mean().item()
    assert acc >= 0.98, acc


# ---------------------------------------------------------------------------------- files


def test_weights_are_small_safetensors():
    files = [p for p in bmodels.WEIGHTS_DIR.joinpath("clip").rglob("*") if p.is_file()]
    files += [p for p in bmodels.WEIGHTS_DIR.joinpath("judge").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"model.safetensors", "config.json", "meta.json"}
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt")]
    assert sum(p.stat().st_size for p in files) <= 11e6
    assert bmodels.WEIGHTS_DIR.joinpath("clip", "model.safetensors").stat().st_size <= 10e6
    meta = json.loads(bmodels.WEIGHTS_DIR.joinpath("clip", "meta.json").read_text())
    assert set(meta["data"]) == {"mnist_train10k.npz", "mnist_test10k.npz"}
    assert all(len(v["sha256"]) == 64 for v in meta["data"].values())


@pytest.fixture
def weights_copy(tmp_path, monkeypatch):
    """A copy of the weights folder that the loaders read instead of the real one."""
    dst = tmp_path / "weights"
    for name in ("clip", "judge"):
        shutil.copytree(bmodels.WEIGHTS_DIR / name, dst / name)
    monkeypatch.setattr(bmodels, "WEIGHTS_DIR", dst)
    return dst


@pytest.mark.parametrize(
    "which, loader, command",
    [("clip", "digits_clip", "recipes.train_clip"), ("judge", "digits_judge", "recipes.train_judge")],
)
def test_missing_or_damaged_weights_give_a_clear_error(weights_copy, which, loader, command):
    load = getattr(bundled, loader)
    folder = weights_copy / which
    load()  # the copy itself loads

    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(bundled.BundledWeightsError, match=f"(?s)model.safetensors.*damaged.*{command}"):
        load()

    meta = json.loads((folder / "meta.json").read_text())
    meta.pop("weights_sha256")
    (folder / "meta.json").write_text(json.dumps(meta))  # without the checksum, safetensors' own parse fails
    with pytest.raises(bundled.BundledWeightsError, match=f"(?s)model.safetensors.*damaged.*{command}"):
        load()

    weights.unlink()
    with pytest.raises(bundled.BundledWeightsError, match=f"(?s)model.safetensors.*missing.*{command}"):
        load()

    weights.write_bytes(good)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(bundled.BundledWeightsError, match=f"(?s)config.json.*damaged.*{command}"):
        load()
    (folder / "config.json").unlink()
    with pytest.raises(bundled.BundledWeightsError, match=f"(?s)config.json.*missing.*{command}"):
        load()


def test_package_data_ships_the_weights():
    from pathlib import Path

    text = (Path(bundled.__file__).parents[2] / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert '"eraser.bundled" = ["weights/**/*"]' in section
