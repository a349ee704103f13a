"""curate.metrics against direct computations (numpy loops, closed forms, the refs.py ECE toy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curate.models.calibration import ece_bins, ece_from_bins, expected_calibration_error
from curate.models.retention import gap_closed, performance_retention

torch = pytest.importorskip("torch")

from curate.models.lm_metrics import (  # noqa: E402
    LMEvalAccumulator,
    perplexity,
    token_js,
    token_kl,
    token_nll,
    top1_agreement,
)
from curate.models.perf import param_count  # noqa: E402


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_ece_toy_from_reference_sheet():
    conf = [0.95] * 4 + [0.55] * 4
    correct = [1, 1, 1, 0, 1, 0, 0, 0]
    assert expected_calibration_error(np.array(conf), np.array(correct)) == pytest.approx(0.25)


def test_ece_constant_confidence_and_bins_edges():
    conf = np.full(1000, 0.7)
    correct = np.r_[np.ones(600), np.zeros(400)]
    assert expected_calibration_error(conf, correct) == pytest.approx(0.1)
    # (lo, hi]: 1/15 belongs to bin 0, a hair above it to bin 1; 0 goes to bin 0; 1.0 to the last bin
    b = ece_bins(np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 1.0]), np.array([0, 1, 1, 1]))
    assert b[:, 0].tolist()[:2] == [2, 1] and b[14, 0] == 1


def test_ece_brute_force_and_additive():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 500)
    correct = (rng.uniform(0, 1, 500) < conf ** 2).astype(float)
    ece = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.sum() / len(conf) * abs(correct[m].mean() - conf[m].mean())
    assert expected_calibration_error(conf, correct) == pytest.approx(ece, rel=1e-12)
    parts = ece_bins(conf[:200], correct[:200]) + ece_bins(conf[200:], correct[200:])
    assert ece_from_bins(parts) == pytest.approx(ece, rel=1e-12)
    calibrated = (rng.uniform(0, 1, 200_000) < (c := rng.uniform(0, 1, 200_000))).astype(float)
    assert expected_calibration_error(c, calibrated) < 0.01


def test_nll_perplexity_kl_js_agreement_vs_loops():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 7, generator=g)
    t = torch.randn(2, 5, 7, generator=g) * 2
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[0, :2] = -100
    mask = labels != -100
    nll = kl = js = 0.0
    agree = n = 0
    for i in range(2):
        for j in range(5):
            if labels[i, j] == -100:
                continue
            p, q = _softmax(t[i, j].numpy().astype(np.float64)), _softmax(s[i, j].numpy().astype(np.float64))
            nll -= math.log(q[labels[i, j]])
            kl += float(np.sum(p * np.log(p / q)))
            m = (p + q) / 2
            js += 0.5 * float(np.sum(p * np.log(p / m))) + 0.5 * float(np.sum(q * np.log(q / m)))
            agree += int(p.argmax() == q.argmax())
            n += 1
    assert token_nll(s, labels) == (pytest.approx(nll, rel=1e-5), n)
    assert perplexity(s, labels) == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert token_kl(t, s, mask)[0] == pytest.approx(kl, rel=1e-5)
    assert token_js(t, s, mask)[0] == pytest.approx(js, rel=1e-5)
    assert top1_agreement(t, s, mask) == (agree, n)
    assert token_kl(t, t, mask)[0] == pytest.approx(0.0, abs=1e-5)
    assert js / n <= math.log(2)


def test_accumulator_equals_one_shot_and_slices_padded_vocab():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 6, 9, generator=g)
    t = torch.randn(4, 6, 11, generator=g)  # teacher has 2 padded rows
    labels = torch.randint(0, 9, (4, 6), generator=g)
    labels[1, 3:] = -100
    acc = LMEvalAccumulator()
    acc.add(s[:2], labels[:2], t[:2])
    acc.add(s[2:], labels[2:], t[2:])
    r = acc.result()
    mask = labels != -100
    kl, n = token_kl(t[..., :9], s, mask)
    assert r["kl_teacher_student"] == pytest.approx(kl / n, rel=1e-5)
    assert r["student"]["ppl"] == pytest.approx(perplexity(s, labels), rel=1e-5)
    assert r["teacher"]["ppl"] == pytest.approx(perplexity(t[..., :9], labels), rel=1e-5)
    assert r["tokens"] == n


def test_retention_and_gap_closed():
    assert performance_retention(0.6, 0.8) == pytest.approx(0.75)
    assert performance_retention(10.0, 8.0, higher_is_better=False) == pytest.approx(0.8)
    assert gap_closed(student=2.067, baseline=2.200, teacher=1.959) == pytest.approx(0.5519, abs=1e-3)
    assert gap_closed(student=0.7, baseline=0.6, teacher=0.8, higher_is_better=True) == pytest.approx(0.5)


def test_param_count_counts_tied_weights_once():
    lin = torch.nn.Linear(4, 3, bias=False)
    m = torch.nn.Module()
    m.a, m.b = lin, torch.nn.Embedding(3, 4)
    m.b.weight = lin.weight
    assert param_count(m) == 12
