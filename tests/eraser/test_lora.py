"""Erasures exported as LoRA files (peft and kohya layouts) load with diffusers' own loader and
reproduce the patched UNet; dense patches export by truncated SVD; from_lora reads files back."""

import pytest
import torch

import eraser
from eraser import PatchError
from eraser.families.architectures import build_pipeline
from eraser.lora import lora_key, parse_lora_state_dict

ATOL = 1e-5  # float32 UNet outputs: W + up @ down (diffusers) against W - a U^T written into W (patch)


def unet_out(pipe, prompt="a cat"):
    """The UNet's noise prediction for fixed latents, timestep and text conditioning."""
    g = torch.Generator().manual_seed(0)
    cfg = pipe.unet.config
    latents = torch.randn(1, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    ids = pipe.tokenizer(
        [prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    )
    with torch.no_grad():
        cond = pipe.text_encoder(ids.input_ids)[0]
        kw = {}
        if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: both towers and the added conditions
            ids2 = pipe.tokenizer_2(
                [prompt], padding="max_length", max_length=pipe.tokenizer_2.model_max_length, return_tensors="pt"
            )
            out2 = pipe.text_encoder_2(ids2.input_ids, output_hidden_states=True)
            cond = torch.cat(
                [pipe.text_encoder(ids.input_ids, output_hidden_states=True).hidden_states[-2], out2.hidden_states[-2]],
                -1,
            )
            kw["added_cond_kwargs"] = {"text_embeds": out2[0], "time_ids": torch.zeros(1, 6)}
        return pipe.unet(latents, torch.tensor([10]), encoder_hidden_states=cond, **kw).sample


@pytest.mark.parametrize("arch", ["tiny-sd", "tiny-sdxl"])
@pytest.mark.parametrize("fmt", ["peft", "kohya"])
def test_exported_lora_loads_in_diffusers_and_reproduces_the_patch(tmp_path, arch, fmt):
    pipe = build_pipeline(arch, seed=0)
    original = unet_out(pipe)
    patch = eraser.erase_concepts(pipe, "a cat")
    patched = unet_out(pipe)
    assert (patched - original).abs().max() > 1e-3  # the erasure changes the output
    info = patch.to_lora(tmp_path / f"cat_{fmt}.safetensors", format=fmt)
    patch.revert(pipe)
    assert torch.equal(unet_out(pipe), original)
    assert set(info["layers"]) == set(patch.edits) and info["relative_error"] == {}
    pipe.load_lora_weights(str(info["path"]), adapter_name="erase_cat")
    torch.testing.assert_close(unet_out(pipe), patched, atol=ATOL, rtol=0)
    # the adapter weight scales the erasure: half of it lands between the original and the patch
    pipe.set_adapters(["erase_cat"], adapter_weights=[0.5])
    half = unet_out(pipe)
    assert 0 < (half - original).norm() < (patched - original).norm()
    pipe.unload_lora_weights()
    torch.testing.assert_close(unet_out(pipe), original, atol=1e-6, rtol=0)


def transformer_out(pipe, prompt="a cat"):
    """An MMDiT transformer's prediction for fixed latents and timestep, text from the pipeline's own
    ``encode_prompt`` (SD3: CLIP + T5 sequence and pooled; FLUX: T5 sequence, CLIP pooled)."""
    g = torch.Generator().manual_seed(0)
    t = pipe.transformer
    with torch.no_grad():
        if type(pipe).__name__ == "FluxPipeline":
            emb, pooled, text_ids = pipe.encode_prompt([prompt], None, device="cpu")
            latents = torch.randn(1, 16, t.config.in_channels, generator=g)
            img_ids = pipe._prepare_latent_image_ids(1, 4, 4, "cpu", latents.dtype)
            return t(
                hidden_states=latents,
                encoder_hidden_states=emb,
                pooled_projections=pooled,
                timestep=torch.tensor([0.5]),
                img_ids=img_ids,
                txt_ids=text_ids,
            ).sample
        emb, _, pooled, _ = pipe.encode_prompt([prompt], None, None, device="cpu", do_classifier_free_guidance=False)
        latents = torch.randn(1, t.config.in_channels, 8, 8, generator=g)
        return t(
            hidden_states=latents, encoder_hidden_states=emb, pooled_projections=pooled, timestep=torch.tensor([10])
        ).sample


@pytest.mark.parametrize("arch", ["tiny-sd3", "tiny-flux"])
def test_mmdit_lora_loads_in_diffusers_and_reproduces_the_patch(tmp_path, arch):
    pipe = build_pipeline(arch, seed=0)
    original = transformer_out(pipe)
    patch = eraser.erase_concepts(pipe, "a cat")
    patched = transformer_out(pipe)
    assert (patched - original).abs().max() > 1e-4  # the erasure changes the output
    info = patch.to_lora(tmp_path / "cat.safetensors", format="peft")
    patch.revert(pipe)
    assert torch.equal(transformer_out(pipe), original)
    assert info["layers"] == ["transformer.time_text_embed.text_embedder.linear_1", "transformer.context_embedder"]
    pipe.load_lora_weights(str(info["path"]), adapter_name="erase_cat")
    torch.testing.assert_close(transformer_out(pipe), patched, atol=ATOL, rtol=0)
    pipe.unload_lora_weights()
    torch.testing.assert_close(transformer_out(pipe), original, atol=1e-6, rtol=0)


def test_lora_of_a_saved_patch_needs_no_pipeline_and_from_lora_reads_it_back(tmp_path):
    pipe = build_pipeline("tiny-sd", seed=1)
    original = unet_out(pipe)
    path = eraser.erase_concepts(pipe, "a cat").save(tmp_path / "cat.safetensors")
    patched = unet_out(pipe)
    eraser.ErasurePatch.load(path).revert(pipe)
    assert torch.equal(unet_out(pipe), original)
    # the saved undo factors are the LoRA's up factors: no pipeline needed
    info = eraser.ErasurePatch.load(path).to_lora(tmp_path / "cat_lora.safetensors", format="kohya")
    back = eraser.ErasurePatch.from_lora(info["path"], pipe)
    assert back.metadata["method"] == "unlink" and back.metadata["concepts"] == ["a cat"]
    back.apply(pipe)
    torch.testing.assert_close(unet_out(pipe), patched, atol=ATOL, rtol=0)
    back.revert(pipe)
    torch.testing.assert_close(unet_out(pipe), original, atol=1e-6, rtol=0)


def test_dense_patch_exports_by_truncated_svd_with_its_error(tmp_path):
    pipe = build_pipeline("tiny-sd", seed=2)
    original = unet_out(pipe)
    # dense K/V deltas of rank > 1 (three erased prompts, two kept ones)
    patch = eraser.erase_concepts(
        pipe, "a cat", retain=["a dog", "a house"], method="uce", templates=["{}", "a photo of {}", "a painting of {}"]
    )
    patched = unet_out(pipe)
    full = patch.to_lora(tmp_path / "full.safetensors", rank=64)
    low = patch.to_lora(tmp_path / "low.safetensors", rank=1)
    patch.revert(pipe)
    assert max(full["relative_error"].values()) < 1e-6 < min(low["relative_error"].values())
    pipe.load_lora_weights(str(full["path"]), adapter_name="uce")
    torch.testing.assert_close(unet_out(pipe), patched, atol=1e-4, rtol=0)
    pipe.unload_lora_weights()
    torch.testing.assert_close(unet_out(pipe), original, atol=1e-6, rtol=0)


def test_kohya_keys_round_trip_to_layer_names():
    names = [
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        "text_encoder.text_model.encoder.layers.0.mlp.fc1",
    ]
    keys = [lora_key(n, "kohya") for n in names]
    assert keys == [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
        "lora_te_text_model_encoder_layers_0_mlp_fc1",
    ]
    assert lora_key(names[1], "kohya", two_towers=True).startswith("lora_te1_")
    t = {
        f"{keys[0]}.lora_down.weight": torch.ones(2, 4),
        f"{keys[0]}.lora_up.weight": torch.ones(3, 2),
        f"{keys[0]}.alpha": torch.tensor(1.0),
    }
    ((name, (up, down, scale)),) = parse_lora_state_dict(t, names).items()
    assert name == names[0] and scale == 0.5 and up.shape == (3, 2)


def test_bad_lora_input_is_refused_and_changes_nothing(tmp_path):
    from safetensors.torch import save_file

    pipe = build_pipeline("tiny-sd", seed=3)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    patch = eraser.erase_concepts(pipe, "a cat")
    with pytest.raises(PatchError, match="format must be one of"):
        patch.to_lora(tmp_path / "x.safetensors", format="a1111")
    with pytest.raises(PatchError, match="rank must be"):
        patch.to_lora(tmp_path / "x.safetensors", rank=0)
    other = build_pipeline("tiny-sd", seed=4)
    with pytest.raises(PatchError, match="not the patch's base model"):
        patch.to_lora(tmp_path / "x.safetensors", pipe=other)
    info = patch.to_lora(tmp_path / "ok.safetensors")
    patch.revert(pipe)
    with pytest.raises(PatchError, match="base fingerprint mismatch"):
        eraser.ErasurePatch.from_lora(info["path"], other)
    name = next(iter(patch.edits))
    bad = {
        "unknown key": ({"unet.no.such.layer.lora_A.weight": torch.ones(1, 32)}, "names no layer"),
        "shape": (
            {f"{name}.lora_A.weight": torch.ones(1, 7), f"{name}.lora_B.weight": torch.ones(5, 1)},
            "another model",
        ),
        "half": ({f"{name}.lora_A.weight": torch.ones(1, 32)}, "lacks its up factor"),
        "nan": (
            {f"{name}.lora_A.weight": torch.full((1, 32), float("nan")), f"{name}.lora_B.weight": torch.ones(32, 1)},
            "NaN",
        ),
        "not lora": ({"something.else": torch.ones(1)}, "not a lora_A/lora_B"),
    }
    for label, (tensors, message) in bad.items():
        path = tmp_path / f"{label.replace(' ', '_')}.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(PatchError, match=message):
            eraser.ErasurePatch.from_lora(path, pipe)
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(PatchError, match="not a readable safetensors"):
        eraser.ErasurePatch.from_lora(tmp_path / "pickle.safetensors", pipe)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_cli_export_writes_a_lora_file(tmp_path, capsys):
    from apps.cli import main

    pipe = build_pipeline("tiny-sd", seed=5)
    patch = eraser.erase_concepts(pipe, "a cat")
    path = patch.save(tmp_path / "cat.safetensors")
    patch.revert(pipe)
    main(["export", str(path), "--format", "kohya", "--out", str(tmp_path / "cat_lora.safetensors")])
    assert "kohya LoRA" in capsys.readouterr().out
    back = eraser.ErasurePatch.from_lora(tmp_path / "cat_lora.safetensors", pipe)
    assert back.metadata["method"] == "unlink" and "a cat" in back.metadata["concepts"]
    with pytest.raises(SystemExit, match="eraser export: .*not a readable"):
        (tmp_path / "junk.safetensors").write_bytes(b"junk")
        main(["export", str(tmp_path / "junk.safetensors"), "--out", str(tmp_path / "x.safetensors")])
