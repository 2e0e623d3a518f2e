"""ESD, SalUn and UCE on tiny random-weight Stable Diffusion pipelines, and their shared training loop."""

from __future__ import annotations

import pytest
import torch

import eraser
from eraser.families.architectures import build_pipeline
from eraser.methods.uce import kv_projections, last_token_features
from eraser.patch import ErasurePatch
from eraser.training.diffusion import (
    DenoiserTrainer,
    DiffusionTrainConfig,
    select_parameters,
    train_denoiser,
)

FAST = dict(steps=2, ddim_steps=3, resolution=32)
FAST_SALUN = dict(FAST, forget_images=2, retain_images=2, batch_size=2)
OPTIONS = {"esd_x": FAST, "esd_u": FAST, "esd_x_strict": FAST, "salun_sd": FAST_SALUN, "uce": {}}
EXCLUDED_BY_ESD_U = ("time_embedding.", "add_embedding.", "conv_norm_out.", "conv_out.")


def is_kv_weight(name: str) -> bool:
    return name.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))


RULES = {
    "esd_x": lambda n: "attn2" in n,
    "esd_x_strict": is_kv_weight,
    "esd_u": lambda n: "attn2" not in n and not n.startswith(EXCLUDED_BY_ESD_U),
    "uce": is_kv_weight,
    "salun_sd": lambda n: True,
}


def unet_state(pipe) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}


def same(pipe, state) -> bool:
    return all(torch.equal(p, state[n]) for n, p in pipe.unet.named_parameters())


def reapplied(pipe, after, before) -> bool:
    """Equal to ``after`` up to float32 rounding of the patch's deltas (new - old is stored in
    float32, so old + delta can miss new by about one ulp of the larger of the two)."""
    eps = torch.finfo(torch.float32).eps
    return all(
        bool(((p.detach() - after[n]).abs() <= 2 * eps * torch.maximum(after[n].abs(), before[n].abs())).all())
        for n, p in pipe.unet.named_parameters()
    )


def test_registered_for_diffusion():
    ids = {"esd_x", "esd_u", "esd_x_strict", "salun_sd", "uce"}
    assert ids <= set(eraser.list_methods(family="diffusion"))
    assert not ids & set(eraser.list_methods())  # not classifier methods
    assert set(eraser.list_methods(training_free=True, family="diffusion")) & ids == {"uce"}
    for name in ids:
        spec = eraser.get_method(name, family="diffusion")
        assert spec.family == "diffusion" and spec.summary


@pytest.mark.parametrize(
    "method, arch",
    [
        ("esd_x", "tiny-sd"),
        ("esd_u", "tiny-sd"),
        ("esd_x_strict", "tiny-sd"),
        ("salun_sd", "tiny-sd"),
        ("uce", "tiny-sd"),
        ("esd_x", "tiny-sdxl"),
        ("uce", "tiny-sdxl"),
    ],
)
def test_changes_only_its_parameters_and_patch_round_trips(method, arch, tmp_path):
    pipe = build_pipeline(arch, seed=3)
    before = unet_state(pipe)
    patch = eraser.erase_concepts(
        pipe, ["a cat"], retain=["a dog"] if method in ("uce", "salun_sd") else None, method=method, **OPTIONS[method]
    )
    after = unet_state(pipe)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed, f"{method} changed nothing"
    wrong = [n for n in changed if not RULES[method](n)]
    assert not wrong, f"{method} changed parameters it must not: {wrong[:3]}"
    assert sorted(patch.parameters) == sorted(f"unet.{n}" for n in changed)
    assert patch.metadata["method"] == method and patch.metadata["family"] == "diffusion"
    assert patch.metadata["concepts"] == ["a cat"] and patch.metadata["pipeline_class"] == type(pipe).__name__
    # Other components are untouched.
    assert all(not n.startswith(("text_encoder", "vae")) for n in patch.parameters)

    patch.revert(pipe)
    assert same(pipe, before), "revert is not exact"
    # Some of these change most of the UNet, beyond exact_revert="auto"'s memory budget: ask for
    # bit-exact reverts explicitly from here on.
    patch.exact_revert = True
    patch.apply(pipe)
    assert reapplied(pipe, after, before)

    loaded = ErasurePatch.load(patch.save(tmp_path / method))
    loaded.exact_revert = True
    fresh = build_pipeline(arch, seed=3)
    assert same(fresh, before)
    loaded.apply(fresh)
    assert reapplied(fresh, after, before), "the saved patch does not reproduce the edit on a fresh copy"
    assert all(torch.equal(q, p) for q, p in zip(fresh.unet.parameters(), pipe.unet.parameters())), (
        "the same patch on two identical pipelines gives different weights"
    )
    loaded.revert(fresh)
    assert same(fresh, before)


def test_select_parameters_rules():
    pipe = build_pipeline("tiny-sd")
    every = [n for n, _ in pipe.unet.named_parameters()]
    xattn = select_parameters(pipe, "xattn")
    noxattn = select_parameters(pipe, "noxattn")
    kv = select_parameters(pipe, "kv")
    assert xattn and all("attn2" in n for n in xattn) and len(xattn) == sum("attn2" in n for n in every)
    assert kv and all(is_kv_weight(n) for n in kv) and set(kv) < set(xattn)
    assert not set(noxattn) & set(xattn) and "conv_in.weight" in noxattn
    assert not [n for n in noxattn if n.startswith(EXCLUDED_BY_ESD_U)]
    assert select_parameters(pipe, "full") == every
    with pytest.raises(ValueError, match="train_method"):
        select_parameters(pipe, "selfattn")


@pytest.mark.parametrize("arch", ["tiny-sd", "tiny-sdxl"])
def test_uce_maps_concept_to_guide_and_keeps_preserved(arch):
    pipe = build_pipeline(arch, seed=1)
    concept, keep = ["a cat"], ["a dog", "a house"]
    c, g, p = (last_token_features(pipe, x) for x in (concept, [""], keep))
    old = {n: m.weight.detach().clone() for n, m in kv_projections(pipe.unet).items()}
    eraser.erase_concepts(pipe, concept, retain=keep, method="uce", lamb=0.01)
    for name, mod in kv_projections(pipe.unet).items():
        w_old, w_new = old[name], mod.weight.detach()
        to_guide = (c @ w_new.T - g @ w_old.T).norm() / (c @ w_old.T - g @ w_old.T).norm()
        kept = (p @ w_new.T - p @ w_old.T).norm() / (p @ w_old.T).norm()
        assert to_guide < 0.01, f"{name}: the concept's output is not mapped to the guide's ({to_guide:.3g})"
        assert kept < 0.01, f"{name}: the preserved prompts' outputs moved ({kept:.3g})"


def test_uce_default_lambda_pulls_concept_toward_guide():
    pipe = build_pipeline("tiny-sd", seed=2)
    c, g = last_token_features(pipe, ["a cat"]), last_token_features(pipe, [""])
    old = {n: m.weight.detach().clone() for n, m in kv_projections(pipe.unet).items()}
    eraser.erase_concepts(pipe, "a cat", method="uce")  # lamb 0.5: a ridge, so close, not exact
    for name, mod in kv_projections(pipe.unet).items():
        before = (c @ old[name].T - g @ old[name].T).norm()
        after = (c @ mod.weight.detach().T - g @ old[name].T).norm()
        assert after < 0.2 * before


def test_salun_mask_covers_ratio_and_limits_changes():
    pipe = build_pipeline("tiny-sd", seed=4)
    before = unet_state(pipe)
    patch = eraser.erase_concepts(pipe, ["a cat"], method="salun_sd", mask_ratio=0.3, lr=1e-3, **FAST_SALUN)
    total = sum(t.numel() for t in before.values())
    assert patch.metadata["mask_coverage"] == pytest.approx(int(0.3 * total) / total)
    n_changed = sum(int((p.detach() != before[n]).sum()) for n, p in pipe.unet.named_parameters())
    assert 0 < n_changed <= int(0.3 * total)
    assert (
        patch.metadata["retain_prompts_used"]
        and patch.metadata["surrogate"] == patch.metadata["retain_prompts_used"][0]
    )


def test_esd_loss_decreases_with_larger_lr():
    pipe = build_pipeline("tiny-sd", seed=0)
    # One DDIM step: every x_t is fresh noise at the same timestep, so losses are comparable.
    patch = eraser.erase_concepts(
        pipe, "a cat", method="esd_x", steps=6, ddim_steps=1, resolution=32, lr=1e-3, batch_size=2
    )
    losses = patch.metadata["losses"]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < 0.5 * losses[0], losses


@pytest.mark.parametrize("method", ["esd_x", "salun_sd", "uce"])
def test_bad_inputs_raise_and_leave_pipeline_unchanged(method):
    pipe = build_pipeline("tiny-sd", seed=5)
    before = unet_state(pipe)
    opts = OPTIONS[method]
    with pytest.raises(ValueError, match="empty"):
        eraser.erase_concepts(pipe, [], method=method, **opts)
    with pytest.raises(ValueError):
        eraser.erase_concepts(pipe, [" "], method=method, **opts)
    with pytest.raises(ValueError, match="both concepts"):
        eraser.erase_concepts(pipe, ["a cat"], retain=["A Cat"], method=method, **opts)
    with pytest.raises(TypeError, match="unknown options"):
        eraser.erase_concepts(pipe, ["a cat"], method=method, no_such_option=1)
    assert same(pipe, before)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="mixed_precision"):
        eraser.erase_concepts(build_pipeline("tiny-sd"), "a cat", method="esd_x", mixed_precision="fp8")
    with pytest.raises(ValueError, match="train_method"):
        eraser.erase_concepts(build_pipeline("tiny-sd"), "a cat", method="esd_x", train_method="attn")
    with pytest.raises(ValueError, match="mask_ratio"):
        eraser.erase_concepts(build_pipeline("tiny-sd"), "a cat", method="salun_sd", mask_ratio=0.0)
    with pytest.raises(ValueError, match="surrogate"):
        eraser.erase_concepts(build_pipeline("tiny-sd"), "a cat", method="salun_sd", surrogate="A cat", **FAST_SALUN)


def test_bf16_mixed_precision_on_cpu_runs_a_step():
    pipe = build_pipeline("tiny-sd", seed=6)
    patch = eraser.erase_concepts(
        pipe, "a cat", method="esd_x", mixed_precision="bf16", steps=1, ddim_steps=2, resolution=32, lr=1e-3
    )
    assert patch.metadata["mixed_precision"] == "bf16" and len(patch.metadata["losses"]) == 1
    assert patch.deltas and all(p.dtype == torch.float32 for p in pipe.unet.parameters())
    assert "forward" not in pipe.unet.__dict__  # accelerate's autocast wrapper was removed
    pipe(prompt="a cat", num_inference_steps=2, height=32, width=32, output_type="latent")  # still usable


def _trainer(pipe, names, **cfg):
    return DenoiserTrainer(pipe, names, DiffusionTrainConfig(**{**FAST, "mixed_precision": "no", **cfg}))


def test_loop_masks_original_swap_and_restoration():
    pipe = build_pipeline("tiny-sd", seed=7)
    names = select_parameters(pipe, "kv")
    flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    before = unet_state(pipe)
    mask = {n: torch.rand(before[n].shape, generator=torch.Generator().manual_seed(0)) < 0.5 for n in names}
    with _trainer(pipe, names, lr=0.05, optimizer="adamw", weight_decay=0.5) as tr:
        assert pipe.unet.is_gradient_checkpointing
        cond = tr.encode(["a cat"])
        x, t = tr.noise(1), tr.timestep(0)
        with torch.no_grad():
            ref = tr.predict(x, t, cond)
        tr.fit(lambda step: tr.predict(x, t, cond).pow(2).mean(), masks=mask)
        with tr.original():
            assert torch.equal(tr.predict(x, t, cond), ref)  # the frozen model, without a UNet copy
        assert not torch.equal(tr.predict(x, t, cond).detach(), ref)
    for n, p in pipe.unet.named_parameters():
        if n in mask:
            assert torch.equal(p[~mask[n]], before[n][~mask[n]]), "masked-out entries moved"
            assert not torch.equal(p[mask[n]], before[n][mask[n]])
        else:
            assert torch.equal(p, before[n])
    assert not pipe.unet.is_gradient_checkpointing
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == flags


def test_loop_nan_loss_stops_and_restores_weights():
    pipe = build_pipeline("tiny-sd", seed=8)
    names = select_parameters(pipe, "xattn")
    before = unet_state(pipe)
    steps = []

    def loss(step):
        steps.append(step)
        out = tr.predict(tr.noise(1), tr.timestep(0), cond).pow(2).mean()
        return out if step == 0 else out * float("nan")

    with pytest.raises(FloatingPointError, match="step 1"):
        with _trainer(pipe, names, lr=0.1, steps=3) as tr:
            cond = tr.encode(["a cat"])
            tr.fit(loss)
    assert steps == [0, 1]
    assert same(pipe, before), "the pipeline was not restored after the failure"


def test_train_denoiser_function_returns_patch_of_chosen_parameters():
    pipe = build_pipeline("tiny-sd", seed=9)
    names = select_parameters(pipe, "kv")
    state: dict = {}

    def loss(tr, step):
        if "cond" not in state:
            state["cond"] = tr.encode(["a cat"])
        return tr.predict(tr.noise(1), tr.timestep(0), state["cond"]).pow(2).mean()

    patch = train_denoiser(
        pipe,
        names,
        loss,
        DiffusionTrainConfig(steps=2, lr=1e-3, resolution=32, mixed_precision="no"),
        metadata={"method": "custom"},
    )
    assert sorted(patch.parameters) == sorted(f"unet.{n}" for n in names)
    assert patch.metadata["method"] == "custom" and patch.metadata["steps"] == 2


def test_trained_baseline_under_accelerate_launch_with_two_processes(tmp_path):
    """The real thing: `accelerate launch` starts two processes (torchrun; gloo on CPU). DDP trains
    them together (the trainer checks they end with equal weights), and one of them writes."""
    from apps.cli import main
    from tests.conftest import launch_two_processes

    common = [
        "erase",
        "--model",
        "random:tiny-sd",
        "--concept",
        "nude",
        "--method",
        "esd_x",
        "--option",
        "steps=2",
        "--option",
        "ddim_steps=3",
        "--option",
        "resolution=32",
    ]
    launched = launch_two_processes([*common, "--out", str(tmp_path / "two.safetensors")])
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert launched.stdout.count("patch:") == 1 and "on 2 processes" in launched.stdout
    two = ErasurePatch.load(tmp_path / "two.safetensors")
    main([*common, "--out", str(tmp_path / "one.safetensors")])
    one = ErasurePatch.load(tmp_path / "one.safetensors")
    assert two.metadata["num_processes"] == 2 and one.metadata["num_processes"] == 1
    assert sorted(two.deltas) == sorted(one.deltas)
    # The second process's own noise samples entered the averaged update.
    assert any(not torch.equal(two.deltas[n], one.deltas[n]) for n in one.deltas)


def _closest_reply(original, edited, c, ridge=0.01):
    """How well the best adversarial embedding reproduces the concept's original K/V outputs
    through the edited layers (relative residual over all layers)."""
    from eraser.methods.rece import adversarial_embeddings

    adv = adversarial_embeddings(original, edited, c.double(), ridge)
    num = sum(((adv @ edited[n].double().T) - (c.double() @ w.double().T)).norm() ** 2 for n, w in original.items())
    den = sum((c.double() @ w.double().T).norm() ** 2 for w in original.values())
    return float(num / den) ** 0.5


def test_rece_closes_the_embedding_uce_leaves_reachable():
    pipe = build_pipeline("tiny-sd", seed=5)
    c = last_token_features(pipe, ["a cat"])
    mods = kv_projections(pipe.unet)
    original = {n: m.weight.detach().clone() for n, m in mods.items()}
    before = unet_state(pipe)
    uce_patch = eraser.erase_concepts(pipe, "a cat", method="uce")
    after_uce = {n: m.weight.detach().clone() for n, m in mods.items()}
    uce_patch.revert(pipe)
    assert same(pipe, before)
    # rounds=0 is UCE itself
    p0 = eraser.erase_concepts(pipe, "a cat", method="rece", rounds=0)
    assert all(torch.equal(m.weight, after_uce[n]) for n, m in mods.items())
    p0.revert(pipe)
    patch = eraser.erase_concepts(pipe, "a cat", method="rece", rounds=3)
    after_rece = {n: m.weight.detach().clone() for n, m in mods.items()}
    assert len(patch.metadata["adversarial_norm_ratio"]) == 3
    # after RECE, no embedding brings the original outputs back as closely as one did after UCE
    assert _closest_reply(original, after_rece, c) > 1.5 * _closest_reply(original, after_uce, c)
    patch.revert(pipe)
    assert same(pipe, before)


@pytest.mark.parametrize(("options", "message"), [({"rounds": -1}, "rounds"), ({"adv_ridge": 0.0}, "adv_ridge")])
def test_rece_bad_settings(options, message):
    pipe = build_pipeline("tiny-sd", seed=6)
    before = unet_state(pipe)
    with pytest.raises(ValueError, match=message):
        eraser.erase_concepts(pipe, "a cat", method="rece", **options)
    assert same(pipe, before)
