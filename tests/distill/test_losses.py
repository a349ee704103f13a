"""KD losses against direct float64 reference computations (explicit sums of p*log(p/q))."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
from torch.utils.checkpoint import checkpoint  # noqa: E402

from curate.distill.losses import (  # noqa: E402
    LABEL_PREFIX,
    LOSSES,
    RATIONALE_PREFIX,
    bild_loss,
    compute_kd_loss,
    forward_kl,
    generalized_jsd,
    hinton_kd,
    rationale_loss,
    rationale_pairs,
    reverse_kl,
    select_valid,
    skew_kl,
    skew_reverse_kl,
    token_ce,
)
from curate.models.topk import TopK  # noqa: E402

Teacher = torch.Tensor | TopK

N, V = 6, 11


def _logits(seed: int, n: int = N, v: int = V, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g, dtype=torch.float64) * scale)


def _np_softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = z / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ref_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Explicit sum_v p log(p/q), 0 log 0 = 0."""
    out = np.zeros(p.shape[0])
    for i in range(p.shape[0]):
        for v in range(p.shape[1]):
            if p[i, v] > 0:
                out[i] += p[i, v] * math.log(p[i, v] / q[i, v])
    return out


@pytest.fixture
def pair():
    return _logits(0), _logits(1)


# ----------------------------------------------------------------------------------------------- references
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
def test_forward_reverse_kl_match_reference(pair, temperature):
    s, t = pair
    p, q = _np_softmax(t.numpy(), temperature), _np_softmax(s.numpy(), temperature)
    np.testing.assert_allclose(forward_kl(s, t, temperature).numpy(), _ref_kl(p, q), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(reverse_kl(s, t, temperature).numpy(), _ref_kl(q, p), rtol=1e-10, atol=1e-12)


def test_kl_zero_iff_equal_and_nonnegative(pair):
    s, t = pair
    assert torch.allclose(forward_kl(t, t), torch.zeros(N, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(reverse_kl(s + 3.0, s), torch.zeros(N, dtype=torch.float64), atol=1e-12)
    for fn in (forward_kl, reverse_kl, generalized_jsd, skew_kl, skew_reverse_kl):
        assert (fn(s, t) > 0).all()


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_matches_reference(pair, beta):
    s, t = pair
    p, q = _np_softmax(t.numpy()), _np_softmax(s.numpy())
    m = beta * p + (1 - beta) * q
    ref = beta * _ref_kl(p, m) + (1 - beta) * _ref_kl(q, m)
    np.testing.assert_allclose(generalized_jsd(s, t, beta=beta).numpy(), ref, rtol=1e-10)


def _trl_generalized_jsd(student_logits, teacher_logits, beta, temperature=1.0):
    """TRL GKDTrainer.generalized_jsd_loss (reduction='none', summed over the vocab), via F.kl_div."""
    s = F.log_softmax(student_logits / temperature, -1)
    t = F.log_softmax(teacher_logits / temperature, -1)
    if beta == 0:
        return F.kl_div(s, t, reduction="none", log_target=True).sum(-1)
    if beta == 1:
        return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)
    b = torch.tensor(beta, dtype=s.dtype)
    m = torch.logsumexp(torch.stack([s + torch.log1p(-b), t + torch.log(b)]), dim=0)
    return (b * F.kl_div(m, t, reduction="none", log_target=True)
            + (1 - b) * F.kl_div(m, s, reduction="none", log_target=True)).sum(-1)


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_generalized_jsd_equals_trl_definition(pair, beta, temperature):
    s, t = pair
    ours = generalized_jsd(s, t, beta=beta, temperature=temperature)
    assert torch.allclose(ours, _trl_generalized_jsd(s, t, beta, temperature), rtol=1e-10, atol=1e-12)


def test_jsd_limits_symmetry_and_bound(pair):
    s, t = pair
    assert torch.allclose(generalized_jsd(s, t, beta=0.0), forward_kl(s, t))
    assert torch.allclose(generalized_jsd(s, t, beta=1.0), reverse_kl(s, t))
    # beta -> 0+: JSD_beta ~ beta * KL(p_T || p_S) (the scale discontinuity at beta = 0)
    b = 1e-5
    assert torch.allclose(generalized_jsd(s, t, beta=b) / b, forward_kl(s, t), rtol=1e-3)
    assert torch.allclose(generalized_jsd(s, t, beta=1 - b) / b, reverse_kl(s, t), rtol=1e-3)
    # beta = 0.5 is symmetric and bounded by ln 2 (also for near-disjoint distributions)
    assert torch.allclose(generalized_jsd(s, t, beta=0.5), generalized_jsd(t, s, beta=0.5), atol=1e-12)
    far = generalized_jsd(s * 40, -s * 40, beta=0.5)
    assert (far <= math.log(2) + 1e-9).all() and (far > 0.6).any()


@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_skew_kl_matches_reference_and_limits(pair, alpha):
    s, t = pair
    p, q = _np_softmax(t.numpy()), _np_softmax(s.numpy())
    np.testing.assert_allclose(skew_kl(s, t, alpha).numpy(), _ref_kl(p, alpha * p + (1 - alpha) * q), rtol=1e-10)
    np.testing.assert_allclose(skew_reverse_kl(s, t, alpha).numpy(),
                               _ref_kl(q, (1 - alpha) * p + alpha * q), rtol=1e-10)
    assert torch.allclose(skew_kl(s, t, 0.0), forward_kl(s, t))
    assert torch.allclose(skew_reverse_kl(s, t, 0.0), reverse_kl(s, t))
    assert torch.allclose(skew_kl(s, t, 1.0), torch.zeros(N, dtype=torch.float64))
    assert torch.allclose(skew_reverse_kl(s, t, 1.0), torch.zeros(N, dtype=torch.float64))
    # skewing towards the teacher shrinks the divergence (KL is convex in its second argument)
    assert (skew_kl(s, t, alpha) < forward_kl(s, t)).all()


def _ref_bild(zs: np.ndarray, zt: np.ndarray, top_k: int, temp: float) -> np.ndarray:
    def ld(sel_s, sel_t):
        ds = np.array([sel_s[i] - sel_s[j] for i, j in itertools.combinations(range(top_k), 2)]) / temp
        dt = np.array([sel_t[i] - sel_t[j] for i, j in itertools.combinations(range(top_k), 2)]) / temp
        return _ref_kl(_np_softmax(dt[None]), _np_softmax(ds[None]))[0]

    out = np.zeros(zs.shape[0])
    for r in range(zs.shape[0]):
        ti = np.argsort(-zt[r], kind="stable")[:top_k]
        si = np.argsort(-zs[r], kind="stable")[:top_k]
        out[r] = ld(zs[r, ti], zt[r, ti]) + ld(zs[r, si], zt[r, si])
    return out


def test_bild_matches_reference_and_invariances(pair):
    s, t = pair
    ref = _ref_bild(s.numpy(), t.numpy(), top_k=4, temp=3.0)
    np.testing.assert_allclose(bild_loss(s, t, top_k=4, temperature=3.0).numpy(), ref, rtol=1e-10)
    # 28 pairs at the reference default top_k=8
    ref8 = _ref_bild(s.numpy(), t.numpy(), top_k=8, temp=3.0)
    np.testing.assert_allclose(bild_loss(s, t).numpy(), ref8, rtol=1e-10)
    # invariant to a per-row logit shift; zero when z_S = z_T + c
    c = torch.linspace(-5, 5, N, dtype=torch.float64)[:, None]
    assert torch.allclose(bild_loss(s + c, t - 2 * c), bild_loss(s, t), atol=1e-12)
    assert torch.allclose(bild_loss(t + c, t), torch.zeros(N, dtype=torch.float64), atol=1e-12)
    both = bild_loss(s, t, parts="ts")
    assert torch.allclose(both, bild_loss(s, t, parts="t") + bild_loss(s, t, parts="s"))


def test_hinton_kd_reference_and_t2_scaling(pair):
    s, t = pair
    labels = torch.tensor([0, 3, 10, 5, 5, 1])
    alpha, temp = 0.3, 2.0
    p, q = _np_softmax(t.numpy(), temp), _np_softmax(s.numpy(), temp)
    q1 = _np_softmax(s.numpy())
    ce = -np.log(q1[np.arange(N), labels.numpy()])
    ref = alpha * ce + (1 - alpha) * temp**2 * _ref_kl(p, q)
    np.testing.assert_allclose(hinton_kd(s, t, labels, alpha, temp).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(token_ce(s, labels).numpy(), ce, rtol=1e-12)
    # alpha = 1 is pure CE; alpha = 0 is T^2 * KL
    assert torch.allclose(hinton_kd(s, t, labels, 1.0, temp), token_ce(s, labels))
    assert torch.allclose(hinton_kd(s, t, labels, 0.0, temp), temp**2 * forward_kl(s, t, temp))


def test_t2_scaled_kl_high_temperature_limit():
    """tau^2 KL(p_T^tau || p_S^tau) -> (1/2V) sum (D - mean D)^2, D = z_T - z_S (logit matching)."""
    v = 50
    s, t = _logits(3, n=1, v=v), _logits(4, n=1, v=v)
    d = (t - s)[0]
    limit = float(((d - d.mean()) ** 2).sum() / (2 * v))
    labels = torch.tensor([0])
    vals = [float(hinton_kd(s, t, labels, 0.0, tau)[0]) for tau in (10.0, 100.0, 1000.0)]
    errs = [abs(x - limit) for x in vals]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] / limit < 1e-3


def test_token_ce_ignore_index():
    s = _logits(5)
    labels = torch.tensor([1, -100, 2, -100, 0, 4])
    ce = token_ce(s, labels)
    assert (ce[labels == -100] == 0).all()
    ref = F.cross_entropy(s[labels != -100], labels[labels != -100], reduction="none")
    assert torch.allclose(ce[labels != -100], ref)


def test_rationale_loss_and_prefixes():
    assert rationale_loss(2.0, 4.0, 0.5) == pytest.approx(3.0)
    assert rationale_loss(2.0, 4.0, 1.0) == pytest.approx(2.0)
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0])
    assert torch.allclose(rationale_loss(a, b, 0.25), 0.25 * a + 0.75 * b)
    with pytest.raises(ValueError):
        rationale_loss(1.0, 1.0, 1.5)
    (p1, y1), (p2, y2) = rationale_pairs("2+2?", "4", "two plus two is four")
    assert p1 == LABEL_PREFIX + "2+2?" and y1 == "4"
    assert p2 == RATIONALE_PREFIX + "2+2?" and y2 == "two plus two is four"
    assert LABEL_PREFIX.strip() == "[label]" and RATIONALE_PREFIX.strip() == "[rationale]"


# ----------------------------------------------------------------------------------------------- masks
def test_select_valid_shift_and_padding_invariance():
    g = torch.Generator().manual_seed(7)
    b, t = 3, 5
    s = torch.randn(b, t, V, generator=g, dtype=torch.float64)
    te = torch.randn(b, t, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (b, t), generator=g)
    labels[0, :2] = -100  # prompt
    labels[2, 3:] = -100  # padding
    rows, lab = select_valid(s, labels)
    trows, _ = select_valid(te, labels)
    expect = [(i, j) for i in range(b) for j in range(t - 1) if labels[i, j + 1] != -100]
    assert rows.shape == (len(expect), V)
    for r, (i, j) in enumerate(expect):
        assert torch.equal(rows[r], s[i, j]) and lab[r] == labels[i, j + 1]
    base = forward_kl(rows, trows).sum()
    # padding positions with arbitrary logits change nothing
    s2 = torch.cat([s, torch.randn(b, 4, V, generator=g, dtype=torch.float64) * 9], 1)
    te2 = torch.cat([te, torch.randn(b, 4, V, generator=g, dtype=torch.float64)], 1)
    labels2 = torch.cat([labels, torch.full((b, 4), -100)], 1)
    r2, _ = select_valid(s2, labels2)
    t2, _ = select_valid(te2, labels2)
    assert torch.allclose(forward_kl(r2, t2).sum(), base)
    # TopK rows select the same positions
    tk_rows, _ = select_valid(TopK.from_logits(te, V), labels)
    assert torch.allclose(forward_kl(rows, tk_rows), forward_kl(rows, trows))


def test_global_token_normalisation_independent_of_microbatch_split():
    """Sum of per-token losses over micro-batches / global valid count == full-batch token mean."""
    g = torch.Generator().manual_seed(11)
    s = torch.randn(4, 6, V, generator=g, dtype=torch.float64)
    te = torch.randn(4, 6, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (4, 6), generator=g)
    labels[0, 1:] = -100  # micro-batch 0 has no valid tokens, micro-batch 1 has many
    full_rows, _ = select_valid(s, labels)
    full_t, _ = select_valid(te, labels)
    full = forward_kl(full_rows, full_t).mean()
    n_valid = int((labels[:, 1:] != -100).sum())
    acc = 0.0
    for sl in (slice(0, 1), slice(1, 4)):
        r, _ = select_valid(s[sl], labels[sl])
        tr, _ = select_valid(te[sl], labels[sl])
        acc = acc + forward_kl(r, tr).sum() / n_valid
    assert torch.allclose(acc, full)


# ----------------------------------------------------------------------------------------------- top-k teachers
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "skew_reverse_kl", "bild"])
def test_topk_with_k_equal_v_equals_full_vocab(pair, name, temperature):
    s, t = pair
    fn = LOSSES[name]
    full = fn(s, t, temperature=temperature)
    sparse = fn(s, TopK.from_logits(t, V), temperature=temperature)
    assert torch.allclose(full, sparse, rtol=1e-10, atol=1e-12)
    labels = torch.arange(N) % V
    assert torch.allclose(hinton_kd(s, t, labels, 0.5, temperature),
                          hinton_kd(s, TopK.from_logits(t, V), labels, 0.5, temperature))


def test_topk_tail_mass_and_bucket_definition(pair):
    s, t = pair
    k = 4
    tk = TopK.from_logits(t, k)
    p = _np_softmax(t.numpy())
    order = np.argsort(-p, axis=1)[:, :k]
    np.testing.assert_array_equal(tk.ids.numpy(), order)
    np.testing.assert_allclose(tk.logprobs.exp().numpy(), np.take_along_axis(p, order, 1), rtol=1e-12)
    np.testing.assert_allclose(tk.tail_logmass.exp().numpy(), 1 - np.take_along_axis(p, order, 1).sum(1),
                               rtol=1e-10)
    # at T=1 the loss is the KL of the (k ids + rest) coarsenings, computed here explicitly
    q = _np_softmax(s.numpy())
    pb = np.concatenate([np.take_along_axis(p, order, 1), 1 - np.take_along_axis(p, order, 1).sum(1, keepdims=True)], 1)
    qb = np.concatenate([np.take_along_axis(q, order, 1), 1 - np.take_along_axis(q, order, 1).sum(1, keepdims=True)], 1)
    np.testing.assert_allclose(forward_kl(s, tk).numpy(), _ref_kl(pb, qb), rtol=1e-9)
    np.testing.assert_allclose(reverse_kl(s, tk).numpy(), _ref_kl(qb, pb), rtol=1e-9)
    m = 0.5 * pb + 0.5 * qb
    np.testing.assert_allclose(generalized_jsd(s, tk, 0.5).numpy(), 0.5 * _ref_kl(pb, m) + 0.5 * _ref_kl(qb, m),
                               rtol=1e-9)
    # coarsening never increases a divergence (data-processing inequality); the tail bucket matters
    assert (forward_kl(s, tk) <= forward_kl(s, t) + 1e-12).all()
    no_tail = TopK(tk.ids, tk.logprobs, torch.full_like(tk.tail_logmass, -30.0))
    assert not torch.allclose(forward_kl(s, no_tail), forward_kl(s, tk))


def test_topk_tempered_tail_uniform_assumption_exact_for_uniform_tail():
    """At T != 1 the rest bucket assumes a uniform tail; exact when the teacher's tail really is uniform."""
    v, k = 9, 3
    t = torch.tensor([[4.0, 3.0, 2.5] + [0.0] * (v - k)], dtype=torch.float64)
    s = _logits(8, n=1, v=v)
    for temp in (0.5, 2.0, 4.0):
        tk = TopK.from_logits(t, k)
        pt = _np_softmax(t.numpy(), temp)
        qt = _np_softmax(s.numpy(), temp)
        ids = tk.ids.numpy()
        pb = np.concatenate([np.take_along_axis(pt, ids, 1), 1 - np.take_along_axis(pt, ids, 1).sum(1, keepdims=True)], 1)
        qb = np.concatenate([np.take_along_axis(qt, ids, 1), 1 - np.take_along_axis(qt, ids, 1).sum(1, keepdims=True)], 1)
        np.testing.assert_allclose(forward_kl(s, tk, temp).numpy(), _ref_kl(pb, qb), rtol=1e-9)


def test_bild_topk_teacher(pair):
    s, t = pair
    tk = TopK.from_logits(t, 5)
    assert torch.allclose(bild_loss(s, tk, top_k=4, parts="t"), bild_loss(s, t, top_k=4, parts="t"))
    with pytest.raises(ValueError, match="s-LD"):
        bild_loss(s, tk, top_k=4)
    with pytest.raises(ValueError, match="k >= 8"):
        bild_loss(s, tk, top_k=8, parts="t")


def test_errors():
    s = _logits(0)
    with pytest.raises(ValueError, match="vocabularies 11 vs 12"):
        forward_kl(s, _logits(1, v=12))
    with pytest.raises(ValueError, match="unknown KD loss"):
        compute_kd_loss("nope", s, s)
    with pytest.raises(ValueError, match="needs labels"):
        compute_kd_loss("hinton", s, s)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, s, beta=1.5)


def test_compute_kd_loss_registry(pair):
    s, t = pair
    labels = torch.arange(N)
    assert torch.allclose(compute_kd_loss("fkl", s, t), forward_kl(s, t))
    assert torch.allclose(compute_kd_loss("jsd", s, t, beta=0.3), generalized_jsd(s, t, beta=0.3))
    assert torch.allclose(compute_kd_loss("hinton", s, t, labels=labels, alpha=0.2, temperature=3.0),
                          hinton_kd(s, t, labels, 0.2, 3.0))
    assert torch.allclose(compute_kd_loss("ce", s, labels=labels), token_ce(s, labels))
    assert set(LOSSES) >= {"forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "skew_reverse_kl", "bild",
                           "hinton", "ce"}


# ----------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "fn",
    [
        lambda s, t: forward_kl(s, t, 1.5),
        lambda s, t: reverse_kl(s, t, 1.5),
        lambda s, t: generalized_jsd(s, t, 0.3),
        lambda s, t: skew_kl(s, t, 0.1),
        lambda s, t: skew_reverse_kl(s, t, 0.1),
        lambda s, t: bild_loss(s, t, top_k=4),
        lambda s, t: forward_kl(s, TopK.from_logits(t, 4), 2.0),
        lambda s, t: reverse_kl(s, TopK.from_logits(t, 4)),
        lambda s, t: generalized_jsd(s, TopK.from_logits(t, V), 0.5),
    ],
    ids=["fkl", "rkl", "jsd", "skl", "srkl", "bild", "fkl_topk", "rkl_topk", "jsd_topk_kV"],
)
def test_gradcheck(pair, fn):
    s, t = pair
    s = s[:3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fn(x, t[:3]), (s,), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------- chunking
# The reference for chunked KD (moved here from curate.distill.losses: the trainer chunks with detached hidden
# states and closed-form gradients instead; this activation-checkpointed version is the obvious way).
def _slice_teacher(teacher: Any, a: int, b: int) -> Any:
    if teacher is None:
        return None
    return teacher[a:b]


def chunked_loss(
    fn: Callable[..., torch.Tensor],
    student_hidden_or_logits: torch.Tensor,
    teacher: Teacher | None = None,
    *,
    labels: torch.Tensor | None = None,
    lm_head_weight: torch.Tensor | None = None,
    lm_head_bias: torch.Tensor | None = None,
    teacher_lm_head_weight: torch.Tensor | None = None,
    teacher_lm_head_bias: torch.Tensor | None = None,
    vocab_size: int | None = None,
    chunk_tokens: int = 1024,
    **kw: Any,
) -> torch.Tensor:
    """Apply a per-row loss ``fn`` over chunks of ``chunk_tokens`` rows; returns ``Tensor[N]``.

    * ``lm_head_weight`` given: the first argument is student hidden states ``[N, H]`` and each chunk's
      logits are ``hidden @ W.T (+ b)``, built inside an activation checkpoint -- autograd keeps only the
      chunk's hidden states and recomputes its logits in backward, one chunk at a time, so peak memory is
      ``chunk_tokens x V`` instead of ``N x V``. Gradients flow to the hidden states, W and b. Given
      logits instead, chunks are still checkpointed so the loss's own ``[chunk, V]`` intermediates
      (log-softmaxes, mixtures) are not all kept for backward.
    * ``teacher_lm_head_weight`` given: ``teacher`` is teacher hidden states ``[N, Ht]`` and its logits are
      made per chunk without grad. Otherwise ``teacher`` is logits ``[N, V]``, a ``TopK`` or None.
    * ``vocab_size``: slice logits to the first ``vocab_size`` columns (padded embedding rows).
    * ``labels`` (if given) is passed to ``fn`` as ``labels=`` per chunk; other ``kw`` pass through.

    ``fn`` is called as ``fn(student_logits, teacher_chunk, **kw)`` (or ``fn(student_logits, **kw)`` when
    ``teacher`` is None), e.g. ``chunked_loss(forward_kl, h, t_logits, lm_head_weight=W)``.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    n = student_hidden_or_logits.shape[0]

    def one(a: int, b: int, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        if lm_head_weight is not None:
            w = params[0]
            bias = params[1] if len(params) > 1 else None
            x = F.linear(x, w, bias)
        if vocab_size is not None:
            x = x[:, :vocab_size]
        t = _slice_teacher(teacher, a, b)
        if teacher_lm_head_weight is not None and t is not None:
            with torch.no_grad():
                t = F.linear(t, teacher_lm_head_weight, teacher_lm_head_bias)
                if vocab_size is not None:
                    t = t[:, :vocab_size]
        kwargs = dict(kw)
        if labels is not None:
            kwargs["labels"] = labels[a:b]
        return fn(x, **kwargs) if t is None else fn(x, t, **kwargs)

    params: tuple[torch.Tensor, ...] = ()
    if lm_head_weight is not None:
        params = (lm_head_weight,) if lm_head_bias is None else (lm_head_weight, lm_head_bias)
    need_grad = torch.is_grad_enabled() and (
        student_hidden_or_logits.requires_grad or any(p.requires_grad for p in params)
    )
    outs = []
    for a in range(0, n, chunk_tokens):
        b = min(a + chunk_tokens, n)
        x = student_hidden_or_logits[a:b]
        if need_grad:
            outs.append(checkpoint(one, a, b, x, *params, use_reentrant=False))
        else:
            outs.append(one(a, b, x, *params))
    if not outs:
        return student_hidden_or_logits.new_zeros(0)
    return torch.cat(outs)


@pytest.mark.parametrize("teacher_kind", ["logits", "topk", "hidden"])
def test_chunked_equals_unchunked_values_and_grads(teacher_kind):
    g = torch.Generator().manual_seed(3)
    n, h, v = 23, 8, 17
    hid = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, generator=g, dtype=torch.float64, requires_grad=True)
    th = torch.randn(n, 6, generator=g, dtype=torch.float64)
    tw = torch.randn(v, 6, generator=g, dtype=torch.float64)
    tl = th @ tw.T
    labels = torch.randint(0, v, (n,), generator=g)
    teacher = {"logits": tl, "topk": TopK.from_logits(tl, 5), "hidden": th}[teacher_kind]
    extra = {"teacher_lm_head_weight": tw} if teacher_kind == "hidden" else {}
    for fn, kw in ((generalized_jsd, {"beta": 0.4, "temperature": 1.3}),
                   (lambda s, t, labels: hinton_kd(s, t, labels, 0.5, 2.0), {"labels": labels})):
        ref = fn(F.linear(hid, w, bias), tl if teacher_kind != "topk" else teacher, **kw)
        ref_grads = torch.autograd.grad((ref * torch.arange(n)).sum(), (hid, w, bias))
        out = chunked_loss(fn, hid, teacher, lm_head_weight=w, lm_head_bias=bias, chunk_tokens=5, **extra, **kw)
        assert out.shape == (n,)
        assert torch.allclose(out, ref, rtol=1e-12)
        grads = torch.autograd.grad((out * torch.arange(n)).sum(), (hid, w, bias))
        for a, b in zip(grads, ref_grads):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_chunked_on_logits_and_vocab_slice():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(10, 14, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(10, 12, generator=g, dtype=torch.float64)
    out = chunked_loss(forward_kl, s, t, vocab_size=12, chunk_tokens=3)
    ref = forward_kl(s[:, :12], t)
    assert torch.allclose(out, ref)
    (ga,) = torch.autograd.grad(out.sum(), s)
    (gb,) = torch.autograd.grad(ref.sum(), s)
    assert torch.allclose(ga, gb) and (ga[:, 12:] == 0).all()
    with torch.no_grad():
        assert torch.allclose(chunked_loss(forward_kl, s, t, vocab_size=12, chunk_tokens=4), ref)


def test_chunked_peak_memory_bounded():
    """Autograd saves only the chunk inputs (hidden states), never N x V logits."""
    n, h, v = 512, 16, 4096
    g = torch.Generator().manual_seed(0)
    hid = torch.randn(n, h, generator=g, requires_grad=True)
    w = torch.randn(v, h, generator=g, requires_grad=True)
    t = TopK.from_logits(torch.randn(n, v, generator=g), 8)
    saved: list[int] = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = chunked_loss(forward_kl, hid, t, lm_head_weight=w, chunk_tokens=64)
    assert max(saved) < n * v // 4  # the unchunked graph would save several [n, v] tensors
    out.sum().backward()
    assert hid.grad is not None and w.grad is not None


def test_teacher_with_minus_inf_logits(pair):
    """Masked teacher vocab entries (-inf logits, p = 0) take the 0*log0 = 0 path with finite gradients."""
    s, t = pair
    t = t.clone()
    t[:, :3] = float("-inf")
    p, q = _np_softmax(np.where(np.isinf(t.numpy()), -1e300, t.numpy())), _np_softmax(s.numpy())
    s = s.clone().requires_grad_(True)
    fkl = forward_kl(s, t)
    np.testing.assert_allclose(fkl.detach().numpy(), _ref_kl(p, q), rtol=1e-10)
    jsd = generalized_jsd(s, t, 0.5)
    m = 0.5 * p + 0.5 * q
    np.testing.assert_allclose(jsd.detach().numpy(), 0.5 * _ref_kl(p, m) + 0.5 * _ref_kl(q, m), rtol=1e-10)
    (g,) = torch.autograd.grad((fkl + jsd).sum(), s)
    assert torch.isfinite(g).all()
    assert torch.isinf(reverse_kl(s, t)).all()  # KL(q || p) is infinite where p = 0 < q


def test_half_precision_inputs_are_upcast(pair):
    s, t = pair
    for dt in (torch.bfloat16, torch.float16):
        sl, tl = s.to(dt), t.to(dt)
        out = generalized_jsd(sl, tl, 0.5)
        assert out.dtype == torch.float32
        assert torch.allclose(out.double(), generalized_jsd(sl.double(), tl.double(), 0.5), atol=1e-6)
        tk = TopK.from_logits(tl, 4)
        assert tk.logprobs.dtype == torch.float32 and torch.isfinite(forward_kl(sl, tk)).all()
