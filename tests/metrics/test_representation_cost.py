"""Embedding/representation metrics against brute force and closed forms; FLOPs against published counts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from curate.metrics.cost import (
    forward_flops_per_token,
    latency_per_query,
    non_embedding_params,
    training_flops,
)
from curate.metrics.representation import embedding_diversity, linear_cka, mauve


def test_embedding_diversity_equals_pairwise_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u @ u.T
    brute = 1 - (sims.sum() - np.trace(sims)) / (50 * 49)
    assert embedding_diversity(x) == pytest.approx(brute, abs=1e-12)
    assert embedding_diversity(np.ones((4, 3))) == pytest.approx(0.0, abs=1e-12)


def _gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019 Eq. 1-2: HSIC with linear kernels and the centring matrix H."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_equals_the_gram_form_and_is_invariant():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 12))
    y = x @ rng.normal(size=(12, 7)) + 0.5 * rng.normal(size=(40, 7))
    assert linear_cka(x, y) == pytest.approx(_gram_cka(x, y), abs=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-10)  # rotation + isotropic scaling
    assert linear_cka(x, rng.normal(size=(40, 12))) < 0.5
    with pytest.raises(ValueError):
        linear_cka(x, y[:5])


def test_mauve_separates_shifted_distributions():
    pytest.importorskip("mauve")
    rng = np.random.default_rng(2)
    p = rng.normal(size=(300, 8))
    q_same = rng.normal(size=(300, 8))
    q_far = rng.normal(loc=2.0, size=(300, 8))
    same, far = mauve(p, q_same), mauve(p, q_far)
    assert same > 0.9 and far < 0.3 and same > far


def test_flops_reproduce_gpt3_and_smollm2_parameter_count():
    # Brown et al. 2020 Table D.1: GPT-3 175B, 300B tokens -> 3.14e23 training FLOPs
    assert training_flops(175_000_000_000, 300_000_000_000) == pytest.approx(3.14e23, rel=0.01)
    assert forward_flops_per_token(10, n_layer=2, n_ctx=3, d_attn=4) == 2 * 10 + 2 * 2 * 3 * 4
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    # SmolLM2-135M's shape (grouped-query attention, gated MLP): the estimate counts every weight matrix
    cfg = transformers.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=3,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=64)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    matrices = sum(p.numel() for n, p in model.model.layers.named_parameters() if p.dim() == 2)
    assert non_embedding_params(cfg) == matrices


def test_latency_per_query_times_each_call():
    out = latency_per_query(lambda q: time.sleep(q), [0.01, 0.01, 0.02], warmup=1)
    assert out["queries"] == 3 and out["mean_s"] >= 0.0125 and out["p90_s"] >= out["p50_s"]
