"""Attacks on erased pipelines (evaluation/attacks.py): the table, soft_prompt, paraphrase, the ASR count, bad input."""

import dataclasses
import json
import math
import types

import pytest
import torch

import eraser
import evaluation
from eraser.bundled import digit_prompt, digits_pipeline
from eraser.bundled.evaluate import image_seed
from eraser.families.diffusion import encode_prompts, tokenize_prompts
from evaluation import attacks
from evaluation.attacks import (
    AttackResult,
    DiscretePromptConfig,
    ParaphraseConfig,
    RingABellConfig,
    SoftPromptConfig,
    TextualInversionConfig,
    attack_success,
    get_attack,
    judge_target,
    list_attacks,
    load_attack,
    register_attack,
    run_attack,
    run_instances,
    save_attack,
)

PROMPT = "a photo of the digit"
# A short run: enough steps to lower the probe loss on this model, small enough for a unit test.
SHORT = dict(steps=16, lr=0.02, batch_size=4, probe_images=4, probe_timesteps=4, restarts=2)


@pytest.fixture(scope="module")
def pipe():
    p = digits_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def sevens(pipe):
    """Four sevens drawn by the original model (seeds apart from the attack's and the evaluation's)."""
    gens = [torch.Generator().manual_seed(image_seed(99, 7, i)) for i in range(4)]
    return pipe([digit_prompt(7)] * 4, generator=gens, num_inference_steps=10, output_type="pt").images


@pytest.fixture(scope="module")
def erased(pipe, sevens):
    """The pipeline with the default erasure of "seven" applied (reverted after the module)."""
    patch = eraser.erase_concepts(pipe, "seven")
    yield pipe
    patch.revert(pipe)


def state(pipe) -> dict:
    """Every weight, requires_grad flag and train/eval mode of the pipeline's modules."""
    out = {}
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        for k, v in module.state_dict(keep_vars=True).items():
            out[f"{name}.{k}"] = (v.detach().clone(), v.requires_grad)
        out[f"{name}.modes"] = [m.training for m in module.modules()]
    return out


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for k, v in before.items():
        if k.endswith(".modes"):
            assert v == after[k], k
        else:
            assert torch.equal(v[0], after[k][0]) and v[1] == after[k][1], k


def no_hooks(pipe) -> bool:
    return not pipe.text_encoder.get_input_embeddings()._forward_hooks


# -- the table ------------------------------------------------------------------------------------
@pytest.fixture
def scratch_table(monkeypatch):
    monkeypatch.setattr(attacks, "_ATTACKS", dict(attacks._ATTACKS))


def test_registry_lists_gets_and_refuses():
    assert {"soft_prompt", "discrete_prompt", "textual_inversion", "ring_a_bell", "paraphrase"} <= set(list_attacks())
    needs = {name: get_attack(name).needs_targets for name in list_attacks()}
    assert needs == {
        "discrete_prompt": True,
        "paraphrase": False,
        "ring_a_bell": False,
        "soft_prompt": True,
        "textual_inversion": True,
    }
    assert {n for n in list_attacks() if get_attack(n).text_prompts} == {"discrete_prompt", "paraphrase"}
    assert list_attacks("soft*") == ["soft_prompt"] and list_attacks("nothing*") == []
    spec = get_attack("soft_prompt")
    assert spec.fn is attacks.soft_prompt and spec.config_cls is SoftPromptConfig and "denoising loss" in spec.summary
    assert get_attack("paraphrase").config_cls is ParaphraseConfig
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"
    with pytest.raises(ValueError, match=r"unknown attack 'ring'.*'paraphrase'.*'soft_prompt'"):
        get_attack("ring")
    with pytest.raises(ValueError, match="unknown attack"):
        run_attack("ring", None, "seven", prompt=PROMPT)
    assert evaluation.get_attack is get_attack and evaluation.list_attacks is list_attacks
    # configs serialise into reports
    assert dataclasses.asdict(SoftPromptConfig())["n_tokens"] == 4 and SoftPromptConfig().steps == 160


def test_register_and_run_attack_with_options(scratch_table):
    @dataclasses.dataclass
    class Cfg:
        scale: float = 1.0

    seen = {}

    @register_attack("echo", config=Cfg)
    def echo(pipe, concept, *, prompt, config, targets=None, progress=False):
        """Echoes its config."""
        seen.update(config=config, prompt=prompt)
        return AttackResult("echo", concept, prompt, torch.zeros(1, 2, 3), config)

    assert "echo" in list_attacks() and get_attack("echo").summary == "Echoes its config."
    result = run_attack("echo", None, "seven", prompt=PROMPT, scale=2.0)
    assert seen["config"] == Cfg(2.0) and result.settings()["config"] == {"scale": 2.0}
    with pytest.raises(ValueError, match="already registered"):
        register_attack("echo", config=Cfg)(echo)
    with pytest.raises(TypeError, match=r"unknown options for attack 'echo': \['sale'\]"):
        run_attack("echo", None, "seven", prompt=PROMPT, sale=2.0)


# -- soft_prompt on the bundled model -------------------------------------------------------------
def test_attack_tokens_sit_before_end_of_text(pipe):
    tok = pipe.tokenizer
    plain, start = attacks._attack_ids(tok, PROMPT, [])
    assert torch.equal(plain, tokenize_prompts(pipe, [PROMPT])[0])  # as the pipeline tokenises
    ids, start = attacks._attack_ids(tok, PROMPT, [111, 222])
    body = tok(PROMPT, add_special_tokens=False).input_ids
    assert start == 1 + len(body) and ids[0, start : start + 3].tolist() == [111, 222, tok.eos_token_id]
    with pytest.raises(ValueError, match="exceeds"):
        attacks._attack_ids(tok, "seven " * 60, [1] * 20)


def test_soft_prompt_lowers_its_loss_and_leaves_the_model_alone(erased, sevens):
    before = state(erased)
    result = run_attack("soft_prompt", erased, "seven", prompt=PROMPT, targets=sevens, **SHORT)
    assert_same(before, state(erased))
    assert no_hooks(erased)
    assert result.loss < result.initial_loss
    assert result.steps == len(result.losses) == 16 and result.stopped == "steps"
    assert result.prompt_embeds.shape == (1, 77, 64) and result.embeddings.shape == (4, 64)
    assert not torch.allclose(result.prompt_embeds, encode_prompts(erased, [PROMPT]))
    assert result.details["n_targets"] == 4 and len(result.details["nearest_tokens"]) == 4
    assert result.settings()["config"]["n_tokens"] == 4 and result.seconds > 0
    again = run_attack("soft_prompt", erased, "seven", prompt=PROMPT, targets=sevens, **SHORT)
    assert torch.equal(again.prompt_embeds, result.prompt_embeds) and again.losses == result.losses  # seeded
    other = run_attack("soft_prompt", erased, "seven", prompt=PROMPT, targets=sevens, **{**SHORT, "seed": 1})
    assert not torch.equal(other.prompt_embeds, result.prompt_embeds)


def test_soft_prompt_time_budget_stops_early(erased, sevens):
    result = run_attack(
        "soft_prompt", erased, "seven", prompt=PROMPT, targets=sevens, **{**SHORT, "steps": 50, "time_budget": 1e-6}
    )
    assert result.stopped == "time" and result.steps == 1


def test_bad_input_is_refused_and_the_model_is_unchanged(erased, sevens, monkeypatch):
    before = state(erased)
    go = dict(prompt=PROMPT, targets=sevens)
    with pytest.raises(ValueError, match="n_tokens must be >= 1"):
        run_attack("soft_prompt", erased, "seven", n_tokens=0, **go)
    with pytest.raises(ValueError, match="n_tokens must be >= 1"):
        SoftPromptConfig(n_tokens=0)
    for bad in (dict(steps=0), dict(time_budget=0.0), dict(lr=-1.0)):
        with pytest.raises(ValueError, match="soft_prompt"):
            run_attack("soft_prompt", erased, "seven", **go, **bad)
    for empty in (None, torch.empty(0, 1, 32, 32)):
        with pytest.raises(ValueError, match="non-empty tensor of images"):
            run_attack("soft_prompt", erased, "seven", prompt=PROMPT, targets=empty)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        run_attack("soft_prompt", erased, "seven", prompt=PROMPT, targets=sevens * 2 - 1)
    with pytest.raises(ValueError, match="3 channels"):
        run_attack("soft_prompt", erased, "seven", prompt=PROMPT, targets=sevens.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="concept"):
        run_attack("soft_prompt", erased, " ", **go)
    no_text = types.SimpleNamespace(
        unet=erased.unet, tokenizer=erased.tokenizer, text_encoder=None, scheduler=erased.scheduler
    )
    for name in list_attacks():
        with pytest.raises(ValueError, match="needs a pipeline with a text encoder"):
            run_attack(name, no_text, "seven", **go)

    # a failure in the middle of the optimisation: weights, flags, modes and hooks are all restored
    def fail(self, *a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(torch.optim.Adam, "step", fail)
    with pytest.raises(RuntimeError, match="injected"):
        run_attack("soft_prompt", erased, "seven", **go, **SHORT)
    assert_same(before, state(erased))
    assert no_hooks(erased)


# -- discrete_prompt (PEZ) ------------------------------------------------------------------------
def test_discrete_prompt_finds_a_text_prompt_that_replays(erased, sevens):
    before = state(erased)
    tok = erased.tokenizer
    kw = {**SHORT, "steps": 16, "probe_every": 4}
    result = run_attack("discrete_prompt", erased, "seven", prompt=PROMPT, targets=sevens, **kw)
    assert_same(before, state(erased))
    assert no_hooks(erased)
    (text,) = result.prompts
    ids = result.details["token_ids"]
    assert text.startswith(PROMPT + " ") and len(ids) == 4
    assert not set(ids) & set(tok.all_special_ids)  # real vocabulary tokens only
    # the conditioning is the text's own encoding: the attack is the text, replayable on any model
    assert torch.equal(result.prompt_embeds, encode_prompts(erased, [text]))
    assert result.embeddings.shape == (4, 64)
    assert torch.equal(result.embeddings, erased.text_encoder.get_input_embeddings().weight[ids].float())
    probes = result.details["probes"]
    # two starts share the first 8 steps; the probes are taken in the run that continues
    assert [p["step"] for p in probes] == [12, 16] and result.loss == min(p["loss"] for p in probes)
    assert result.steps == 16 and math.isfinite(result.initial_loss) and result.stopped == "steps"
    again = run_attack("discrete_prompt", erased, "seven", prompt=PROMPT, targets=sevens, **kw)
    assert again.prompts == result.prompts and again.losses == result.losses  # seeded
    other = run_attack("discrete_prompt", erased, "seven", prompt=PROMPT, targets=sevens, **{**kw, "seed": 1})
    assert other.details["init_tokens"] != result.details["init_tokens"]


def test_discrete_prompt_projection_excludes_special_and_concept_tokens(erased, sevens, monkeypatch):
    tok = erased.tokenizer
    table = erased.text_encoder.get_input_embeddings().weight
    banned = [tok.eos_token_id, *tok("seven", add_special_tokens=False).input_ids]
    # start every continuous embedding on a banned token: the projection must still pick an allowed one
    monkeypatch.setattr(attacks, "_random_tokens", lambda t, v, n, g, exclude=(): [banned[k % 2] for k in range(n)])
    seen = []
    real = attacks._soft_tokens

    def spy(enc, start, soft):
        seen.append(soft.detach().clone() if isinstance(soft, torch.Tensor) else soft)
        return real(enc, start, soft)

    monkeypatch.setattr(attacks, "_soft_tokens", spy)
    kw = {**SHORT, "steps": 2, "probe_every": 0, "exclude_concept": True}
    result = run_attack("discrete_prompt", erased, "seven", prompt=PROMPT, targets=sevens, **kw)
    assert not set(result.details["token_ids"]) & set(banned)
    # what the UNet saw at each step: rows of real, allowed tokens (the projected point)
    for rows in seen:
        hits = (rows[:, None, :] == table[None].float()).all(-1).nonzero()[:, 1].tolist()
        assert len(hits) >= 4 and not set(hits) & set(banned)


# -- textual_inversion ----------------------------------------------------------------------------
def test_textual_inversion_learns_one_token_and_leaves_the_tokenizer_alone(erased, sevens):
    before, vocab = state(erased), len(erased.tokenizer)
    result = run_attack("textual_inversion", erased, "seven", prompt=PROMPT, targets=sevens, **SHORT)
    assert_same(before, state(erased))
    assert no_hooks(erased) and len(erased.tokenizer) == vocab
    assert result.embeddings.shape == (1, 64) and result.prompt_embeds.shape == (1, 77, 64)
    assert result.details["init_tokens"] == ["object</w>"] and result.steps == 16
    assert result.loss != result.initial_loss and result.prompts is None
    again = run_attack("textual_inversion", erased, "seven", prompt=PROMPT, targets=sevens, **SHORT)
    assert torch.equal(again.prompt_embeds, result.prompt_embeds)  # seeded
    # injected where "<prompt> <token>" puts the token: unlearned, it is the init word's own encoding
    still = run_attack(
        "textual_inversion", erased, "seven", prompt=PROMPT, targets=sevens, **{**SHORT, "steps": 1, "lr": 1e-12}
    )
    assert torch.allclose(still.prompt_embeds, encode_prompts(erased, [PROMPT + " object"]), atol=1e-5)
    rand = run_attack(
        "textual_inversion", erased, "seven", prompt=PROMPT, targets=sevens, **{**SHORT, "steps": 1, "init_word": ""}
    )
    assert rand.details["init_tokens"] != ["object</w>"]


# -- ring_a_bell ----------------------------------------------------------------------------------
def test_ring_a_bell_adds_the_concept_vector_at_each_strength(pipe):
    before = state(pipe)
    result = run_attack("ring_a_bell", pipe, "seven", prompt=PROMPT, strengths=(1, 2.5))
    assert_same(before, state(pipe))
    assert result.prompt_embeds.shape == (2, 77, 64) and len(result.prompts) == 2 and result.steps == 0
    templates = [*attacks.RING_A_BELL_TEMPLATES, PROMPT + " {}"]
    with_ = encode_prompts(pipe, [" ".join(t.replace("{}", "seven").split()) for t in templates])
    without = encode_prompts(pipe, [" ".join(t.replace("{}", "").split()) for t in templates])
    vector = (with_ - without).mean(0)
    neutral = encode_prompts(pipe, [PROMPT])[0]
    assert torch.allclose(result.prompt_embeds[0], neutral + vector, atol=1e-5)
    assert torch.allclose(result.prompt_embeds[1], neutral + 2.5 * vector, atol=1e-5)
    assert result.details["vector_positions"] == "full sequence"
    assert RingABellConfig(strengths=("1", "3")).strengths == (1.0, 3.0)  # command-line strings


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DiscretePromptConfig(steps=0), "discrete_prompt: steps must be >= 1"),
        (lambda: DiscretePromptConfig(time_budget=0.0), "discrete_prompt: time_budget must be > 0"),
        (lambda: DiscretePromptConfig(probe_every=-1), "probe_every"),
        (lambda: TextualInversionConfig(steps=0), "textual_inversion: steps must be >= 1"),
        (lambda: TextualInversionConfig(time_budget=0), "textual_inversion: time_budget must be > 0"),
        (lambda: TextualInversionConfig(templates=("a photo",)), "exactly one"),
        (lambda: TextualInversionConfig(templates=()), "templates"),
        (lambda: RingABellConfig(strengths=()), "strengths must list at least one"),
        (lambda: RingABellConfig(strengths=("",)), "strengths must list at least one"),
        (lambda: RingABellConfig(strengths=(float("nan"),)), "strengths must be finite"),
        (lambda: RingABellConfig(strengths=("x",)), "strengths must be numbers"),
        (lambda: SoftPromptConfig(time_budget=0), "soft_prompt: time_budget must be > 0"),
    ],
)
def test_configs_refuse_zero_budgets_and_empty_settings(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("name", ["discrete_prompt", "textual_inversion"])
def test_new_attacks_refuse_bad_input_and_restore_the_model(erased, sevens, name, monkeypatch):
    before = state(erased)
    with pytest.raises(ValueError, match="non-empty tensor of images"):
        run_attack(name, erased, "seven", prompt=PROMPT)
    with pytest.raises(ValueError, match=f"{name}: steps must be >= 1"):
        run_attack(name, erased, "seven", prompt=PROMPT, targets=sevens, steps=0)

    def fail(self, *a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(torch.optim.Adam, "step", fail)
    with pytest.raises(RuntimeError, match="injected"):
        run_attack(name, erased, "seven", prompt=PROMPT, targets=sevens, **SHORT)
    assert_same(before, state(erased))
    assert no_hooks(erased)


def test_time_budget_stops_every_optimised_attack(erased, sevens):
    for name in ("discrete_prompt", "textual_inversion"):
        result = run_attack(
            name, erased, "seven", prompt=PROMPT, targets=sevens, **{**SHORT, "steps": 50, "time_budget": 1e-6}
        )
        assert result.stopped == "time" and result.steps == 1, name


def test_run_instances_seeds_runs_apart_and_runs_fixed_attacks_once(erased, sevens):
    runs = run_instances(
        "soft_prompt", erased, "seven", prompt=PROMPT, instances=2, targets=sevens, **{**SHORT, "steps": 1}
    )
    assert [r.config.seed for r in runs] == [0, 1]
    runs = run_instances(
        "soft_prompt", erased, "seven", prompt=PROMPT, instances=2, targets=sevens, **{**SHORT, "steps": 1, "seed": 5}
    )
    assert [r.config.seed for r in runs] == [5, 6]
    (ring,) = run_instances("ring_a_bell", erased, "seven", prompt=PROMPT, instances=3, targets=sevens)
    assert ring.prompt_embeds.shape[0] == 4  # one candidate per default strength
    with pytest.raises(ValueError, match="instances must be >= 1"):
        run_instances("ring_a_bell", erased, "seven", prompt=PROMPT, instances=0)


# -- paraphrase -----------------------------------------------------------------------------------
def test_paraphrase_returns_the_prompts_embeddings(pipe):
    prompts = ("the number seven", "handwritten 7", "sept")
    result = run_attack("paraphrase", pipe, "seven", prompt="", prompts=prompts)
    assert result.prompt_embeds.shape == (3, 77, 64) and result.prompts == list(prompts)
    assert torch.equal(result.prompt_embeds, encode_prompts(pipe, list(prompts)))
    assert result.loss is None and result.steps == 0
    for bad in ((), ("seven", " ")):
        with pytest.raises(ValueError, match="non-empty list"):
            run_attack("paraphrase", pipe, "seven", prompt="", prompts=bad)


def test_pipelines_take_prompt_embeds(pipe):
    g = lambda: [torch.Generator().manual_seed(3)]  # noqa: E731
    by_text = pipe(digit_prompt(2), generator=g(), num_inference_steps=3, output_type="pt").images
    embeds = encode_prompts(pipe, [digit_prompt(2)])
    by_embeds = pipe(prompt_embeds=embeds, generator=g(), num_inference_steps=3, output_type="pt").images
    assert torch.equal(by_text, by_embeds)


# -- the ASR count --------------------------------------------------------------------------------
class ScriptedJudge:
    """Returns the next labels of a script, whatever the images (to check the counting)."""

    def __init__(self, labels):
        self.labels, self.pos, self.sizes = list(labels), 0, []

    def __call__(self, x):
        self.sizes.append(len(x))
        out = torch.tensor(self.labels[self.pos : self.pos + len(x)])
        self.pos += len(x)
        return out


def test_attack_success_counts_instances_and_images(pipe):
    result = run_attack("paraphrase", pipe, "seven", prompt="", prompts=(digit_prompt(7), "handwritten 7"))
    # instance 0: 8 of 8; 1: 4 of 8 (exactly half: succeeds); 2: 3 of 8; 3: none
    labels = [7] * 8 + [7, 1] * 4 + [7, 7, 7, 2, 2, 2, 2, 2] + [0] * 8
    judge = ScriptedJudge(labels)
    out = attack_success(
        pipe, result, judge, "seven", instances=4, images_per_instance=8, seed=5, num_inference_steps=1, batch_size=5
    )
    assert out.asr == 50.0 and out.image_asr == 100.0 * 15 / 32
    assert out.per_instance == [100.0, 50.0, 37.5, 0.0] and out.instances == 4 and out.target_class == 7
    assert judge.sizes == [5] * 6 + [2] and out.predictions[1] == [7, 1] * 4
    # logits judges: argmax, and a target outside its classes is refused
    logits = lambda x: torch.nn.functional.one_hot(torch.full((len(x),), 3), 10).float()  # noqa: E731
    out = attack_success(pipe, result, logits, 3, images_per_instance=2, seed=5, num_inference_steps=1)
    assert out.instances == 2 and out.asr == 100.0 and out.image_asr == 100.0  # one instance per row
    with pytest.raises(ValueError, match="judge has 10 classes"):
        attack_success(pipe, result, logits, 12, images_per_instance=1, seed=5, num_inference_steps=1)
    with pytest.raises(ValueError, match="must be >= 1"):
        attack_success(pipe, result, logits, 3, images_per_instance=0, seed=5)


def test_attack_success_seeds_each_image_apart_from_the_optimisation(erased, sevens):
    result = run_attack("soft_prompt", erased, "seven", prompt=PROMPT, targets=sevens, **{**SHORT, "steps": 1})
    judge = ScriptedJudge([7] * 100)
    kw = dict(instances=2, images_per_instance=3, seed=11, num_inference_steps=2, keep_images=True)
    one = attack_success(erased, result, judge, 7, batch_size=6, **kw)
    split = attack_success(erased, result, judge, 7, batch_size=4, **kw)
    assert one.images.shape == (6, 1, 32, 32)
    assert torch.allclose(one.images, split.images, atol=1e-5)  # each image's noise is its own
    assert not torch.allclose(one.images[0], one.images[3])  # the same conditioning, other seeds
    with pytest.raises(ValueError, match="optimisation seed"):
        attack_success(erased, result, judge, 7, images_per_instance=1, seed=result.config.seed)


# -- a real SD architecture with a VAE ------------------------------------------------------------
def test_soft_prompt_end_to_end_on_tiny_sd():
    from eraser.loading import load_pipeline

    sd = load_pipeline("random:tiny-sd")
    sd.set_progress_bar_config(disable=True)
    before = state(sd)
    assert any(v[1] for k, v in before.items() if not k.endswith(".modes"))  # this one's weights want gradients
    targets = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cfg = dict(steps=2, batch_size=2, probe_images=2, probe_timesteps=1, n_tokens=2)
    result = run_attack("soft_prompt", sd, "nude", prompt="a photo", targets=targets, **cfg)
    assert_same(before, state(sd))
    assert all(p.grad is None for p in sd.text_encoder.parameters())
    assert result.prompt_embeds.shape == (1, 77, sd.text_encoder.config.hidden_size) and result.steps == 2
    assert all(torch.isfinite(torch.tensor([result.loss, result.initial_loss, *result.losses])))
    with pytest.raises(ValueError, match="the pipeline's VAE reads 3"):
        run_attack("soft_prompt", sd, "nude", prompt="a photo", targets=targets[:, :1], **cfg)
    out = attack_success(
        sd, result, ScriptedJudge([1, 0]), 1, images_per_instance=2, seed=3, num_inference_steps=1, keep_images=True
    )
    assert out.images.shape == (2, 3, 64, 64) and out.asr == 100.0 and out.image_asr == 50.0


# -- judge and target class -----------------------------------------------------------------------
def test_judge_target_checks_the_class_before_anything_is_generated():
    from eraser.bundled import digits_judge

    judge = digits_judge()
    assert judge_target(judge, "seven", (1, 32, 32)) == 7 and judge_target("digits", 3, (1, 32, 32)) == 3
    with pytest.raises(ValueError, match=r"has 10 classes \(0..9\); target class 12"):
        judge_target(judge, 12, (1, 32, 32))
    with pytest.raises(ValueError, match="no class index"):
        judge_target(judge, "unicorn", (1, 32, 32))


# -- saved attacks: the text encoder they are for, replay, hostile files --------------------------
def test_saved_attack_replays_on_its_text_encoder_only(erased, sevens, tmp_path):
    from eraser.families.architectures import build_pipeline

    runs = run_instances(
        "soft_prompt", erased, "seven", prompt=PROMPT, instances=2, targets=sevens, **{**SHORT, "steps": 1}
    )
    path = save_attack(tmp_path / "a.safetensors", runs, erased)
    loaded = load_attack(path, erased)
    assert len(loaded) == 2 and [r.config for r in loaded] == [r.config for r in runs]
    for a, b in zip(loaded, runs):
        assert torch.equal(a.prompt_embeds, b.prompt_embeds) and torch.equal(a.embeddings, b.embeddings)
        assert a.details == b.details and a.loss == b.loss and a.attack == "soft_prompt"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        ident = json.loads(f.metadata()["text_encoder"])
    assert ident["pipeline"] == "DigitsPipeline" and ident["hidden_size"] == 64 and ident["sequence_length"] == 77
    assert ident["vocab_size"] == 49408 and ident["token_embedding"].startswith("(49408, 64):")
    # another text encoder: refused with the reason
    sd = build_pipeline("tiny-sd")
    with pytest.raises(ValueError, match=r"another text encoder: its conditioning is 77 x 64 .* 77 x 32"):
        load_attack(path, sd)
    ring = save_attack(tmp_path / "r.safetensors", run_attack("ring_a_bell", sd, "nude", prompt="a photo"), sd)
    with pytest.raises(ValueError, match="token-embedding fingerprint"):
        load_attack(ring, build_pipeline("tiny-sd", seed=1))  # same shapes, other weights
    with pytest.raises(ValueError, match="not text"):
        load_attack(path, sd, as_text=True)
    # a text attack replays as text through another model's own encoder
    para = run_attack("paraphrase", erased, "seven", prompt="", prompts=("the number seven", "a handwritten 7"))
    text = save_attack(tmp_path / "p.safetensors", para, erased)
    with pytest.raises(ValueError, match=r"fingerprint|conditioning"):
        load_attack(text, sd)
    (moved,) = load_attack(text, sd, as_text=True)
    assert torch.equal(moved.prompt_embeds, encode_prompts(sd, list(para.prompts)))
    assert moved.details["replayed_as_text_from"]["pipeline"] == "DigitsPipeline"


def _rewrite(src, dst, *, meta=None, tensors=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        m = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    if meta:
        m.update(meta(m))
    if tensors:
        t = tensors(t)
    save_file(t, str(dst), metadata=m)
    return dst


def test_load_attack_refuses_hostile_files(pipe, tmp_path):
    good = save_attack(tmp_path / "good.safetensors", run_attack("ring_a_bell", pipe, "seven", prompt=PROMPT), pipe)
    assert load_attack(good, pipe)[0].config == RingABellConfig()

    def settings(edit):
        def f(m):
            items = json.loads(m["eraser_attack"])
            edit(items[0])
            return {"eraser_attack": json.dumps(items)}

        return f

    cases = [
        (dict(meta=lambda m: {"format": "other"}), "not an attack file of this version"),
        (dict(meta=settings(lambda s: s.update(steps="3"))), "steps has the wrong type"),
        (dict(meta=settings(lambda s: s.update(prompts=[1, 2, 3, 4]))), "prompts has the wrong type"),
        (dict(meta=settings(lambda s: s.update(attack="nope"))), "unknown attack 'nope'"),
        (dict(meta=settings(lambda s: s["config"].update(strengths=[]))), "strengths must list at least one"),
        (dict(meta=settings(lambda s: s["config"].update(strengths="12"))), "strengths must be a list"),
        (dict(meta=settings(lambda s: s["config"].update(evil=1))), "no setting 'evil'"),
        (dict(meta=settings(lambda s: s.pop("concept"))), "missing"),
        (dict(meta=lambda m: {"rows": "[3]"}), "row counts"),
        (dict(meta=lambda m: {"rows": "[true, 3]"}), "row counts"),
        (dict(meta=lambda m: {"text_encoder": '{"pipeline": 3}'}), "text-encoder identity"),
        (dict(meta=lambda m: {"eraser_attack": "{not json"}), "unreadable attack metadata"),
        (dict(tensors=lambda t: {**t, "extra": torch.zeros(1)}), "expected tensors"),
        (dict(tensors=lambda t: {"prompt_embeds": t["prompt_embeds"] * torch.nan}), "finite"),
        (dict(tensors=lambda t: {"prompt_embeds": t["prompt_embeds"].long()}), "finite floats"),
    ]
    for i, (edit, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            load_attack(_rewrite(good, tmp_path / f"bad{i}.safetensors", **edit), pipe)
    pickled = tmp_path / "pickle.safetensors"
    torch.save({"prompt_embeds": torch.zeros(1, 77, 64)}, pickled)
    with pytest.raises(ValueError, match="not a safetensors attack file"):
        load_attack(pickled, pipe)
    with pytest.raises(FileNotFoundError):
        load_attack(tmp_path / "missing.safetensors", pipe)


# -- SD architecture end to end: soft_prompt and ring_a_bell through run_attack --------------------
def test_attacks_end_to_end_on_tiny_sd_with_a_vae():
    from eraser.loading import load_pipeline

    sd = load_pipeline("random:tiny-sd")
    sd.set_progress_bar_config(disable=True)
    assert sd.vae is not None
    before = state(sd)
    targets = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tiny = dict(steps=2, batch_size=2, probe_images=2, probe_timesteps=1)
    soft = run_attack("soft_prompt", sd, "nude", prompt="a photo", targets=targets, n_tokens=2, **tiny)
    ring = run_attack("ring_a_bell", sd, "nude", prompt="a photo", strengths=(1, 3))
    pez = run_attack("discrete_prompt", sd, "nude", prompt="a photo", targets=targets, n_tokens=2, **tiny)
    ti = run_attack("textual_inversion", sd, "nude", prompt="a photo", targets=targets, **tiny)
    assert_same(before, state(sd))
    assert all(p.grad is None for p in sd.text_encoder.parameters())
    d = sd.text_encoder.config.hidden_size
    assert soft.prompt_embeds.shape == (1, 77, d) and ring.prompt_embeds.shape == (2, 77, d)
    assert pez.prompt_embeds.shape == (1, 77, d) and ti.prompt_embeds.shape == (1, 77, d)
    assert torch.equal(pez.prompt_embeds, encode_prompts(sd, pez.prompts))
    for r in (soft, pez, ti):
        assert all(math.isfinite(v) for v in (r.loss, r.initial_loss, *r.losses)) and r.steps == 2
    kw = dict(images_per_instance=1, seed=3, num_inference_steps=1, keep_images=True)
    out = attack_success(sd, [soft, ring], ScriptedJudge([1, 0, 1]), 1, **kw)
    assert out.images.shape == (3, 3, 64, 64) and out.instances == 3 and out.asr == 100.0 * 2 / 3
    assert out.settings["attacks"] == ["soft_prompt", "ring_a_bell"]


def test_gradient_starts_pick_the_rows_the_loss_favours():
    from eraser.training.soft_prompts import gradient_starts as _gradient_starts

    g = torch.Generator().manual_seed(0)
    table = torch.randn(50, 8, generator=g)
    goal = table[[3, 17]]  # two positions, each pulled towards one vocabulary row
    param = torch.zeros(2, 8, requires_grad=True)
    starts = _gradient_starts(param, lambda: (param - goal).pow(2).sum(), table, 2, blocked={17})
    assert len(starts) == 2 and all(s.shape == (2, 8) for s in starts)
    assert torch.equal(starts[0][0], table[3])  # first-order best for position 0
    assert not any(torch.equal(s[1], table[17]) for s in starts)  # a blocked token is never chosen
    assert _gradient_starts(param, lambda: param.sum(), table, 0) == []
    from eraser.training.soft_prompts import extra_starts

    # short runs need at least one step each: a budget below 2 * restarts runs from one start only
    assert extra_starts(SoftPromptConfig(steps=160, restarts=8)) == 7
    assert extra_starts(SoftPromptConfig(steps=8, restarts=8)) == 0 and extra_starts(SoftPromptConfig(restarts=1)) == 0


def test_optimised_attacks_draw_timesteps_from_the_top_of_the_schedule(erased, sevens):
    from eraser.training.soft_prompts import Denoiser as _Denoiser

    cfg = SoftPromptConfig(**{**SHORT, "t_min": 0.75})
    den = _Denoiser(erased, erased.unet, sevens, cfg, torch.Generator().manual_seed(0))
    n = den.n_train
    ts = torch.cat([den.draw(torch.Generator().manual_seed(i))[2] for i in range(20)])
    assert int(ts.min()) >= int(0.75 * n) and int(ts.max()) < n
    assert int(den.pt.min()) >= int(0.75 * n)
    with pytest.raises(ValueError, match="t_min must be a fraction"):
        SoftPromptConfig(t_min=1.0)
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        TextualInversionConfig(restarts=0)
