"""Shared-prefix encoding of concept prompts: the same features as the text tower's own pass."""

from __future__ import annotations

import pytest
import torch

from eraser.families.architectures import build_pipeline
from eraser.families.clip_text import encode_with_shared_prefixes, is_causal_clip
from eraser.families.diffusion import (
    concept_grams,
    encode_ids,
    expand_concepts,
    resolve_concept_targets,
    text_towers,
    tokenize_prompts,
)
from prompts.presets import DEFAULT_TEMPLATES

CONCEPTS = ["cat", "van gogh", "garbage truck", "a red bicycle leaning on a wall"]


@pytest.fixture(scope="module", params=["tiny-sd", "tiny-sdxl"])
def pipe(request):
    torch.manual_seed(0)
    return build_pipeline(request.param)


def test_expand_concepts_goes_template_by_template_and_uses_whole_prompts_once(pipe):
    cp = expand_concepts(pipe.tokenizer, ["cat", "a dog on a sofa"], ("{}", "a photo of {}"), verbatim={1})
    assert cp.prompts == ["cat", "a dog on a sofa", "a photo of cat"]
    assert cp.owners == [0, 1, 0] and cp.starts == [0, 0, 3]


@pytest.mark.parametrize("hidden_layer", ["last", "penultimate"])
def test_shared_prefixes_give_the_towers_own_features(pipe, hidden_layer, monkeypatch):
    # a batch mixing templates and a whole prompt, padded to its longest prompt
    cp = expand_concepts(pipe.tokenizer, CONCEPTS, DEFAULT_TEMPLATES, verbatim={3})
    ids = tokenize_prompts(pipe, cp.prompts, shortest=True)
    assert all(is_causal_clip(enc) for _, _, enc in text_towers(pipe))
    reference = encode_ids(pipe, ids, hidden_layer=hidden_layer)
    prefixes = [s + 1 for s in cp.starts]
    fast = torch.cat(
        [
            encode_with_shared_prefixes(enc, tower_ids, prefixes, penultimate=hidden_layer == "penultimate")
            for (_, _, enc), tower_ids in zip(text_towers(pipe), ids)
        ],
        dim=-1,
    )
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    # encode_ids takes the shared-prefix path only when each prefix serves several prompts
    from eraser.families import diffusion

    calls = []
    real = diffusion.encode_with_shared_prefixes
    monkeypatch.setattr(diffusion, "encode_with_shared_prefixes", lambda *a, **k: calls.append(1) or real(*a, **k))
    encode_ids(pipe, ids, hidden_layer=hidden_layer, prefix_lengths=prefixes)  # 24 prompts, 6 prefixes
    assert calls == []
    many = expand_concepts(pipe.tokenizer, [f"thing {i}" for i in range(20)], ("{}", "a photo of {}"))
    many_ids = tokenize_prompts(pipe, many.prompts, shortest=True)
    shared = encode_ids(pipe, many_ids, hidden_layer=hidden_layer, prefix_lengths=[s + 1 for s in many.starts])
    assert len(calls) == len(ids)  # once per tower
    torch.testing.assert_close(shared, encode_ids(pipe, many_ids, hidden_layer=hidden_layer), rtol=1e-5, atol=1e-5)
    # every row's positions, the prefix's included, not just the suffixes
    one = text_towers(pipe)[0][2]
    alone = encode_with_shared_prefixes(one, ids[0][:1], [cp.starts[0] + 1], penultimate=hidden_layer == "penultimate")
    torch.testing.assert_close(alone[0], fast[0, :, : alone.shape[-1]], rtol=1e-5, atol=1e-5)


def test_concept_statistics_match_whole_prompt_encoding(pipe):
    """The K/V Grams (shared prefixes) equal those of whole prompts (what text-encoder targets,
    which hook inside the encoder, still use)."""
    kv, text, *_ = resolve_concept_targets(pipe, "cross_attn_kv")
    cp = expand_concepts(pipe.tokenizer, CONCEPTS[:3], DEFAULT_TEMPLATES)
    grams, counts = concept_grams(pipe, cp, kv, text, batch_size=7)
    rows = []
    for i in range(len(cp.prompts)):
        ids = tokenize_prompts(pipe, cp.prompts[i : i + 1], shortest=True)
        hidden = encode_ids(pipe, ids)[0]
        # alone, a prompt is unpadded: from the concept's first token to end-of-text (a template's
        # suffix included, as in "{} in a photo")
        rows.append(hidden[cp.starts[i] + 1 :])
    rows = torch.cat(rows).double()
    assert sum(counts) == rows.shape[0]
    torch.testing.assert_close(grams[kv[0]][0].matrix, rows.T @ rows, rtol=1e-5, atol=1e-4)


def test_bank_features_are_read_back_from_disk_by_another_process(pipe, tmp_path, monkeypatch):
    from eraser.families import diffusion
    from eraser.hashing import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    bank = ("cat", "dog", "van gogh")
    first = diffusion.bank_features(pipe, bank)
    files = list((tmp_path / "bank_features").glob("*.safetensors"))
    assert len(files) == 1
    pipe.__dict__.pop(diffusion._BANK_CACHE)  # as a new process would start
    calls = []
    monkeypatch.setattr(diffusion, "concept_features", lambda *a, **k: calls.append(1))
    again = diffusion.bank_features(pipe, bank)
    assert not calls and all(torch.equal(a, b) for a, b in zip(first.rows, again.rows))
    assert torch.equal(first.pooled, again.pooled)
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    # a damaged file is recomputed (and rewritten), never used
    files[0].write_bytes(files[0].read_bytes()[:100])
    pipe.__dict__.pop(diffusion._BANK_CACHE)
    redone = diffusion.bank_features(pipe, bank)
    torch.testing.assert_close(redone.pooled, first.pooled)
    # other text-encoder weights are another key: a second file
    weight = text_towers(pipe)[0][2].get_input_embeddings().weight
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(1.01)
    try:
        diffusion.bank_features(pipe, bank)
        assert len(list((tmp_path / "bank_features").glob("*.safetensors"))) == 2
    finally:
        with torch.no_grad():
            weight.copy_(kept)


def test_the_forget_pass_pools_what_the_neighbour_search_would_encode(pipe):
    from eraser.families.diffusion import BANK_TEMPLATES, concept_features, concept_neighbours

    kv, text, *_ = resolve_concept_targets(pipe, "cross_attn_kv")
    words = ["cat", "van gogh"]
    pooled: dict = {}
    concept_grams(pipe, expand_concepts(pipe.tokenizer, words, DEFAULT_TEMPLATES), kv, text, pooled=pooled)
    reference = concept_features(pipe, words, templates=BANK_TEMPLATES).pooled
    torch.testing.assert_close(torch.stack([pooled[0], pooled[1]]), reference, rtol=1e-5, atol=1e-6)
    bank = ("dog", "bird", "monet", "car", "tree")
    a = concept_neighbours(pipe, words, bank, n=3)
    b = concept_neighbours(pipe, words, bank, n=3, features=torch.stack([pooled[0], pooled[1]]))
    assert a.neighbours == b.neighbours and a.synonyms == b.synonyms


def test_grams_of_two_passes_add_up_to_one_pass(pipe):
    kv, text, *_ = resolve_concept_targets(pipe, "cross_attn_kv")
    expand = lambda words: expand_concepts(pipe.tokenizer, words, DEFAULT_TEMPLATES)  # noqa: E731
    whole = concept_grams(pipe, expand(["cat", "dog"]), kv, text)[0][kv[0]][0]
    a = concept_grams(pipe, expand(["cat"]), kv, text)[0][kv[0]][0]
    b = concept_grams(pipe, expand(["dog"]), kv, text)[0][kv[0]][0]
    total = a + b
    assert total.n == whole.n
    # float32 features, summed in other batches: equal up to float32 rounding
    torch.testing.assert_close(total.matrix, whole.matrix, rtol=1e-5, atol=1e-4)
