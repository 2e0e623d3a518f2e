"""The demo's logic (apps/demo/session.py) on the bundled digits model: per-session stacks,
patch on demand (no leaks between sessions), revert, download/upload, and bad input."""

import numpy as np
import pytest
import torch

from apps.demo.session import BUNDLED, UNLINK_STRENGTH, DemoConfig, DemoError, Limits, ModelSlot, Session
from eraser.bundled import digits_pipeline
from eraser.bundled.pipeline import random_digits_pipeline

NAME = "digits"


@pytest.fixture(scope="module")
def slots():
    return {NAME: ModelSlot(NAME, BUNDLED, digits_pipeline())}


@pytest.fixture
def config():
    return DemoConfig(models={NAME: BUNDLED}, steps=3, limits=Limits(max_images=4, max_patch_bytes=5_000_000))


def weights(slot):
    return {k: v.clone() for k, v in slot.module.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_erase_changes_only_this_session(slots, config):
    base = weights(slots[NAME])
    a, b = Session(slots, config), Session(slots, config)
    before, after = a.generate("a photo of the digit seven", [0, 1])
    assert np.array_equal(pixels(before), pixels(after))  # nothing erased yet
    entry = a.erase("seven, 7")
    assert entry.seconds > 0 and entry.file.suffix == ".safetensors" and entry.size_bytes > 0
    assert same(base, weights(slots[NAME]))  # erasing leaves the shared model as it was
    before_a, after_a = a.generate("a photo of the digit seven", [0, 1])
    assert np.array_equal(pixels(before_a), pixels(before))
    assert not np.array_equal(pixels(after_a), pixels(before_a))
    before_b, after_b = b.generate("a photo of the digit seven", [0, 1])
    assert np.array_equal(pixels(before_b), pixels(after_b))  # no leak into session b
    assert same(base, weights(slots[NAME]))
    # the erased side is reproducible: applying the stack again gives the same images
    assert np.array_equal(pixels(a.generate("a photo of the digit seven", [0, 1])[1]), pixels(after_a))


def test_stack_revert_and_repeat(slots, config):
    s = Session(slots, config)
    s.erase("seven")
    s.erase("three", method="Unlink")
    assert [e.label for e in s.stack] == ["Unlink: seven", "Unlink: three"]
    with pytest.raises(DemoError, match="already erased"):
        s.erase("Seven")
    one = pixels(s.generate("handwritten 3", [2])[1])
    s.revert_last()
    assert len(s.stack) == 1
    before, after = s.generate("handwritten 3", [2])
    assert not np.array_equal(one, pixels(after))
    s.revert_last()
    before, after = s.generate("handwritten 3", [2])
    assert np.array_equal(pixels(before), pixels(after))
    with pytest.raises(DemoError, match="nothing to revert"):
        s.revert_last()


def test_strength_reaches_the_patch(slots, config):
    s = Session(slots, config)
    plain, steered = s.erase("seven"), s.erase("three", strength=1.5)
    assert "strength" not in plain.label and steered.label.endswith("strength 1.5")
    # no strength given: the library's default for pipelines, which the demo's field starts at
    assert plain.patch.metadata["config"]["strength"] == UNLINK_STRENGTH == 2.0
    assert steered.patch.metadata["config"]["strength"] == 1.5


def test_download_then_upload_reproduces_the_erasure(slots, config):
    a, b = Session(slots, config), Session(slots, config)
    entry = a.erase("five")
    mine = pixels(a.generate("the number five", [3])[1])
    b.upload(entry.file)
    assert np.array_equal(pixels(b.generate("the number five", [3])[1]), mine)
    # "5" is a synonym of "five" in the model's text space, so the default erased it too
    assert b.stack[-1].label == "uploaded: five, 5" and entry.patch.metadata["synonyms"] == ["5"]


def test_bad_input_leaves_everything_unchanged(slots, config, tmp_path):
    base = weights(slots[NAME])
    s = Session(slots, config)
    for concepts, kwargs, match in [
        ("", {}, "at least one concept"),
        ("a, b, c, d, e", {}, "at most 4 concepts"),
        ("x" * 61, {}, "at most 60 characters"),
        ("seven", {"k": 0}, "rank k"),
        ("seven", {"k": 1000}, "rank k"),
        ("seven", {"k": 2.5}, "rank k"),
        ("seven", {"method": "magic"}, "unknown method"),
        ("seven", {"method": "Unlink + keep"}, "needs concepts to keep"),
        ("seven", {"strength": 2.5}, "strength must be"),
        ("seven", {"strength": 0.5}, "strength must be"),
        ("seven", {"method": "UCE", "strength": 1.5}, "Unlink only"),
    ]:
        with pytest.raises(DemoError, match=match):
            s.erase(concepts, **kwargs)
    with pytest.raises(DemoError, match="type a prompt"):
        s.generate("   ", [0])
    with pytest.raises(DemoError, match="at most 200 characters"):
        s.generate("seven " * 50, [0])
    txt = tmp_path / "patch.bin"
    txt.write_bytes(b"not a patch")
    with pytest.raises(DemoError, match=r"\.safetensors"):
        s.upload(txt)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(DemoError, match="not an eraser patch"):
        s.upload(fake)
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\x00" * 6_000_000)
    with pytest.raises(DemoError, match="at most 5 MB"):
        s.upload(big)
    # a patch made for another model (random weights of the same layout) is refused
    import eraser

    other = random_digits_pipeline(seed=3)
    foreign = eraser.erase_concepts(other, "seven").save(tmp_path / "foreign.safetensors")
    with pytest.raises(DemoError, match="does not fit"):
        s.upload(foreign)
    assert s.stack == [] and same(base, weights(slots[NAME]))


def _forge(path, out, mutate, checksum=True):
    """A copy of the patch file at ``path`` with its header and tensors changed by ``mutate(info,
    tensors)``, written as a forger would (the content checksum recomputed unless ``checksum`` is
    False: then the old one is kept, so the file reads as corrupted)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from eraser.patch import CHECKSUM_KEY, content_checksum

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(header["eraser"])
    mutate(info, tensors)
    text = json.dumps(info)
    header = {"eraser": text, CHECKSUM_KEY: content_checksum(text, tensors) if checksum else header[CHECKSUM_KEY]}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata=header)
    return out


def _scale_all(factor):
    def mutate(info, tensors):
        for k in tensors:
            tensors[k] = tensors[k] * factor

    return mutate


def _set(name, value):
    def mutate(info, tensors):
        info["metadata"][name] = value

    return mutate


def _drop(name):
    def mutate(info, tensors):
        info["metadata"].pop(name, None)

    return mutate


def _narrow(info, tensors):  # a basis (and everything else) of half the layer's input size
    for k in list(tensors):
        tensors[k] = tensors[k][..., : tensors[k].shape[-2] // 2, :] if tensors[k].ndim == 3 else tensors[k]


def _nan(info, tensors):
    k = sorted(tensors)[0]
    tensors[k] = tensors[k].clone()
    tensors[k].view(-1)[0] = float("nan")


@pytest.mark.parametrize(
    ("mutate", "checksum", "harmless"),
    [
        (_scale_all(1e30), True, False),  # finite, consistent, and every weight would become Inf
        (_scale_all(1e3), True, False),  # finite result, but far beyond any edit the library makes
        (_narrow, True, False),
        (_nan, True, False),
        (_drop("base_fingerprint"), True, False),
        (_set("metadata_is", ["a", "list"]), True, True),  # an unknown key changes no weight
        (_set("base_fingerprint", 7), True, False),
        (_scale_all(1.0 + 1e-6), False, False),  # a tensor changed after saving: the checksum no longer matches
    ],
    ids=["1e30", "1e3", "narrow-basis", "nan", "no-fingerprint", "extra-key", "int-fingerprint", "corrupted"],
)
def test_hostile_uploads_are_refused_and_change_nothing(slots, config, tmp_path, mutate, checksum, harmless):
    base = weights(slots[NAME])
    made = Session(slots, config).erase("seven")
    s = Session(slots, config)
    before = pixels(s.generate("a photo of the digit seven", [0])[1])
    hostile = _forge(made.file, tmp_path / "hostile.safetensors", mutate, checksum)
    if harmless:
        s.upload(hostile)
        s.revert_last()
    else:
        with pytest.raises(DemoError, match="not an eraser patch|does not fit"):
            s.upload(hostile)
    assert s.stack == [] and same(base, weights(slots[NAME]))
    assert np.array_equal(pixels(s.generate("a photo of the digit seven", [0])[1]), before)


def test_check_reports_judge_accuracy(slots, config):
    s = Session(slots, config)
    s.erase("seven, 7")
    rows = s.check(per_digit=2)
    assert len(rows) == 20 and {r["model"] for r in rows} == {"original", "erased"}
    assert all(0 <= r["judge accuracy"] <= 100 for r in rows)


def test_select_model(slots, config):
    s = Session(slots, config)
    s.erase("two")
    with pytest.raises(DemoError, match="unknown model"):
        s.select_model("elsewhere")
    s.select_model(NAME)
    assert len(s.stack) == 1


def test_closing_a_session_removes_its_temporary_folder(slots, config):
    from apps.demo.session import close_session

    s = Session(slots, config)
    folder = s.erase("seven").file.parent
    other = Session(slots, config)
    theirs = other.upload(s.stack[0].file).file.parent  # an upload is copied into the session's own folder
    assert folder.is_dir() and theirs.is_dir() and theirs != folder
    close_session(other)
    assert not theirs.exists() and not other.stack and folder.is_dir()  # other sessions keep theirs
    close_session(s)
    assert not folder.exists() and s.stack == []
    close_session(s)  # a second call (or a session that never wrote a file) has nothing to do
    close_session(None)  # the state of a browser session that never sent a request
    assert s.erase("three").file.is_file()  # a closed session still works, in a new folder
    close_session(s)


def test_the_app_cleans_up_sessions_and_caps_uploads_in_the_server(slots, config, monkeypatch):
    """Without launching a server: the State's delete callback and the launch options."""
    import gradio as gr

    import apps.demo.app as demo
    from apps.demo.session import close_session

    app = demo.build_app(config, slots)
    states = [b for b in app.blocks.values() if isinstance(b, gr.State)]
    assert [s.delete_callback for s in states] == [close_session]
    assert app.delete_cache == demo.CACHE_SWEEP
    assert demo.launch_options(config) == {"max_file_size": 5_000_000}
    launched = {}
    monkeypatch.setattr(
        demo, "build_app", lambda cfg: type("App", (), {"launch": lambda self, **kw: launched.update(kw)})()
    )
    demo.main(["--port", "7999"])
    assert launched["max_file_size"] == Limits().max_patch_bytes == 20_000_000 and launched["server_port"] == 7999
