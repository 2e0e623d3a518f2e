"""eraser.erase_concepts on tiny Stable Diffusion / SDXL pipelines built from config."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import eraser
from eraser import ErasurePatch, PatchError
from eraser.families.architectures import build_pipeline
from eraser.families.diffusion import concept_token_mask, encode_prompts, tokenize_prompts
from prompts import GENERIC_RETAIN, PromptRow

RETAIN_BOUND = 0.2  # tiny random text encoders are not semantic; real ones separate concepts better


def kv_layers(pipe):
    return {n: m for n, m in eraser.as_module(pipe).named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))}


def kv_weights(pipe):
    return {n: m.weight.detach().clone() for n, m in kv_layers(pipe).items()}


def token_features(pipe, prompts, mode="prompt"):
    """The K/V inputs (rows) of the given token positions, as the UNet receives them."""
    hidden = encode_prompts(pipe, prompts)
    ids = tokenize_prompts(pipe, prompts)[0]
    mask = concept_token_mask(ids, pipe.tokenizer.eos_token_id, [0] * len(prompts), [99] * len(prompts), mode)
    return hidden[mask]


@pytest.fixture(params=["tiny-sd", "tiny-sdxl"])
def pipe(request):
    return build_pipeline(request.param)


@pytest.fixture
def sd():
    return build_pipeline("tiny-sd")


def test_features_equal_the_pipelines_own_encoding(pipe):
    prompts = ["a photo of a nude woman", "a dog"]
    ours = encode_prompts(pipe, prompts)
    theirs = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
    assert ours.shape == theirs.shape and ours.shape[-1] == pipe.unet.config.cross_attention_dim
    torch.testing.assert_close(ours, theirs)


def test_token_mask_leaves_out_start_padding_and_template_prefix():
    # [SOT, a, photo, of, nude, woman, EOT, EOT(pad), EOT(pad)]
    ids = torch.tensor([[49406, 320, 1125, 539, 16630, 2308, 49407, 49407, 49407]])
    m = lambda mode, start=3, n=1: concept_token_mask(ids, 49407, [start], [n], mode)[0].tolist()  # noqa: E731
    assert m("concept_eot") == [False, False, False, False, True, True, True, False, False]
    assert m("concept") == [False, False, False, False, True, False, False, False, False]
    assert m("prompt") == [False, True, True, True, True, True, True, False, False]
    with pytest.raises(ValueError, match="tokens must be one of"):
        m("all")


def test_padding_token_modes_select_every_position_after_start_of_text():
    # [SOT, a, photo, of, nude, woman, EOT, EOT(pad), EOT(pad)]
    ids = torch.tensor([[49406, 320, 1125, 539, 16630, 2308, 49407, 49407, 49407]])
    m = lambda mode, start=3, n=1: concept_token_mask(ids, 49407, [start], [n], mode)[0].tolist()  # noqa: E731
    assert m("prompt_padding") == [False] + [True] * 8
    assert m("concept_padding") == [False, False, False, False, True, True, True, True, True]
    # a prompt that fills the window (no end-of-text token): everything after start-of-text
    full = torch.tensor([[49406, 320, 1125, 539]])
    assert concept_token_mask(full, 49407, [0], [3], "prompt_padding")[0].tolist() == [False, True, True, True]


def test_padding_token_mode_reads_features_at_full_length(sd):
    from eraser.families.diffusion import concept_grams, expand_concepts, resolve_concept_targets

    kv, text, *_ = resolve_concept_targets(sd, "cross_attn_kv")
    cp = expand_concepts(sd.tokenizer, ["nude"], ["a photo of {}"])
    grams, counts = concept_grams(sd, cp, kv, text, tokens="prompt_padding")
    length = sd.tokenizer.model_max_length
    assert counts == [length - 1]  # every position after start-of-text, padding included
    rows = token_features(sd, cp.prompts, mode="prompt_padding")
    assert rows.shape[0] == length - 1
    (gram,) = grams[kv[0]]
    assert gram.n == length - 1
    torch.testing.assert_close(gram.matrix, rows.double().T @ rows.double(), rtol=1e-4, atol=1e-4)


def test_erased_kv_annihilate_the_concept_subspace(pipe):
    patch = eraser.erase_concepts(pipe, ["nude", "naked"], k=3, variant="svd", strength=1.0)
    assert set(patch.layers) == set(kv_layers(pipe)) and len(patch.layers) > 0
    for name, mod in kv_layers(pipe).items():
        u = patch.edits[name].basis[0]  # (D, k), orthonormal
        assert (mod.weight.double() @ u).abs().max() < 1e-5
    assert patch.metadata["retain_source"] == "none" and patch.metadata["variant"] == "svd"


def _oblique_property(pipe, patch, before):
    """W* = W (I - C_rr U diag(eta) U^T) scales each oblique direction C_rr u_i by (1 - eta_i)
    (eta includes the strength): 0 where the direction is removed, negative where reflected."""
    for name, mod in kv_layers(pipe).items():
        e = patch.edits[name]
        dual, eta = e.dual[0], e.eta[0]
        assert (eta > 0).any()
        expected = (before[name].double() @ dual) * (1 - eta)
        torch.testing.assert_close(mod.weight.double() @ dual, expected, rtol=1e-4, atol=1e-5)


def _regression_property(pipe, patch, before):
    """W* = W (I - V diag(eta) B^T) with V orthonormal (the concept's top directions) and eta the
    strength: the least-squares edit (eraser.subspace.regression_subspace)."""
    for name, mod in kv_layers(pipe).items():
        e = patch.edits[name]
        v, basis, eta = e.dual[0], e.basis[0], e.eta[0]
        torch.testing.assert_close(v.T @ v, torch.eye(v.shape[1], dtype=v.dtype), atol=1e-6, rtol=0)
        assert torch.all(eta == patch.metadata["config"]["strength"])
        m = torch.eye(v.shape[0], dtype=torch.float64) - v.double() @ torch.diag(eta.double()) @ basis.double().T
        torch.testing.assert_close(mod.weight.double(), before[name].double() @ m, rtol=1e-4, atol=1e-5)


def test_default_protects_neighbours_with_the_regression_edit(pipe):
    before = kv_weights(pipe)
    patch = eraser.erase_concepts(pipe, ["nude", "naked"], k=3)
    meta = patch.metadata
    assert meta["retain_source"] == "neighbours" and meta["variant"] == "regression" and meta["bank"] == "builtin"
    assert len(meta["retain"]) == 16 and not {"nude", "naked"} & set(meta["retain"])
    assert meta["config"]["strength"] == 2.0 and meta["config"]["retain_weight"] == 2.0
    # the protected entries are the most similar bank entries that are not synonyms
    sims = meta["neighbour_similarity"]
    assert all(sims[r] < 0.9 for r in meta["retain"]) and all(sims[s] >= 0.9 for s in meta["synonyms"])
    assert min(sims[r] for r in meta["retain"]) >= max(
        (v for k, v in sims.items() if k not in meta["retain"] and k not in meta["synonyms"]), default=-1
    )
    _regression_property(pipe, patch, before)


def test_rayleigh_variant_edits_the_oblique_directions(pipe):
    before = kv_weights(pipe)
    patch = eraser.erase_concepts(pipe, ["nude", "naked"], k=3, variant="rayleigh", strength=1.5)
    assert patch.metadata["variant"] == "rayleigh"
    _oblique_property(pipe, patch, before)


def test_generic_retain_is_still_available(pipe):
    before = kv_weights(pipe)
    patch = eraser.erase_concepts(pipe, ["nude", "naked"], retain="generic", k=3, strength=1.0)
    assert patch.metadata["retain_source"] == "generic" and patch.metadata["variant"] == "regression"
    assert "a person" in patch.metadata["retain"]
    _regression_property(pipe, patch, before)


def test_svd_with_full_rank_zeroes_every_concept_token(sd):
    """The features are exactly the UNet's K/V inputs for the concept's tokens: removing their whole
    span makes K/V output zero there (up to the projection's bias, which attn2 does not have)."""
    patch = eraser.erase_concepts(
        sd, "nude", variant="svd", energy=1.0, templates=["{}", "a photo of {}"], strength=1.0
    )
    rows = token_features(sd, ["nude", "a photo of nude"], mode="prompt")
    concept_rows = torch.cat([rows[:2], rows[-2:]])  # "nude", EOT of prompt 1; "nude", EOT of prompt 2
    for mod in kv_layers(sd).values():
        assert mod(concept_rows).abs().max() < 1e-4
    assert patch.metadata["tokens_per_concept"] == {"nude": 4}


@torch.no_grad()
@pytest.mark.parametrize("variant", ["regression", "rayleigh"])
def test_retain_prompts_change_less_than_concepts(pipe, variant):
    concept = token_features(pipe, ["a photo of nude", "naked"])
    keep = token_features(pipe, ["a photo of a woman", "a man on a beach"])
    before = {n: (m(concept), m(keep)) for n, m in kv_layers(pipe).items()}
    rows = [PromptRow(prompt=p, case_number=i) for i, p in enumerate(["a photo of a woman", "a man on a beach"])]
    # the bound is stated for removal of three directions (the default gives each concept three)
    eraser.erase_concepts(pipe, ["nude", "naked"], retain=rows, strength=1.0, k=3, variant=variant)
    for name, m in kv_layers(pipe).items():
        c0, r0 = before[name]
        c_change = float((m(concept) - c0).norm() / c0.norm())
        r_change = float((m(keep) - r0).norm() / r0.norm())
        # Stated bound: retained prompts' K/V outputs move less than the concept's (relative
        # Frobenius norm); the Rayleigh projection's by less than half as much and less than
        # RETAIN_BOUND. The regression edit weighs the retain change against the concept's
        # (retain_weight 2): on a random encoder, whose prompts all look alike, it moves the
        # retain prompts more (0.41 against 0.68 here) while on the trained digits model it
        # moves them less than Rayleigh does (docs/defaults.md).
        assert r_change < c_change, (name, r_change, c_change)
        if variant == "rayleigh":
            assert r_change < RETAIN_BOUND and r_change < 0.5 * c_change, (name, r_change, c_change)


def test_revert_restores_exactly_and_stacks(sd):
    w0 = kv_weights(sd)
    a = eraser.erase_concepts(sd, "nude")
    wa = kv_weights(sd)
    b = eraser.erase_concepts(sd, "dog", retain=["cat"])
    a.revert(sd)  # under b: b stays applied
    assert any(not torch.equal(kv_weights(sd)[n], w0[n]) for n in w0)
    b.revert(sd)
    assert all(torch.equal(kv_weights(sd)[n], w0[n]) for n in w0)
    a.apply(sd)
    assert all(torch.equal(kv_weights(sd)[n], wa[n]) for n in w0)


def test_patch_file_is_small_and_rebuilds_the_erased_pipeline(sd, tmp_path):
    patch = eraser.erase_concepts(sd, ["nude", "naked"], k=4)
    path = patch.save(tmp_path / "nude.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert sum(k.endswith(".basis") for k in keys) == 1  # every K/V layer shares one basis
    fresh = build_pipeline("tiny-sd")
    loaded = ErasurePatch.load(path)
    assert loaded.metadata["concepts"] == ["nude", "naked"] and loaded.metadata["base_model"] == "tiny-sd"
    assert loaded.metadata["config"]["k"] == 4 and loaded.metadata["method"] == "unlink"
    loaded.apply(fresh)
    for n, w in kv_weights(sd).items():
        torch.testing.assert_close(kv_weights(fresh)[n], w, rtol=0, atol=1e-6)
    with pytest.raises(PatchError, match="already applied"):
        loaded.apply(fresh)


def test_sd_patch_is_refused_on_sdxl_shapes(sd, tmp_path):
    path = eraser.erase_concepts(sd, "nude").save(tmp_path / "p.safetensors")
    xl = build_pipeline("tiny-sdxl")
    before = kv_weights(xl)
    with pytest.raises(PatchError, match="another architecture"):
        ErasurePatch.load(path).apply(xl)
    assert all(torch.equal(kv_weights(xl)[n], w) for n, w in before.items())


def test_patch_for_other_weights_is_refused(sd, tmp_path):
    path = eraser.erase_concepts(sd, "nude").save(tmp_path / "p.safetensors")
    other = build_pipeline("tiny-sd", seed=1)
    with pytest.raises(PatchError, match="fingerprint mismatch"):
        ErasurePatch.load(path).apply(other)
    ErasurePatch.load(path).apply(other, force=True)


def test_fp16_pipeline():
    pipe = build_pipeline("tiny-sd", dtype=torch.float16)
    patch = eraser.erase_concepts(pipe, "nude", variant="svd", strength=1.0)
    for name, mod in kv_layers(pipe).items():
        assert mod.weight.dtype == torch.float16 and torch.isfinite(mod.weight).all()
        u = patch.edits[name].basis[0]
        assert (mod.weight.double() @ u).abs().max() < 5e-3 * mod.weight.double().abs().max()
    img = pipe(
        "a photo of nude",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert torch.isfinite(img).all()


def test_bfloat16_pipeline_finds_the_float32_subspace():
    # bfloat16 is how the many-concept timing meets its target on CPU (docs/benchmarks.md): its
    # features must give (nearly) the edit a float32 pipeline gives.
    full, half = build_pipeline("tiny-sd"), build_pipeline("tiny-sd", dtype=torch.bfloat16)
    pf, ph = eraser.erase_concepts(full, "nude"), eraser.erase_concepts(half, "nude")
    assert set(pf.edits) == set(ph.edits)
    for name, mod in kv_layers(half).items():
        assert mod.weight.dtype == torch.bfloat16 and torch.isfinite(mod.weight).all()
        qf = torch.linalg.qr(pf.edits[name].basis[0].double())[0]
        qh = torch.linalg.qr(ph.edits[name].basis[0].double())[0]
        assert qf.shape == qh.shape
        assert torch.linalg.svdvals(qf.T @ qh).min() > 0.95  # cosines of the principal angles
        torch.testing.assert_close(pf.edits[name].eta, ph.edits[name].eta)


def test_text_encoder_targets(sd):
    unet_before = kv_weights(sd)
    patch = eraser.erase_concepts(sd, "nude", targets="text_encoder_mlp", k=2, variant="svd", strength=1.0)
    assert patch.layers and all(n.startswith("text_encoder.") and ".mlp.fc" in n for n in patch.layers)
    assert all(torch.equal(kv_weights(sd)[n], w) for n, w in unet_before.items())
    mods = dict(eraser.as_module(sd).named_modules())
    for name in patch.layers:
        assert (mods[name].weight.double() @ patch.edits[name].basis[0]).abs().max() < 1e-5


def test_prompt_rows_are_used_verbatim(sd):
    rows = [PromptRow(prompt="a nude figure on a beach", case_number=0)]
    patch = eraser.erase_concepts(sd, rows, variant="svd", k=1)
    # one prompt, every token after the start-of-text: 6 words + EOT
    assert patch.metadata["tokens_per_concept"] == {"a nude figure on a beach": 7}


def test_generic_retain_drops_entries_sharing_a_word(sd):
    patch = eraser.erase_concepts(sd, ["dog", "woman"], retain="generic")
    kept = patch.metadata["retain"]
    assert "a dog" not in kept and "a woman" not in kept and "a cat" in kept
    assert len(kept) == len(GENERIC_RETAIN) - 2


def test_the_registry_serves_diffusion_unlink(sd):
    assert {"unlink", "unlink_rayleigh"} <= set(eraser.list_methods(family="diffusion"))
    assert eraser.get_method("unlink", family="diffusion").returns == "patch"
    patch = eraser.run_method(sd, ["nude"], method="unlink", family="diffusion", k=2, variant="svd").patch
    assert isinstance(patch, ErasurePatch) and patch.metadata["family"] == "diffusion"


@pytest.mark.parametrize(
    "concepts, kwargs, error",
    [
        ([], {}, "empty"),
        (["nude", "  "], {}, "empty string"),
        (["nude"], {"k": 500}, "exceeds the number of concept tokens"),
        (["nude"], {"retain": ["Nude"]}, "both concepts to erase and retain"),
        (["nude"], {"targets": "unet.conv_in"}, "image features"),
        (["nude"], {"targets": "no_such_layer.*"}, "matches no module"),
        (["nude"], {"templates": ["a photo of"]}, "exactly once"),
        (["nude"], {"method": "unlink_rayleigh"}, "needs retain"),
        (["nude"], {"tokens": "everything"}, "tokens must be one of"),
        (["nude"], {"method": "salun"}, "classifier method"),
        (None, {}, "no concepts given.*concept words or prompts"),
        (7, {}, "concept words or prompts.*got int"),
        (7, {"method": "uce"}, "concept words or prompts.*got int"),
        (["nude"], {"retain": 7}, "retain prompts.*words or prompts.*got int"),
    ],
)
def test_bad_input_is_refused_and_leaves_the_pipeline_unchanged(sd, concepts, kwargs, error):
    before = kv_weights(sd)
    with pytest.raises((ValueError, TypeError), match=error):
        eraser.erase_concepts(sd, concepts, **kwargs)
    assert all(torch.equal(kv_weights(sd)[n], w) for n, w in before.items())


def test_a_repeated_concept_is_erased_once_with_a_warning(sd):
    once = eraser.erase_concepts(sd, ["nude", "naked"], variant="svd", k=2)
    once.revert(sd)
    with pytest.warns(UserWarning, match=r"concepts repeat 'Nude', 'naked'.*each is used once"):
        twice = eraser.erase_concepts(sd, ["nude", "naked", "Nude", " naked  "], variant="svd", k=2)
    twice.revert(sd)
    assert twice.metadata["names"] == ["nude", "naked"]
    for name, edit in once.edits.items():
        torch.testing.assert_close(twice.edits[name].basis, edit.basis)


def test_each_named_concept_gets_the_default_rank_up_to_half_the_dimension(sd):
    dim = sd.text_encoder.config.hidden_size
    one = eraser.erase_concepts(sd, "nude")
    one.revert(sd)
    assert one.metadata["default_k"] == 3 and one.edits[one.layers[0]].rank <= 3
    three = eraser.erase_concepts(sd, ["nude", "church", "parachute"])
    three.revert(sd)
    assert three.metadata["default_k"] == 9 and 3 < three.edits[three.layers[0]].rank <= 9
    many = eraser.erase_concepts(sd, ["nude", "church", "parachute"], rank_per_concept=dim)
    many.revert(sd)
    assert many.metadata["default_k"] == dim // 2 and many.edits[many.layers[0]].rank <= dim // 2
    with pytest.raises(ValueError, match="rank_per_concept must be a positive integer"):
        eraser.erase_concepts(sd, "nude", rank_per_concept=0)


def test_several_concepts_weigh_as_each_does_alone_and_synonyms_share_one_weight(sd, monkeypatch):
    """The forget second moment of several concepts is the sum of each concept's own (so a concept
    among many keeps its solo Rayleigh quotients); concepts alike enough to be synonyms share one."""
    from eraser.methods.unlink_diffusion import ConceptUnlinkConfig, concept_statistics

    def covariance(concepts, **kw):
        stats = concept_statistics(sd, concepts, "none", config=ConceptUnlinkConfig(variant="svd", **kw))
        return stats.forget[stats.kv[0]][0].covariance(), stats

    words = ["church", "parachute", "garbage truck"]
    solo = [covariance([w])[0] for w in words]
    together, stats = covariance(words)
    assert stats.groups == [[w] for w in words]
    torch.testing.assert_close(together, sum(solo), rtol=1e-5, atol=1e-6)
    # everything "alike": one group, whose weight is the mean of its concepts' second moments
    from eraser.methods import unlink_diffusion

    monkeypatch.setattr(unlink_diffusion, "centred_similarity", lambda a, b, c: torch.ones(len(a), len(b)))
    grouped, stats = covariance(words)
    assert stats.groups == [words]
    torch.testing.assert_close(grouped, sum(solo) / 3, rtol=1e-5, atol=1e-6)


def test_long_prompts_are_truncated_with_a_warning(sd):
    long = "nude " + " ".join(["very"] * 100)
    with pytest.warns(UserWarning, match="truncated"):
        eraser.erase_concepts(sd, [PromptRow(prompt=long, case_number=0)], variant="svd", k=1)


def test_not_a_pipeline():
    with pytest.raises(TypeError, match="text-to-image pipeline"):
        eraser.erase_concepts(torch.nn.Linear(3, 3), "nude")


def test_short_padding_gives_the_same_features_up_to_end_of_text(pipe):
    from eraser.families.diffusion import encode_ids

    prompts = ["a photo of nude", "an extremely long and detailed painting of a church at night"]
    full = encode_ids(pipe, tokenize_prompts(pipe, prompts))
    short_ids = tokenize_prompts(pipe, prompts, shortest=True)
    short = encode_ids(pipe, short_ids)
    assert short.shape[1] < full.shape[1]
    torch.testing.assert_close(short, full[:, : short.shape[1]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("retain, attribute", [("generic", "_eraser_retain_grams"), (None, "_eraser_bank_features")])
def test_retain_statistics_are_cached_until_the_text_encoder_changes(sd, retain, attribute):
    a = eraser.erase_concepts(sd, "nude", retain=retain)
    a.revert(sd)
    cached = sd.__dict__[attribute]
    b = eraser.erase_concepts(sd, "church", retain=retain)
    assert sd.__dict__[attribute] is cached  # reused, not recomputed
    b.revert(sd)
    with torch.no_grad():
        next(sd.text_encoder.parameters()).mul_(1.01)
    eraser.erase_concepts(sd, "church", retain=retain)
    assert sd.__dict__[attribute] is not cached


def test_patch_save_pretrained_from_pretrained(sd, tmp_path):
    patch = eraser.erase_concepts(sd, "nude")
    patch.save_pretrained(tmp_path / "patch")
    assert (tmp_path / "patch" / "erasure_patch.safetensors").is_file()
    assert ErasurePatch.from_pretrained(tmp_path / "patch").metadata["id"] == patch.metadata["id"]


def test_any_object_with_unet_text_encoder_and_tokenizer_works(sd):
    import types

    bare = types.SimpleNamespace(unet=sd.unet, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer)
    patch = eraser.erase_concepts(bare, "nude", variant="svd", k=1)
    assert patch.metadata["base_model"] == "SimpleNamespace" and len(patch.layers) == len(kv_layers(sd))
    patch.revert(bare)


def test_without_exact_revert_no_weights_are_kept_and_revert_is_close(sd):
    before = kv_weights(sd)
    patch = eraser.erase_concepts(sd, "nude", exact_revert=False)
    assert patch._originals == {} and patch.metadata["config"]["exact_revert"] is False
    patch.revert(sd)
    for n, w in before.items():
        torch.testing.assert_close(kv_weights(sd)[n], w, rtol=0, atol=1e-6)


# -- neighbour-aware defaults ------------------------------------------------------------------


def test_neighbours_skip_the_concept_and_its_narrower_forms(sd):
    from eraser.families.diffusion import concept_neighbours

    bank = ("a dog", "dog", "a dog park", "a cat", "a car", "a tree", "a house")
    found = concept_neighbours(sd, ["dog"], bank, n=3, synonym_similarity=1.0)
    assert not {"a dog", "dog", "a dog park"} & set(found.neighbours + found.synonyms)
    assert len(found.neighbours) == 3
    sims = [found.similarity[x] for x in found.neighbours]
    assert sims == sorted(sims, reverse=True)
    everything = concept_neighbours(sd, ["dog"], bank, n=3, synonym_similarity=1e-9)
    # with a threshold nothing passes under, every entry closer than it is a synonym, never protected
    assert not set(everything.neighbours) & set(everything.synonyms)


def test_synonyms_are_erased_with_the_concept_and_reported(sd):
    from prompts.bank import CONCEPT_BANK

    patch = eraser.erase_concepts(sd, "dog", bank=CONCEPT_BANK, synonym_similarity=0.5)
    syn = patch.metadata["synonyms"]
    assert syn and set(syn) <= set(patch.metadata["concepts"]) and not set(syn) & set(patch.metadata["retain"])
    patch.revert(sd)
    kept = eraser.erase_concepts(sd, "dog", synonym_similarity=0.5, erase_synonyms=False)
    assert kept.metadata["concepts"] == ["dog"] and not set(kept.metadata["synonyms"]) & set(kept.metadata["retain"])


def test_made_up_word_still_gets_neighbours(sd):
    patch = eraser.erase_concepts(sd, "blorptzqx")
    assert patch.metadata["retain_source"] == "neighbours" and len(patch.metadata["retain"]) == 16


def test_retain_modes_and_their_bad_input(sd):
    before = kv_weights(sd)
    for variant in ("rayleigh", "regression"):  # the variants that protect something
        with pytest.raises(ValueError, match="retain='none'"):
            eraser.erase_concepts(sd, "dog", retain="none", variant=variant)
    assert all(torch.equal(before[n], w) for n, w in kv_weights(sd).items())
    patch = eraser.erase_concepts(sd, "dog", retain="none")
    assert patch.metadata["retain_source"] == "none" and patch.metadata["variant"] == "svd"
    patch.revert(sd)
    with pytest.raises(ValueError, match="neighbours"):
        eraser.erase_concepts(sd, "dog", neighbours=-1)


def test_user_retain_holding_a_synonym_warns_and_is_kept(sd):
    with pytest.warns(UserWarning, match="as close to the erased concepts as synonyms"):
        patch = eraser.erase_concepts(sd, "dog", retain=["a puppy", "a cat"], synonym_similarity=1e-9)
    assert patch.metadata["retain"] == ["a puppy", "a cat"] and patch.metadata["retain_source"] == "user"
