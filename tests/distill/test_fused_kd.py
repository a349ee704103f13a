"""The trainer's fused KD paths (closed-form gradients, reused buffers) equal the reference losses of
curate.distill.losses in value and gradient, for full-vocabulary and top-k (k < V) teachers."""

from __future__ import annotations

import pytest
import torch

from curate.distill import losses as L
from curate.distill.fused import fused_kd as _fused_kd
from curate.models.topk import TopK

EXTRA = {"generalized_jsd": {"beta": 0.5}, "skew_kl": {"alpha": 0.1}, "skew_reverse_kl": {"alpha": 0.1}}


def _compare(name: str, teacher, temperature: float, use_buffers: bool, n: int = 12, v: int = 97) -> None:
    g = torch.Generator().manual_seed(hash((name, temperature)) % 2**31)
    s0 = torch.randn(n, v, generator=g, dtype=torch.float64) * 3
    kw = {**EXTRA.get(name, {}), "temperature": temperature}
    s_ref = s0.clone().requires_grad_(True)
    ref = L.compute_kd_loss(name, s_ref, teacher, **kw)
    (ref * torch.linspace(0.5, 1.5, n, dtype=torch.float64)).sum().backward()
    bufs: dict[str, torch.Tensor] = {}

    def ws(key: str) -> torch.Tensor:
        return bufs.setdefault(key, torch.empty(n, v, dtype=torch.float64))

    s_new = s0.clone().requires_grad_(True)
    got = _fused_kd(name, s_new, teacher, kw, ws if use_buffers else None)
    assert got is not None, "the fused path should handle this case"
    (got * torch.linspace(0.5, 1.5, n, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s_new.grad, s_ref.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("use_buffers", [False, True])
@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "skew_reverse_kl"])
def test_topk_fast_path_equals_reference(name, temperature, use_buffers):
    t_logits = torch.randn(12, 97, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 3
    _compare(name, TopK.from_logits(t_logits, 8), temperature, use_buffers)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("use_buffers", [False, True])
def test_full_vocab_forward_kl_fast_path_equals_reference(temperature, use_buffers):
    t_logits = torch.randn(12, 97, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    _compare("forward_kl", t_logits, temperature, use_buffers)


def test_cases_outside_the_fast_paths_fall_back():
    s = torch.randn(4, 10, dtype=torch.float64)
    t = torch.randn(4, 10, dtype=torch.float64)
    assert _fused_kd("reverse_kl", s, t, {"temperature": 1.0}) is None  # full-vocab reverse KL
    assert _fused_kd("bild", s, TopK.from_logits(t, 3), {"temperature": 1.0, "top_k": 3}) is None
    t_inf = t.clone()
    t_inf[0, 0] = float("-inf")
    assert _fused_kd("forward_kl", s, t_inf, {"temperature": 1.0}) is None
