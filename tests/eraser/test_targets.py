"""Direct tests of eraser.targets.resolve_targets: presets, regexes, name lists and errors."""

import re

import pytest
from torch import nn

from eraser.targets import PRESETS, resolve_targets


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.xfc = nn.Linear(4, 4)
        self.act = nn.ReLU()


class Net(nn.Module):
    """Convolutions, two blocks with same-named layers, and a head registered last."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.block = Block()
        self.other = Block()
        self.fc2 = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)


class WithClassifier(Net):
    """A timm-style model whose classifier is not the last registered layer."""

    def __init__(self, identity: bool = False) -> None:
        super().__init__()
        self.classifier = nn.Identity() if identity else nn.Linear(4, 3)
        self.tail = nn.Conv2d(4, 4, 1)

    def get_classifier(self) -> nn.Module:
        return self.classifier


class HFMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)


class HFAttn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(4, 4) for _ in range(4))


class HFLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn, self.mlp = HFAttn(), HFMlp()
        self.layer_norm1 = nn.LayerNorm(4)


class HFTower(nn.Module):
    """transformers' CLIP naming: ``vision_model.encoder.layers.N.{self_attn,mlp}``."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.vision_model = nn.Module()
        self.vision_model.encoder = nn.Module()
        self.vision_model.encoder.layers = nn.ModuleList(HFLayer() for _ in range(depth))
        self.visual_projection = nn.Linear(4, 2)


class OCMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc, self.gelu, self.c_proj = nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4)


class OCBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2)
        self.mlp = OCMlp()


class OCTower(nn.Module):
    """open_clip naming: ``transformer.resblocks.N.{attn,mlp.c_fc,mlp.c_proj}``."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(OCBlock() for _ in range(depth))


def test_regex_is_matched_against_whole_names_and_drops_unsupported() -> None:
    model = Net()
    found = resolve_targets(model, r"features\.\d")
    assert list(found) == ["features.0", "features.2"]
    assert found["features.0"] is model.features[0]
    assert list(resolve_targets(model, r"fc2")) == ["fc2"]
    assert list(resolve_targets(model, r".*\.fc")) == ["block.fc", "other.fc"]


def test_name_list_uses_peft_suffix_rules() -> None:
    model = Net()
    assert list(resolve_targets(model, ["fc"])) == ["block.fc", "other.fc"]
    assert list(resolve_targets(model, ["other.fc"])) == ["other.fc"]
    assert list(resolve_targets(model, ("fc2",))) == ["fc2"]


def test_result_follows_model_order_and_holds_the_modules() -> None:
    model = Net()
    found = resolve_targets(model, ["head", "features.0", "block.xfc"])
    assert list(found) == ["features.0", "block.xfc", "head"]
    assert found["head"] is model.head and found["block.xfc"] is model.block.xfc


def test_head_preset_is_the_last_linear_or_conv() -> None:
    model = Net()
    assert resolve_targets(model, "head") == {"head": model.head}


def test_head_preset_prefers_get_classifier() -> None:
    model = WithClassifier()
    assert resolve_targets(model, "head") == {"classifier": model.classifier}


def test_head_preset_falls_back_when_the_classifier_is_not_editable() -> None:
    model = WithClassifier(identity=True)
    assert resolve_targets(model, "head") == {"tail": model.tail}


def test_head_preset_without_any_layer_is_refused() -> None:
    with pytest.raises(ValueError, match=r"preset 'head' found no supported layer in Sequential"):
        resolve_targets(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), "head")


def test_clip_presets_on_transformers_naming() -> None:
    tower = HFTower(depth=3)
    mlp = resolve_targets(tower, "clip_mlp")
    assert list(mlp) == [f"vision_model.encoder.layers.{i}.mlp.fc{j}" for i in range(3) for j in (1, 2)]
    attn = resolve_targets(tower, "clip_attn")
    assert list(attn) == [
        f"vision_model.encoder.layers.{i}.self_attn.{p}_proj" for i in range(3) for p in ("q", "k", "v", "out")
    ]
    assert list(resolve_targets(tower, "clip_last_mlp")) == [
        "vision_model.encoder.layers.2.mlp.fc1",
        "vision_model.encoder.layers.2.mlp.fc2",
    ]


def test_clip_presets_on_open_clip_naming() -> None:
    tower = OCTower(depth=2)
    assert list(resolve_targets(tower, "clip_mlp")) == [
        f"transformer.resblocks.{i}.mlp.c_{p}" for i in range(2) for p in ("fc", "proj")
    ]
    attn = resolve_targets(tower, "clip_attn")
    assert list(attn) == ["transformer.resblocks.0.attn", "transformer.resblocks.1.attn"]
    assert all(isinstance(m, nn.MultiheadAttention) for m in attn.values())


def test_clip_last_mlp_compares_block_indices_as_numbers() -> None:
    tower = OCTower(depth=11)
    assert list(resolve_targets(tower, "clip_last_mlp")) == [
        "transformer.resblocks.10.mlp.c_fc",
        "transformer.resblocks.10.mlp.c_proj",
    ]


def test_clip_preset_on_a_non_clip_model_is_refused() -> None:
    with pytest.raises(ValueError, match="preset 'clip_mlp' found no supported layer in Net"):
        resolve_targets(Net(), "clip_mlp")


def test_presets_are_the_families_ones() -> None:
    from eraser.families import FAMILY_ADAPTERS

    assert set(PRESETS) == {
        "head",
        "clip_mlp",
        "clip_attn",
        "clip_last_mlp",
        "cross_attn_kv",
        "cross_attn_k",
        "cross_attn_v",
        "text_encoder_mlp",
        "text_encoder_attn",
        "text_inputs",  # SD3 and FLUX (MMDiT)
        "context_embedder",
        "pooled_text_embedder",
        "context_kv",
    }
    assert set(PRESETS) == {p for f in FAMILY_ADAPTERS.values() for p in f.presets}


def test_a_preset_name_is_registered_once() -> None:
    from eraser.targets import register_preset

    with pytest.raises(ValueError, match="already registered"):
        register_preset("head", r"fc\d")
    with pytest.raises(re.error):
        register_preset("bad_pattern_preset", "fc(")
    assert "bad_pattern_preset" not in PRESETS


def test_invalid_regex_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"layers='fc\(' is not a valid regular expression"):
        resolve_targets(Net(), "fc(")


@pytest.mark.parametrize("layers", ["fc", "", "nothing.*", ["nope"], ["block.f"]])
def test_no_match_lists_the_editable_layers(layers) -> None:
    with pytest.raises(ValueError, match="matches no module of Net") as err:
        resolve_targets(Net(), layers)
    assert "'features.0'" in str(err.value) and "'head'" in str(err.value)
    assert "'features.1'" not in str(err.value)


def test_no_match_truncates_a_long_list_of_layers() -> None:
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(13)))
    with pytest.raises(ValueError, match=r"'11'\] \.\.\.") as err:
        resolve_targets(model, "fc")
    assert "'12'" not in str(err.value)


def test_regex_matching_only_unsupported_modules_is_refused() -> None:
    with pytest.raises(ValueError, match=r"matches only modules of unsupported kinds \['ReLU'\]"):
        resolve_targets(Net(), r".*act")


def test_name_list_with_an_unsupported_module_is_refused() -> None:
    with pytest.raises(ValueError, match=r"not supported layer kinds: \['block.act', 'other.act'\]"):
        resolve_targets(Net(), ["fc", "act"])


@pytest.mark.parametrize("layers", [[], (), None, 3, [1, 2], ["fc", 1], {"fc"}])
def test_other_types_are_a_type_error(layers) -> None:
    with pytest.raises(TypeError, match="layers must be a preset name, a regex string or a list of names"):
        resolve_targets(Net(), layers)
