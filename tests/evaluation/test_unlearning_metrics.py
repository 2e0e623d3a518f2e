import math

import pytest
import torch

from evaluation.unlearning import (
    UnlearningMetrics,
    avg_gap,
    mia_efficacy,
    mia_feature,
    svc_mia,
    unlearning_metrics,
)


def test_mia_features_match_their_definitions():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 1])
    p = torch.softmax(logits.double(), 1)
    conf = mia_feature(logits, y, "confidence")
    assert torch.allclose(conf, p[[0, 1], [0, 1]])
    assert torch.allclose(mia_feature(logits, y, "loss"), -torch.log(conf))
    assert torch.allclose(mia_feature(logits, y, "entropy"), -(p * p.log()).sum(1))
    # Modified entropy, sample 0 (y = 0), written out term by term:
    want = -(1 - p[0, 0]) * math.log(p[0, 0]) - p[0, 1] * math.log(1 - p[0, 1]) - p[0, 2] * math.log(1 - p[0, 2])
    assert float(mia_feature(logits, y, "m_entropy")[0]) == pytest.approx(float(want))
    with pytest.raises(ValueError, match="unknown MIA feature"):
        mia_feature(logits, y, "bogus")


def test_tiny_probabilities_are_clamped_at_1e30_as_in_song_and_mittal():
    """p_y = 1e-20 (a retrained model's forget samples reach it) is kept; only values below 1e-30 are clamped."""
    logits = torch.tensor([[0.0, -20 * math.log(10)], [0.0, -100.0]])  # p_1 = 1e-20, then 3.7e-44
    y = torch.tensor([1, 1])
    p = torch.softmax(logits.double(), 1)
    assert float(p[0, 1]) == pytest.approx(1e-20, rel=1e-5)
    loss = mia_feature(logits, y, "loss")
    assert float(loss[0]) == pytest.approx(20 * math.log(10), rel=1e-6)  # 46.05 (1e-12 gave 27.63)
    assert float(loss[1]) == pytest.approx(30 * math.log(10))  # below 1e-30: clamped
    # Song and Mittal: log(max(p, 1e-30)) for p_y and log(max(1 - p_i, 1e-30)) for the others
    log = lambda v: math.log(max(float(v), 1e-30))  # noqa: E731
    want = [-(1 - p[i, 1]) * log(p[i, 1]) - p[i, 0] * log(1 - p[i, 0]) for i in range(2)]
    got = mia_feature(logits, y, "m_entropy")
    assert [float(g) for g in got] == pytest.approx([float(w) for w in want], rel=1e-9)
    entropy = mia_feature(logits, y, "entropy")
    assert float(entropy[0]) == pytest.approx(float(-(p[0] * p[0].clamp_min(1e-30).log()).sum()), rel=1e-9)


def test_svc_mia_calls_test_like_samples_non_members():
    g = torch.Generator().manual_seed(0)
    members = 0.95 + 0.04 * torch.rand(300, generator=g)  # confident: seen in training
    non_members = 0.3 + 0.4 * torch.rand(300, generator=g)
    assert svc_mia(members, non_members, 0.3 + 0.4 * torch.rand(100, generator=g)) > 90
    assert svc_mia(members, non_members, 0.95 + 0.04 * torch.rand(100, generator=g)) < 10


def _perfect_and_guessing():
    """Logits that get the forget set wrong and everything else right."""
    y = torch.arange(4).repeat(25)
    right = torch.nn.functional.one_hot(y, 4).float() * 5
    wrong = torch.nn.functional.one_hot((y + 1) % 4, 4).float() * 5
    return y, right, wrong


def test_metric_accumulates_batches_like_one_pass():
    y, right, wrong = _perfect_and_guessing()
    whole, parts = UnlearningMetrics(), UnlearningMetrics()
    whole.update(wrong, y, "forget")
    whole.update(right, y, "retain")
    whole.update(right[:60], y[:60], "test")
    for i in range(0, 100, 30):
        parts.update(wrong[i : i + 30], y[i : i + 30], "forget")
        parts.update(right[i : i + 30], y[i : i + 30], "retain")
    parts.update(right[:60], y[:60], "test")
    a, b = whole.compute(), parts.compute()
    assert a == b
    assert a["UA"] == 100.0 and a["RA"] == 100.0 and a["TA"] == 100.0
    parts.reset()
    with pytest.raises(ValueError, match="no forget samples"):
        parts.compute()


def test_metric_rejects_bad_input():
    m = UnlearningMetrics()
    with pytest.raises(ValueError, match="split"):
        m.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), "train")
    with pytest.raises(ValueError, match="labels must lie"):
        m.update(torch.zeros(2, 3), torch.tensor([0, 3]), "forget")


def test_unlearning_metrics_on_a_model_and_gap(toy_model, toy_task):
    t = toy_task
    before = unlearning_metrics(toy_model, t["forget"], t["retain"], t["test"])
    assert before["UA"] < 5 and before["RA"] > 95 and before["TA"] > 90
    # Data may also come as DataLoaders, with the same result.
    from torch.utils.data import DataLoader, TensorDataset

    loaders = [DataLoader(TensorDataset(*t[k]), batch_size=7) for k in ("forget", "retain", "test")]
    assert unlearning_metrics(toy_model, *loaders) == before
    # Masking class 0's logit forgets it completely; the MIA then calls forget samples non-members
    # far more often than before.
    with torch.no_grad():
        toy_model.head.bias[0] = -1e4
    after = unlearning_metrics(toy_model, t["forget"], t["retain"], t["test"])
    assert after["UA"] == 100.0
    assert after["MIA"] > before["MIA"]
    assert mia_efficacy(toy_model, t["retain"], t["forget"], t["test"]) == after["MIA"]
    assert avg_gap(after, after) == 0.0
    assert avg_gap({"UA": 1, "RA": 2, "TA": 3, "MIA": 4}, {"UA": 0, "RA": 0, "TA": 0, "MIA": 0}) == 2.5
    with pytest.raises(KeyError):
        avg_gap({"UA": 1}, after)


def test_balanced_mia_is_seeded():
    y, right, _ = _perfect_and_guessing()
    noisy = right + torch.randn(right.shape, generator=torch.Generator().manual_seed(1)) * 3
    runs = []
    for _ in range(2):
        m = UnlearningMetrics(balanced=True, seed=3, mia_feature="entropy")
        m.update(right, y, "retain")
        m.update(noisy, y, "test")
        m.update(noisy[:20], y[:20], "forget")
        runs.append(m.mia())
    assert runs[0] == runs[1]
