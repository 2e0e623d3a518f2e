"""A patch file can never hurt the model (issue 22): hostile files are refused with PatchError and
leave every weight bit-identical; edits are checked against their layers, bounded in size, and
checked finite after writing; files carry a content checksum; revert checks the model's weights."""

import copy
import json
import random

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import eraser
from eraser import ErasurePatch, LayerEdit, PatchError, fingerprint
from eraser.patch import CHECKSUM_KEY, MAX_EDIT_RATIO, content_checksum

LAYERS = ["0", "2"]


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32))


def bits(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bits(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """The state_dict holds exactly the same bytes (NaN- and signed-zero-proof)."""
    now = model.state_dict()
    assert now.keys() == before.keys()
    for k, v in now.items():
        assert torch.equal(v.reshape(-1).view(torch.uint8), before[k].reshape(-1).view(torch.uint8)), k


def orthonormal(d: int, k: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0].unsqueeze(0)


def low_rank_patch(model: nn.Module, basis: torch.Tensor | None = None, dual=None, eta=None) -> ErasurePatch:
    """A rank-2 edit of both Linear layers (one shared basis), with the model's base fingerprint."""
    u = orthonormal(64, 2) if basis is None else basis
    eta = torch.ones(1, u.shape[-1], dtype=torch.float64) if eta is None else eta
    edits = {n: LayerEdit(n, "linear", tuple(model.get_submodule(n).weight.shape), u, eta, dual) for n in LAYERS}
    return ErasurePatch(edits, {"base_fingerprint": fingerprint(model, LAYERS), "base_model": "small"})


def saved_low_rank(tmp_path, model: nn.Module) -> tuple:
    """A valid low-rank patch file, made by applying the patch to a copy of ``model``, and that copy."""
    edited = copy.deepcopy(model)
    patch = low_rank_patch(model)
    patch.apply(edited)
    return patch.save(tmp_path / "low_rank.safetensors"), edited


def saved_dense(tmp_path, model: nn.Module) -> tuple:
    """A valid dense patch file (a trained method's kind) and the model it was made on, edited."""
    edited = copy.deepcopy(model)
    before = {k: v.detach().clone() for k, v in edited.named_parameters()}
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        edited.get_parameter("0.bias").add_(torch.randn(64, generator=g) * 0.01)
        edited.get_parameter("2.weight").add_(torch.randn(32, 64, generator=g) * 0.01)
    patch = ErasurePatch.from_changes(edited, before, {"method": "test"})
    return patch.save(tmp_path / "dense.safetensors"), edited


def read(path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return json.loads(header["eraser"]), tensors


def write(path, info, tensors, checksum: bool | str = True, text: str | None = None) -> None:
    """Write a patch file as a forger would: any header and tensors, with the checksum recomputed
    (True), left out (False) or a given stale one (a string)."""
    text = json.dumps(info) if text is None else text
    header = {"eraser": text}
    if checksum:
        header[CHECKSUM_KEY] = content_checksum(text, tensors) if checksum is True else checksum
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=header)


def checksum_of(path) -> str:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()[CHECKSUM_KEY]


# -- 1. every edit is checked against its layer, bounded, and checked finite after writing --------


def test_a_basis_of_the_wrong_input_size_is_refused():
    """A 32-d basis (consistent with its own eta and undo) on a 64x64 layer used to apply silently."""
    model = nn.Linear(64, 64)
    before = bits(model)
    u = orthonormal(32, 2)
    edit = LayerEdit("", "linear", (64, 64), u, torch.ones(1, 2), undo=torch.zeros(1, 64, 2))
    with pytest.raises(PatchError, match=r"basis has shape \(1, 32, 2\).*needs \(1, 64, 2\)"):
        ErasurePatch({"": edit}, {}).apply(model)
    assert_bits(model, before)


def test_huge_factors_are_refused_by_the_size_bound_before_anything_is_written():
    """A basis and dual of 1e30 (finite, consistent shapes) used to make every float32 weight inf."""
    model = small_model()
    before = bits(model)
    huge = torch.full((1, 64, 2), 1e30)
    with pytest.raises(PatchError, match=f"times the size of its weight \\(limit {MAX_EDIT_RATIO:g}\\).*force=True"):
        low_rank_patch(model, basis=huge, dual=huge).apply(model)
    assert_bits(model, before)


@pytest.mark.parametrize("exact_revert", [True, False])
def test_force_skips_the_bound_with_a_warning_but_a_non_finite_result_rolls_back_every_layer(exact_revert):
    """The first layer's edit is sane and written first; the second overflows float32 on the fast
    path. Everything is put back bit for bit, kept originals or not."""
    model = small_model()
    before = bits(model)
    patch = low_rank_patch(model)
    huge = torch.full((1, 64, 2), 1e30)
    patch.edits["2"] = LayerEdit("2", "linear", (32, 64), huge, torch.ones(1, 2), huge)
    patch.exact_revert = exact_revert
    with pytest.warns(UserWarning, match="force=True skipped.*'2'"), pytest.raises(PatchError, match="NaN or Inf"):
        patch.apply(model, force=True)
    assert_bits(model, before)
    assert patch._position(model) is None


def test_a_huge_dense_delta_is_refused():
    model = small_model()
    before = bits(model)
    patch = ErasurePatch({}, {}, deltas={"2.weight": torch.full((32, 64), 1e30)})
    with pytest.raises(PatchError, match="'2.weight' is .* times the size"):
        patch.apply(model)
    assert_bits(model, before)


def test_the_bound_passes_the_library_s_largest_edit_a_strength_2_reflection(tiny, images):
    before = bits(tiny)
    patch = eraser.erase_classes(tiny, images, k=2, strength=2.0, variant="svd", exact_revert=True)
    patch.revert(tiny)
    assert_bits(tiny, before)
    patch.apply(tiny)  # not fresh: checked and bounded like a loaded patch
    patch.revert(tiny)
    assert_bits(tiny, before)


# -- 2. provenance: content checksum, base fingerprint, revert checked on the weights ------------


def test_a_patch_file_carries_a_checksum_and_an_edited_file_is_named_as_such(tmp_path):
    model = small_model()
    path, _ = saved_low_rank(tmp_path, model)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert header[CHECKSUM_KEY] == content_checksum(header["eraser"], tensors)
    tensors["0.eta"] = tensors["0.eta"] * 1.5  # a plausible edit, under the intact file's checksum
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(PatchError, match="corrupted or edited"):
        ErasurePatch.load(path)


def test_files_from_before_the_checksum_still_load_and_apply(tmp_path):
    model = small_model()
    path, edited = saved_low_rank(tmp_path, model)
    info, tensors = read(path)
    write(path, info, tensors, checksum=False)
    with safe_open(str(path), framework="pt") as f:
        assert CHECKSUM_KEY not in f.metadata()
    fresh = copy.deepcopy(model)
    ErasurePatch.load(path).apply(fresh)
    for n in LAYERS:
        assert torch.equal(fresh.get_submodule(n).weight, edited.get_submodule(n).weight)


def test_a_file_without_base_fingerprint_is_refused_unless_forced(tmp_path):
    model = small_model()
    before = bits(model)
    path, _ = saved_low_rank(tmp_path, model)
    info, tensors = read(path)
    del info["metadata"]["base_fingerprint"]
    write(path, info, tensors)
    with pytest.raises(PatchError, match="names no base model.*force=True"):
        ErasurePatch.load(path).apply(model)
    assert_bits(model, before)
    with pytest.warns(UserWarning, match="no base fingerprint"):
        ErasurePatch.load(path).apply(model, force=True)
    assert not torch.equal(model.get_submodule("0").weight, before["0.weight"])


@pytest.mark.parametrize("base", ["kept", "removed", "forged"])
def test_revert_of_a_never_applied_patch_with_a_forged_applied_fingerprint_is_refused(tmp_path, base):
    """The file claims the clean model is its result. Refused by the base fingerprint when it is
    there, and by re-applying the undo to the weights when it was removed or forged too."""
    model = small_model()
    before = bits(model)
    path, edited = saved_low_rank(tmp_path, model)
    info, tensors = read(path)
    info["metadata"]["applied_fingerprint"] = fingerprint(model, LAYERS)
    if base == "removed":
        del info["metadata"]["base_fingerprint"]
    elif base == "forged":
        info["metadata"]["base_fingerprint"] = fingerprint(edited, LAYERS)
    write(path, info, tensors)
    with pytest.raises(PatchError, match="not applied to this model"):
        ErasurePatch.load(path).revert(model)
    assert_bits(model, before)


def test_a_second_copy_of_an_applied_patch_cannot_steer_its_revert(tmp_path):
    """The same file read again (same id) with its factors edited: revert undoes what was applied,
    with the factors computed when it was applied, not the copy's."""
    model = small_model()
    before = bits(model)
    patch = low_rank_patch(model)
    patch.exact_revert = True
    patch.apply(model)
    path = patch.save(tmp_path / "p.safetensors")
    info, tensors = read(path)
    tensors["0.basis"] = tensors["0.basis"] * 1000
    tensors["0.undo"] = tensors["0.undo"] * 1000
    write(path, info, tensors)
    ErasurePatch.load(path).revert(model)
    assert_bits(model, before)


def test_revert_of_a_reloaded_dense_patch_still_works(tmp_path):
    model = small_model()
    path, edited = saved_dense(tmp_path, model)
    shipped = copy.deepcopy(model)
    shipped.load_state_dict(edited.state_dict())  # a model shipped with the edit baked in
    ErasurePatch.load(path).revert(shipped)
    for k, v in shipped.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k], rtol=0, atol=1e-6)
    with pytest.raises(PatchError, match="not applied"):  # now at the base: nothing left to revert
        ErasurePatch.load(path).revert(shipped)


# -- 3. hostile metadata types -----------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata,match",
    [([1, 2], "metadata is invalid: it is a list"), ({"base_fingerprint": 7}, "'base_fingerprint' is invalid")],
)
def test_hostile_metadata_types_in_memory_raise_patch_error(metadata, match):
    model = small_model()
    before = bits(model)
    with pytest.raises(PatchError, match=match):
        ErasurePatch(low_rank_patch(model).edits, metadata).apply(model)
    patch = low_rank_patch(model)
    patch.metadata["applied_fingerprint"] = ["not", "a", "string"]  # mutated after construction
    with pytest.raises(PatchError, match="'applied_fingerprint' is invalid"):
        patch.revert(model)
    assert_bits(model, before)


# -- 4. hostile files, each refused with PatchError and the model bit-identical -----------------


def _set(part, value):
    def mutate(info, tensors):
        tensors[part] = value(tensors[part]) if callable(value) else value

    return mutate


def _meta(key, value):
    def mutate(info, tensors):
        if value is KeyError:
            del info["metadata"][key]
        else:
            info["metadata"][key] = value

    return mutate


def _spec(key, value):
    def mutate(info, tensors):
        info["layers"]["0"][key] = value

    return mutate


def _wrong_input_size(info, tensors):
    """A 32-d basis with its eta and undo consistent, on the 64-d layer."""
    tensors["0.basis"] = orthonormal(32, 2).float()
    info["layers"]["1"]["basis"] = "0.basis"


def _forge_applied(info, tensors):
    info["metadata"]["applied_fingerprint"] = fingerprint(small_model(), LAYERS)


def _corrupt(info, tensors):
    tensors["0.undo"] = tensors["0.undo"].clone()
    tensors["0.undo"][0, 0, 0] += 1.0


def _duplicate_layer(info, tensors):
    info["layers"]["1"]["name"] = "0"


def _extra_tensor(info, tensors):
    tensors["payload"] = torch.zeros(3)


HOSTILE = {
    "1e30 basis and dual": (_set("0.basis", torch.full((1, 64, 2), 1e30)), "times the size", {"dual": True}),
    "basis of the wrong input size": (_wrong_input_size, r"needs \(1, 64, 2\)", {}),
    "NaN in eta": (_set("0.eta", lambda t: t.index_fill(1, torch.tensor([0]), float("nan"))), "NaN or Inf", {}),
    "Inf in undo": (_set("0.undo", lambda t: t.index_fill(2, torch.tensor([1]), float("inf"))), "NaN or Inf", {}),
    "no base fingerprint": (_meta("base_fingerprint", KeyError), "names no base model", {}),
    "forged applied fingerprint": (_forge_applied, "not applied", {"revert": True}),
    "checksum mismatch": (_corrupt, "corrupted or edited", {"stale": True}),
    "integer basis": (_set("0.basis", lambda t: (t * 100).to(torch.int32)), "dtype is torch.int32", {}),
    "boolean eta": (_set("0.eta", lambda t: t > 0), "dtype is torch.bool", {}),
    "integer dense delta": (_set("delta.0", lambda t: t.to(torch.int64)), "dtype is torch.int64", {"dense": True}),
    "metadata is a list": (lambda i, t: i.update(metadata=[1]), "metadata is invalid", {}),
    "fingerprint is a number": (_meta("base_fingerprint", 12345), "'base_fingerprint' is invalid", {}),
    "id is an object": (_meta("id", {"a": 1}), "'id' is invalid", {}),
    "layers is a list": (lambda i, t: i.update(layers=[]), "header is invalid", {}),
    "header is a list": (lambda i, t: i.clear(), "header is invalid", {"text": "[1, 2]"}),
    "header is not JSON": (lambda i, t: None, "not a readable erasure patch", {"text": "{not json"}),
    "shape of strings": (_spec("shape", ["64", "64"]), "shape .* is not a list of integers", {}),
    "claims another weight shape": (_spec("shape", [128, 32]), "needs|another architecture", {}),
    "layer name is a number": (_spec("name", 0), "string 'name'", {}),
    "unknown layer kind": (_spec("kind", "lstm"), "unknown layer kind", {}),
    "tensor reference is a list": (_spec("eta", ["0.eta"]), "refers to tensor", {}),
    "missing tensor": (lambda i, t: t.pop("0.eta"), "has no eta", {}),
    "layer edited twice": (_duplicate_layer, "edited twice", {}),
    "unknown extra tensor": (_extra_tensor, "does not describe", {}),
    "deltas is a dict": (lambda i, t: i.update(deltas={"a": 1}), "dense parameter list", {"dense": True}),
    "format is a number": (_meta("format", 1), "'format' is invalid", {}),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_refused_and_leave_the_model_bit_identical(tmp_path, case):
    mutate, match, how = HOSTILE[case]
    model = small_model()
    path, _ = (saved_dense if how.get("dense") else saved_low_rank)(tmp_path, model)
    intact = checksum_of(path)
    info, tensors = read(path)
    mutate(info, tensors)
    if how.get("dual"):
        tensors["0.dual"] = tensors["0.basis"].clone()  # consistent in shape with the basis
        info["layers"]["0"]["dual"] = "0.dual"
    write(path, info, tensors, checksum=intact if how.get("stale") else True, text=how.get("text"))
    before = bits(model)
    with pytest.raises(PatchError, match=match):
        patch = ErasurePatch.load(path)
        patch.revert(model) if how.get("revert") else patch.apply(model)
    assert_bits(model, before)


# -- property: random mutations of valid files -------------------------------------------------

_DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int8, torch.uint8, torch.bool]
_VALUES = [float("nan"), float("inf"), -float("inf"), 1e30, -1e38, 0.0, 1e-30, 3.0, -0.5]
_ODD = [None, 0, -1, 1.5, True, "", "x", "linear", [], [1, "a"], {}, {"k": [None]}, 10**30]


def _mutate(rng: random.Random, info: dict, tensors: dict[str, torch.Tensor]) -> str | None:
    """One random mutation in place; returns replacement header text, if any."""
    op = rng.choice(["value", "value", "scale", "shape", "dtype", "drop", "header", "header", "header", "text"])
    if not tensors:
        op = "header"
    name = rng.choice(sorted(tensors or [""]))
    t = tensors.get(name)
    if op == "value" and t.numel():
        t = t.clone()
        t.view(-1)[rng.randrange(t.numel())] = rng.choice(_VALUES if t.is_floating_point() else [0, 1])
        tensors[name] = t
    elif op == "scale":
        tensors[name] = t * rng.choice([0.0, -1.0, 2.0, 8.0, 1e3, 1e20])
    elif op == "shape":
        shape = list(t.shape)
        how = rng.choice(["grow", "shrink", "flat", "extra"])
        if how == "flat" or not shape:
            tensors[name] = t.reshape(-1).clone()
        elif how == "extra":
            tensors[name] = t.unsqueeze(0).clone()
        else:
            i = rng.randrange(len(shape))
            shape[i] = max(0, shape[i] + (1 if how == "grow" else -1))
            tensors[name] = torch.randn(shape)
    elif op == "dtype":
        tensors[name] = (t * 10).to(rng.choice(_DTYPES))
    elif op == "drop":
        del tensors[name]
    elif op == "header":
        # a random container in the header, then a random key in it: delete it or give it a new value
        layers = info.get("layers")
        spots = [info, info.get("metadata"), *(layers.values() if isinstance(layers, dict) else [])]
        spot = rng.choice([d for d in spots if isinstance(d, dict)])  # earlier mutations may have replaced some
        key = rng.choice(sorted(spot) + ["shape", "basis", "deltas", "base_fingerprint"])
        if rng.random() < 0.3:
            spot.pop(key, None)
        elif key == "shape" and isinstance(spot.get(key), list) and rng.random() < 0.5:
            spot[key] = [rng.choice([0, 1, 31, 32, 64, 65, -64]) for _ in spot[key]]
        elif key in ("name",) and rng.random() < 0.5:
            spot[key] = rng.choice(["0", "1", "2", "", "0.weight", "nope"])
        else:
            spot[key] = rng.choice(_ODD)
    else:
        return rng.choice(["", "null", "[]", "{}", '{"metadata": {}, "layers": {}}', json.dumps(info)[:-3]])
    return None


def test_random_mutations_are_refused_or_apply_and_revert_exactly(tmp_path):
    """200 seeded mutations of valid files (tensor values, shapes, dtypes, header keys and types,
    with the checksum recomputed as a forger would, or not): each is refused with PatchError
    leaving the model bit-identical, or applies and reverts bit-identically. Its revert of a model
    holding the real edit is refused leaving it bit-identical, or changes it finitely, within the bound."""
    rng = random.Random(22)
    model = small_model()
    base = bits(model)
    valid = {
        "low_rank": saved_low_rank(tmp_path, model),
        "dense": saved_dense(tmp_path, model),
    }
    outcomes = {"refused": 0, "applied": 0, "reverted": 0}
    for i in range(200):
        kind = rng.choice(sorted(valid))
        source, edited = valid[kind]
        info, tensors = read(source)
        text = None
        for _ in range(rng.choice([1, 1, 2, 3])):
            text = _mutate(rng, info, tensors) or text
        path = tmp_path / f"m{i}.safetensors"
        # as a forger would (checksum recomputed), an older file (none), or a damaged one (stale)
        checksum = rng.choices([True, False, checksum_of(source)], weights=[8, 1, 1])[0]
        write(path, info, tensors, checksum=checksum, text=text)

        try:
            patch = ErasurePatch.load(path)
            patch.exact_revert = True
            patch.apply(model)
        except PatchError:
            outcomes["refused"] += 1
        else:
            outcomes["applied"] += 1
            patch.revert(model)
        assert_bits(model, base)

        target = small_model()  # a model shipped with the edit baked in: revert reads the file
        target.load_state_dict(edited.state_dict())
        held = bits(target)
        try:
            ErasurePatch.load(path).revert(target)
        except PatchError:
            assert_bits(target, held)
        else:
            # The undo of an orthogonal projection is not in the edited weights (any undo fits
            # them), so a forged one is only bounded: finite, within MAX_EDIT_RATIO.
            outcomes["reverted"] += 1
            for k, v in target.state_dict().items():
                assert bool(torch.isfinite(v).all()), (i, k)
                assert (v - held[k]).norm() <= MAX_EDIT_RATIO * held[k].norm(), (i, k)
    assert outcomes["refused"] > 100 and outcomes["applied"] > 5 and outcomes["reverted"] > 5, outcomes


def test_compact_patch_files_hold_no_undo_and_apply_the_same_edit(tmp_path):
    model = small_model()
    before = bits(model)
    patch = low_rank_patch(model)
    patch.exact_revert = True  # the edited layers are the whole model: keep their originals anyway
    patch.apply(model)
    edited = bits(model)
    full, compact = patch.save(tmp_path / "full.safetensors"), patch.save(tmp_path / "c.safetensors", compact=True)
    assert compact.stat().st_size < full.stat().st_size
    patch.revert(model)
    assert_bits(model, before)
    small = ErasurePatch.load(compact)
    small.exact_revert = True
    assert all(e.undo is None for e in small.edits.values())
    small.apply(model)  # the edit is recomputed from the base weights: the same bits
    assert_bits(model, edited)
    small.revert(model)
    assert_bits(model, before)
    # a model saved with the edit baked in: only the full file can revert it
    baked = small_model()
    baked.load_state_dict(edited)
    with pytest.raises(PatchError, match="saved compact"):
        ErasurePatch.load(compact).revert(baked)
    assert_bits(baked, edited)
    ErasurePatch.load(full).revert(baked)
    torch.testing.assert_close(baked.state_dict(), before, rtol=0, atol=1e-6)
    dense = ErasurePatch({}, {"method": "ft"}, deltas={"0.bias": torch.zeros(64)})
    with pytest.raises(PatchError, match="no compact form"):
        dense.save(tmp_path / "d.safetensors", compact=True)


@pytest.mark.parametrize("scale", [3.0, 300.0])
def test_edit_size_ratio_is_what_apply_checks(scale):
    """``edit_size_ratio`` sizes an edit as ``apply`` does: a ratio under MAX_EDIT_RATIO applies,
    one over it is refused."""
    from eraser.patch import edit_size_ratio

    model = nn.Linear(64, 64)
    u = orthonormal(64, 2)
    eta = torch.full((1, 2), scale, dtype=torch.float64)
    ratio = edit_size_ratio(model.weight, u, eta, u)
    assert 0 < ratio
    patch = ErasurePatch({"": LayerEdit("", "linear", (64, 64), u, eta, u)}, {})
    if ratio <= MAX_EDIT_RATIO:
        patch.apply(model)
        patch.revert(model)
    else:
        with pytest.raises(PatchError, match="times the size of its weight"):
            patch.apply(model)
    assert (ratio <= MAX_EDIT_RATIO) == (scale == 3.0)  # the two scales fall on both sides of the bound
