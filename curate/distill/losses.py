"""Knowledge-distillation losses, per token and unreduced.

Every loss takes flattened *valid* rows -- student logits ``[N, V]`` and a teacher given either as full
logits ``[N, V]`` or as a :class:`TopK` (top-k teacher log-probs at T=1, their ids and the tail log-mass) --
and returns ``Tensor[N]``. The trainer sums over the whole accumulated batch and divides by the *global*
number of valid tokens (TRL issue #4719: per-micro-batch means are wrong under gradient accumulation).
Use :func:`select_valid` to go from ``[B, T, V]`` + labels (``-100`` = prompt/padding) to rows.

Definitions (``p`` teacher, ``q`` student, ``p^T = softmax(z/T)``; reference sheet section 9):

* ``forward_kl``   KL(p^T || q^T) = sum_v p log(p/q)  -- the *true* KL (teacher entropy included), not the
  soft cross-entropy; no T^2 factor (only :func:`hinton_kd` applies T^2).
* ``reverse_kl``   KL(q^T || p^T) (token-level MiniLLM / GKD beta=1).
* ``generalized_jsd`` TRL ``GKDTrainer.generalized_jsd_loss``: beta=0 -> forward KL, beta=1 -> reverse KL
  (special-cased, the interior formula tends to 0 at both ends); else with M = beta*p + (1-beta)*q:
  beta*KL(p||M) + (1-beta)*KL(q||M).
* ``skew_kl``      DistiLLM SKL_a = KL(p || a*p + (1-a)*q), a=0.1 (``distillm/losses.py``; the reference returns
  the cross-entropy, we return the KL -- same gradient).
* ``skew_reverse_kl`` DistiLLM SRKL_a = KL(q || (1-a)*p + a*q).
* ``bild_loss``    BiLD (fpcsong/BiLD ``distil_losses/BILD.py``, top_k=8, T=3): t-LD + s-LD, each the KL
  between softmaxes over the k(k-1)/2 pairwise logit differences z_i - z_j (i<j, in top-k order) of the
  teacher's (t-LD) / student's (s-LD) top-k tokens.
* ``hinton_kd``    alpha*CE(y, q^1) + (1-alpha)*T^2*KL(p^T || q^T).
* ``token_ce``     CE(y, q^1) per token (0 where the label is ``ignore_index``).
* ``rationale_loss`` distilling step-by-step: weight*L_label + (1-weight)*L_rationale, tasks marked by the
  input prefixes :data:`LABEL_PREFIX` / :data:`RATIONALE_PREFIX` (reference uses "predict: "/"explain: ").

Top-k teachers (``TopK``): every divergence is computed between the teacher's and the student's
distributions *coarsened to k+1 buckets*: the k cached ids plus one "rest" bucket. The teacher's rest mass
is ``exp(tail_logmass)``; the student's is its probability outside the k ids (exact, by logsumexp). At T=1
the teacher buckets are exact. At T != 1 the top-k bucket weights are ``exp(logprob/T)`` and the rest
bucket's tempered mass is computed assuming the tail mass is spread uniformly over the V-k remaining
tokens: ``log m_rest^T = tail/T + (1 - 1/T) * log(V - k)``; then the k+1 buckets are renormalised.
With k = V the rest bucket is empty on both sides and every loss equals its full-vocabulary value; for
k < V the bucketed KL is a lower bound of the full KL (data-processing inequality). BiLD's t-LD needs only
the teacher's top-k order and logit differences, which cached log-probs preserve (k_cache >= top_k);
its s-LD needs teacher logits at the *student's* top-k ids, so with a TopK teacher it requires k = V
(else use ``parts="t"``).

Memory: the trainer applies the lm_head and the loss over token chunks (:mod:`curate.distill.trainer`,
closed-form gradients in :mod:`curate.distill.fused`); the activation-checkpointed ``chunked_loss`` it is
checked against lives with the tests (``tests/distill/test_losses.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from curate.models.causal_lm import IGNORE
from curate.models.topk import TopK

__all__ = [
    "LABEL_PREFIX",
    "LOSSES",
    "RATIONALE_PREFIX",
    "Teacher",
    "TopK",
    "bild_loss",
    "compute_kd_loss",
    "forward_kl",
    "generalized_jsd",
    "hinton_kd",
    "rationale_loss",
    "rationale_pairs",
    "reverse_kl",
    "select_valid",
    "skew_kl",
    "skew_reverse_kl",
    "token_ce",
    "valid_mask",
]

Teacher = torch.Tensor | TopK
LABEL_PREFIX = "[label] "
RATIONALE_PREFIX = "[rationale] "


# ----------------------------------------------------------------------------------------------- masking
def valid_mask(labels: torch.Tensor, ignore_index: int = IGNORE, shift: bool = True) -> torch.Tensor:
    """Bool ``[B, T-1]`` (``[B, T]`` if not ``shift``): which positions carry a loss."""
    lab = labels[:, 1:] if shift else labels
    return lab != ignore_index


def select_valid(
    x: torch.Tensor | TopK, labels: torch.Tensor, ignore_index: int = IGNORE, shift: bool = True
) -> tuple[torch.Tensor | TopK, torch.Tensor]:
    """Flatten the valid positions of ``x`` (``[B, T, ...]`` logits / hidden states, or a ``[B, T, k]`` TopK).

    With ``shift`` (causal LM) position t of ``x`` predicts ``labels[:, t+1]``: rows are ``x[:, :-1]`` where
    ``labels[:, 1:] != ignore_index``. Returns ``(rows [N, ...], labels_rows [N])``.
    """
    mask = valid_mask(labels, ignore_index, shift)
    lab = labels[:, 1:] if shift else labels
    if isinstance(x, TopK):
        xs = x[:, :-1] if shift else x
        return TopK(xs.ids[mask], xs.logprobs[mask], xs.tail_logmass[mask]), lab[mask]
    xs = x[:, :-1] if shift else x
    return xs[mask], lab[mask]


# ----------------------------------------------------------------------------------------------- helpers
def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kl(lp: torch.Tensor, lq: torch.Tensor, safe: bool = True) -> torch.Tensor:
    """sum_v exp(lp) * (lp - lq) over the last dim.

    ``safe`` handles 0*log0 = 0 (``lp`` may hold ``-inf``/underflow, e.g. an empty top-k rest bucket) with
    finite gradients; otherwise (both finite: log-softmaxes of finite logits) one fused ``kl_div``.
    """
    if not safe:
        return F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
    zero = lp.exp() == 0
    lp0 = lp.masked_fill(zero, 0.0)
    lq0 = lq.masked_fill(zero, 0.0)
    return (lp0.exp() * (lp0 - lq0)).masked_fill(zero, 0.0).sum(-1)


def _mix(la: torch.Tensor, lb: torch.Tensor, wa: float) -> torch.Tensor:
    """log(wa * exp(la) + (1 - wa) * exp(lb)) elementwise, for 0 < wa < 1."""
    return torch.logaddexp(la + math.log(wa), lb + math.log1p(-wa))


def _check_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            f"vocabularies {student_logits.shape[-1]} vs {teacher_logits.shape[-1]} (slice padded rows first)"
        )


def _topk_buckets(
    student_logits: torch.Tensor, teacher: TopK, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned ``(log q, log p)`` over k+1 buckets (k teacher ids + rest); see the module docstring."""
    s = _upcast(student_logits)
    n, v = s.shape
    if teacher.ids.shape[0] != n:
        raise ValueError(f"{n} student rows but {teacher.ids.shape[0]} teacher top-k rows")
    k = teacher.k
    if k > v:
        raise ValueError(f"teacher top-k has k={k} > student vocabulary {v}")
    ids = teacher.ids.to(s.device).long()
    ls = _log_softmax_t(s, temperature)
    ls_k = ls.gather(-1, ids)
    # student mass outside the k ids; a finite fill keeps the gradient finite when k = V (rest is empty)
    rest_s = torch.logsumexp(ls.scatter(-1, ids, torch.finfo(ls.dtype).min), dim=-1, keepdim=True)
    lt = teacher.logprobs.to(device=s.device, dtype=s.dtype)
    tail = teacher.tail_logmass.to(device=s.device, dtype=s.dtype).unsqueeze(-1)
    if temperature != 1.0:
        lt = lt / temperature
        if k < v:
            tail = tail / temperature + (1.0 - 1.0 / temperature) * math.log(v - k)
    if k == v:
        tail = torch.full_like(tail, float("-inf"))
    lpt = torch.cat([lt, tail], dim=-1)
    lpt = lpt - torch.logsumexp(lpt, dim=-1, keepdim=True)
    return torch.cat([ls_k, rest_s], dim=-1), lpt


def _log_softmax_t(x: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(x if temperature == 1.0 else x / temperature, dim=-1)


def _aligned(
    student_logits: torch.Tensor, teacher: Teacher, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(log q^T, log p^T, safe)`` on a common support: the full vocabulary, or k+1 buckets for a TopK
    teacher. ``safe`` is False when both are finite (dense teacher without -inf logits): fused KL path."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if isinstance(teacher, TopK):
        ls, lt = _topk_buckets(student_logits, teacher, temperature)
        return ls, lt, True
    _check_vocab(student_logits, teacher)
    s = _upcast(student_logits)
    t = teacher.detach().to(device=s.device, dtype=s.dtype)
    safe = not bool(torch.isfinite(t).all())  # -inf logits (masked vocab) need the 0*log0 handling
    return _log_softmax_t(s, temperature), _log_softmax_t(t, temperature), safe


# ----------------------------------------------------------------------------------------------- divergences
def forward_kl(student_logits: torch.Tensor, teacher: Teacher, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_T^T || p_S^T) per row ``[N]`` (true KL, teacher entropy included; no T^2 factor)."""
    ls, lt, safe = _aligned(student_logits, teacher, temperature)
    return _kl(lt, ls, safe)


def reverse_kl(student_logits: torch.Tensor, teacher: Teacher, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_S^T || p_T^T) per row ``[N]``."""
    ls, lt, safe = _aligned(student_logits, teacher, temperature)
    return _kl(ls, lt, safe)


def generalized_jsd(
    student_logits: torch.Tensor, teacher: Teacher, beta: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    """TRL's generalized JSD per row: beta=0 forward KL, beta=1 reverse KL, else
    beta*KL(p_T||M) + (1-beta)*KL(p_S||M) with M = beta*p_T + (1-beta)*p_S. Bounded by ln 2 at beta=0.5."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    ls, lt, safe = _aligned(student_logits, teacher, temperature)
    if beta == 0.0:
        return _kl(lt, ls, safe)
    if beta == 1.0:
        return _kl(ls, lt, safe)
    lm = _mix(lt, ls, beta)
    return beta * _kl(lt, lm, safe) + (1.0 - beta) * _kl(ls, lm, safe)


def skew_kl(student_logits: torch.Tensor, teacher: Teacher, alpha: float = 0.1, temperature: float = 1.0) -> torch.Tensor:
    """DistiLLM skew forward KL: KL(p_T || alpha*p_T + (1-alpha)*p_S); alpha=0 is forward KL, alpha=1 is 0."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ls, lt, safe = _aligned(student_logits, teacher, temperature)
    if alpha == 0.0:
        return _kl(lt, ls, safe)
    if alpha == 1.0:
        return _kl(lt, lt, safe) + 0.0 * ls[..., 0]
    return _kl(lt, _mix(lt, ls, alpha), safe)


def skew_reverse_kl(
    student_logits: torch.Tensor, teacher: Teacher, alpha: float = 0.1, temperature: float = 1.0
) -> torch.Tensor:
    """DistiLLM skew reverse KL: KL(p_S || (1-alpha)*p_T + alpha*p_S); alpha=0 is reverse KL, alpha=1 is 0."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ls, lt, safe = _aligned(student_logits, teacher, temperature)
    if alpha == 0.0:
        return _kl(ls, lt, safe)
    if alpha == 1.0:
        return _kl(ls, ls, safe)
    return _kl(ls, _mix(ls, lt, alpha), safe)


def _pair_diffs(z: torch.Tensor) -> torch.Tensor:
    k = z.shape[-1]
    i, j = torch.triu_indices(k, k, offset=1, device=z.device)
    return z[..., i] - z[..., j]


def _ld(zs: torch.Tensor, zt: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(d_T) || softmax(d_S)) over pairwise differences of the selected (already ordered) logits."""
    dt = torch.log_softmax(_pair_diffs(zt / temperature), -1)
    ds = torch.log_softmax(_pair_diffs(zs / temperature), -1)
    return _kl(dt, ds)


def bild_loss(
    student_logits: torch.Tensor, teacher: Teacher, top_k: int = 8, temperature: float = 3.0, parts: str = "ts"
) -> torch.Tensor:
    """BiLD per row: t-LD (teacher's top-k ids) + s-LD (student's top-k ids); ``parts`` picks ``"t"``/``"s"``."""
    if not parts or set(parts) - {"t", "s"}:
        raise ValueError(f"parts must be 't', 's' or 'ts', got {parts!r}")
    s = _upcast(student_logits)
    v = s.shape[-1]
    if top_k < 2 or top_k > v:
        raise ValueError(f"top_k must be in [2, V={v}], got {top_k}")
    out = torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
    if isinstance(teacher, TopK):
        if teacher.k < top_k:
            raise ValueError(f"BiLD top_k={top_k} needs a teacher cache with k >= {top_k} (has k={teacher.k})")
        if "s" in parts and teacher.k < v:
            raise ValueError(
                "BiLD s-LD needs teacher logits at the student's top-k ids, which a top-k teacher cache "
                f"(k={teacher.k} < V={v}) does not hold; use parts='t' or an online teacher"
            )
        ids = teacher.ids.to(s.device).long()
        lt = teacher.logprobs.to(device=s.device, dtype=s.dtype)  # = logits - logZ: same differences
        if "t" in parts:
            out = out + _ld(s.gather(-1, ids[:, :top_k]), lt[:, :top_k], temperature)
        if "s" in parts:
            dense = torch.empty_like(s).scatter(-1, ids, lt)
            zs, pos = s.topk(top_k, dim=-1)
            out = out + _ld(zs, dense.gather(-1, pos), temperature)
        return out
    _check_vocab(s, teacher)
    t = teacher.detach().to(device=s.device, dtype=s.dtype)
    if "t" in parts:
        zt, pos = t.topk(top_k, dim=-1)
        out = out + _ld(s.gather(-1, pos), zt, temperature)
    if "s" in parts:
        zs, pos = s.topk(top_k, dim=-1)
        out = out + _ld(zs, t.gather(-1, pos), temperature)
    return out


# ----------------------------------------------------------------------------------------------- supervised
def token_ce(student_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Cross-entropy per row ``[N]`` at T=1 (0 where ``labels == ignore_index``)."""
    return F.cross_entropy(_upcast(student_logits), labels.to(student_logits.device).long(), reduction="none",
                           ignore_index=ignore_index)


def hinton_kd(
    student_logits: torch.Tensor,
    teacher_logits: Teacher,
    labels: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """Hinton et al.: alpha*CE(y, p_S) + (1-alpha)*T^2*KL(p_T^T || p_S^T) per row ``[N]``.

    Defaults alpha=0.5, T=2 (DistillKit README: "temperature 2.0 good first choice", CE weight ~0.5).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    kd = forward_kl(student_logits, teacher_logits, temperature)
    return alpha * token_ce(student_logits, labels) + (1.0 - alpha) * temperature**2 * kd


def rationale_loss(label_loss: Any, rationale_loss: Any, weight: float = 0.5) -> Any:
    """Distilling step-by-step (Hsieh et al. 2023, ``model_utils.py``): ``weight*L_label + (1-weight)*L_rationale``.

    ``weight`` is the reference's ``--alpha`` (0.5); the paper's ``L_label + lambda*L_rationale`` (lambda=1)
    is the same up to scale. Losses may be scalars or per-token tensors of equal shape.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    return weight * label_loss + (1.0 - weight) * rationale_loss


def rationale_pairs(source: str, label: str, rationale: str) -> list[tuple[str, str]]:
    """The two multi-task training examples for one input: ``[(LABEL_PREFIX+src, label),
    (RATIONALE_PREFIX+src, rationale)]`` (task prefixes as in distilling step-by-step)."""
    return [(LABEL_PREFIX + source, label), (RATIONALE_PREFIX + source, rationale)]


# ----------------------------------------------------------------------------------------------- registry
def _ce_entry(student_logits: torch.Tensor, teacher: Teacher | None = None, *, labels: torch.Tensor,
              **kw: Any) -> torch.Tensor:
    return token_ce(student_logits, labels, **kw)


def _hinton_entry(student_logits: torch.Tensor, teacher: Teacher, *, labels: torch.Tensor, **kw: Any) -> torch.Tensor:
    return hinton_kd(student_logits, teacher, labels, **kw)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "generalized_jsd": generalized_jsd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "bild": bild_loss,
    "hinton": _hinton_entry,
    "ce": _ce_entry,
}
"""name -> ``fn(student_logits [N,V], teacher, **kw) -> Tensor[N]``; ``hinton``/``ce`` take ``labels=``."""

ALIASES = {"fkl": "forward_kl", "kl": "forward_kl", "rkl": "reverse_kl", "jsd": "generalized_jsd",
           "gjsd": "generalized_jsd", "gkd": "generalized_jsd", "skl": "skew_kl", "srkl": "skew_reverse_kl",
           "bild_loss": "bild", "hinton_kd": "hinton", "token_ce": "ce"}
NEEDS_LABELS = frozenset({"hinton", "ce"})


def loss_name(name: str) -> str:
    """Canonical registry name for ``name`` (accepts aliases such as ``fkl``, ``rkl``, ``jsd``)."""
    key = ALIASES.get(name, name)
    if key not in LOSSES:
        raise ValueError(f"unknown KD loss {name!r}; known: {sorted(LOSSES)} (aliases: {sorted(ALIASES)})")
    return key


def compute_kd_loss(
    name: str,
    student_logits: torch.Tensor,
    teacher: Teacher | None = None,
    *,
    labels: torch.Tensor | None = None,
    **kw: Any,
) -> torch.Tensor:
    """Per-row loss ``[N]`` by registry name; ``labels`` is forwarded only to losses that use it."""
    key = loss_name(name)
    fn = LOSSES[key]
    if key in NEEDS_LABELS:
        if labels is None:
            raise ValueError(f"loss {key!r} needs labels")
        return fn(student_logits, teacher, labels=labels, **kw)
    if teacher is None:
        raise ValueError(f"loss {key!r} needs a teacher (logits or TopK)")
    return fn(student_logits, teacher, **kw)
